//! The control plane over real sockets: runtime subscriptions through the HTTP API reach
//! the exchange, take effect within 2 s, are reference-counted per consumer, respect
//! Binance's client message limit, and bad requests leave the dispatch table untouched.

mod support;

use std::time::{Duration, Instant};

use meltica::bus::{ControlBus, SubscribeOptions, SubscriptionFilter};
use meltica::engine::Engine;
use meltica::schema::EventType;
use meltica::schema::control::{AckStatus, ControlCommand};
use meltica::simulator::Simulator;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn post(base: &str, path: &str, body: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = agent()
        .post(format!("{base}{path}"))
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.send(body).expect("HTTP round trip");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn get(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = agent().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.call().expect("HTTP round trip");
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap(),
    )
}

fn native(sim: &Simulator, method: &str, topic: &str) -> usize {
    sim.client_requests()
        .iter()
        .filter(|r| r.method == method && r.params.iter().any(|p| p == topic))
        .count()
}

fn start(sim: &Simulator, token: Option<&str>) -> (Engine, String) {
    let mut cfg = support::config_for(sim);
    cfg.control.token = token.map(str::to_owned);
    let engine = Engine::start(cfg).expect("engine starts");
    let base = format!("http://{}", engine.control_addr().expect("control API on"));
    (engine, base)
}

#[test]
fn subscribe_a_new_instrument_over_http_then_unsubscribe() {
    let sim = support::simulator(20);
    let (engine, base) = start(&sim, None);
    let tickers = engine.subscribe(
        SubscriptionFilter::types(&[EventType::Ticker]).with_instruments(&["SOL-USDT"]),
        SubscribeOptions::default(),
    );
    let audit = engine.subscribe(
        SubscriptionFilter::types(&[EventType::ControlUpdate]),
        SubscribeOptions::default(),
    );
    let v0 = engine.dispatch_version();

    let body =
        r#"{"type":"TICKER","filters":{"instrument":"SOL-USDT"},"consumer":"ops","traceId":"t1"}"#;
    let (status, ack) = post(&base, "/control/subscribe", body, None);
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["status"], "accepted", "{ack}");
    assert_eq!(ack["type"], "TICKER");
    assert!(ack["dispatchVersion"].as_u64().unwrap() > v0);
    assert!(ack["elapsedMs"].as_f64().unwrap() < 2000.0, "{ack}");
    assert_eq!(native(&sim, "SUBSCRIBE", "solusdt@ticker"), 1);
    let ev = tickers
        .recv_timeout(Duration::from_secs(10))
        .expect("SOL-USDT tickers arrive");
    assert_eq!(ev.instrument_name(), "SOL-USDT");
    let a = audit
        .recv_timeout(Duration::from_secs(5))
        .expect("CONTROL.UPDATE audit event");
    let j: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    assert_eq!(j["payload"]["command"], "subscribe");
    assert_eq!(j["payload"]["status"], "accepted");

    // Subscribing again for the same consumer changes nothing.
    let (_, ack) = post(&base, "/control/subscribe", body, None);
    assert_eq!(ack["status"], "noop");

    let (status, ack) = post(
        &base,
        "/control/unsubscribe",
        r#"{"type":"TICKER","filters":{"instrument":"SOL-USDT"},"consumer":"ops"}"#,
        None,
    );
    assert_eq!(status, 202);
    assert_eq!(ack["status"], "accepted", "{ack}");
    assert_eq!(native(&sim, "UNSUBSCRIBE", "solusdt@ticker"), 1);
    // Whatever was published before the ack is already queued; nothing may follow it.
    while tickers.try_recv().is_ok() {}
    assert!(
        tickers.recv_timeout(Duration::from_secs(3)).is_err(),
        "a SOL-USDT ticker arrived after the unsubscribe was acknowledged"
    );
    engine.shutdown().unwrap();
}

