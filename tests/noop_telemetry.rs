//! A disabled or endpoint-less Telemetry starts no thread and ignores all use.
//!
//! Kept as the only test of its binary so that no concurrently running test
//! changes the process's thread count while it is measured.

mod telemetry_support;

use std::time::{Duration, SystemTime};

use meltica::telemetry::{SpanRecord, Telemetry, TelemetrySettings, new_span_id, new_trace_id};
use opentelemetry::KeyValue;
use telemetry_support::{otel_thread_count, thread_count};

fn exercise(telemetry: &Telemetry) {
    assert!(!telemetry.is_enabled());
    let mut rng = fastrand::Rng::with_seed(1);
    let now = SystemTime::now();
    telemetry.record_span(SpanRecord {
        name: "noop",
        trace_id: new_trace_id(&mut rng),
        span_id: new_span_id(&mut rng),
        parent_span_id: Some(new_span_id(&mut rng)),
        start: now,
        end: now + Duration::from_micros(5),
        attributes: &[KeyValue::new("k", "v")],
    });
    let meter = telemetry.meter();
    let counter = meter.u64_counter("meltica.noop.count").build();
    counter.add(1, &[]);
    let histogram = meter.f64_histogram("meltica.noop.latency").build();
    histogram.record(1.0, &[]);
    let _observable = meter
        .u64_observable_gauge("meltica.noop.gauge")
        .with_callback(|o| o.observe(1, &[]))
        .build();
    assert_eq!(telemetry.export_failures(), 0);
    telemetry.clone().shutdown();
    telemetry.try_shutdown().expect("noop shutdown");
}

#[test]
fn disabled_or_endpointless_telemetry_spawns_no_threads() {
    let before = thread_count();
    let otel_before = otel_thread_count();

    let disabled = Telemetry::init(&TelemetrySettings {
        endpoint: Some("http://127.0.0.1:4318".into()),
        service_name: "meltica-test".into(),
        disabled: true,
        batch_delay: Duration::from_millis(100),
        metric_interval: Duration::from_millis(100),
    })
    .expect("init disabled");
    let no_endpoint = Telemetry::init(&TelemetrySettings {
        endpoint: None,
        ..TelemetrySettings::default()
    })
    .expect("init without endpoint");
    let noop = Telemetry::noop();

    for t in [&disabled, &no_endpoint, &noop] {
        exercise(t);
    }
    assert_eq!(thread_count(), before);
    assert_eq!(otel_thread_count(), otel_before);
}
