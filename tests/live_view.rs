//! The operator's live view of `meltica demo` on stderr: plain lines with no escape
//! sequences when stderr is a pipe (with and without `NO_COLOR`), and a table redrawn in
//! place on a terminal (a tmux pane; skipped where tmux is not installed).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MELTICA: &str = env!("CARGO_BIN_EXE_meltica");

fn demo(seconds: u32, no_color: bool) -> Output {
    let mut c = Command::new(MELTICA);
    c.args(["demo", "--duration", &format!("{seconds}s")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MELTICA_CONFIG")
        .env_remove("MELTICA_LOG")
        .env("MELTICA_CONTROL_ADDR", "127.0.0.1:0");
    if no_color {
        c.env("NO_COLOR", "1");
    } else {
        c.env_remove("NO_COLOR");
    }
    c.output().unwrap()
}

/// The instruments the demo announces: `meltica demo: simulator on ADDR (A, B, C)`.
fn announced(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("meltica demo: simulator on"))
        .unwrap_or_else(|| panic!("no demo banner:\n{text}"));
    let list = &line[line.find('(').unwrap() + 1..line.rfind(')').unwrap()];
    list.split(", ").map(str::to_owned).collect()
}

/// The value after `key` in a line of space-separated `key value` pairs.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let words: Vec<&str> = line.split(' ').collect();
    words.windows(2).find(|w| w[0] == key).map(|w| w[1])
}

/// `t=5s …` → 5.
fn uptime_of(line: &str) -> u64 {
    line.strip_prefix("t=")
        .and_then(|r| r.split_once("s "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no t=: {line}"))
}

fn check_plain(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !out.stderr.contains(&0x1b),
        "an escape sequence in plain output:\n{err}"
    );
    assert!(err.contains("best bid"), "no legend:\n{err}");
    let instruments = announced(&err);
    assert!(!instruments.is_empty());
    for inst in &instruments {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("t=") && l.split(' ').nth(1) == Some(inst.as_str()))
            .collect();
        assert!(!lines.is_empty(), "no line for {inst}:\n{err}");
        for l in &lines {
            for key in ["bid", "ask", "spread", "p50", "p99", "resyncs"] {
                assert!(field(l, key).is_some(), "no {key} in: {l}");
            }
        }
        // The report at five seconds of uptime: a live book with prices, trades flowing,
        // and latency measured over the period.
        let report = lines
            .iter()
            .find(|l| uptime_of(l) >= 5)
            .unwrap_or_else(|| panic!("no five-second report for {inst}:\n{err}"));
        assert!(report.contains(" live "), "{report}");
        let bid: f64 = field(report, "bid").unwrap().parse().unwrap();
        let ask: f64 = field(report, "ask").unwrap().parse().unwrap();
        assert!(0.0 < bid && bid < ask, "{report}");
        let trades: f64 = field(report, "trd/s").unwrap().parse().unwrap();
        assert!(trades > 0.0, "{report}");
        assert!(field(report, "p99").unwrap().ends_with('s'), "{report}");
    }
    let header = err
        .lines()
        .find(|l| l.starts_with("t=") && l.contains(" meltica connections "))
        .unwrap_or_else(|| panic!("no engine line:\n{err}"));
    for key in [
        "reconnects",
        "hand-overs",
        "events/s",
        "duplicate",
        "coalesced",
    ] {
        assert!(field(header, key).is_some(), "no {key} in: {header}");
    }
    // The summary at exit: every ingested type accounted for, the adapter, latency.
    let summary = &err[err
        .find("── summary ──")
        .unwrap_or_else(|| panic!("no summary:\n{err}"))..];
    let trade = summary
        .lines()
        .find(|l| l.starts_with("TRADE "))
        .unwrap_or_else(|| panic!("no TRADE row:\n{summary}"));
    let n: Vec<u64> = trade
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let (ingested, published, filtered, dropped, rejected) = (n[0], n[1], n[2], n[3], n[4]);
    assert!(ingested > 0, "{trade}");
    assert_eq!(
        ingested,
        published + filtered + dropped + rejected,
        "{trade}"
    );
    assert!(summary.contains("adapter  frames "), "{summary}");
    assert!(summary.contains("snapshots "), "{summary}");
    assert!(
        summary.contains("latency  ingress to publish over "),
        "{summary}"
    );
}

#[test]
fn plain_lines_when_stderr_is_not_a_terminal() {
    let (plain, no_color) = std::thread::scope(|s| {
        let plain = s.spawn(|| demo(6, false));
        let no_color = s.spawn(|| demo(6, true));
        (plain.join().unwrap(), no_color.join().unwrap())
    });
    check_plain(&plain);
    check_plain(&no_color);
}

