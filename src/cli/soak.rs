//! `meltica soak`: the engine against the built-in simulator with every fault switched on,
//! for a long time, checking invariants while it runs and reporting them at the end.
//!
//! The simulator starts with [`FaultConfig::all`] (gaps, duplicates, reorders, malformed,
//! truncated and unknown frames, abrupt and planned disconnects, half-open connections,
//! stalls, a 20 s connection age, REST 429/418, slow and failed snapshots). The engine
//! routes `TRADE`, `ORDERBOOK.DELTA` and `ANALYTICS.FUSED` for every instrument, and a
//! checker thread reads all of them through a lossless (`block`) subscription:
//!
//! - every `live` fused book is compared with the simulator's book at the same update id
//!   ([`Simulator::book_at`]), top N levels per side; a difference is a mismatch;
//! - for every depth snapshot the simulator served, the time until the next `live` fused
//!   book of that instrument is measured ([`Simulator::depth_snapshots_served`]); a
//!   snapshot followed by another one for the same symbol before the book went live was
//!   not the one that made it live and is counted as superseded instead;
//! - every event's `latencyNs` goes into a histogram.
//!
//! Invariants (exit code 1 and a line naming each one that failed): no book mismatch, no
//! live book that cannot be checked, exact conservation (`unaccounted` is 0 for every
//! ingested type once the engine has drained), no 429 for exceeding the REST weight limit,
//! no instrument more than 2 s from a served snapshot to live, every instrument live at
//! least once, resident memory growing less than 10 % between the end of the warm-up (10 %
//! of the duration, at least 5 s) and the end, and no stage failure.
//!
//! The simulator runs in this process, so resident memory includes it; its book history
//! (the truth [`Simulator::book_at`] answers from) is sized to fill during the warm-up, and
//! its per-connection send queue to a few seconds of the soak's frames.

use std::collections::HashMap;
use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bus::{DropReason, SubscribeOptions, Subscription, SubscriptionFilter};
use crate::config::{BackpressurePolicy, Config, LogLevel, RouteConfig};
use crate::engine::{Engine, EngineCounts, EngineError};
use crate::schema::{EventType, Payload, Quality};
use crate::simulator::{FaultConfig, FaultStats, SimSymbol, Simulator, SimulatorConfig};

/// Longest a book may take from a served snapshot to `live`.
pub const LIVE_WITHIN: Duration = Duration::from_secs(2);
/// Largest accepted resident-memory growth over the run, in percent.
pub const MAX_RSS_GROWTH_PCT: f64 = 10.0;
/// How often a progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The event types the soak routes and checks.
pub const ROUTED: [EventType; 3] = [
    EventType::Trade,
    EventType::OrderbookDelta,
    EventType::AnalyticsFused,
];

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    /// Simulated instruments: BTC-USDT, ETH-USDT, SOL-USDT, then SIM4-USDT, SIM5-USDT, ….
    pub instruments: usize,
    /// Seeds the simulated market and its fault generators.
    pub seed: u64,
    /// Faults the simulator injects; [`FaultConfig::all`] unless `--no-faults`.
    pub faults: FaultConfig,
    /// Market steps per second per instrument (each one a depth diff).
    pub updates_per_sec: u32,
    /// Print a progress line to stderr every [`PROGRESS_EVERY`].
    pub progress: bool,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            duration: Duration::from_secs(3600),
            instruments: 3,
            seed: SimulatorConfig::default().seed,
            faults: FaultConfig::all(),
            updates_per_sec: SimulatorConfig::default().updates_per_sec,
            progress: true,
        }
    }
}

impl SoakOptions {
    /// The resident-memory baseline is taken after this long: 10 % of the run, at least
    /// 5 s, at most half the run.
    pub fn warm_up(&self) -> Duration {
        (self.duration / 10)
            .max(Duration::from_secs(5))
            .min(self.duration / 2)
    }
}

/// Why a soak could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("cannot start the simulator: {0}")]
    Simulator(#[source] std::io::Error),
    #[error("cannot start the engine: {0}")]
    Engine(#[source] EngineError),
}

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// Time from a served depth snapshot to the next `live` fused book of its instrument.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveAfterSnapshot {
    /// Snapshots followed by a live book.
    pub measured: u64,
    pub max: Duration,
    pub p99: Duration,
    /// Measured ones over [`LIVE_WITHIN`], plus snapshots served more than
    /// [`LIVE_WITHIN`] before the end that were never followed by a live book.
    pub over_limit: u64,
    /// Snapshots followed by another one for the same symbol before the book went live.
    pub superseded: u64,
    /// Snapshots served in the last [`LIVE_WITHIN`] of the run, not yet followed by a
    /// live book when the engine stopped.
    pub pending_at_end: u64,
}

