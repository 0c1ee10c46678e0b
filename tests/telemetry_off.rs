//! With telemetry off (no endpoint), the engine runs no exporter threads. Alone in its own
//! test binary, because other tests start exporters in the same process.

mod support;
mod telemetry_support;

use std::time::Duration;

use meltica::engine::Engine;

#[test]
fn telemetry_off_runs_no_exporter_threads() {
    let sim = support::simulator(20);
    let cfg = support::config_for(&sim);
    assert!(cfg.telemetry.endpoint.is_none());
    let engine = Engine::start(cfg).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let names = telemetry_support::thread_names();
    assert!(
        !names.iter().any(|n| n.starts_with("OpenTelemetry")),
        "exporter threads with telemetry off: {names:?}"
    );
    engine.shutdown().unwrap();
}
