//! Killing the exchange mid-stream and starting it again: the engine reconnects with
//! backoff, resubscribes, resyncs its books and keeps running.

mod support;

use std::time::Duration;

use meltica::bus::{SubscribeOptions, SubscriptionFilter};
use meltica::config::BackpressurePolicy;
use meltica::engine::Engine;
use meltica::schema::{EventType, Quality};
use meltica::simulator::{Simulator, SimulatorConfig};

#[test]
fn reconnects_resubscribes_and_resyncs_after_the_exchange_restarts() {
    let sim = support::simulator(50);
    let addr = sim.addr();
    let cfg = support::config_for(&sim);
    let builder = Engine::builder(cfg);
    let fused = builder.subscribe(
        SubscriptionFilter::types(&[EventType::AnalyticsFused]),
        SubscribeOptions::new("test", 1 << 16, BackpressurePolicy::DropOldest),
    );
    let engine = builder.start().unwrap();
    let all_live = |e: &Engine| {
        e.instruments()
            .iter()
            .all(|i| e.book_status(i) == Quality::Live)
    };
    assert!(
        support::wait_until(Duration::from_secs(30), || all_live(&engine)),
        "books never went live"
    );

    sim.shutdown();
    assert!(
        support::wait_until(Duration::from_secs(20), || engine
            .counts()
            .adapter
            .reconnects
            >= 1),
        "no reconnect attempt"
    );
    // The exchange comes back on the same address.
    let sim = Simulator::start(SimulatorConfig {
        addr,
        updates_per_sec: 50,
        seed: 99,
        ..SimulatorConfig::default()
    })
    .expect("restart the simulator on the same port");
    assert!(
        support::wait_until(Duration::from_secs(30), || sim.subscription_count() >= 8),
        "engine did not resubscribe: {} subscriptions",
        sim.subscription_count()
    );
    while fused.try_recv().is_ok() {}
    assert!(
        support::wait_until(Duration::from_secs(30), || all_live(&engine)
            && engine.counts().resyncs >= 2),
        "books did not resync: {:?}",
        engine.counts()
    );
    // Fresh live books match the restarted exchange.
    let mut checked = 0;
    while checked < 5 {
        let ev = fused
            .recv_timeout(Duration::from_secs(10))
            .expect("fused books keep coming");
        let meltica::schema::Payload::Fused(f) = &ev.payload else {
            unreachable!()
        };
        if f.status != Quality::Live {
            continue;
        }
        let truth = sim
            .book_at(&ev.instrument_name().replace('-', ""), f.last_update_id)
            .unwrap();
        assert_eq!(
            f.bids,
            truth.bids.iter().take(20).copied().collect::<Vec<_>>()
        );
        checked += 1;
    }
    assert!(engine.failure().is_none());
    let counts = engine.shutdown().unwrap();
    for t in meltica::engine::EngineCounts::INGESTED_TYPES {
        assert_eq!(counts.unaccounted(t), 0, "{t}: {counts:?}");
    }
}
