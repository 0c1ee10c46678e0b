//! `meltica tail`: prints the events other meltica engines publish, from NATS (feature
//! `nats`) or from an engine's WebSocket endpoint, as NDJSON or as a table.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::validate::parse_duration;
use crate::schema::EventType;

// No line continuation here: it would eat the indentation of the first line.
pub const USAGE: &str =
    "  meltica tail [--nats nats://127.0.0.1:4222 | --url ws://HOST:PORT/events?type=TRADE]
               [--type TRADE,ANALYTICS.FUSED] [--instrument BTC-USDT,ETH-USDT]
               [--from first|new|seq:N] [--prefix meltica] [--token T]
               [--format ndjson|table] [--count N] [--duration 30s]";

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Nats(String),
    WebSocket(String),
}

/// Where a JetStream read starts; without one, only events published from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Live,
    First,
    New,
    Sequence(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailArgs {
    pub source: Source,
    pub types: Vec<EventType>,
    pub instruments: Vec<String>,
    pub from: Start,
    pub prefix: String,
    pub token: Option<String>,
    pub table: bool,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// Parses the arguments after `tail`.
pub fn parse(args: &[String]) -> Result<TailArgs, String> {
    let mut t = TailArgs {
        source: Source::Nats("nats://127.0.0.1:4222".into()),
        types: Vec::new(),
        instruments: Vec::new(),
        from: Start::Live,
        prefix: "meltica".into(),
        token: None,
        table: false,
        count: None,
        duration: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--nats" => t.source = Source::Nats(value()?),
            "--url" => {
                let u = value()?;
                if !(u.starts_with("ws://") || u.starts_with("wss://")) {
                    return Err(format!("--url {u:?} must start with ws:// or wss://"));
                }
                t.source = Source::WebSocket(u);
            }
            "--type" => {
                for s in value()?.split(',').filter(|s| !s.is_empty()) {
                    t.types.push(
                        EventType::parse(s).ok_or_else(|| format!("unknown event type {s:?}"))?,
                    );
                }
            }
            "--instrument" => t.instruments.extend(
                value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "--from" => {
                let v = value()?;
                t.from = match v.as_str() {
                    "first" => Start::First,
                    "new" => Start::New,
                    s => match s.strip_prefix("seq:").and_then(|n| n.parse().ok()) {
                        Some(n) => Start::Sequence(n),
                        None => return Err(format!("--from {v:?}: use first, new or seq:N")),
                    },
                };
            }
            "--prefix" => t.prefix = value()?,
            "--token" => t.token = Some(value()?),
            "--format" => {
                t.table = match value()?.as_str() {
                    "ndjson" => false,
                    "table" => true,
                    v => return Err(format!("--format {v:?}: use ndjson or table")),
                }
            }
            "--count" => {
                let v = value()?;
                t.count = Some(
                    v.parse()
                        .map_err(|_| format!("--count {v:?} is not a number"))?,
                );
            }
            "--duration" => {
                let v = value()?;
                t.duration = Some(
                    parse_duration(&v)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| format!("invalid --duration {v:?}; use e.g. 30s"))?,
                );
            }
            _ => return Err(format!("unknown argument {a:?} for \"tail\"")),
        }
    }
    if matches!(t.source, Source::WebSocket(_))
        && (!t.types.is_empty() || !t.instruments.is_empty() || t.from != Start::Live)
    {
        return Err(
            "with --url, put the filters in the URL (…/events?type=TRADE&instrument=BTC-USDT); --from is for NATS"
                .into(),
        );
    }
    Ok(t)
}

/// Events as they arrive, one JSON object each.
trait Feed {
    /// `Err(true)` once the source has ended, `Err(false)` on timeout.
    fn next(&mut self, timeout: Duration) -> Result<String, bool>;
    /// Why the source ended, if it failed.
    fn failure(&self) -> Option<String>;
}

#[cfg(feature = "nats")]
struct NatsFeed(crate::bus::nats::NatsTail);

#[cfg(feature = "nats")]
impl Feed for NatsFeed {
    fn next(&mut self, timeout: Duration) -> Result<String, bool> {
        self.0.recv_timeout(timeout)
    }
    fn failure(&self) -> Option<String> {
        self.0.error()
    }
}

fn open(t: &TailArgs) -> Result<Box<dyn Feed>, String> {
    match &t.source {
        #[cfg(feature = "nats")]
        Source::Nats(url) => {
            use crate::bus::nats::{NatsTail, TailStart};
            let start = match t.from {
                Start::Live => None,
                Start::First => Some(TailStart::First),
                Start::New => Some(TailStart::New),
                Start::Sequence(n) => Some(TailStart::Sequence(n)),
            };
            NatsTail::connect(url, &t.prefix, &t.types, &t.instruments, start)
                .map(|tail| Box::new(NatsFeed(tail)) as Box<dyn Feed>)
                .map_err(|e| e.to_string())
        }
        #[cfg(not(feature = "nats"))]
        Source::Nats(_) => Err(
            "reading from NATS needs meltica built with the `nats` feature; or pass --url ws://HOST:PORT/events"
                .into(),
        ),
        Source::WebSocket(url) => ws_feed(url, t.token.as_deref()),
    }
}

/// An engine's WebSocket endpoint. An engine that stops closes the connection: the feed
/// ends (a clean close) or fails (anything else).
struct WsFeed {
    client: crate::bus::ws::EventClient,
    ended: Option<crate::bus::ws::ClientError>,
}

impl Feed for WsFeed {
    fn next(&mut self, timeout: Duration) -> Result<String, bool> {
        if self.ended.is_some() {
            return Err(true);
        }
        match self.client.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(e) if e.is_timeout() => Err(false),
            Err(e) => {
                self.ended = Some(e);
                Err(true)
            }
        }
    }

    fn failure(&self) -> Option<String> {
        match &self.ended {
            Some(crate::bus::ws::ClientError::Closed {
                code: 1000 | 1001, ..
            })
            | None => None,
            Some(e) => Some(e.to_string()),
        }
    }
}

