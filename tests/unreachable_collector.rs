//! A collector that is down costs failed exports, never a panic or a hang.

use std::time::{Duration, Instant, SystemTime};

use meltica::telemetry::{SpanRecord, Telemetry, TelemetryError, TelemetrySettings};

#[test]
fn unreachable_collector_fails_exports_and_shuts_down() {
    // A local port nobody listens on: connections are refused at once.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let telemetry = Telemetry::init(&TelemetrySettings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        service_name: "meltica-test".into(),
        disabled: false,
        batch_delay: Duration::from_millis(50),
        metric_interval: Duration::from_millis(50),
    })
    .expect("init does not contact the collector");

    let now = SystemTime::now();
    telemetry.record_span(SpanRecord {
        name: "lost",
        trace_id: [1; 16],
        span_id: [2; 8],
        parent_span_id: None,
        start: now,
        end: now,
        attributes: &[],
    });
    let histogram = telemetry.meter().u64_histogram("meltica.test.lost").build();
    histogram.record(1, &[]);

    let started = Instant::now();
    let result = telemetry.try_shutdown();
    let took = started.elapsed();
    eprintln!(
        "shutdown: {result:?} in {took:?}, failures {}",
        telemetry.export_failures()
    );
    assert!(
        matches!(result, Err(TelemetryError::Shutdown(_))),
        "{result:?}"
    );
    // Each export makes 1 attempt + 3 retries with backoff (~1 s in total).
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert!(telemetry.export_failures() >= 2);
    telemetry.shutdown();
}
