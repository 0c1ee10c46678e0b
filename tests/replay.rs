//! Record a run against the simulator, then replay it: at max speed twice with identical
//! NDJSON, and at 1x in about the recorded time. The recording lasts `MELTICA_RECORD_SECS`
//! (default 8; CI runs the full 30).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_recording_replays_identically_and_at_its_own_pace() {
    let secs: u64 = std::env::var("MELTICA_RECORD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let sim = support::simulator(20);
    let dir = std::env::temp_dir().join(format!("meltica-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "instruments: [BTC-USDT, ETH-USDT]\nadapter:\n  binance:\n    ws_url: {}\n    rest_url: {}\n    snapshot: {{depth: 100}}\ncontrol: {{addr: ~}}\nlog: warn\n",
            sim.ws_url(),
            sim.rest_url()
        ),
    )
    .unwrap();
    let rec = dir.join("run.rec.gz");
    let out = support::meltica(&[
        "record",
        "--out",
        rec.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--duration",
        &format!("{secs}s"),
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("recorded"), "{err}");
    sim.shutdown();

    let replay = |speed: &str| {
        let t = Instant::now();
        let out = support::meltica(&[
            "replay",
            rec.to_str().unwrap(),
            "--speed",
            speed,
            "--emit",
            "ndjson",
        ])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.stdout, t.elapsed())
    };
    let (first, t_max) = replay("max");
    let (second, _) = replay("max");
    let text = String::from_utf8(first.clone()).unwrap();
    let lines = text.lines().count();
    for t in [
        "\"TRADE\"",
        "\"ORDERBOOK.DELTA\"",
        "\"ANALYTICS.FUSED\"",
        "\"live\"",
    ] {
        assert!(text.contains(t), "no {t} in the replay");
    }
    assert!(first == second, "two replays at max speed differ");
    let (_, t_1x) = replay("1x");
    println!(
        "recorded {secs} s; replay at max speed: {lines} events in {t_max:.2?}, byte-identical twice; at 1x: {t_1x:.2?}"
    );
    let expected = Duration::from_secs(secs);
    assert!(
        t_1x >= expected.mul_f64(0.8) && t_1x <= expected.mul_f64(1.3) + Duration::from_secs(1),
        "1x took {t_1x:?} for {expected:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