#[test]
fn one_hundred_commands_are_effective_within_two_seconds() {
    let sim = support::simulator(20);
    let (engine, base) = start(&sim, None);
    let mut elapsed: Vec<f64> = Vec::new();
    for i in 0..100 {
        let path = if i % 2 == 0 {
            "/control/subscribe"
        } else {
            "/control/unsubscribe"
        };
        let body = r#"{"type":"TRADE","filters":{"instrument":"SOL-USDT"},"consumer":"sla"}"#;
        let started = Instant::now();
        let (status, ack) = post(&base, path, body, None);
        let wall = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 202, "{ack}");
        assert_eq!(ack["status"], "accepted", "command {i}: {ack}");
        elapsed.push(wall.max(ack["elapsedMs"].as_f64().unwrap()));
    }
    elapsed.sort_by(f64::total_cmp);
    let within = elapsed.iter().filter(|ms| **ms <= 2000.0).count();
    let pct = |q: f64| elapsed[((elapsed.len() - 1) as f64 * q).round() as usize];
    let sla = engine.control_sla();
    println!(
        "control SLA over 100 commands: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms, {within}/100 within 2 s \
         (engine histogram: n={} p50 {:.1} ms p95 {:.1} ms max {:.1} ms)",
        pct(0.5),
        pct(0.95),
        elapsed[99],
        sla.count,
        sla.p50_ms,
        sla.p95_ms,
        sla.max_ms
    );
    assert!(within >= 95, "only {within} of 100 commands within 2 s");
    assert_eq!(sla.count, 100);
    let (status, metrics) = get(&base, "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("meltica_control_sla_seconds_count 100"),
        "{metrics}"
    );
    assert_eq!(sim.rate_violations(), 0);
    engine.shutdown().unwrap();
}

#[test]
fn a_stream_is_unsubscribed_natively_only_when_its_last_consumer_leaves() {
    let sim = support::simulator(50);
    let (engine, _base) = start(&sim, None);
    let control = engine.control();
    let trades = engine.subscribe(
        SubscriptionFilter::types(&[EventType::Trade]).with_instruments(&["SOL-USDT"]),
        SubscribeOptions::default(),
    );
    let t = Duration::from_secs(10);
    for consumer in ["alice", "bob"] {
        let ack = control.execute(
            ControlCommand::subscribe(EventType::Trade, &["SOL-USDT"], consumer),
            t,
        );
        assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    }
    assert_eq!(
        native(&sim, "SUBSCRIBE", "solusdt@trade"),
        1,
        "one native subscription for two consumers"
    );
    trades
        .recv_timeout(Duration::from_secs(10))
        .expect("trades flow");

    let ack = control.execute(
        ControlCommand::unsubscribe(EventType::Trade, &["SOL-USDT"], "alice"),
        t,
    );
    assert_eq!(ack.status, AckStatus::Accepted);
    assert_eq!(
        native(&sim, "UNSUBSCRIBE", "solusdt@trade"),
        0,
        "bob still holds the stream"
    );
    while trades.try_recv().is_ok() {}
    trades
        .recv_timeout(Duration::from_secs(10))
        .expect("trades keep flowing for bob");

    let ack = control.execute(
        ControlCommand::unsubscribe(EventType::Trade, &["SOL-USDT"], "bob"),
        t,
    );
    assert_eq!(ack.status, AckStatus::Accepted);
    assert_eq!(native(&sim, "UNSUBSCRIBE", "solusdt@trade"), 1);
    let ack = control.execute(
        ControlCommand::unsubscribe(EventType::Trade, &["SOL-USDT"], "bob"),
        t,
    );
    assert_eq!(ack.status, AckStatus::Noop);
    engine.shutdown().unwrap();
}

#[test]
fn bad_requests_get_their_status_and_leave_the_table_untouched() {
    let sim = support::simulator(20);
    let token = "s3cret";
    let (engine, base) = start(&sim, Some(token));
    let (status, before) = get(&base, "/control/routes", Some(token));
    assert_eq!(status, 200);
    let big = format!(
        r#"{{"type":"TICKER","filters":{{"instrument":"SOL-USDT"}},"consumer":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let ok_body = r#"{"type":"TICKER","filters":{"instrument":"SOL-USDT"}}"#;
    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        ("/control/subscribe", "{not json".into(), Some(token), 400),
        (
            "/control/subscribe",
            r#"{"type":"CANDLES","filters":{"instrument":"SOL-USDT"}}"#.into(),
            Some(token),
            422,
        ),
        (
            "/control/filters",
            r#"{"type":"TRADE","filters":[{"field":"side","op":"like","value":"buy"}]}"#.into(),
            Some(token),
            422,
        ),
        ("/control/subscribe", ok_body.into(), None, 401),
        ("/control/subscribe", ok_body.into(), Some("wrong"), 401),
        ("/control/subscribe", big, Some(token), 413),
        ("/control/nothing", ok_body.into(), Some(token), 404),
    ];
    for (path, body, tok, want) in &cases {
        let (status, reply) = post(&base, path, body, *tok);
        assert_eq!(status, *want, "{path}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: no reason in {reply}"
        );
    }
    let (status, _) = get(&base, "/control/subscribe", Some(token));
    assert_eq!(status, 405);
    let (status, _) = get(&base, "/control/routes", None);
    assert_eq!(status, 401);
    let (_, after) = get(&base, "/control/routes", Some(token));
    assert_eq!(
        before, after,
        "a refused command changed the dispatch table"
    );
    assert_eq!(
        sim.client_requests()
            .iter()
            .filter(|r| r.params.iter().any(|p| p.starts_with("sol")))
            .count(),
        0
    );

    // An instrument the exchange does not list: 202 with an error ack, table untouched.
    let (status, ack) = post(
        &base,
        "/control/subscribe",
        r#"{"type":"TICKER","filters":{"instrument":"NOPE-USDT"}}"#,
        Some(token),
    );
    assert_eq!(status, 202);
    assert_eq!(ack["status"], "error");
    let (_, after) = get(&base, "/control/routes", Some(token));
    assert_eq!(before, after);

    let (status, health) = get(&base, "/healthz", None);
    assert_eq!(status, 200, "{health}");
    engine.shutdown().unwrap();
}

