//! Fifty instruments losing their connection at once: every book needs a REST snapshot
//! again, and together they ask for more request weight than one minute allows. The engine
//! spreads them over the budget instead of running into Binance's limit; the simulator
//! enforces the real per-minute limit and counts every 429.

mod support;

use std::time::{Duration, Instant};

use meltica::config::RouteConfig;
use meltica::engine::Engine;
use meltica::schema::{EventType, Quality};
use meltica::simulator::{Simulator, SimulatorConfig};

#[test]
fn fifty_instruments_reconnecting_at_once_stay_under_the_weight_limit() {
    let bases: Vec<String> = (0..50)
        .map(|i| format!("Q{}{}", (b'A' + i / 26) as char, (b'A' + i % 26) as char))
        .collect();
    let sim = Simulator::start(SimulatorConfig {
        symbols: support::usdt_symbols(&bases),
        updates_per_sec: 10,
        trades_per_step: 0.0,
        rest_weight_limit: Some(6000),
        ..SimulatorConfig::default()
    })
    .unwrap();
    let mut cfg = support::config_for(&sim);
    cfg.instruments = bases.iter().map(|b| format!("{b}-USDT")).collect();
    // Depth 1000 weighs 50: one full resync of 50 books is 2,500 of the 6,000 per minute.
    cfg.adapter.binance.snapshot.depth = 1000;
    cfg.dispatcher.routes = vec![RouteConfig::for_type(EventType::AnalyticsFused)];
    let engine = Engine::start(cfg).unwrap();
    let all_live = |e: &Engine| {
        e.instruments()
            .iter()
            .all(|i| e.book_status(i) == Quality::Live)
    };
    let t0 = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(30), || all_live(&engine)),
        "books never went live"
    );
    println!("50 books live after {:?}", t0.elapsed());
    // Two mass reconnects in the same minute: 7,500 weight asked for in all.
    for round in 0..2 {
        let before = sim.depth_snapshots_served().len();
        sim.drop_connections();
        assert!(
            support::wait_until(Duration::from_secs(10), || engine
                .counts()
                .adapter
                .reconnects
                > round),
            "no reconnect"
        );
        assert!(
            support::wait_until(Duration::from_secs(10), || sim
                .depth_snapshots_served()
                .len()
                > before),
            "no resync"
        );
    }
    let t1 = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(75), || all_live(&engine)),
        "books not live again"
    );
    let counts = engine.shutdown().unwrap();
    println!(
        "live again {:?} after the second mass reconnect; snapshots {}, peak weight per minute {} of 6000, 429s {}, 418s {}",
        t1.elapsed(),
        sim.depth_snapshots_served().len(),
        sim.rest_weight_peak_per_minute(),
        sim.rest_429_count(),
        sim.rest_418_count()
    );
    assert_eq!(sim.rest_429_count(), 0, "the engine ran into the limit");
    assert_eq!(sim.rest_418_count(), 0);
    assert!(sim.rest_weight_peak_per_minute() <= 6000);
    assert!(counts.resyncs >= 100, "resyncs: {}", counts.resyncs);
}
