//! End to end over real loopback sockets: simulator → adapter → dispatcher → conductor →
//! data bus. Events arrive in the contract's JSON, `seq` is gap-free per (instrument,
//! type), and every live fused book equals the simulator's true book at the same update id.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meltica::bus::{SubscribeOptions, SubscriptionFilter};
use meltica::engine::Engine;
use meltica::schema::{Decimal, Event, EventType, Payload, Quality};

fn check_contract_json(ev: &Event) {
    let v: serde_json::Value = serde_json::from_str(&ev.to_json()).expect("valid JSON");
    let obj = v.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    for k in [
        "type",
        "source",
        "ts",
        "instrument",
        "market",
        "seq",
        "key",
        "payload",
        "latencyNs",
        "traceId",
        "quality",
    ] {
        assert!(keys.contains(&k), "missing {k} in {v}");
    }
    assert_eq!(v["type"], ev.event_type.as_str());
    assert_eq!(v["market"], "BINANCE-SPOT");
    assert!(v["seq"].as_u64().unwrap() >= 1);
    assert_eq!(
        v["key"],
        format!(
            "{}:{}:{}",
            v["instrument"].as_str().unwrap(),
            ev.event_type.as_str(),
            v["seq"]
        )
    );
    let ts = v["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.starts_with("20"),
        "{ts}"
    );
    assert_eq!(v["traceId"].as_str().unwrap().len(), 32);
    assert!(["live", "syncing", "stale"].contains(&v["quality"].as_str().unwrap()));
    let p = &v["payload"];
    match ev.event_type {
        EventType::Trade => {
            Decimal::parse(p["price"].as_str().unwrap()).unwrap();
            Decimal::parse(p["quantity"].as_str().unwrap()).unwrap();
            assert!(p["tradeId"].is_u64());
        }
        EventType::OrderbookTop => {
            Decimal::parse(p["bidPrice"].as_str().unwrap()).unwrap();
            Decimal::parse(p["askQty"].as_str().unwrap()).unwrap();
        }
        EventType::Ticker => {
            Decimal::parse(p["lastPrice"].as_str().unwrap()).unwrap();
        }
        EventType::OrderbookDelta => {
            assert!(p["firstUpdateId"].as_u64().unwrap() <= p["finalUpdateId"].as_u64().unwrap());
            for side in ["bids", "asks"] {
                for l in p[side].as_array().unwrap() {
                    Decimal::parse(l[0].as_str().unwrap()).unwrap();
                    Decimal::parse(l[1].as_str().unwrap()).unwrap();
                }
            }
        }
        EventType::AnalyticsFused => {
            assert!(p["lastUpdateId"].is_u64());
            assert!(["live", "syncing", "stale"].contains(&p["status"].as_str().unwrap()));
            assert!(p["bids"].is_array() && p["asks"].is_array());
        }
        _ => {}
    }
}

#[test]
fn simulator_to_consumer_end_to_end() {
    let sim = support::simulator(50);
    let cfg = support::config_for(&sim);
    let depth = cfg.conductor.book_depth;
    let builder = Engine::builder(cfg);
    let sub = builder.subscribe(SubscriptionFilter::all(), SubscribeOptions::default());
    let engine = builder
        .start()
        .expect("engine starts against the simulator");

    let mut events: Vec<Arc<Event>> = Vec::new();
    let mut live_fused = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(ev) = sub.recv_timeout(Duration::from_millis(100)) {
            if ev.event_type == EventType::AnalyticsFused && ev.quality == Quality::Live {
                live_fused += 1;
            }
            events.push(ev);
        }
        let have = |t| events.iter().any(|e| e.event_type == t);
        if live_fused >= 40
            && have(EventType::Trade)
            && have(EventType::Ticker)
            && have(EventType::OrderbookTop)
            && have(EventType::OrderbookDelta)
        {
            break;
        }
    }
    let counts = engine.shutdown().expect("clean shutdown");
    // Whatever was published before shutdown is still delivered.
    while let Some(ev) = sub.recv() {
        events.push(ev);
    }
    assert!(
        live_fused >= 40,
        "only {live_fused} live fused books; counts {counts:?}"
    );
    for t in [
        EventType::Trade,
        EventType::Ticker,
        EventType::OrderbookTop,
        EventType::OrderbookDelta,
    ] {
        assert!(events.iter().any(|e| e.event_type == t), "no {t} event");
    }

    // Contract JSON, and gap-free seq per (instrument, type).
    let mut last_seq: HashMap<(String, EventType), u64> = HashMap::new();
    for ev in &events {
        check_contract_json(ev);
        let k = (ev.instrument_name().to_owned(), ev.event_type);
        let prev = last_seq.insert(k.clone(), ev.seq).unwrap_or(0);
        assert_eq!(ev.seq, prev + 1, "seq gap for {k:?}");
    }

    // Every live fused book equals the simulator's true book at that update id.
    let mut compared = 0;
    for ev in &events {
        let Payload::Fused(f) = &ev.payload else {
            continue;
        };
        if f.status != Quality::Live {
            assert!(
                f.bids.is_empty() && f.asks.is_empty(),
                "a non-live book was published with content"
            );
            continue;
        }
        let symbol = ev.instrument_name().replace('-', "");
        let truth = sim.book_at(&symbol, f.last_update_id).unwrap_or_else(|| {
            panic!("simulator has no book for {symbol} at {}", f.last_update_id)
        });
        let top = |v: &[(Decimal, Decimal)]| v.iter().take(depth).copied().collect::<Vec<_>>();
        assert_eq!(
            f.bids,
            top(&truth.bids),
            "bids differ at {}",
            f.last_update_id
        );
        assert_eq!(
            f.asks,
            top(&truth.asks),
            "asks differ at {}",
            f.last_update_id
        );
        compared += 1;
    }
    assert!(compared >= 40, "compared {compared}");

    // Conservation: every ingested exchange event was published, filtered or rejected.
    for t in [
        EventType::Trade,
        EventType::Ticker,
        EventType::OrderbookTop,
        EventType::OrderbookDelta,
        EventType::OrderbookSnapshot,
    ] {
        assert_eq!(counts.unaccounted(t), 0, "{t}: {counts:?}");
    }
    assert!(counts.ingested[EventType::OrderbookSnapshot.index()] >= 2);
    assert_eq!(counts.adapter.malformed, 0);
    sim.shutdown();
}

