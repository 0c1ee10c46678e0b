//! The NATS bus against a real nats-server: events on their subjects, in order, as contract
//! JSON with their key as `Nats-Msg-Id`; a late JetStream reader gets everything without
//! gaps or duplicates; control request-reply answers like the HTTP API; order holds across
//! a server restart; an unreachable server fails fast.
//!
//! The server comes from `NATS_URL` (default `nats://127.0.0.1:4222`, with JetStream). When
//! it is absent the tests say so and pass, unless `MELTICA_REQUIRE_SERVICES=1`, where they
//! fail. The restart test runs its own `nats-server` (`NATS_SERVER_BIN`, default
//! `/usr/sbin/nats-server`, else `nats-server` on the PATH) on a free loopback port.

#![cfg(feature = "nats")]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use meltica::bus::DataBus;
use meltica::bus::nats::{
    JetStreamConfig, MSG_ID_HEADER, NatsBusConfig, NatsControlServer, NatsPublisher, NatsTail,
    STATUS_HEADER, TailStart,
};
use meltica::bus::{MemoryDataBus, SubscribeOptions, Subscription, SubscriptionFilter};
use meltica::config::BackpressurePolicy;
use meltica::engine::{Engine, EngineBuilder};
use meltica::schema::EventType;
use meltica::simulator::Simulator;
use serde_json::Value;

fn require_services() -> bool {
    std::env::var("MELTICA_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_owned()
}

fn reachable(url: &str) -> bool {
    host_port(url)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The server URL, or `None` (the test is skipped) when no server answers.
fn nats(test: &str) -> Option<String> {
    let url = nats_url();
    if reachable(&url) {
        return Some(url);
    }
    assert!(
        !require_services(),
        "{test}: NATS at {url} is unreachable and MELTICA_REQUIRE_SERVICES=1"
    );
    println!("{test}: skipped: NATS at {url} is unreachable (set NATS_URL)");
    None
}

/// A subject token / stream name / engine id no other test run uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}{}x{nanos}", std::process::id())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn raw_client(rt: &tokio::runtime::Runtime, url: &str) -> async_nats::Client {
    rt.block_on(async_nats::connect(url))
        .expect("raw NATS client")
}

/// Deletes a JetStream stream when the test ends, passed or not.
struct StreamGuard {
    url: String,
    name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let rt = rt();
        rt.block_on(async {
            if let Ok(c) = async_nats::connect(&self.url).await {
                let _ = async_nats::jetstream::new(c)
                    .delete_stream(&self.name)
                    .await;
            }
        });
    }
}

fn builder(sim: &Simulator) -> EngineBuilder {
    let mut cfg = support::config_for(sim);
    cfg.control.addr = None;
    Engine::builder(cfg)
}

fn bridge_subscription(b: &EngineBuilder, types: &[EventType]) -> Subscription {
    b.subscribe(
        SubscriptionFilter::types(types),
        SubscribeOptions::new("nats", 65_536, BackpressurePolicy::Block),
    )
}