/// A tmux server on its own socket, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn installed() -> bool {
        Command::new("which")
            .arg("tmux")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn new() -> Tmux {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Tmux {
            socket: format!("meltica-live-view-{}-{nanos}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A detached 160×40 session running `meltica demo` with stderr on the pane; `env` is
    /// `env(1)` options and assignments.
    fn start_demo(&self, session: &str, env: &str) {
        let cmd = format!(
            "env -u MELTICA_CONFIG -u MELTICA_LOG {env} MELTICA_CONTROL_ADDR=127.0.0.1:0 \
             '{MELTICA}' demo --duration 8s 2>&1; sleep 30"
        );
        self.run(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "40",
            "-s",
            session,
            "-c",
            env!("CARGO_MANIFEST_DIR"),
            &cmd,
        ]);
    }

    /// The pane's text; `escapes` keeps colour attributes.
    fn capture(&self, session: &str, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", session];
        if escapes {
            args.push("-e");
        }
        self.run(&args)
    }

    /// Captures until `ready` holds, for at most `limit`.
    fn wait_for(&self, session: &str, limit: Duration, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let pane = self.capture(session, false);
            if ready(&pane) {
                return pane;
            }
            assert!(
                start.elapsed() < limit,
                "pane {session} not ready after {limit:?}:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// `meltica  up 4s  …` → 4.
fn pane_uptime(pane: &str) -> u64 {
    let line = pane
        .lines()
        .find(|l| l.starts_with("meltica  up "))
        .unwrap_or_else(|| panic!("no header:\n{pane}"));
    line["meltica  up ".len()..]
        .split_once("s ")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no uptime: {line}"))
}

/// The table rows of `instruments`, each shown exactly once (redrawn, not appended).
fn rows<'a>(pane: &'a str, instruments: &[String]) -> Vec<&'a str> {
    assert_eq!(
        pane.matches("meltica  up ").count(),
        1,
        "the frame was appended, not redrawn:\n{pane}"
    );
    assert_eq!(pane.matches("best bid").count(), 1, "{pane}");
    instruments
        .iter()
        .map(|inst| {
            let found: Vec<&str> = pane
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(inst))
                .collect();
            assert_eq!(found.len(), 1, "{inst} rows:\n{pane}");
            found[0]
        })
        .collect()
}

fn all_live(pane: &str, instruments: &[String]) -> bool {
    pane.contains("best bid")
        && instruments.iter().all(|inst| {
            pane.lines().any(|l| {
                l.split_whitespace().next() == Some(inst)
                    && l.split_whitespace().any(|w| w == "live")
            })
        })
}

#[test]
fn table_redrawn_in_place_on_a_terminal() {
    if !Tmux::installed() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let tmux = Tmux::new();
    tmux.start_demo("colour", "-u NO_COLOR");
    tmux.start_demo("plain", "NO_COLOR=1");
    let first = tmux.wait_for("colour", Duration::from_secs(15), |p| {
        p.contains("meltica demo: simulator on")
    });
    let instruments = announced(&first);
    let first = tmux.wait_for("colour", Duration::from_secs(15), |p| {
        all_live(p, &instruments)
    });
    let up1 = pane_uptime(&first);
    rows(&first, &instruments);

    std::thread::sleep(Duration::from_secs(2));
    let second = tmux.capture("colour", false);
    let up2 = pane_uptime(&second);
    assert!(up2 > up1, "uptime {up1}s then {up2}s:\n{second}");
    for row in rows(&second, &instruments) {
        let w: Vec<&str> = row.split_whitespace().collect();
        assert!(w.contains(&"live"), "{row}");
        let (bid, ask): (f64, f64) = (w[1].parse().unwrap(), w[2].parse().unwrap());
        assert!(0.0 < bid && bid < ask, "{row}");
        assert!(w.contains(&"trd"), "{row}");
        assert!(
            w.iter().any(|x| x.ends_with("us") || x.ends_with("ms")),
            "{row}"
        );
    }
    // The frame alone (header, drops, heading, one row per instrument), for the README.
    let frame: Vec<&str> = second
        .lines()
        .skip_while(|l| !l.starts_with("meltica  up "))
        .take(3 + instruments.len())
        .map(str::trim_end)
        .collect();
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-view-capture.txt"),
        frame.join("\n") + "\n",
    );

    // Colour on the status only, and none under NO_COLOR.
    let coloured = tmux.capture("colour", true);
    assert!(coloured.contains("\x1b[32mlive"), "{coloured:?}");
    tmux.wait_for("plain", Duration::from_secs(15), |p| {
        all_live(p, &instruments)
    });
    let plain = tmux.capture("plain", true);
    assert!(
        !plain.contains("\x1b[3"),
        "colour despite NO_COLOR: {plain:?}"
    );
    rows(&tmux.capture("plain", false), &instruments);

    // At exit the summary follows the last frame.
    let done = tmux.wait_for("colour", Duration::from_secs(20), |p| {
        p.contains("latency  ingress to publish")
    });
    rows(&done, &instruments);
    assert!(done.find("best bid") < done.find("── summary ──"), "{done}");
}
