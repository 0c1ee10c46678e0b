//! The data bus: per-instrument order with many subscribers under load, and every
//! backpressure policy against a deliberately slow consumer, with counters that add up.

use std::sync::Arc;
use std::time::Duration;

use meltica::bus::{
    DataBus, Deduplicator, Delivery, DropReason, MemoryDataBus, SubscribeOptions, Subscription,
    SubscriptionFilter,
};
use meltica::config::BackpressurePolicy;
use meltica::schema::{
    BookTop, Event, EventType, Instrument, Payload, Quality, SharedEvent, TraceId,
};

fn instruments() -> Vec<Instrument> {
    ["BTC-USDT", "ETH-USDT", "SOL-USDT", "BNB-USDT"]
        .iter()
        .enumerate()
        .map(|(i, n)| Instrument::from_name(i as u32, n).unwrap())
        .collect()
}

fn event(inst: &Instrument, seq: u64) -> SharedEvent {
    Arc::new(Event {
        event_type: EventType::OrderbookTop,
        source: "test",
        ts_ms: 0,
        instrument: Some(inst.clone()),
        seq,
        payload: Payload::Top(BookTop {
            update_id: seq,
            ..BookTop::default()
        }),
        ingress_ns: 0,
        latency_ns: 0,
        trace_id: TraceId::NONE,
        span_id: 0,
        quality: Quality::Live,
    })
}

/// Publishes `per_instrument` events for each instrument, interleaved, then closes the bus.
fn publish_all(bus: &MemoryDataBus, insts: &[Instrument], per_instrument: u64) {
    for seq in 1..=per_instrument {
        for i in insts {
            bus.publish(event(i, seq));
        }
    }
    bus.close();
}

/// A consumer that sleeps every `every` events; returns what it received.
fn slow_consumer(
    sub: Subscription,
    every: u64,
) -> std::thread::JoinHandle<(Vec<SharedEvent>, Subscription)> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(e) = sub.recv() {
            got.push(e);
            if every > 0 && (got.len() as u64).is_multiple_of(every) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        (got, sub)
    })
}

#[test]
fn per_instrument_order_holds_for_eight_subscribers_under_load() {
    let bus = Arc::new(MemoryDataBus::new());
    let insts = instruments();
    let per = 25_000u64;
    let consumers: Vec<_> = (0..8)
        .map(|k| {
            let sub = bus.subscribe(
                SubscriptionFilter::all(),
                SubscribeOptions::new(&format!("c{k}"), 1024, BackpressurePolicy::Block),
            );
            std::thread::spawn(move || {
                let mut last = [0u64; 4];
                let mut n = 0u64;
                for e in sub.iter() {
                    let id = e.instrument.as_ref().unwrap().id() as usize;
                    assert_eq!(e.seq, last[id] + 1, "out of order for instrument {id}");
                    last[id] = e.seq;
                    n += 1;
                }
                (n, sub.stats().dropped())
            })
        })
        .collect();
    publish_all(&bus, &insts, per);
    for c in consumers {
        let (n, dropped) = c.join().unwrap();
        assert_eq!(n, per * 4, "a block subscriber loses nothing");
        assert_eq!(dropped, 0);
    }
}

fn run_policy(policy: BackpressurePolicy) -> (Vec<SharedEvent>, Subscription, u64) {
    let bus = MemoryDataBus::new();
    let insts = instruments();
    let sub = bus.subscribe(
        SubscriptionFilter::all(),
        SubscribeOptions::new("slow", 64, policy),
    );
    let h = slow_consumer(sub, 16);
    let per = 2_000u64;
    publish_all(&bus, &insts, per);
    let (got, sub) = h.join().unwrap();
    (got, sub, per * insts.len() as u64)
}

fn assert_accounts(got: &[SharedEvent], sub: &Subscription, published: u64) {
    let s = sub.stats();
    assert_eq!(s.offered(), published);
    assert_eq!(
        s.offered(),
        got.len() as u64 + s.dropped(),
        "published = received + dropped"
    );
    assert_eq!(s.delivered(), got.len() as u64);
}

fn assert_ordered(got: &[SharedEvent]) {
    let mut last = [0u64; 4];
    for e in got {
        let id = e.instrument.as_ref().unwrap().id() as usize;
        assert!(e.seq > last[id], "out of order");
        last[id] = e.seq;
    }
}

#[test]
fn block_is_lossless() {
    let (got, sub, published) = run_policy(BackpressurePolicy::Block);
    assert_eq!(got.len() as u64, published);
    assert_eq!(sub.stats().dropped(), 0);
    assert_accounts(&got, &sub, published);
}