fn bus_config(url: &str, prefix: &str) -> NatsBusConfig {
    NatsBusConfig {
        url: url.to_owned(),
        subject_prefix: prefix.to_owned(),
        engine_id: unique("e"),
        ..NatsBusConfig::default()
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Reads a tail until `want` events arrived or nothing came for `idle`.
fn drain_tail(tail: &NatsTail, want: u64, idle: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while (out.len() as u64) < want {
        match tail.recv_timeout(idle) {
            Ok(s) => out.push(json(&s)),
            Err(_) => break,
        }
    }
    out
}

/// Per (instrument, type): the seqs in arrival order.
fn seqs(events: &[Value]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut m: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for e in events {
        m.entry((
            e["instrument"].as_str().unwrap().to_owned(),
            e["type"].as_str().unwrap().to_owned(),
        ))
        .or_default()
        .push(e["seq"].as_u64().unwrap());
    }
    m
}

#[test]
fn trades_arrive_on_their_subjects_in_order_as_contract_json() {
    let Some(url) = nats("trades_arrive_on_their_subjects") else {
        return;
    };
    let prefix = unique("mt");
    let rt = rt();
    let client = raw_client(&rt, &url);
    let mut raw = rt
        .block_on(client.subscribe(format!("{prefix}.>")))
        .unwrap();
    rt.block_on(client.flush()).unwrap();
    let tail = NatsTail::connect(
        &url,
        &prefix,
        &[EventType::Trade],
        &["BTC-USDT".to_owned()],
        None,
    )
    .expect("core tail");

    let sim = support::simulator(200);
    let b = builder(&sim);
    let local = b.subscribe(
        SubscriptionFilter::types(&[EventType::Trade]),
        SubscribeOptions::default(),
    );
    let publisher = NatsPublisher::start(
        bus_config(&url, &prefix),
        bridge_subscription(&b, &[EventType::Trade]),
    )
    .expect("publisher starts");
    let engine = b.start().expect("engine starts");

    // (subject, Nats-Msg-Id, traceparent, payload) as received.
    let mut got: Vec<(String, String, Option<String>, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 80 && Instant::now() < deadline {
        let msg = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), raw.next()).await })
            .expect("a trade within 10 s")
            .expect("subscription open");
        let header = |n: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(n))
                .map(|v| v.as_str().to_owned())
        };
        got.push((
            msg.subject.to_string(),
            header(MSG_ID_HEADER).expect("Nats-Msg-Id header"),
            header("traceparent"),
            String::from_utf8(msg.payload.to_vec()).unwrap(),
        ));
    }
    assert!(got.len() >= 80, "only {} trades in 30 s", got.len());

    // Every published trade, as the engine's own subscriber saw it.
    let mut expected: HashMap<String, String> = HashMap::new();
    let wanted: Vec<String> = got.iter().map(|g| g.1.clone()).collect();
    while !wanted.iter().all(|k| expected.contains_key(k)) {
        let e = local
            .recv_timeout(Duration::from_secs(10))
            .expect("the local subscriber sees the same trades");
        expected.insert(e.key(), e.to_json());
    }

    let mut last: HashMap<String, u64> = HashMap::new();
    for (subject, msg_id, tp, payload) in &got {
        let v = json(payload);
        let instrument = v["instrument"].as_str().unwrap();
        assert_eq!(v["type"], "TRADE");
        assert_eq!(
            subject,
            &format!("{prefix}.BINANCE-SPOT.TRADE.{instrument}")
        );
        assert_eq!(msg_id, v["key"].as_str().unwrap());
        assert_eq!(payload, &expected[msg_id], "payload is Event::to_json");
        let seq = v["seq"].as_u64().unwrap();
        let prev = last.insert(instrument.to_owned(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "{instrument}: seq {seq} after {prev}");
        if let Some(tp) = tp {
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1], v["traceId"].as_str().unwrap());
            assert_eq!(parts[2].len(), 16);
            assert_ne!(parts[2], "0000000000000000");
        }
    }
    assert!(last.len() >= 2, "trades of both instruments: {last:?}");

    // The core tail: only BTC-USDT trades, in order, no duplicates.
    let tailed = drain_tail(&tail, 10, Duration::from_secs(10));
    assert_eq!(tailed.len(), 10);
    let by = seqs(&tailed);
    assert_eq!(by.len(), 1, "{by:?}");
    let s = &by[&("BTC-USDT".to_owned(), "TRADE".to_owned())];
    assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{s:?}");
    assert_eq!(tail.duplicates(), 0);
    assert_eq!(tail.subjects(), [format!("{prefix}.*.TRADE.BTC-USDT")]);

    engine.shutdown().unwrap();
    let offered = publisher.subscription_stats().offered();
    let dropped = publisher.subscription_stats().dropped();
    let stats = publisher.shutdown().expect("clean shutdown");
    assert_eq!(dropped, 0);
    assert_eq!(stats.published, offered, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.in_doubt, 0, "{stats:?}");
    assert!(stats.connected);
    tail.shutdown();
}

