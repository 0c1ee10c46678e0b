//! Text of the status view: the terminal frame, the plain log lines and the exit summary.
//! Pure functions of the figures, so every shape is tested without a terminal.

use std::fmt::Write as _;
use std::time::Duration;

use super::latency::Latency;
use crate::engine::EngineCounts;
use crate::schema::{Decimal, EventType, Quality};

/// Engine-wide figures shown above the table.
#[derive(Debug, Clone, Default)]
pub(super) struct Header {
    pub uptime: Duration,
    pub connections: u64,
    pub reconnects: u64,
    pub handovers: u64,
    pub dispatch_version: u64,
    /// Published events per second, all instruments and types.
    pub events_per_sec: f64,
    /// Diffs not published because the book already had them.
    pub duplicate: u64,
    /// Fused states replaced within a throttle window.
    pub coalesced: u64,
    /// Events with no route in the dispatch table.
    pub rejected: u64,
    pub malformed: u64,
    /// Messages seen on both connections during a hand-over, kept once.
    pub overlap: u64,
    /// Latency samples the view's own queue lost (never an engine drop).
    pub view_evicted: u64,
}

/// One instrument's line.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub name: String,
    pub bid: Option<Decimal>,
    pub ask: Option<Decimal>,
    /// Published events per second, for the types this instrument has published.
    pub rates: Vec<(EventType, f64)>,
    pub latency: Option<Latency>,
    pub status: Quality,
    pub resyncs: u64,
}

/// Order of the per-type rates: trades, then the book, then the rest.
pub(super) const RATE_ORDER: [EventType; EventType::COUNT] = [
    EventType::Trade,
    EventType::OrderbookDelta,
    EventType::AnalyticsFused,
    EventType::OrderbookTop,
    EventType::Ticker,
    EventType::OrderbookSnapshot,
    EventType::ControlUpdate,
];

/// Three-letter name of a type in the compact rate column.
pub(super) const fn abbrev(t: EventType) -> &'static str {
    match t {
        EventType::Ticker => "tkr",
        EventType::Trade => "trd",
        EventType::OrderbookTop => "top",
        EventType::OrderbookSnapshot => "snp",
        EventType::OrderbookDelta => "dlt",
        EventType::AnalyticsFused => "fus",
        EventType::ControlUpdate => "ctl",
    }
}

const ESC: &str = "\x1b";
const RESET: &str = "\x1b[0m";

fn colour_of(q: Quality) -> &'static str {
    match q {
        Quality::Live => "\x1b[32m",
        Quality::Syncing => "\x1b[33m",
        Quality::Stale => "\x1b[31m",
    }
}

/// Whole seconds, rounded to the nearest.
pub(super) fn secs(d: Duration) -> u64 {
    (d + Duration::from_millis(500)).as_secs()
}

/// `12s`, `3m05s`, `2h03m05s`, `4d02h03m`.
pub(super) fn uptime(d: Duration) -> String {
    let s = secs(d);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
        _ => format!("{}d{:02}h{:02}m", s / 86_400, s / 3600 % 24, s / 60 % 60),
    }
}

/// `850ns`, `42us`, `1.25ms`, `3.40s`: three significant figures at most.
pub(super) fn duration_ns(ns: u64) -> String {
    let f = ns as f64;
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.0}us", f / 1e3),
        1_000_000..10_000_000 => format!("{:.2}ms", f / 1e6),
        10_000_000..1_000_000_000 => format!("{:.0}ms", f / 1e6),
        _ => format!("{:.2}s", f / 1e9),
    }
}