/// Everything a soak observed. [`SoakReport::violations`] names each invariant that failed.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// How long the engine ran under faults (shorter than asked if a stage failed).
    pub duration: Duration,
    pub warm_up: Duration,
    pub instruments: Vec<String>,
    pub faults_on: bool,
    /// The engine's counters once it has drained.
    pub counts: EngineCounts,
    /// False when shutdown failed and `counts` were read before the pipeline drained.
    pub drained: bool,
    /// Events the checker received, by type index.
    pub received: [u64; EventType::COUNT],
    /// Drops on the checker's own subscription, by reason.
    pub checker_drops: [(DropReason, u64); 4],
    pub injected: FaultStats,
    /// Live fused books compared with the simulator.
    pub books_checked: u64,
    pub book_mismatches: u64,
    /// Live fused books whose update id the simulator does not know (not a step boundary,
    /// or evicted from its history).
    pub books_unverifiable: u64,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
    /// Live fused books checked per instrument, in `instruments` order.
    pub live_books: Vec<u64>,
    pub live_after_snapshot: LiveAfterSnapshot,
    /// Times an instrument went from live to syncing or stale and back (not an invariant:
    /// the clock starts at the fault, before the engine could ask for a snapshot).
    pub outages: u64,
    /// The longest of those, or of one still going on at the end.
    pub longest_outage: Duration,
    pub snapshots_served: u64,
    /// 429s for exceeding the REST weight limit (a client within its budget gets none).
    pub limit_429: u64,
    pub injected_429: u64,
    pub rest_418: u64,
    /// Requests sent inside an earlier 429's or 418's `Retry-After`.
    pub ignored_retry_after: u64,
    /// VmRSS in KiB after the warm-up and at the end.
    pub rss_start_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    /// Ingress → publish of `TRADE` and `ORDERBOOK.DELTA`.
    pub latency: LatencySummary,
    /// Ingress (of the last book input) → publish of `ANALYTICS.FUSED`, which includes the
    /// wait for the throttle window.
    pub fused_latency: LatencySummary,
    /// The stage failure the engine reported, if any.
    pub engine_failure: Option<String>,
}

impl SoakReport {
    /// Resident-memory growth from the end of the warm-up to the end, in percent.
    pub fn rss_growth_pct(&self) -> Option<f64> {
        match (self.rss_start_kib, self.rss_end_kib) {
            (Some(a), Some(b)) if a > 0 => Some((b as f64 - a as f64) * 100.0 / a as f64),
            _ => None,
        }
    }