fn ws_feed(url: &str, token: Option<&str>) -> Result<Box<dyn Feed>, String> {
    crate::bus::ws::EventClient::connect(url, token)
        .map(|client| {
            Box::new(WsFeed {
                client,
                ended: None,
            }) as Box<dyn Feed>
        })
        .map_err(|e| e.to_string())
}

/// Runs the command.
pub fn main(args: &[String]) -> ExitCode {
    let t = match parse(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("meltica: {e}\n\nUSAGE:\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut feed = match open(&t) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("meltica: cannot tail: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = super::stop_flag();
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    if t.table {
        let _ = writeln!(out, "{}", table_header());
    }
    let mut printed = 0u64;
    loop {
        if stop.load(Ordering::Relaxed)
            || t.duration.is_some_and(|d| started.elapsed() >= d)
            || t.count.is_some_and(|n| printed >= n)
        {
            break;
        }
        match feed.next(Duration::from_millis(100)) {
            Ok(line) => {
                let written = if t.table {
                    writeln!(out, "{}", table_row(&line))
                } else {
                    writeln!(out, "{line}")
                };
                if written.is_err() {
                    // The reader went away (a closed pipe): nothing left to do.
                    return ExitCode::SUCCESS;
                }
                printed += 1;
            }
            Err(false) => {
                if out.flush().is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Err(true) => {
                let _ = out.flush();
                if let Some(e) = feed.failure() {
                    eprintln!("meltica: tail ended: {e}");
                    return ExitCode::from(1);
                }
                break;
            }
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

fn table_header() -> String {
    format!(
        "{:<24} {:<17} {:<10} {:>8}  {}",
        "ts", "type", "instrument", "seq", "summary"
    )
}

/// One event as a table row: its time, type, instrument, seq and the gist of its payload.
fn table_row(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return format!("(not an event) {line:.120}");
    };
    if let Some(n) = v.get("notice") {
        return format!(
            "notice: {n} {}",
            v.get("count").unwrap_or(&serde_json::Value::Null)
        );
    }
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let p = &v["payload"];
    let level = |side: &str| {
        p[side]
            .get(0)
            .map(|l| {
                format!(
                    "{}×{}",
                    l[1].as_str().unwrap_or(""),
                    l[0].as_str().unwrap_or("")
                )
            })
            .unwrap_or_else(|| "-".into())
    };
    let summary = match s("type") {
        "TRADE" => format!(
            "{} {} @ {}",
            p["side"].as_str().unwrap_or(""),
            p["quantity"].as_str().unwrap_or(""),
            p["price"].as_str().unwrap_or("")
        ),
        "ANALYTICS.FUSED" | "ORDERBOOK.SNAPSHOT" => format!(
            "{} bid {} ask {} (id {})",
            p["status"].as_str().unwrap_or(""),
            level("bids"),
            level("asks"),
            p["lastUpdateId"]
        ),
        "ORDERBOOK.DELTA" => format!(
            "{}..{} bids {} asks {}",
            p["firstUpdateId"],
            p["finalUpdateId"],
            p["bids"].as_array().map_or(0, Vec::len),
            p["asks"].as_array().map_or(0, Vec::len)
        ),
        "ORDERBOOK.TOP" => format!(
            "bid {}×{} ask {}×{}",
            p["bidQty"].as_str().unwrap_or(""),
            p["bidPrice"].as_str().unwrap_or(""),
            p["askQty"].as_str().unwrap_or(""),
            p["askPrice"].as_str().unwrap_or("")
        ),
        _ => format!("{:.80}", p.to_string()),
    };
    format!(
        "{:<24} {:<17} {:<10} {:>8}  {}",
        s("ts"),
        s("type"),
        s("instrument"),
        v["seq"],
        summary
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<TailArgs, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn arguments() {
        let t = p("--nats nats://h:1 --type TRADE,ANALYTICS.FUSED --instrument BTC-USDT --from seq:7 --format table --count 3").unwrap();
        assert_eq!(t.source, Source::Nats("nats://h:1".into()));
        assert_eq!(t.types, vec![EventType::Trade, EventType::AnalyticsFused]);
        assert_eq!(t.instruments, vec!["BTC-USDT".to_string()]);
        assert_eq!(t.from, Start::Sequence(7));
        assert!(t.table);
        assert_eq!(t.count, Some(3));
        assert!(p("--type NOPE").unwrap_err().contains("NOPE"));
        assert!(p("--url http://x").is_err());
        assert!(p("--url ws://h:1/events --type TRADE").is_err());
        assert!(p("--from later").is_err());
    }

    #[test]
    fn rows_summarise_payloads() {
        let trade = r#"{"type":"TRADE","ts":"2026-12-03T12:00:00.000Z","instrument":"BTC-USDT","seq":4,"payload":{"price":"50000.01","quantity":"0.5","side":"buy"}}"#;
        let row = table_row(trade);
        assert!(
            row.contains("TRADE") && row.contains("buy 0.5 @ 50000.01"),
            "{row}"
        );
        assert!(table_row("nope").starts_with("(not an event)"));
    }
}