#[test]
fn a_late_jetstream_tail_reads_everything_from_the_start() {
    let Some(url) = nats("a_late_jetstream_tail") else {
        return;
    };
    let prefix = unique("mj");
    let stream = unique("MJ");
    let _guard = StreamGuard {
        url: url.clone(),
        name: stream.clone(),
    };
    let sim = support::simulator(200);
    let b = builder(&sim);
    let mut cfg = bus_config(&url, &prefix);
    cfg.jetstream = Some(JetStreamConfig {
        stream: stream.clone(),
        max_age: Duration::from_secs(600),
        ..JetStreamConfig::default()
    });
    let publisher = NatsPublisher::start(
        cfg,
        bridge_subscription(&b, &[EventType::Trade, EventType::OrderbookDelta]),
    )
    .expect("publisher starts with JetStream");
    let engine = b.start().expect("engine starts");
    assert!(support::wait_until(Duration::from_secs(30), || {
        publisher.stats().acked >= 600
    }));
    engine.shutdown().unwrap();
    let offered = publisher.subscription_stats().offered();
    let stats = publisher.shutdown().expect("clean shutdown");
    assert_eq!(stats.published, offered, "{stats:?}");
    assert_eq!(stats.acked, stats.published, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");

    // A consumer arriving after the fact reads the stream from its start.
    let tail =
        NatsTail::connect(&url, &prefix, &[], &[], Some(TailStart::First)).expect("JetStream tail");
    assert_eq!(tail.stream(), Some(stream.as_str()));
    let all = drain_tail(&tail, stats.acked, Duration::from_secs(10));
    assert_eq!(all.len() as u64, stats.acked, "every stored event");
    for ((instrument, t), s) in seqs(&all) {
        assert_eq!(s[0], 1, "{instrument} {t} starts at seq 1");
        assert!(
            s.windows(2).all(|w| w[1] == w[0] + 1),
            "{instrument} {t}: gap or reorder in {s:?}"
        );
    }
    assert!(
        seqs(&all).keys().any(|(_, t)| t == "TRADE"),
        "trades are in the stream"
    );
    assert_eq!(tail.duplicates(), 0);
    assert!(
        tail.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing beyond the stream"
    );
    tail.shutdown();

    // Several types of one instrument (one covering filter, narrowed client-side), and a
    // continuation from a stream sequence.
    let btc = NatsTail::connect(
        &url,
        &prefix,
        &[EventType::Trade, EventType::OrderbookDelta],
        &["BTC-USDT".to_owned()],
        Some(TailStart::First),
    )
    .unwrap();
    let want = all.iter().filter(|e| e["instrument"] == "BTC-USDT").count() as u64;
    let got = drain_tail(&btc, want, Duration::from_secs(10));
    assert_eq!(got.len() as u64, want);
    assert!(got.iter().all(|e| e["instrument"] == "BTC-USDT"));
    btc.shutdown();

    let half = stats.acked / 2;
    let rest =
        NatsTail::connect(&url, &prefix, &[], &[], Some(TailStart::Sequence(half + 1))).unwrap();
    let tail_half = drain_tail(&rest, stats.acked - half, Duration::from_secs(10));
    assert_eq!(tail_half.len() as u64, stats.acked - half);
    assert_eq!(
        tail_half[0],
        all[half as usize],
        "continues at stream seq {}",
        half + 1
    );
    assert_eq!(tail_half.last(), all.last());
    rest.shutdown();
}

#[test]
fn control_requests_over_nats_answer_like_http() {
    let Some(url) = nats("control_requests_over_nats") else {
        return;
    };
    let token = "s3cret";
    let sim = support::simulator(20);
    let mut cfg = support::config_for(&sim);
    cfg.control.token = Some(token.into());
    let engine = Engine::start(cfg).expect("engine starts");
    let http = format!("http://{}", engine.control_addr().unwrap());
    let mut bus_cfg = bus_config(&url, &unique("mc"));
    bus_cfg.control_token = Some(token.into());
    let server = NatsControlServer::start(&bus_cfg, Arc::new(engine.control()))
        .expect("control facade starts");
    assert_eq!(server.subject(), bus_cfg.control_subject());

    let rt = rt();
    let client = raw_client(&rt, &url);
    let request = |body: &str, auth: Option<&str>| -> (u16, Value) {
        let mut h = async_nats::HeaderMap::new();
        if let Some(t) = auth {
            h.insert("Authorization", format!("Bearer {t}"));
        }
        let msg = rt
            .block_on(async {
                let reply = client.request_with_headers(
                    bus_cfg.control_subject(),
                    h,
                    body.as_bytes().to_vec().into(),
                );
                tokio::time::timeout(Duration::from_secs(20), reply).await
            })
            .expect("a reply within 20 s")
            .expect("request answered");
        let status = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(STATUS_HEADER))
            .expect("Meltica-Status header")
            .as_str()
            .parse()
            .unwrap();
        (status, json(std::str::from_utf8(&msg.payload).unwrap()))
    };

    let v0 = engine.dispatch_version();
    let (status, ack) = request(
        r#"{"op":"subscribe","type":"TICKER","filters":{"instrument":"SOL-USDT"},"consumer":"nats","traceId":"t1"}"#,
        Some(token),
    );
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["status"], "accepted", "{ack}");
    assert_eq!(ack["type"], "TICKER");
    let v1 = ack["dispatchVersion"].as_u64().unwrap();
    assert!(v1 > v0);
    assert_eq!(engine.dispatch_version(), v1);
    assert!(ack["elapsedMs"].as_f64().unwrap() < 2000.0, "{ack}");

    // The same command over HTTP: already in place, and the same ack shape.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(format!("{http}/control/subscribe"))
        .header("Authorization", format!("Bearer {token}"))
        .send(r#"{"type":"TICKER","filters":{"instrument":"SOL-USDT"},"consumer":"nats"}"#)
        .expect("HTTP round trip");
    assert_eq!(resp.status().as_u16(), 202);
    let http_ack = json(&resp.body_mut().read_to_string().unwrap());
    assert_eq!(http_ack["status"], "noop");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ack), keys(&http_ack), "{ack} vs {http_ack}");

    // Refusals: the HTTP status in the header, an error ack, the table untouched.
    let big = format!(
        r#"{{"op":"subscribe","type":"TICKER","filters":{{"instrument":"BTC-USDT"}},"consumer":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let refusals: [(&str, Option<&str>, u16); 5] = [
        ("{not json", Some(token), 400),
        (
            r#"{"op":"subscribe","type":"CANDLES","filters":{"instrument":"BTC-USDT"}}"#,
            Some(token),
            422,
        ),
        (
            r#"{"type":"TICKER","filters":{"instrument":"BTC-USDT"}}"#,
            Some(token),
            422,
        ),
        (
            r#"{"op":"subscribe","type":"TICKER","filters":{"instrument":"BTC-USDT"}}"#,
            None,
            401,
        ),
        (&big, Some(token), 413),
    ];
    for (body, auth, want) in refusals {
        let (status, ack) = request(body, auth);
        assert_eq!(status, want, "{ack}");
        assert_eq!(ack["status"], "error", "{ack}");
        assert!(ack["error"].is_string(), "{ack}");
        assert_eq!(ack["dispatchVersion"].as_u64(), Some(v1), "{ack}");
        assert_eq!(
            engine.dispatch_version(),
            v1,
            "a refused request changed the table"
        );
    }

    let (status, routes) = request(r#"{"op":"routes"}"#, Some(token));
    assert_eq!(status, 200);
    assert!(routes.is_object(), "{routes}");

    let (status, ack) = request(
        r#"{"op":"unsubscribe","type":"TICKER","filters":{"instrument":"SOL-USDT"},"consumer":"nats"}"#,
        Some(token),
    );
    assert_eq!(status, 202);
    assert_eq!(ack["status"], "accepted", "{ack}");

    let stats = server.stats();
    assert_eq!(stats.refused, 5, "{stats:?}");
    assert!(stats.requests >= 8, "{stats:?}");
    server.shutdown().unwrap();
    engine.shutdown().unwrap();
}