    /// One line per invariant that does not hold; empty when the soak passed.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(f) = &self.engine_failure {
            v.push(format!("engine failed: {f}"));
        }
        if self.book_mismatches > 0 {
            v.push(format!(
                "book mismatch: {} of {} live fused books differ from the simulator (first: {})",
                self.book_mismatches,
                self.books_checked,
                self.first_mismatch.as_deref().unwrap_or("-")
            ));
        }
        if self.books_unverifiable > 0 {
            v.push(format!(
                "unverifiable books: {} live fused books carry an update id the simulator does not know",
                self.books_unverifiable
            ));
        }
        if !self.drained {
            v.push("conservation: the engine did not drain, counts are not final".into());
        }
        for t in EngineCounts::INGESTED_TYPES {
            let n = self.counts.unaccounted(t);
            if n != 0 {
                v.push(format!("conservation: {t} has {n} unaccounted events"));
            }
        }
        if self.ignored_retry_after > 0 {
            v.push(format!(
                "Retry-After ignored: {} requests reached the exchange inside a 429's or 418's Retry-After",
                self.ignored_retry_after
            ));
        }
        if self.limit_429 > 0 {
            v.push(format!(
                "REST weight limit exceeded: {} limit 429s",
                self.limit_429
            ));
        }
        let l = &self.live_after_snapshot;
        if l.over_limit > 0 {
            v.push(format!(
                "live after snapshot: {} over {:?} (max {})",
                l.over_limit,
                LIVE_WITHIN,
                ms(l.max)
            ));
        }
        for (name, n) in self.instruments.iter().zip(&self.live_books) {
            if *n == 0 {
                v.push(format!("{name} never published a live book"));
            }
        }
        match self.rss_growth_pct() {
            Some(g) if g >= MAX_RSS_GROWTH_PCT => v.push(format!(
                "RSS grew {g:.1} % (limit {MAX_RSS_GROWTH_PCT} %): {} → {} KiB",
                self.rss_start_kib.unwrap_or(0),
                self.rss_end_kib.unwrap_or(0)
            )),
            Some(_) => {}
            None => v.push("RSS could not be read from /proc/self/status".into()),
        }
        v
    }

    pub fn passed(&self) -> bool {
        self.violations().is_empty()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1e3)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(f, "── meltica soak report ──")?;
        writeln!(
            f,
            "duration            {:.1} s, {} instruments ({}), faults {}",
            self.duration.as_secs_f64(),
            self.instruments.len(),
            self.instruments.join(", "),
            if self.faults_on { "on" } else { "off" }
        )?;
        let per_type = |arr: &[u64; EventType::COUNT], types: &[EventType]| {
            types
                .iter()
                .map(|t| format!("{t} {}", arr[t.index()]))
                .collect::<Vec<_>>()
                .join("  ")
        };
        writeln!(
            f,
            "published           {}",
            per_type(&c.published, &EventType::ALL)
        )?;
        writeln!(
            f,
            "received (checker)  {}",
            per_type(&self.received, &ROUTED)
        )?;
        let dup: Vec<String> = EventType::ALL
            .iter()
            .filter(|t| c.dropped[t.index()] > 0)
            .map(|t| format!("{t} {}", c.dropped[t.index()]))
            .collect();
        writeln!(
            f,
            "dropped             duplicate: {}; checker subscription: {}",
            if dup.is_empty() {
                "0".to_owned()
            } else {
                dup.join("  ")
            },
            self.checker_drops
                .iter()
                .map(|(r, n)| format!("{} {n}", r.as_str()))
                .collect::<Vec<_>>()
                .join("  ")
        )?;
        writeln!(f, "coalesced           {}", c.coalesced)?;
        writeln!(
            f,
            "filtered            {}",
            per_type(&c.filtered, &EngineCounts::INGESTED_TYPES)
        )?;
        writeln!(
            f,
            "rejected            {}",
            per_type(&c.rejected, &EngineCounts::INGESTED_TYPES)
        )?;
        writeln!(
            f,
            "unaccounted         {}{}",
            EngineCounts::INGESTED_TYPES
                .iter()
                .map(|t| format!("{t} {}", c.unaccounted(*t)))
                .collect::<Vec<_>>()
                .join("  "),
            if self.drained { "" } else { " (not drained)" }
        )?;
        writeln!(
            f,
            "resyncs             {}\nconnections         reconnects {}  hand-overs {}  overlap duplicates dropped {}",
            c.resyncs, c.adapter.reconnects, c.adapter.handovers, c.adapter.overlap_duplicates
        )?;
        writeln!(
            f,
            "frames              {}  malformed {}  unknown type {}  unknown symbol {}",
            c.adapter.frames, c.adapter.malformed, c.adapter.unknown_type, c.adapter.unknown_symbol
        )?;
        writeln!(
            f,
            "snapshots           served {}  received {}  failed {}",
            self.snapshots_served, c.adapter.snapshots, c.adapter.snapshot_failures
        )?;
        writeln!(
            f,
            "injected faults     {} (total {})",
            self.injected,
            self.injected.total()
        )?;
        writeln!(
            f,
            "book check          {} live books checked, {} mismatches, {} unverifiable",
            self.books_checked, self.book_mismatches, self.books_unverifiable
        )?;
        let l = &self.live_after_snapshot;
        writeln!(
            f,
            "live after snapshot {} measured  max {}  p99 {}  over {}s {}  (superseded {}, pending at end {})",
            l.measured,
            ms(l.max),
            ms(l.p99),
            LIVE_WITHIN.as_secs(),
            l.over_limit,
            l.superseded,
            l.pending_at_end
        )?;
        writeln!(
            f,
            "not live            {} times back to live, longest {:.1} s (from the fault, not the snapshot)",
            self.outages,
            self.longest_outage.as_secs_f64()
        )?;
        writeln!(
            f,
            "REST                limit 429s {}  injected 429s {}  418s {}  requests inside Retry-After {}",
            self.limit_429, self.injected_429, self.rest_418, self.ignored_retry_after
        )?;
        writeln!(
            f,
            "RSS                 start {} (after {:.0} s warm-up)  end {}  growth {}",
            mib(self.rss_start_kib),
            self.warm_up.as_secs_f64(),
            mib(self.rss_end_kib),
            self.rss_growth_pct()
                .map_or("n/a".into(), |g| format!("{g:+.1} %"))
        )?;
        for (name, s) in [
            ("TRADE+DELTA", &self.latency),
            ("FUSED", &self.fused_latency),
        ] {
            writeln!(
                f,
                "latency {name:<12}p50 {}  p99 {}  p99.9 {}  max {}  (n={})",
                us(s.p50_ns),
                us(s.p99_ns),
                us(s.p999_ns),
                us(s.max_ns),
                s.count
            )?;
        }
        writeln!(
            f,
            "engine              {}",
            self.engine_failure.as_deref().unwrap_or("ran throughout")
        )?;
        let v = self.violations();
        if v.is_empty() {
            writeln!(f, "result              PASS")
        } else {
            writeln!(f, "result              FAIL")?;
            for line in v {
                writeln!(f, "  invariant failed: {line}")?;
            }
            Ok(())
        }
    }
}

