//! Measures `MemoryDataBus::publish` of one `Arc<Event>` to 1, 4 and 16 matching `block`
//! subscribers, beside sending the same `Arc` on 1, 4 and 16 plain crossbeam channels.
//! Queues are drained between timed batches, so only the publish side is measured.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::bounded;
use meltica::bus::{DataBus, MemoryDataBus, SubscribeOptions, SubscriptionFilter};
use meltica::config::BackpressurePolicy;
use meltica::schema::{BookTop, Event, EventType, Instrument, Payload, Quality, TraceId};

const BATCH: u64 = 4096;

fn event() -> Arc<Event> {
    Arc::new(Event {
        event_type: EventType::OrderbookTop,
        source: "bench",
        ts_ms: 0,
        instrument: Instrument::from_name(0, "BTC-USDT"),
        seq: 1,
        payload: Payload::Top(BookTop::default()),
        ingress_ns: 0,
        latency_ns: 0,
        trace_id: TraceId::NONE,
        span_id: 0,
        quality: Quality::Live,
    })
}

/// Times `iters` calls of `publish` in batches of `BATCH`, draining between batches with
/// `drain` (not timed).
fn timed_batches(iters: u64, mut publish: impl FnMut(), mut drain: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(BATCH);
        let t = Instant::now();
        for _ in 0..k {
            publish();
        }
        total += t.elapsed();
        drain();
        left -= k;
    }
    total
}

fn bench(c: &mut Criterion) {
    let ev = event();
    let mut g = c.benchmark_group("bus/publish");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [1usize, 4, 16] {
        g.throughput(Throughput::Elements(1));
        let bus = MemoryDataBus::new();
        let subs: Vec<_> = (0..n)
            .map(|_| {
                bus.subscribe(
                    SubscriptionFilter::all(),
                    SubscribeOptions::new("bench", BATCH as usize, BackpressurePolicy::Block),
                )
            })
            .collect();
        g.bench_function(format!("meltica/{n}_subscribers"), |b| {
            b.iter_custom(|iters| {
                timed_batches(
                    iters,
                    || bus.publish(ev.clone()),
                    || {
                        for s in &subs {
                            while s.try_recv().is_ok() {}
                        }
                    },
                )
            })
        });
        let chans: Vec<_> = (0..n)
            .map(|_| bounded::<Arc<Event>>(BATCH as usize))
            .collect();
        g.bench_function(format!("crossbeam_channels/{n}"), |b| {
            b.iter_custom(|iters| {
                timed_batches(
                    iters,
                    || {
                        for (tx, _) in &chans {
                            tx.send(black_box(ev.clone())).unwrap();
                        }
                    },
                    || {
                        for (_, rx) in &chans {
                            while rx.try_recv().is_ok() {}
                        }
                    },
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