fn price(p: Option<Decimal>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

fn spread(r: &Row) -> String {
    match (r.bid, r.ask) {
        (Some(b), Some(a)) => Decimal::from_raw(a.raw() - b.raw()).to_string(),
        _ => "-".to_owned(),
    }
}

/// `trd 12 dlt 10 fus 9`, or `-` before anything was published.
pub(super) fn rates(r: &Row) -> String {
    if r.rates.is_empty() {
        return "-".to_owned();
    }
    let mut s = String::new();
    for (t, v) in &r.rates {
        if !s.is_empty() {
            s.push(' ');
        }
        let _ = write!(s, "{} {v:.0}", abbrev(*t));
    }
    s
}

fn percentiles(l: Option<Latency>) -> (String, String) {
    l.map_or_else(
        || ("-".to_owned(), "-".to_owned()),
        |l| (duration_ns(l.p50_ns), duration_ns(l.p99_ns)),
    )
}

fn drops(h: &Header) -> String {
    format!(
        "duplicate {}  coalesced {}  rejected {}  malformed {}  hand-over overlap {}  view {}",
        h.duplicate, h.coalesced, h.rejected, h.malformed, h.overlap, h.view_evicted
    )
}

/// The terminal frame, one string per line, without line ends. The rate column is at
/// least `rate_width` wide (and as wide as its longest cell). `colour` paints the book
/// status; nothing else carries escapes.
pub(super) fn table(h: &Header, rows: &[Row], rate_width: usize, colour: bool) -> Vec<String> {
    let cells: Vec<String> = rows.iter().map(rates).collect();
    let rw = cells
        .iter()
        .map(String::len)
        .chain([rate_width, "events/s".len()])
        .max()
        .unwrap_or(0);
    let mut lines = Vec::with_capacity(rows.len() + 3);
    lines.push(format!(
        "meltica  up {}  connections {}  reconnects {}  hand-overs {}  dispatch v{}  events/s {:.0}",
        uptime(h.uptime),
        h.connections,
        h.reconnects,
        h.handovers,
        h.dispatch_version,
        h.events_per_sec
    ));
    lines.push(format!("drops  {}", drops(h)));
    lines.push(format!(
        "{:<12} {:>13} {:>13} {:>9}  {:<rw$} {:>7} {:>7}  {:<7} {:>7}",
        "instrument", "best bid", "best ask", "spread", "events/s", "p50", "p99", "book", "resyncs"
    ));
    for (r, cell) in rows.iter().zip(cells) {
        let (p50, p99) = percentiles(r.latency);
        let status = format!("{:<7}", r.status.as_str());
        let status = if colour {
            format!("{}{status}{RESET}", colour_of(r.status))
        } else {
            status
        };
        lines.push(format!(
            "{:<12} {:>13} {:>13} {:>9}  {cell:<rw$} {:>7} {:>7}  {status} {:>7}",
            r.name,
            price(r.bid),
            price(r.ask),
            spread(r),
            p50,
            p99,
            r.resyncs
        ));
    }
    lines
}

/// Bytes that replace a frame of `previous` lines (already on screen, cursor below it)
/// with `lines`: up over the old frame, each line rewritten and cleared to its end, then
/// whatever the old frame had below the new one cleared.
pub(super) fn redraw(lines: &[String], previous: usize) -> String {
    let mut out = String::with_capacity(lines.iter().map(|l| l.len() + 4).sum::<usize>() + 16);
    if previous > 0 {
        let _ = write!(out, "{ESC}[{previous}A\r");
    }
    for l in lines {
        out.push_str(l);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// Printed once before the first plain lines: what the lines hold.
pub(super) fn legend(period: Duration) -> String {
    let mut types = String::new();
    for t in RATE_ORDER {
        if !types.is_empty() {
            types.push_str(", ");
        }
        let _ = write!(types, "{} {}", abbrev(t), t.as_str());
    }
    format!(
        "meltica status: every {}s and on each book status change, one line per instrument \
         with best bid, best ask, spread, book status, events/s by type ({types}), \
         ingress-to-publish latency p50/p99 of pass-through events, resyncs",
        period.as_secs()
    )
}

/// The engine-wide plain line.
pub(super) fn plain_header(h: &Header) -> String {
    format!(
        "t={}s meltica connections {} reconnects {} hand-overs {} dispatch v{} events/s {:.0} drops {}",
        secs(h.uptime),
        h.connections,
        h.reconnects,
        h.handovers,
        h.dispatch_version,
        h.events_per_sec,
        drops(h).replace("  ", " ")
    )
}

/// One instrument's plain line:
/// `t=12s BTC-USDT bid 50000.01 ask 50000.02 spread 0.01 live trd/s 12 dlt/s 10 p50 40us p99 80us resyncs 0`.
pub(super) fn plain_row(t: Duration, r: &Row) -> String {
    let mut s = format!(
        "t={}s {} bid {} ask {} spread {} {}",
        secs(t),
        r.name,
        price(r.bid),
        price(r.ask),
        spread(r),
        r.status.as_str()
    );
    for (t, v) in &r.rates {
        let _ = write!(s, " {}/s {v:.0}", abbrev(*t));
    }
    let (p50, p99) = percentiles(r.latency);
    let _ = write!(s, " p50 {p50} p99 {p99} resyncs {}", r.resyncs);
    s
}

/// The exit summary: per type, then the adapter, then latency over the run.
pub(super) fn summary(c: &EngineCounts, latency: Option<Latency>, view_evicted: u64) -> String {
    let mut out = String::from("── summary ──\n");
    let _ = writeln!(
        out,
        "{:<20} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8}",
        "type", "ingested", "published", "filtered", "coalesced", "dropped", "rejected"
    );
    for t in EventType::ALL {
        let i = t.index();
        if c.ingested[i] + c.published[i] + c.filtered[i] + c.rejected[i] == 0 {
            continue;
        }
        let coalesced = if t == EventType::AnalyticsFused {
            c.coalesced.to_string()
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8}",
            t.as_str(),
            c.ingested[i],
            c.published[i],
            c.filtered[i],
            coalesced,
            c.dropped[i],
            c.rejected[i]
        );
    }
    let a = &c.adapter;
    let _ = writeln!(
        out,
        "adapter  frames {}  instances {}  malformed {}  unknown type {}  unknown symbol {}",
        a.frames, a.instances, a.malformed, a.unknown_type, a.unknown_symbol
    );
    let _ = writeln!(
        out,
        "         connections {}  reconnects {}  hand-overs {}  hand-over overlap {}  snapshots {}  snapshot failures {}",
        a.connections,
        a.reconnects,
        a.handovers,
        a.overlap_duplicates,
        a.snapshots,
        a.snapshot_failures
    );
    let _ = writeln!(out, "books    resyncs {}", c.resyncs);
    match latency {
        Some(l) => {
            let _ = writeln!(
                out,
                "latency  ingress to publish over {} pass-through events: p50 {}  p99 {}  max {}{}",
                l.count,
                duration_ns(l.p50_ns),
                duration_ns(l.p99_ns),
                duration_ns(l.max_ns),
                if view_evicted > 0 {
                    format!("  ({view_evicted} samples lost by the view)")
                } else {
                    String::new()
                }
            );
        }
        None => out.push_str("latency  no pass-through events\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Quality) -> Row {
        Row {
            name: "BTC-USDT".into(),
            bid: Some(Decimal::parse("50000.01").unwrap()),
            ask: Some(Decimal::parse("50000.02").unwrap()),
            rates: vec![(EventType::Trade, 12.0), (EventType::OrderbookDelta, 10.4)],
            latency: Some(Latency {
                p50_ns: 41_700,
                p99_ns: 80_200,
                max_ns: 120_000,
                count: 22,
            }),
            status,
            resyncs: 1,
        }
    }

    #[test]
    fn plain_row_reads_as_one_log_line() {
        let line = plain_row(Duration::from_secs(12), &row(Quality::Live));
        assert_eq!(
            line,
            "t=12s BTC-USDT bid 50000.01 ask 50000.02 spread 0.01 live trd/s 12 dlt/s 10 p50 42us p99 80us resyncs 1"
        );
    }

    #[test]
    fn plain_row_before_the_first_book_shows_dashes() {
        let r = Row {
            bid: None,
            ask: None,
            rates: Vec::new(),
            latency: None,
            ..row(Quality::Syncing)
        };
        assert_eq!(
            plain_row(Duration::from_secs(1), &r),
            "t=1s BTC-USDT bid - ask - spread - syncing p50 - p99 - resyncs 1"
        );
    }

    #[test]
    fn table_colours_only_the_status_and_only_when_asked() {
        let rows = [
            row(Quality::Live),
            row(Quality::Syncing),
            row(Quality::Stale),
        ];
        let plain = table(&Header::default(), &rows, 0, false);
        assert!(plain.iter().all(|l| !l.contains(ESC)), "{plain:?}");
        let coloured = table(&Header::default(), &rows, 0, true);
        assert!(
            coloured[3].contains("\x1b[32mlive   \x1b[0m"),
            "{}",
            coloured[3]
        );
        assert!(coloured[4].contains("\x1b[33msyncing\x1b[0m"));
        assert!(coloured[5].contains("\x1b[31mstale  \x1b[0m"));
        assert!(coloured[..3].iter().all(|l| !l.contains(ESC)));
        // Colour does not move the columns after it.
        assert_eq!(
            coloured[3].replace("\x1b[32m", "").replace(RESET, ""),
            plain[3]
        );
    }

    #[test]
    fn table_columns_line_up_under_the_heading() {
        let lines = table(&Header::default(), &[row(Quality::Live)], 0, false);
        let (head, line) = (&lines[2], &lines[3]);
        let end = |s: &str, word: &str| s.find(word).unwrap() + word.len();
        assert_eq!(end(head, "best bid"), end(line, "50000.01"));
        assert_eq!(end(head, "best ask"), end(line, "50000.02"));
        assert_eq!(head.find("events/s"), line.find("trd 12 dlt 10"));
        assert_eq!(head.find("book"), line.find("live"));
        assert!(line.len() <= 120, "{} columns: {line}", line.len());
    }

    #[test]
    fn rate_column_fits_its_longest_cell_and_never_shrinks_below_the_minimum() {
        let wide = Row {
            rates: vec![
                (EventType::Trade, 1234.0),
                (EventType::OrderbookDelta, 20000.0),
                (EventType::AnalyticsFused, 10.0),
                (EventType::OrderbookTop, 20000.0),
                (EventType::Ticker, 1.0),
            ],
            ..row(Quality::Live)
        };
        let lines = table(&Header::default(), &[row(Quality::Live), wide], 0, false);
        assert_eq!(lines[3].find("42us"), lines[4].find("42us"));
        assert_eq!(
            lines[2].find("p50").map(|i| i + 3),
            lines[4].find("42us").map(|i| i + 4)
        );
        let roomy = table(&Header::default(), &[row(Quality::Live)], 50, false);
        assert_eq!(
            roomy[3].find("42us"),
            roomy[2].find("p50").map(|i| i + 3 - 4)
        );
        assert!(roomy[3].find("42us") > lines[3].find("42us"));
    }

    #[test]
    fn redraw_moves_up_over_the_previous_frame_and_clears_what_is_left() {
        let lines = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(redraw(&lines, 0), "a\x1b[K\nb\x1b[K\n\x1b[J");
        assert_eq!(redraw(&lines, 5), "\x1b[5A\ra\x1b[K\nb\x1b[K\n\x1b[J");
    }

    #[test]
    fn durations_keep_three_figures() {
        let cases = [
            (850, "850ns"),
            (41_700, "42us"),
            (999_400, "999us"),
            (1_254_000, "1.25ms"),
            (87_000_000, "87ms"),
            (3_400_000_000, "3.40s"),
        ];
        for (ns, want) in cases {
            assert_eq!(duration_ns(ns), want, "{ns} ns");
        }
        assert_eq!(uptime(Duration::from_secs(59)), "59s");
        assert_eq!(uptime(Duration::from_secs(185)), "3m05s");
        assert_eq!(uptime(Duration::from_secs(7385)), "2h03m05s");
        assert_eq!(uptime(Duration::from_secs(2 * 86_400 + 3720)), "2d01h02m");
    }

    #[test]
    fn summary_lists_every_counter_and_marks_coalesced_on_fused_only() {
        let mut c = EngineCounts::default();
        c.ingested[EventType::Trade.index()] = 10;
        c.published[EventType::Trade.index()] = 9;
        c.dropped[EventType::Trade.index()] = 1;
        c.published[EventType::AnalyticsFused.index()] = 5;
        c.coalesced = 7;
        c.adapter.handovers = 2;
        let s = summary(&c, None, 0);
        let trade = s.lines().find(|l| l.starts_with("TRADE")).unwrap();
        let fused = s
            .lines()
            .find(|l| l.starts_with("ANALYTICS.FUSED"))
            .unwrap();
        assert_eq!(
            trade.split_whitespace().collect::<Vec<_>>(),
            ["TRADE", "10", "9", "0", "-", "1", "0"]
        );
        assert_eq!(
            fused.split_whitespace().collect::<Vec<_>>(),
            ["ANALYTICS.FUSED", "0", "5", "0", "7", "0", "0"]
        );
        assert!(!s.contains("TICKER"));
        assert!(s.contains("hand-overs 2"));
        assert!(s.contains("latency  no pass-through events"));
    }
}