/// `meltica soak`: runs, prints the report to stdout, exits 0 when every invariant holds.
pub fn main(opts: &SoakOptions) -> ExitCode {
    match run(opts) {
        Ok(report) => {
            print!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("meltica soak: {e}");
            ExitCode::from(1)
        }
    }
}

/// The simulated symbols: the simulator's default three, then `SIM4USDT`, `SIM5USDT`, ….
fn symbols(n: usize) -> Vec<SimSymbol> {
    let mut out = SimulatorConfig::default().symbols;
    out.truncate(n);
    for i in out.len()..n {
        let base = format!("SIM{}", i + 1);
        out.push(SimSymbol::new(
            &format!("{base}USDT"),
            &base,
            "USDT",
            "100",
            "0.01",
            "0.001",
        ));
    }
    out
}

/// VmRSS of this process in KiB.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the soak for `opts.duration` and reports what it saw.
pub fn run(opts: &SoakOptions) -> Result<SoakReport, SoakError> {
    let warm_up = opts.warm_up();
    let rate = opts.updates_per_sec.max(1);
    let sim_cfg = SimulatorConfig {
        symbols: symbols(opts.instruments.max(1)),
        updates_per_sec: rate,
        seed: opts.seed,
        // Enough truth to check any book the checker is handed (it keeps up within
        // milliseconds), and full before the memory baseline is taken.
        history: (u64::from(rate) * warm_up.as_secs().max(1)).clamp(100, 4096) as usize,
        // About four seconds of this soak's frames per connection (at least 2048). The
        // default (65,536 frames, a 2.6 MB queue allocated per connection) suits
        // benchmarks; here a connection is replaced every few seconds, and glibc keeps
        // each freed queue cached in the arena of the thread that freed it, one per arena,
        // which would swamp the engine's own memory in the RSS check.
        send_queue: (opts.instruments.max(1) * rate as usize * 2 * 4).clamp(2048, 65_536),
        faults: opts.faults.clone(),
        ..SimulatorConfig::default()
    };
    let sim = Simulator::start(sim_cfg).map_err(SoakError::Simulator)?;
    let instruments = sim.instruments();
    let syms: Vec<String> = sim.symbols().iter().map(|s| s.symbol.clone()).collect();

    let mut cfg = Config {
        instruments: instruments.clone(),
        ..Config::default()
    };
    cfg.adapter.binance.ws_url = sim.ws_url();
    cfg.adapter.binance.rest_url = sim.rest_url();
    // The simulator keeps 40 levels: a 100-level snapshot (weight 5) holds all of them.
    cfg.adapter.binance.snapshot.depth = 100;
    cfg.dispatcher.routes = ROUTED.iter().map(|t| RouteConfig::for_type(*t)).collect();
    cfg.control.addr = None;
    // Every fault is counted in the report; logs would only repeat them.
    cfg.log = std::env::var("MELTICA_LOG")
        .ok()
        .and_then(|l| LogLevel::parse(&l))
        .unwrap_or(LogLevel::Error);
    let depth = cfg.conductor.book_depth;

    let builder = Engine::builder(cfg);
    let sub = builder.subscribe(
        SubscriptionFilter::types(&ROUTED),
        SubscribeOptions::new("soak-checker", 1 << 16, BackpressurePolicy::Block),
    );
    let engine = builder.start().map_err(SoakError::Engine)?;
    let progress = Arc::new(Progress::default());
    let checker = Checker::new(&sim, &instruments, &syms, depth, progress.clone());

    let report = std::thread::scope(|scope| {
        let checking = std::thread::Builder::new()
            .name("meltica-soak-checker".into())
            .spawn_scoped(scope, move || checker.run(sub))
            .expect("spawn the soak checker");

        let failure = engine.failure_signal();
        let started = Instant::now();
        let end = started + opts.duration;
        let warm_at = started + warm_up;
        let mut next_progress = started + PROGRESS_EVERY;
        let mut rss_start = None;
        let mut last_published = 0u64;
        let mut stage_failed = false;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if rss_start.is_none() && now >= warm_at {
                rss_start = rss_kib();
            }
            if now >= next_progress {
                next_progress += PROGRESS_EVERY;
                if opts.progress {
                    last_published =
                        print_progress(&engine, &sim, &progress, started, opts, last_published);
                }
            }
            let mut wake = end.min(next_progress);
            if rss_start.is_none() {
                wake = wake.min(warm_at);
            }
            if failure
                .recv_timeout(wake.saturating_duration_since(now))
                .is_ok()
            {
                stage_failed = true;
                break;
            }
        }
        let ran = started.elapsed();
        let rss_end = rss_kib();
        let before = engine.counts();
        let mut engine_failure = engine.failure().map(|f| f.to_string());
        if stage_failed && engine_failure.is_none() {
            engine_failure = Some("the engine signalled a failure".into());
        }
        let (counts, drained) = match engine.shutdown() {
            Ok(c) => (c, true),
            Err(e) => {
                engine_failure.get_or_insert_with(|| e.to_string());
                (before, false)
            }
        };
        let checked = checking.join().expect("the soak checker does not panic");
        let live = checked.live_after(started + ran);
        SoakReport {
            duration: ran,
            warm_up,
            instruments: instruments.clone(),
            faults_on: opts.faults != FaultConfig::none(),
            counts,
            drained,
            received: checked.received,
            checker_drops: checked.drops,
            injected: sim.faults().stats(),
            books_checked: progress.checked.load(Relaxed),
            book_mismatches: progress.mismatches.load(Relaxed),
            books_unverifiable: progress.unverifiable.load(Relaxed),
            first_mismatch: checked.first_mismatch.clone(),
            live_books: checked.live_books.clone(),
            live_after_snapshot: live,
            outages: checked.outages,
            longest_outage: checked.longest_outage(started + ran),
            snapshots_served: checked.served_seen as u64,
            limit_429: sim.limit_429_count(),
            injected_429: sim.injected_429_count(),
            rest_418: sim.rest_418_count(),
            ignored_retry_after: sim.ignored_retry_after_count(),
            rss_start_kib: rss_start,
            rss_end_kib: rss_end,
            latency: LatencySummary::of(&checked.latency),
            fused_latency: LatencySummary::of(&checked.fused_latency),
            engine_failure,
        }
    });
    Ok(report)
}

