//! The binary as an operator uses it: `demo`, and `run --emit ndjson` against
//! `meltica simulate`, stopped by SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

/// The binary with its control API on a free port, so tests never fight over 7070.
fn meltica() -> Command {
    let mut c = support::meltica(&[]);
    c.env("MELTICA_CONTROL_ADDR", "127.0.0.1:0");
    c
}

#[test]
fn demo_runs_for_its_duration_and_exits_zero() {
    let out = meltica()
        .args(["demo", "--duration", "4s"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("BTC-USDT"), "{err}");
    assert!(err.contains("best bid"), "{err}");
    assert!(
        err.contains(" live"),
        "no live book in the status view:\n{err}"
    );
}

#[test]
fn run_emits_ndjson_against_simulate_and_stops_on_sigterm() {
    let mut sim = meltica()
        .args(["simulate", "--addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stderr.take().unwrap()).lines();
    let (mut ws, mut rest) = (String::new(), String::new());
    while ws.is_empty() || rest.is_empty() {
        let line = lines.next().expect("simulator prints its URLs").unwrap();
        if let Some(v) = line.trim().strip_prefix("BINANCE_WS_PUBLIC_URL=") {
            ws = v.to_owned();
        }
        if let Some(v) = line.trim().strip_prefix("BINANCE_REST_URL=") {
            rest = v.to_owned();
        }
    }
    let mut run = meltica()
        .args([
            "run",
            "--emit",
            "ndjson",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .env("BINANCE_WS_PUBLIC_URL", &ws)
        .env("BINANCE_REST_URL", &rest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = run.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        stdout.read_to_end(&mut all).unwrap();
        all
    });
    // Let events flow, then ask it to stop.
    std::thread::sleep(Duration::from_secs(4));
    let status = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let code = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "run did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    let mut err = String::new();
    run.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(code, Some(0), "{err}");
    let _ = sim.kill();
    let _ = sim.wait();

    assert!(out.ends_with(b"\n"), "last line half-written");
    let text = String::from_utf8(out).unwrap();
    let mut types = std::collections::HashSet::new();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        types.insert(v["type"].as_str().unwrap().to_owned());
        n += 1;
    }
    assert!(n > 50, "only {n} events");
    for t in [
        "TRADE",
        "ORDERBOOK.DELTA",
        "ANALYTICS.FUSED",
        "ORDERBOOK.TOP",
    ] {
        assert!(types.contains(t), "no {t} in output: {types:?}");
    }
}

#[test]
fn an_unreachable_exchange_is_one_clear_error() {
    // Nothing listens on port 9 of loopback.
    let out = meltica()
        .args([
            "run",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .env("BINANCE_WS_PUBLIC_URL", "ws://127.0.0.1:9/stream")
        .env("BINANCE_REST_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("meltica: cannot start:"), "{err}");
    assert!(
        err.contains("hint: check that the exchange is reachable"),
        "{err}"
    );
}

#[test]
fn a_taken_control_port_is_reported_before_the_exchange_is_asked() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let t = Instant::now();
    let out = meltica()
        .args([
            "run",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .env("MELTICA_CONTROL_ADDR", &addr)
        // Unreachable: the port check must come first and fail fast.
        .env("BINANCE_REST_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot bind the control API to {addr}")),
        "{err}"
    );
    assert!(
        err.contains("hint: another process holds the control port"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_tls_failure_says_so() {
    // A plain HTTP server where https is expected.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in plain.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(
                &mut s,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    let out = meltica()
        .args([
            "run",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .env("BINANCE_REST_URL", format!("https://127.0.0.1:{port}"))
        .env(
            "BINANCE_WS_PUBLIC_URL",
            format!("wss://127.0.0.1:{port}/stream"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hint: the TLS handshake failed"), "{err}");
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("meltica-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "instruments: [BTC-USDT]\nbogus: 1\nbus: {backend: kafka}\n",
    )
    .unwrap();
    let out = meltica()
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 2, column 1: bogus: unknown key"),
        "{err}"
    );
    assert!(err.contains("unknown backend \"kafka\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tail_reads_trades_from_a_running_engine_over_websocket() {
    let mut demo = meltica()
        .args(["demo", "--duration", "20s"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("demo prints its events URL").unwrap();
        if let Some(rest) = line.strip_prefix("events: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining the demo's status view so it never blocks on stderr.
    std::thread::spawn(move || for _ in lines {});
    // A slow consumer that never reads: its queue drops, the engine does not wait.
    let slow = meltica()
        .args([
            "tail",
            "--url",
            &format!("{url}?type=TRADE,ORDERBOOK.DELTA&policy=drop_oldest&capacity=16"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = meltica()
        .args([
            "tail",
            "--url",
            &format!("{url}?type=TRADE"),
            "--count",
            "40",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let text = String::from_utf8(out.stdout).unwrap();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["type"], "TRADE");
        let seq = v["seq"].as_u64().unwrap();
        if let Some(prev) = last.insert(v["instrument"].as_str().unwrap().to_owned(), seq) {
            assert_eq!(seq, prev + 1, "out of order: {l}");
        }
    }
    assert_eq!(text.lines().count(), 40);
    let _ = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status();
    assert_eq!(demo.wait().unwrap().code(), Some(0));
    let mut slow = slow;
    let _ = slow.kill();
    let _ = slow.wait();
}
