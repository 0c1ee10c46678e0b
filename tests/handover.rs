//! Planned hand-overs: before Binance's 24 h cut (shortened here) and on a `serverShutdown`
//! notice, the engine opens a new connection, overlaps, de-duplicates and closes the old
//! one, so no diff or trade is lost or repeated and no book resyncs.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meltica::bus::{SubscribeOptions, Subscription, SubscriptionFilter};
use meltica::config::BackpressurePolicy;
use meltica::engine::Engine;
use meltica::schema::{EventType, Payload, Quality};
use meltica::simulator::{FaultConfig, Simulator, SimulatorConfig};

fn simulator(faults: FaultConfig) -> Simulator {
    Simulator::start(SimulatorConfig {
        updates_per_sec: 50,
        trades_per_step: 1.0,
        faults,
        ..SimulatorConfig::default()
    })
    .unwrap()
}

/// What the subscriber saw, checked for continuity per instrument.
#[derive(Default)]
struct Continuity {
    last_diff: HashMap<String, u64>,
    last_trade: HashMap<String, u64>,
    diffs: u64,
    trades: u64,
    problems: Vec<String>,
}

impl Continuity {
    fn drain(&mut self, sub: &Subscription) {
        while let Ok(e) = sub.try_recv() {
            let i = e.instrument_name().to_owned();
            match &e.payload {
                Payload::Delta(d) => {
                    self.diffs += 1;
                    if let Some(prev) = self.last_diff.insert(i.clone(), d.final_update_id)
                        && d.first_update_id != prev + 1
                    {
                        self.problems.push(format!(
                            "{i}: diff {}..{} after {prev}",
                            d.first_update_id, d.final_update_id
                        ));
                    }
                }
                Payload::Trade(t) => {
                    self.trades += 1;
                    if let Some(prev) = self.last_trade.insert(i.clone(), t.trade_id)
                        && t.trade_id != prev + 1
                    {
                        self.problems
                            .push(format!("{i}: trade {} after {prev}", t.trade_id));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Runs the engine against `sim` for `secs` and checks that nothing was lost or repeated.
fn run(sim: &Simulator, client_age: Duration, secs: u64, want_handovers: u64) {
    let mut cfg = support::config_for(sim);
    cfg.adapter.binance.max_connection_age = client_age;
    cfg.dispatcher.routes = [
        EventType::Trade,
        EventType::OrderbookDelta,
        EventType::AnalyticsFused,
    ]
    .iter()
    .map(|t| meltica::config::RouteConfig::for_type(*t))
    .collect();
    let builder = Engine::builder(cfg);
    let sub = builder.subscribe(
        SubscriptionFilter::types(&[EventType::Trade, EventType::OrderbookDelta]),
        SubscribeOptions::new("check", 1 << 20, BackpressurePolicy::Block),
    );
    let engine = builder.start().unwrap();
    let live = |e: &Engine| {
        e.instruments()
            .iter()
            .all(|i| e.book_status(i) == Quality::Live)
    };
    assert!(support::wait_until(Duration::from_secs(20), || live(
        &engine
    )));
    let resyncs_before = engine.counts().resyncs;
    let mut seen = Continuity::default();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        seen.drain(&sub);
        assert!(live(&engine), "a book left live during hand-overs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = engine.counts();
    let counts_end = engine.shutdown().unwrap();
    seen.drain(&sub);
    println!(
        "{} diffs and {} trades over {secs} s; hand-overs {}, reconnects {}, overlap duplicates dropped {}, resyncs {}",
        seen.diffs,
        seen.trades,
        counts.adapter.handovers,
        counts.adapter.reconnects,
        counts.adapter.overlap_duplicates,
        counts_end.resyncs - resyncs_before
    );
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    assert!(
        counts.adapter.handovers >= want_handovers,
        "hand-overs: {}",
        counts.adapter.handovers
    );
    assert_eq!(
        counts.adapter.reconnects, 0,
        "a hand-over fell back to reconnecting"
    );
    assert_eq!(counts_end.resyncs, resyncs_before, "a book resynced");
    assert!(seen.diffs > 500 && seen.trades > 500);
}

#[test]
fn the_24h_cut_shortened_loses_no_diff_and_causes_no_resync() {
    // The exchange cuts at 3 s (after a notice and a second of grace); the engine hands
    // over at 2 s, before the cut, on its own schedule.
    let sim = simulator(FaultConfig {
        max_connection_age: Some(Duration::from_secs(3)),
        ..FaultConfig::default()
    });
    run(&sim, Duration::from_secs(2), 9, 3);
    assert_eq!(
        sim.faults().stats().aged,
        0,
        "the exchange had to cut a connection"
    );
}

#[test]
fn a_server_shutdown_notice_is_handed_over_without_loss() {
    // The engine would keep its connections for a day; the exchange announces shutdowns.
    let sim = simulator(FaultConfig {
        max_connection_age: Some(Duration::from_secs(2)),
        shutdown_grace: Duration::from_secs(1),
        ..FaultConfig::default()
    });
    run(&sim, Duration::from_secs(86_400), 9, 2);
    assert!(sim.faults().stats().aged >= 2);
}
