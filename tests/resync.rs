//! Gaps injected by the exchange: every gap is detected, only the affected instrument
//! resyncs, and it is live again within 2 s of its snapshot being served.

mod support;

use std::time::{Duration, Instant};

use meltica::bus::{SubscribeOptions, SubscriptionFilter};
use meltica::engine::Engine;
use meltica::schema::{EventType, Payload, Quality};

#[test]
fn a_gap_resyncs_only_the_affected_instrument() {
    let sim = support::simulator(50);
    let cfg = support::config_for(&sim);
    let builder = Engine::builder(cfg);
    let fused = builder.subscribe(
        SubscriptionFilter::types(&[EventType::AnalyticsFused]),
        SubscribeOptions::default(),
    );
    let deltas = builder.subscribe(
        SubscriptionFilter::types(&[EventType::OrderbookDelta]).with_instruments(&["BTC-USDT"]),
        SubscribeOptions::default(),
    );
    let engine = builder.start().unwrap();
    let insts = engine.instruments();
    let (btc, eth) = (&insts[0], &insts[1]);
    let live =
        |e: &Engine| e.book_status(btc) == Quality::Live && e.book_status(eth) == Quality::Live;
    assert!(support::wait_until(Duration::from_secs(20), || live(
        &engine
    )));
    let stats = engine.conductor_stats();
    let resyncs = |id: u32| stats.resyncs[id as usize].load(std::sync::atomic::Ordering::Relaxed);
    let eth_before = resyncs(eth.id());

    for round in 1..=5u64 {
        while fused.try_recv().is_ok() {}
        let served_before = sim.depth_snapshots_served().len();
        assert!(sim.inject_gaps("BTCUSDT", 1));
        // Detected: a syncing status event for BTC-USDT, then live again.
        let mut saw_syncing = false;
        let mut live_at = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && live_at.is_none() {
            let Ok(ev) = fused.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let Payload::Fused(f) = &ev.payload else {
                unreachable!()
            };
            if ev.instrument_name() == "ETH-USDT" {
                assert_eq!(
                    f.status,
                    Quality::Live,
                    "ETH-USDT disturbed by a BTC-USDT gap"
                );
                continue;
            }
            match f.status {
                Quality::Syncing => {
                    saw_syncing = true;
                    assert!(f.bids.is_empty() && f.asks.is_empty());
                }
                Quality::Live if saw_syncing => live_at = Some(Instant::now()),
                _ => {}
            }
        }
        assert!(saw_syncing, "round {round}: gap not detected");
        let live_at = live_at.expect("BTC-USDT live again");
        let served = sim.depth_snapshots_served();
        let (served_at, sym) = served[served_before..]
            .iter()
            .rev()
            .find(|(_, s)| s == "BTCUSDT")
            .expect("a BTCUSDT snapshot was served for the resync")
            .clone();
        assert_eq!(sym, "BTCUSDT");
        let after = live_at.saturating_duration_since(served_at);
        println!(
            "round {round}: live {:.1} ms after the snapshot was served",
            after.as_secs_f64() * 1e3
        );
        assert!(
            after < Duration::from_secs(2),
            "round {round}: live {after:?} after the snapshot"
        );
        assert_eq!(resyncs(btc.id()), round, "one resync per gap");
    }
    assert_eq!(resyncs(eth.id()), eth_before, "ETH-USDT never resynced");
    // Deltas kept streaming, flagged while syncing.
    let mut flagged = 0;
    while let Ok(d) = deltas.try_recv() {
        if d.quality == Quality::Syncing {
            flagged += 1;
        }
    }
    assert!(flagged >= 1, "no delta was flagged syncing");
    let counts = engine.shutdown().unwrap();
    // Conservation after a run with faults: every ingested event is accounted for.
    for t in meltica::engine::EngineCounts::INGESTED_TYPES {
        assert_eq!(counts.unaccounted(t), 0, "{t}: {counts:?}");
    }
}

/// Slow snapshots do not queue behind each other: with every snapshot taking a second,
/// eight books are fetched `concurrency` at a time, never more, and all go live.
#[test]
fn slow_snapshots_are_fetched_side_by_side_within_the_configured_concurrency() {
    use meltica::config::RouteConfig;
    use meltica::simulator::{FaultConfig, Simulator, SimulatorConfig};

    let bases: Vec<String> = (0..8).map(|i| format!("S{}", (b'A' + i) as char)).collect();
    let sim = Simulator::start(SimulatorConfig {
        symbols: support::usdt_symbols(&bases),
        updates_per_sec: 10,
        trades_per_step: 0.0,
        ..SimulatorConfig::default()
    })
    .unwrap();
    sim.faults().set(&FaultConfig {
        slow_snapshot_rate: 1.0,
        slow_snapshot_delay: Duration::from_secs(1),
        ..FaultConfig::none()
    });
    let mut cfg = support::config_for(&sim);
    cfg.instruments = bases.iter().map(|b| format!("{b}-USDT")).collect();
    cfg.adapter.binance.snapshot.concurrency = 4;
    cfg.dispatcher.routes = vec![RouteConfig::for_type(EventType::AnalyticsFused)];
    let engine = Engine::start(cfg).unwrap();
    let t0 = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(30), || engine
            .instruments()
            .iter()
            .all(|i| engine.book_status(i) == Quality::Live)),
        "books never went live"
    );
    let peak = sim.peak_concurrent_snapshots();
    println!(
        "8 books, every snapshot 1 s late: live after {:?}, at most {peak} snapshots at once",
        t0.elapsed()
    );
    assert!((2..=4).contains(&peak), "peak concurrent snapshots {peak}");
    engine.shutdown().unwrap();
}