/// Counters the checker shares with the progress line.
#[derive(Default)]
struct Progress {
    checked: AtomicU64,
    mismatches: AtomicU64,
    unverifiable: AtomicU64,
}

/// Prints one progress line; returns the published total for the next line's rate.
fn print_progress(
    engine: &Engine,
    sim: &Simulator,
    p: &Progress,
    started: Instant,
    opts: &SoakOptions,
    last_published: u64,
) -> u64 {
    let c = engine.counts();
    let published: u64 = c.published.iter().sum();
    let insts = engine.instruments();
    let live = insts
        .iter()
        .filter(|i| engine.book_status(i) == Quality::Live)
        .count();
    eprintln!(
        "soak {:>5}s/{}s  published {} ({:.0}/s)  live {}/{}  resyncs {}  reconnects {}  hand-overs {}  faults {}  checked {}  mismatches {}  rss {}",
        started.elapsed().as_secs(),
        opts.duration.as_secs(),
        published,
        (published - last_published.min(published)) as f64 / PROGRESS_EVERY.as_secs_f64(),
        live,
        insts.len(),
        c.resyncs,
        c.adapter.reconnects,
        c.adapter.handovers,
        sim.faults().stats().total(),
        p.checked.load(Relaxed),
        p.mismatches.load(Relaxed) + p.unverifiable.load(Relaxed),
        mib(rss_kib()),
    );
    published
}