#[test]
fn a_burst_of_300_commands_stays_within_five_messages_a_second() {
    let sim = support::simulator(20);
    let (engine, _base) = start(&sim, None);
    let control = engine.control();
    let types = [EventType::Trade, EventType::Ticker, EventType::OrderbookTop];
    let acks: Vec<_> = (0..300)
        .map(|i| {
            let t = types[i % 3];
            let cmd = if (i / 3) % 2 == 0 {
                ControlCommand::subscribe(t, &["SOL-USDT"], "burst")
            } else {
                ControlCommand::unsubscribe(t, &["SOL-USDT"], "burst")
            };
            control.submit(cmd)
        })
        .collect();
    for (i, rx) in acks.into_iter().enumerate() {
        let ack = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("every command is acknowledged");
        assert_eq!(ack.status, AckStatus::Accepted, "command {i}: {ack:?}");
    }
    println!(
        "300-command burst: {} native requests, at most {} client messages in any second",
        sim.client_requests().len(),
        sim.max_client_messages_per_second()
    );
    assert_eq!(sim.rate_violations(), 0);
    assert!(sim.max_client_messages_per_second() <= 5);
    // The last command for each type was an unsubscribe: only the config's streams remain.
    assert!(support::wait_until(Duration::from_secs(5), || sim
        .subscription_count()
        == 8));
    engine.shutdown().unwrap();
}

#[test]
fn filters_apply_at_runtime_and_unmapped_types_are_rejected() {
    let sim = support::simulator(50);
    let mut cfg = support::config_for(&sim);
    // TRADE is routed; the extra ticker stream has no TICKER route: its events are rejected.
    cfg.dispatcher.routes = vec![meltica::config::RouteConfig {
        ws_topics: vec!["btcusdt@ticker".into()],
        ..meltica::config::RouteConfig::for_type(EventType::Trade)
    }];
    let engine = Engine::start(cfg).unwrap();
    let trades = engine.subscribe(
        SubscriptionFilter::types(&[EventType::Trade]),
        SubscribeOptions::default(),
    );
    let filters = meltica::schema::control::parse_filters(&serde_json::json!([
        {"field": "side", "op": "eq", "value": "buy"}
    ]))
    .unwrap();
    let ack = engine.control().execute(
        ControlCommand::update_filters(EventType::Trade, filters),
        Duration::from_secs(10),
    );
    assert_eq!(ack.status, AckStatus::Accepted, "{ack:?}");
    while trades.try_recv().is_ok() {}
    let mut seen = 0;
    while seen < 20 {
        let ev = trades
            .recv_timeout(Duration::from_secs(20))
            .expect("buy trades flow");
        let j: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(j["payload"]["side"], "buy", "{j}");
        seen += 1;
    }
    assert!(support::wait_until(Duration::from_secs(10), || {
        let c = engine.counts();
        c.filtered[EventType::Trade.index()] > 0 && c.rejected[EventType::Ticker.index()] > 0
    }));
    let c = engine.shutdown().unwrap();
    assert_eq!(c.published[EventType::Ticker.index()], 0);
    let i = EventType::Trade.index();
    assert_eq!(
        c.ingested[i],
        c.published[i] + c.filtered[i] + c.rejected[i]
    );
}
