//! Measures the per-event cost of the tracing hooks on the hot path: the sampling decision
//! with telemetry off (what every event pays), and with telemetry on at 1% sampling
//! including the spans recorded for the sampled events, beside an empty loop.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meltica::schema::TraceId;
use meltica::telemetry::pipeline::Tracing;
use meltica::telemetry::{Telemetry, TelemetrySettings};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("telemetry/per_event");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut rng = fastrand::Rng::with_seed(1);
    g.bench_function("baseline_empty", |b| b.iter(|| black_box(rng.u8(..))));
    let off = Tracing::off();
    g.bench_function("disabled", |b| {
        b.iter(|| {
            if off.sample(&mut rng) {
                let now = std::time::SystemTime::now();
                black_box(off.span(&mut rng, "adapter.receive", TraceId::NONE, 0, now, now, &[]));
            }
        })
    });
    // Enabled, exporting to a port nobody listens on: recording never blocks on export.
    let t = Telemetry::init(&TelemetrySettings {
        endpoint: Some("http://127.0.0.1:9".into()),
        service_name: "bench".into(),
        disabled: false,
        batch_delay: Duration::from_secs(1),
        metric_interval: Duration::from_secs(60),
    })
    .unwrap();
    let on = Tracing::new(t.clone(), 0.01);
    g.bench_function("enabled_1pct", |b| {
        b.iter(|| {
            if on.sample(&mut rng) {
                let now = std::time::SystemTime::now();
                let trace = on.new_trace(&mut rng);
                black_box(on.span(&mut rng, "adapter.receive", trace, 0, now, now, &[]));
            }
        })
    });
    g.finish();
    drop(on);
    std::thread::spawn(move || t.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