/// The checker thread's state: compares live books with the truth, times snapshots to
/// live, and records latencies.
struct Checker<'a> {
    sim: &'a Simulator,
    depth: usize,
    /// Instrument name → index.
    index: HashMap<String, usize>,
    /// Exchange symbol → index.
    by_symbol: HashMap<String, usize>,
    symbols: Vec<String>,
    progress: Arc<Progress>,
    /// The latest served snapshot per instrument not yet followed by a live book.
    pending: Vec<Option<Instant>>,
    /// Whether the last fused book of each instrument was live.
    was_live: Vec<bool>,
    /// When each instrument stopped being live, while it is not.
    down_since: Vec<Option<Instant>>,
    outages: u64,
    longest_outage: Duration,
    served_seen: usize,
    last_served_poll: Instant,
    /// Microseconds from a served snapshot to live.
    to_live: Histogram<u64>,
    to_live_over: u64,
    superseded: u64,
    latency: Histogram<u64>,
    fused_latency: Histogram<u64>,
    received: [u64; EventType::COUNT],
    live_books: Vec<u64>,
    first_mismatch: Option<String>,
    drops: [(DropReason, u64); 4],
    /// `Instant` of the engine's monotonic clock origin, to date events.
    clock_origin: Instant,
}

fn histogram(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 3).expect("valid histogram bounds")
}

impl<'a> Checker<'a> {
    fn new(
        sim: &'a Simulator,
        instruments: &[String],
        symbols: &[String],
        depth: usize,
        progress: Arc<Progress>,
    ) -> Self {
        let n = instruments.len();
        let now_ns = crate::clock::mono_ns();
        Checker {
            sim,
            depth,
            index: instruments
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect(),
            by_symbol: symbols
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect(),
            symbols: symbols.to_vec(),
            progress,
            pending: vec![None; n],
            was_live: vec![false; n],
            down_since: vec![None; n],
            outages: 0,
            longest_outage: Duration::ZERO,
            served_seen: 0,
            last_served_poll: Instant::now(),
            to_live: histogram(3_600_000_000),
            to_live_over: 0,
            superseded: 0,
            latency: histogram(3_600_000_000_000),
            fused_latency: histogram(3_600_000_000_000),
            received: [0; EventType::COUNT],
            live_books: vec![0; n],
            first_mismatch: None,
            drops: [
                (DropReason::QueueFull, 0),
                (DropReason::Evicted, 0),
                (DropReason::Conflated, 0),
                (DropReason::Disconnected, 0),
            ],
            clock_origin: Instant::now() - Duration::from_nanos(now_ns),
        }
    }