#[test]
fn drop_newest_discards_what_does_not_fit() {
    let (got, sub, published) = run_policy(BackpressurePolicy::DropNewest);
    let s = sub.stats();
    assert!(
        s.dropped_for(DropReason::QueueFull) > 0,
        "the slow consumer should have fallen behind"
    );
    assert_eq!(s.dropped(), s.dropped_for(DropReason::QueueFull));
    assert_accounts(&got, &sub, published);
    assert_ordered(&got);
    assert_eq!(got[0].seq, 1, "the oldest are kept");
}

#[test]
fn drop_oldest_keeps_the_newest() {
    let (got, sub, published) = run_policy(BackpressurePolicy::DropOldest);
    let s = sub.stats();
    assert!(s.dropped_for(DropReason::Evicted) > 0);
    assert_eq!(s.dropped(), s.dropped_for(DropReason::Evicted));
    assert_accounts(&got, &sub, published);
    assert_ordered(&got);
    assert_eq!(
        got.last().unwrap().seq,
        2_000,
        "the newest event is always delivered"
    );
}

#[test]
fn conflate_keeps_the_latest_per_instrument() {
    let (got, sub, published) = run_policy(BackpressurePolicy::Conflate);
    let s = sub.stats();
    assert!(s.dropped_for(DropReason::Conflated) > 0);
    assert_eq!(s.dropped(), s.dropped_for(DropReason::Conflated));
    assert_accounts(&got, &sub, published);
    assert_ordered(&got);
    for i in 0..4u32 {
        let last = got
            .iter()
            .rev()
            .find(|e| e.instrument.as_ref().unwrap().id() == i)
            .unwrap();
        assert_eq!(
            last.seq, 2_000,
            "the latest state of instrument {i} is never lost"
        );
    }
}

#[test]
fn disconnect_cuts_the_slow_consumer_off_while_others_continue() {
    let bus = MemoryDataBus::new();
    let insts = instruments();
    let slow = bus.subscribe(
        SubscriptionFilter::all(),
        SubscribeOptions::new("slow", 64, BackpressurePolicy::Disconnect),
    );
    let steady = bus.subscribe(
        SubscriptionFilter::all(),
        SubscribeOptions::new("steady", 1 << 16, BackpressurePolicy::Block),
    );
    let slow_h = slow_consumer(slow, 16);
    publish_all(&bus, &insts, 2_000);
    let (got, slow) = slow_h.join().unwrap();
    let s = slow.stats();
    assert!(s.disconnect_reason().unwrap().contains("too slow"));
    assert!(s.dropped_for(DropReason::Disconnected) >= 1);
    assert!((got.len() as u64) < 8_000);
    assert_eq!(s.offered(), got.len() as u64 + s.dropped());
    assert_eq!(
        steady.iter().count(),
        8_000,
        "the other subscriber got everything"
    );
}

#[test]
fn a_lossy_consumer_is_told_what_it_missed() {
    let bus = MemoryDataBus::new();
    let insts = instruments();
    let sub = bus.subscribe(
        SubscriptionFilter::all(),
        SubscribeOptions::new("lossy", 10, BackpressurePolicy::DropNewest),
    );
    for seq in 1..=30 {
        bus.publish(event(&insts[0], seq));
    }
    match sub.next() {
        Some(Delivery::Missed { count }) => assert_eq!(count, 20),
        other => panic!("expected a missed-events notice, got {other:?}"),
    }
    assert!(matches!(sub.next(), Some(Delivery::Event(e)) if e.seq == 1));
    assert_eq!(sub.missed(), None);
}

#[test]
fn filters_select_by_type_and_instrument() {
    let bus = MemoryDataBus::new();
    let insts = instruments();
    let eth = bus.subscribe(
        SubscriptionFilter::types(&[EventType::OrderbookTop]).with_instruments(&["ETH-USDT"]),
        SubscribeOptions::default(),
    );
    let trades = bus.subscribe(
        SubscriptionFilter::types(&[EventType::Trade]),
        SubscribeOptions::default(),
    );
    publish_all(&bus, &insts, 10);
    assert_eq!(eth.iter().count(), 10);
    assert_eq!(trades.iter().count(), 0);
}

#[test]
fn deduplicator_drops_replays() {
    let insts = instruments();
    let mut d = Deduplicator::new();
    let seqs = [1, 2, 2, 3, 1, 4, 4];
    let fresh: Vec<u64> = seqs
        .iter()
        .map(|s| event(&insts[0], *s))
        .filter(|e| d.is_new(e))
        .map(|e| e.seq)
        .collect();
    assert_eq!(fresh, [1, 2, 3, 4]);
    assert_eq!(d.duplicates(), 3);
    assert!(d.is_new(&event(&insts[1], 1)), "keys are per instrument");
}