#[test]
fn an_unreachable_server_is_a_clear_error_within_seconds() {
    let url = "nats://127.0.0.1:1";
    let started = Instant::now();
    let bus = MemoryDataBus::new();
    let cfg = NatsBusConfig {
        url: url.into(),
        ..NatsBusConfig::default()
    };
    let err = NatsPublisher::start(
        cfg.clone(),
        bus.subscribe(SubscriptionFilter::all(), SubscribeOptions::default()),
    )
    .err()
    .expect("no server there");
    let msg = err.to_string();
    assert!(
        msg.starts_with("nats at 127.0.0.1:1 unreachable: "),
        "{msg}"
    );
    assert!(err.is_retryable());
    let err = NatsControlServer::start(&cfg, Arc::new(NoControl))
        .err()
        .expect("no server there");
    assert!(err.to_string().contains("unreachable"), "{err}");
    let err = NatsTail::connect(url, "meltica", &[], &[], None)
        .err()
        .expect("no server there");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    bus.close();
}

/// A control bus for tests that never reach it.
struct NoControl;

impl meltica::bus::ControlBus for NoControl {
    fn submit(
        &self,
        _: meltica::schema::control::ControlCommand,
    ) -> crossbeam_channel::Receiver<meltica::schema::control::Ack> {
        crossbeam_channel::never()
    }
    fn dispatch_version(&self) -> u64 {
        0
    }
    fn routes_json(&self) -> String {
        "{}".into()
    }
}