#[test]
fn an_unlisted_instrument_is_skipped_while_the_rest_runs() {
    let sim = support::simulator(20);
    let mut cfg = support::config_for(&sim);
    cfg.instruments = vec!["BTC-USDT".into(), "NOPE-USDT".into()];
    let builder = Engine::builder(cfg);
    let sub = builder.subscribe(
        SubscriptionFilter::types(&[EventType::Trade]),
        SubscribeOptions::default(),
    );
    let engine = builder.start().expect("starts with the listed instrument");
    assert_eq!(engine.skipped_instruments(), ["NOPE-USDT".to_string()]);
    assert_eq!(engine.instruments().len(), 1);
    let ev = sub
        .recv_timeout(Duration::from_secs(30))
        .expect("trades keep flowing");
    assert_eq!(ev.instrument_name(), "BTC-USDT");
    engine.shutdown().unwrap();
}

#[test]
fn deltas_alone_get_a_live_book() {
    // Routing ORDERBOOK.DELTA without ANALYTICS.FUSED still syncs the book, so deltas are
    // flagged `live` once it is provably in sync (the snapshot reaches the conductor).
    let sim = support::simulator(50);
    let mut cfg = support::config_for(&sim);
    cfg.dispatcher.routes = vec![meltica::config::RouteConfig::for_type(
        EventType::OrderbookDelta,
    )];
    let builder = Engine::builder(cfg);
    let deltas = builder.subscribe(
        SubscriptionFilter::types(&[EventType::OrderbookDelta]),
        SubscribeOptions::default(),
    );
    let engine = builder.start().unwrap();
    let live = deltas.iter().take(2000).any(|e| e.quality == Quality::Live);
    assert!(live, "no delta was ever flagged live");
    engine.shutdown().unwrap();
}

/// A `bookTicker` carries no event time: its `ts` is when the frame was received, whether
/// read live or replayed with its recorded receive time.
#[test]
fn a_book_ticker_is_stamped_with_its_receive_time() {
    use meltica::config::{Config, RouteConfig};

    let top = r#"{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}"#;
    for deterministic in [false, true] {
        let mut cfg = Config {
            instruments: vec!["BTC-USDT".into()],
            ..Config::default()
        };
        cfg.dispatcher.routes = vec![RouteConfig::for_type(EventType::OrderbookTop)];
        cfg.control.addr = None;
        let mut builder = Engine::builder(cfg);
        if deterministic {
            builder = builder.deterministic();
        }
        let source = builder.frame_source();
        let sub = builder.subscribe(
            SubscriptionFilter::types(&[EventType::OrderbookTop]),
            SubscribeOptions::default(),
        );
        let engine = builder.start().unwrap();
        let recorded_ms: i64 = 1_700_000_000_123;
        let before = meltica::clock::wall_ms();
        if deterministic {
            source
                .push_frame_received(top, recorded_ms as u64 * 1_000_000)
                .unwrap();
        } else {
            source.push_frame(top).unwrap();
        }
        let after = meltica::clock::wall_ms();
        let ev = sub.recv_timeout(Duration::from_secs(5)).unwrap();
        if deterministic {
            assert_eq!(ev.ts_ms, recorded_ms);
        } else {
            assert!(
                (before..=after).contains(&ev.ts_ms),
                "{before} {} {after}",
                ev.ts_ms
            );
        }
        engine.shutdown().unwrap();
    }
}
