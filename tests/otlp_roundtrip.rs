//! End-to-end export: spans and metrics posted over OTLP/HTTP protobuf to an
//! in-process receiver.

mod telemetry_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meltica::telemetry::{SpanRecord, Telemetry, TelemetrySettings};
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use telemetry_support::{OtlpReceiver, Received, otel_thread_count};

const TRACE_ID: [u8; 16] = *b"meltica-trace-01";
const ROOT: [u8; 8] = [0x10, 1, 2, 3, 4, 5, 6, 7];
const CHILD: [u8; 8] = [0x20, 1, 2, 3, 4, 5, 6, 7];
const GRANDCHILD: [u8; 8] = [0x30, 1, 2, 3, 4, 5, 6, 7];
const LATE: [u8; 8] = [0x40, 1, 2, 3, 4, 5, 6, 7];

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn all_spans(r: &Received) -> Vec<Span> {
    r.traces
        .iter()
        .flat_map(|req| &req.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| ss.spans.clone())
        .collect()
}

fn string_value(v: &Option<AnyValue>) -> Option<&str> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn resource_service_names(r: &Received) -> Vec<String> {
    let from_traces = r
        .traces
        .iter()
        .flat_map(|req| &req.resource_spans)
        .map(|rs| rs.resource.clone());
    let from_metrics = r
        .metrics
        .iter()
        .flat_map(|req| &req.resource_metrics)
        .map(|rm| rm.resource.clone());
    from_traces
        .chain(from_metrics)
        .map(|res| {
            res.expect("resource present")
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string_value(&kv.value).map(str::to_owned))
                .unwrap_or_default()
        })
        .collect()
}