/// A private nats-server with JetStream, killed when dropped.
struct PrivateServer {
    bin: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl PrivateServer {
    fn binary() -> Option<String> {
        if let Ok(b) = std::env::var("NATS_SERVER_BIN") {
            return Some(b);
        }
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            return Some("/usr/sbin/nats-server".into());
        }
        Command::new("nats-server")
            .arg("--version")
            .output()
            .ok()
            .map(|_| "nats-server".into())
    }

    fn start(bin: String) -> PrivateServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("meltica-nats-"));
        let mut s = PrivateServer {
            bin,
            port,
            dir,
            child: None,
        };
        s.up();
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        assert!(
            support::wait_until(Duration::from_secs(10), || reachable(&self.url())),
            "private nats-server did not come up"
        );
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private server, or `None` (the test is skipped) without a nats-server binary.
fn private_server(test: &str) -> Option<PrivateServer> {
    let Some(bin) = PrivateServer::binary() else {
        assert!(
            !require_services(),
            "{test}: no nats-server binary and MELTICA_REQUIRE_SERVICES=1"
        );
        println!("{test}: skipped: no nats-server binary (set NATS_SERVER_BIN)");
        return None;
    };
    Some(PrivateServer::start(bin))
}

/// Kills the server, starts it again on the same port and store, and waits until the
/// publisher is back and has published `more` events since.
fn restart(server: &mut PrivateServer, publisher: &NatsPublisher, more: u64) {
    server.down();
    assert!(support::wait_until(Duration::from_secs(10), || {
        !publisher.stats().connected
    }));
    std::thread::sleep(Duration::from_millis(500));
    server.up();
    assert!(
        support::wait_until(Duration::from_secs(30), || publisher.stats().reconnects
            >= 1),
        "{:?}",
        publisher.stats()
    );
    let resumed = publisher.stats().published;
    assert!(
        support::wait_until(Duration::from_secs(30), || {
            publisher.stats().published >= resumed + more
        }),
        "publishing resumed after the restart: {:?}",
        publisher.stats()
    );
}