    /// Reads until the bus closes (the engine shut down and the queue is drained).
    fn run(mut self, sub: Subscription) -> Self {
        loop {
            match sub.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => self.on_event(&ev),
                Err(true) => break,
                Err(false) => {}
            }
            if self.last_served_poll.elapsed() >= Duration::from_millis(100) {
                self.poll_served();
            }
        }
        self.poll_served();
        for d in &mut self.drops {
            d.1 = sub.stats().dropped_for(d.0);
        }
        self
    }

    /// Takes in the snapshots served since the last poll.
    fn poll_served(&mut self) {
        self.last_served_poll = Instant::now();
        let served = self.sim.depth_snapshots_served();
        for (at, sym) in served.iter().skip(self.served_seen) {
            if let Some(&i) = self.by_symbol.get(sym)
                && self.pending[i].replace(*at).is_some()
            {
                self.superseded += 1;
            }
        }
        self.served_seen = served.len();
    }

    fn on_event(&mut self, ev: &crate::schema::Event) {
        let received_at = Instant::now();
        self.received[ev.event_type.index()] += 1;
        let Payload::Fused(book) = &ev.payload else {
            self.latency.saturating_record(ev.latency_ns.max(1));
            return;
        };
        self.fused_latency.saturating_record(ev.latency_ns.max(1));
        let Some(&i) = self.index.get(ev.instrument_name()) else {
            return;
        };
        let live = book.status == Quality::Live;
        let became_live = live && !self.was_live[i];
        let went_down = !live && self.was_live[i];
        self.was_live[i] = live;
        let published_at = if ev.ingress_ns == 0 {
            received_at
        } else {
            (self.clock_origin + Duration::from_nanos(ev.ingress_ns + ev.latency_ns))
                .min(received_at)
        };
        if went_down {
            self.down_since[i] = Some(published_at);
        }
        if !live {
            return;
        }
        if became_live {
            // The snapshot that made it live may have been served since the last poll.
            self.poll_served();
            if let Some(since) = self.down_since[i].take() {
                self.outages += 1;
                self.longest_outage = self
                    .longest_outage
                    .max(published_at.saturating_duration_since(since));
            }
        }
        if let Some(served_at) = self.pending[i]
            && published_at >= served_at
        {
            self.pending[i] = None;
            let took = published_at - served_at;
            self.to_live
                .saturating_record((took.as_micros() as u64).max(1));
            if took > LIVE_WITHIN {
                self.to_live_over += 1;
            }
        }
        self.live_books[i] += 1;
        self.progress.checked.fetch_add(1, Relaxed);
        let Some(truth) = self.sim.book_at(&self.symbols[i], book.last_update_id) else {
            self.progress.unverifiable.fetch_add(1, Relaxed);
            return;
        };
        let top = |levels: &[(crate::schema::Decimal, crate::schema::Decimal)]| {
            levels.len().min(self.depth)
        };
        let bids = &truth.bids[..top(&truth.bids)];
        let asks = &truth.asks[..top(&truth.asks)];
        if book.bids != bids || book.asks != asks {
            self.progress.mismatches.fetch_add(1, Relaxed);
            if self.first_mismatch.is_none() {
                let side = if book.bids != bids { "bids" } else { "asks" };
                self.first_mismatch = Some(format!(
                    "{} at lastUpdateId {}: {side} differ (engine best {:?}, simulator best {:?})",
                    ev.instrument_name(),
                    book.last_update_id,
                    if side == "bids" {
                        book.bids.first()
                    } else {
                        book.asks.first()
                    }
                    .map(|l| format!("{} x {}", l.0, l.1)),
                    if side == "bids" {
                        bids.first()
                    } else {
                        asks.first()
                    }
                    .map(|l| format!("{} x {}", l.0, l.1)),
                ));
            }
        }
    }

    /// The longest time an instrument was not live, counting one still going on at `end`.
    fn longest_outage(&self, end: Instant) -> Duration {
        self.down_since
            .iter()
            .flatten()
            .map(|since| end.saturating_duration_since(*since))
            .fold(self.longest_outage, Duration::max)
    }

    /// The snapshot-to-live summary, once the engine has stopped. Snapshots still pending
    /// that were served more than [`LIVE_WITHIN`] before `end` count as over the limit.
    fn live_after(&self, end: Instant) -> LiveAfterSnapshot {
        let mut out = LiveAfterSnapshot {
            measured: self.to_live.len(),
            superseded: self.superseded,
            over_limit: self.to_live_over,
            ..LiveAfterSnapshot::default()
        };
        if !self.to_live.is_empty() {
            out.max = Duration::from_micros(self.to_live.max());
            out.p99 = Duration::from_micros(self.to_live.value_at_quantile(0.99));
        }
        for at in self.pending.iter().flatten() {
            if end.saturating_duration_since(*at) > LIVE_WITHIN {
                out.over_limit += 1;
                out.max = out.max.max(end - *at);
            } else {
                out.pending_at_end += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_extend_the_default_three() {
        let s = symbols(5);
        let names: Vec<&str> = s.iter().map(|s| s.symbol.as_str()).collect();
        assert_eq!(
            names,
            ["BTCUSDT", "ETHUSDT", "SOLUSDT", "SIM4USDT", "SIM5USDT"]
        );
        assert_eq!(symbols(1).len(), 1);
    }

    #[test]
    fn warm_up_is_a_tenth_at_least_five_seconds_at_most_half() {
        let w = |secs| {
            SoakOptions {
                duration: Duration::from_secs(secs),
                ..SoakOptions::default()
            }
            .warm_up()
        };
        assert_eq!(w(3600), Duration::from_secs(360));
        assert_eq!(w(60), Duration::from_secs(6));
        assert_eq!(w(20), Duration::from_secs(5));
        assert_eq!(w(6), Duration::from_secs(3));
    }

    #[test]
    fn rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_kib().is_some_and(|k| k > 0));
        }
    }
}