/// The most recent export of the metric called `name` (metrics are cumulative).
fn last_metric(r: &Received, name: &str) -> Option<Metric> {
    r.metrics
        .iter()
        .flat_map(|req| &req.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .rfind(|m| m.name == name)
        .cloned()
}

/// Polls `cond` for up to 2 s.
fn wait_until(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn spans_and_metrics_reach_the_collector() {
    let receiver = OtlpReceiver::start();
    let otel_threads_before = otel_thread_count();
    let telemetry = Telemetry::init(&TelemetrySettings {
        endpoint: Some(format!("{}/", receiver.base_url)),
        service_name: "meltica-test".into(),
        disabled: false,
        batch_delay: Duration::from_millis(100),
        metric_interval: Duration::from_millis(100),
    })
    .expect("init telemetry");
    assert!(telemetry.is_enabled());
    // Threads name themselves once running, so poll.
    assert!(
        wait_until(|| otel_thread_count() == otel_threads_before + 2),
        "expected the span batch thread and the metric reader thread: {:?}",
        telemetry_support::thread_names()
    );

    // --- spans: root -> child -> grandchild, recorded from another clone.
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let ms = Duration::from_millis;
    let attrs = [
        KeyValue::new("symbol", "BTCUSDT"),
        KeyValue::new("seq", 42_i64),
    ];
    let recorder = telemetry.clone();
    std::thread::spawn(move || {
        // Recorded leaf-first, as pipeline stages finish in that order.
        recorder.record_span(SpanRecord {
            name: "decode",
            trace_id: TRACE_ID,
            span_id: GRANDCHILD,
            parent_span_id: Some(CHILD),
            start: t0 + ms(2),
            end: t0 + ms(5),
            attributes: &attrs,
        });
        recorder.record_span(SpanRecord {
            name: "book_update",
            trace_id: TRACE_ID,
            span_id: CHILD,
            parent_span_id: Some(ROOT),
            start: t0 + ms(1),
            end: t0 + ms(8),
            attributes: &[],
        });
        recorder.record_span(SpanRecord {
            name: "ws_message",
            trace_id: TRACE_ID,
            span_id: ROOT,
            parent_span_id: None,
            start: t0,
            end: t0 + ms(10),
            attributes: &[],
        });
        // Invalid ids: silently dropped.
        recorder.record_span(SpanRecord {
            name: "invalid",
            trace_id: [0; 16],
            span_id: [9; 8],
            parent_span_id: None,
            start: t0,
            end: t0,
            attributes: &[],
        });
        recorder.record_span(SpanRecord {
            name: "invalid",
            trace_id: TRACE_ID,
            span_id: [0; 8],
            parent_span_id: None,
            start: t0,
            end: t0,
            attributes: &[],
        });
    })
    .join()
    .unwrap();

    // --- metrics: observable counter with a callback, and a histogram.
    let meter = telemetry.meter();
    let events = Arc::new(AtomicU64::new(7));
    let _events_counter = {
        let events = Arc::clone(&events);
        meter
            .u64_observable_counter("meltica.test.events")
            .with_description("events seen")
            .with_callback(move |observer| {
                observer.observe(
                    events.load(Ordering::Relaxed),
                    &[KeyValue::new("stream", "depth")],
                )
            })
            .build()
    };
    let latency = meter
        .f64_histogram("meltica.test.latency")
        .with_unit("us")
        .build();
    latency.record(1.5, &[]);
    latency.record(2.5, &[]);

    // The batch timer (100 ms) and the periodic reader (100 ms) export
    // without any flush.
    assert!(
        receiver.wait_for(Duration::from_secs(5), |r| all_spans(r).len() >= 3),
        "spans not exported by the batch timer"
    );
    assert!(
        receiver.wait_for(Duration::from_secs(5), |r| {
            last_metric(r, "meltica.test.events").is_some()
                && last_metric(r, "meltica.test.latency").is_some()
        }),
        "metrics not exported by the periodic reader"
    );

    // Data recorded right before shutdown must be flushed by it.
    events.store(42, Ordering::Relaxed);
    latency.record(10.0, &[]);
    telemetry.record_span(SpanRecord {
        name: "late",
        trace_id: TRACE_ID,
        span_id: LATE,
        parent_span_id: Some(ROOT),
        start: t0 + ms(20),
        end: t0 + ms(30),
        attributes: &[],
    });
    telemetry.try_shutdown().expect("clean shutdown");
    // Idempotent, and recording afterwards is harmless.
    telemetry
        .try_shutdown()
        .expect("second shutdown is a no-op");
    telemetry.shutdown();
    telemetry.record_span(SpanRecord {
        name: "after_shutdown",
        trace_id: TRACE_ID,
        span_id: [0x50; 8],
        parent_span_id: None,
        start: t0,
        end: t0,
        attributes: &[],
    });
    latency.record(1000.0, &[]);
    assert_eq!(telemetry.export_failures(), 0);

    // Exporter threads are gone (the metric reader thread is not joined by
    // the SDK, so give it a moment to exit).
    assert!(
        wait_until(|| otel_thread_count() == otel_threads_before),
        "exporter threads still running: {:?}",
        telemetry_support::thread_names()
    );

    let received = receiver.stop();
    assert!(received.errors.is_empty(), "{:?}", received.errors);
    assert!(
        received
            .content_types
            .iter()
            .all(|ct| ct == "application/x-protobuf"),
        "{:?}",
        received.content_types
    );

    // --- spans
    let spans = all_spans(&received);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(spans.len(), 4, "{names:?}");
    let find = |id: [u8; 8]| {
        spans
            .iter()
            .find(|s| s.span_id == id)
            .unwrap_or_else(|| panic!("span {id:?} missing from {names:?}"))
    };
    let root = find(ROOT);
    let child = find(CHILD);
    let grandchild = find(GRANDCHILD);
    let late = find(LATE);
    for s in [root, child, grandchild, late] {
        assert_eq!(s.trace_id, TRACE_ID, "{}", s.name);
        assert_eq!(s.flags & 0xff, 0x01, "{}: sampled flag", s.name);
    }
    assert_eq!(root.name, "ws_message");
    assert!(root.parent_span_id.is_empty(), "root has no parent");
    assert_eq!(child.name, "book_update");
    assert_eq!(child.parent_span_id, ROOT);
    assert_eq!(grandchild.name, "decode");
    assert_eq!(grandchild.parent_span_id, CHILD);
    assert_eq!(late.parent_span_id, ROOT);

    assert_eq!(root.start_time_unix_nano, nanos(t0));
    assert_eq!(root.end_time_unix_nano, nanos(t0 + ms(10)));
    assert_eq!(grandchild.start_time_unix_nano, nanos(t0 + ms(2)));
    assert_eq!(grandchild.end_time_unix_nano, nanos(t0 + ms(5)));

    let attr = |key: &str| {
        grandchild
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        attr("symbol"),
        Some(any_value::Value::StringValue("BTCUSDT".into()))
    );
    assert_eq!(attr("seq"), Some(any_value::Value::IntValue(42)));

    let scope_names: Vec<&str> = received
        .traces
        .iter()
        .flat_map(|req| &req.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .filter_map(|ss| ss.scope.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert!(
        scope_names.iter().all(|n| *n == "meltica"),
        "{scope_names:?}"
    );

    // --- resource
    let services = resource_service_names(&received);
    assert!(!services.is_empty());
    assert!(services.iter().all(|s| s == "meltica-test"), "{services:?}");

    // --- metrics (last export = the one made by shutdown)
    let events_metric = last_metric(&received, "meltica.test.events").expect("events metric");
    assert_eq!(events_metric.description, "events seen");
    let Some(metric::Data::Sum(sum)) = events_metric.data else {
        panic!("events is not a sum: {:?}", events_metric.data)
    };
    assert!(sum.is_monotonic);
    assert_eq!(sum.data_points.len(), 1);
    let point = &sum.data_points[0];
    assert_eq!(point.value, Some(number_data_point::Value::AsInt(42)));
    assert_eq!(point.attributes.len(), 1);
    assert_eq!(point.attributes[0].key, "stream");
    assert_eq!(string_value(&point.attributes[0].value), Some("depth"));

    let latency_metric = last_metric(&received, "meltica.test.latency").expect("latency metric");
    assert_eq!(latency_metric.unit, "us");
    let Some(metric::Data::Histogram(hist)) = latency_metric.data else {
        panic!("latency is not a histogram: {:?}", latency_metric.data)
    };
    assert_eq!(hist.data_points.len(), 1);
    let point = &hist.data_points[0];
    assert_eq!(point.count, 3);
    assert_eq!(point.sum, Some(14.0));
    assert_eq!(point.min, Some(1.5));
    assert_eq!(point.max, Some(10.0));
}