#[test]
fn core_order_holds_across_a_server_restart() {
    let Some(mut server) = private_server("core_order_holds_across_a_server_restart") else {
        return;
    };
    let url = server.url();
    let prefix = unique("mk");
    let tail = NatsTail::connect(&url, &prefix, &[], &[], None).unwrap();
    let sim = support::simulator(200);
    let b = builder(&sim);
    let publisher = NatsPublisher::start(
        bus_config(&url, &prefix),
        bridge_subscription(&b, &[EventType::Trade, EventType::OrderbookDelta]),
    )
    .expect("publisher starts");
    let engine = b.start().expect("engine starts");
    assert!(support::wait_until(Duration::from_secs(30), || {
        publisher.stats().published >= 300
    }));
    restart(&mut server, &publisher, 300);
    engine.shutdown().unwrap();
    let offered = publisher.subscription_stats().offered();
    let stats = publisher.shutdown().expect("clean shutdown");
    println!("core across the restart: offered {offered}, {stats:?}");
    assert_eq!(stats.published + stats.failed, offered, "{stats:?}");
    assert!(stats.reconnects >= 1);

    // What reached the consumer is in order; what the restart swallowed is a gap.
    let got = drain_tail(&tail, u64::MAX, Duration::from_secs(2));
    assert!(
        got.len() >= 300,
        "only {} events reached the tail",
        got.len()
    );
    for ((instrument, t), s) in seqs(&got) {
        assert!(
            s.windows(2).all(|w| w[1] > w[0]),
            "{instrument} {t}: out of order"
        );
    }
    assert_eq!(tail.duplicates(), 0);
    tail.shutdown();
}

#[test]
fn order_holds_across_a_server_restart_and_losses_are_counted() {
    let Some(mut server) = private_server("order_holds_across_a_server_restart") else {
        return;
    };
    let url = server.url();
    let prefix = unique("mr");
    let sim = support::simulator(200);
    let b = builder(&sim);
    let mut cfg = bus_config(&url, &prefix);
    cfg.jetstream = Some(JetStreamConfig {
        stream: unique("MR"),
        ack_timeout: Duration::from_secs(2),
        ..JetStreamConfig::default()
    });
    let publisher = NatsPublisher::start(
        cfg,
        bridge_subscription(&b, &[EventType::Trade, EventType::OrderbookDelta]),
    )
    .expect("publisher starts");
    let engine = b.start().expect("engine starts");
    assert!(support::wait_until(Duration::from_secs(30), || {
        publisher.stats().acked >= 300
    }));

    restart(&mut server, &publisher, 300);

    engine.shutdown().unwrap();
    let offered = publisher.subscription_stats().offered();
    let stats = publisher.shutdown().expect("clean shutdown");
    println!("across the restart: offered {offered}, {stats:?}");
    // Each event the bridge took was acknowledged or counted as failed.
    assert_eq!(stats.acked + stats.failed, offered, "{stats:?}");

    let tail = NatsTail::connect(&url, &prefix, &[], &[], Some(TailStart::First)).unwrap();
    let stored = drain_tail(&tail, u64::MAX, Duration::from_secs(3));
    // Never reordered: within each (instrument, type) seq only grows. (The tail counts a
    // seq at or below the last one as a duplicate, so a reorder would show there too.)
    let mut missing = 0u64;
    for ((instrument, t), s) in seqs(&stored) {
        assert!(
            s.windows(2).all(|w| w[1] > w[0]),
            "{instrument} {t}: out of order"
        );
        missing += s.last().unwrap() - s.len() as u64;
    }
    assert_eq!(tail.duplicates(), 0);
    // Every gap is accounted for by a counted failure (a failure may also be a message that
    // was stored but whose ack was lost).
    assert!(
        missing <= stats.failed,
        "{missing} events missing from the stream, {} counted as failed",
        stats.failed
    );
    assert!(stored.len() as u64 + stats.failed >= offered);
    tail.shutdown();
}
