//! Fault injection: what to break, how often, and counters of what was broken.
//!
//! [`FaultConfig`] is the plain settings struct; [`Faults`] holds the same settings in
//! atomics so tests and the soak command can switch faults while the simulator runs. The
//! market thread, the connection threads and the REST handlers read them with relaxed loads
//! (no locks) and roll their own seeded random numbers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Which faults to inject and how often. `Default` injects nothing.
///
/// Frame faults are probabilities (0..=1) per event; connection faults are mean rates in
/// events per second per connection. See the module docs of [`crate::simulator`] for what
/// each fault looks like on the wire and what a correct client does about it.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Probability that a depth diff of a symbol is withheld from every client (an
    /// update-id gap, like [`super::Simulator::inject_gaps`]).
    pub gap_rate: f64,
    /// Probability per data frame and connection that the frame is sent twice.
    pub duplicate_rate: f64,
    /// Probability per data frame and connection that the frame is held back and sent
    /// after the next data frame of that connection.
    pub reorder_rate: f64,
    /// Probability per data frame and connection of an extra frame that is not valid JSON.
    pub malformed_rate: f64,
    /// Probability per data frame and connection of an extra copy cut in half.
    pub truncated_rate: f64,
    /// Probability per data frame and connection of an extra frame with an unknown event
    /// type (`{"stream":"btcusdt@foo","data":{"e":"mystery",..}}`).
    pub unknown_event_rate: f64,
    /// Abrupt disconnects (TCP shutdown, no close frame) per second per connection.
    pub disconnect_rate: f64,
    /// Half-open connections per second per connection: the server stops sending, reading
    /// and answering pings but keeps the socket open.
    pub half_open_rate: f64,
    /// How long a half-open connection stays open before the server drops it (no close
    /// frame); `None` = until the client closes it.
    pub half_open_for: Option<Duration>,
    /// Stalled streams per second per connection: data frames stop, pings and control
    /// replies continue.
    pub stall_rate: f64,
    /// How long a stall lasts before data resumes (with an update-id gap); `None` = for the
    /// rest of the connection.
    pub stall_for: Option<Duration>,
    /// Planned disconnects per second per connection: `serverShutdown`, grace, close.
    pub planned_disconnect_rate: f64,
    /// Time between the `serverShutdown` notice and the close (Binance: a few seconds).
    pub shutdown_grace: Duration,
    /// Connections are shut down like a planned disconnect once they reach this age
    /// (Binance: 24 h).
    pub max_connection_age: Option<Duration>,
    /// Probability that a REST request is answered 429 (before any work is done).
    pub rest_429_rate: f64,
    /// After this many injected 429s the next injected rejection is a 418 (an IP ban);
    /// 0 = never.
    pub rest_418_after: u32,
    /// `Retry-After` of an injected 429, sent in whole seconds rounded up.
    pub rest_429_retry_after: Duration,
    /// `Retry-After` (and length of the ban) of an injected 418, whole seconds rounded up.
    pub rest_418_retry_after: Duration,
    /// Probability that a depth snapshot is delayed by `slow_snapshot_delay`. The book is
    /// taken when the request arrives, so the snapshot is that much older on arrival.
    pub slow_snapshot_rate: f64,
    pub slow_snapshot_delay: Duration,
    /// Probability that a depth snapshot fails: half are `500` with a Binance error body,
    /// half a full-length header followed by half the body and a closed connection.
    pub failed_snapshot_rate: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            gap_rate: 0.0,
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            malformed_rate: 0.0,
            truncated_rate: 0.0,
            unknown_event_rate: 0.0,
            disconnect_rate: 0.0,
            half_open_rate: 0.0,
            half_open_for: None,
            stall_rate: 0.0,
            stall_for: None,
            planned_disconnect_rate: 0.0,
            shutdown_grace: Duration::from_secs(1),
            max_connection_age: None,
            rest_429_rate: 0.0,
            rest_418_after: 0,
            rest_429_retry_after: Duration::from_secs(1),
            rest_418_retry_after: Duration::from_secs(2),
            slow_snapshot_rate: 0.0,
            slow_snapshot_delay: Duration::from_secs(1),
            failed_snapshot_rate: 0.0,
        }
    }
}

impl FaultConfig {
    /// No faults (same as `default()`).
    pub fn none() -> Self {
        FaultConfig::default()
    }

    /// Every fault at a modest rate, for a soak of about a minute. With one connection
    /// carrying three symbols at 20 steps per second, expect a few gaps and a few of each
    /// frame fault per minute; about one disconnect and one planned disconnect per minute,
    /// a half-open connection or a stall about every 90 s (each over after 8 s, so a client
    /// whose watchdog is shorter notices first), an age cut at 20 s; and on REST, a 429 on one
    /// request in ten (every third injected one a 418), slow snapshots one in five and failed
    /// snapshots one in ten. A client that recovers promptly keeps its books live most of
    /// the time. A single minute need not show every kind; [`Self::scaled`] raises the rates.
    pub fn all() -> Self {
        FaultConfig {
            gap_rate: 0.001,
            duplicate_rate: 0.001,
            reorder_rate: 0.001,
            malformed_rate: 0.0005,
            truncated_rate: 0.0005,
            unknown_event_rate: 0.001,
            disconnect_rate: 1.0 / 60.0,
            half_open_rate: 1.0 / 90.0,
            half_open_for: Some(Duration::from_secs(8)),
            stall_rate: 1.0 / 90.0,
            stall_for: Some(Duration::from_secs(8)),
            planned_disconnect_rate: 1.0 / 60.0,
            shutdown_grace: Duration::from_secs(1),
            max_connection_age: Some(Duration::from_secs(20)),
            rest_429_rate: 0.1,
            rest_418_after: 2,
            rest_429_retry_after: Duration::from_secs(1),
            rest_418_retry_after: Duration::from_secs(2),
            slow_snapshot_rate: 0.2,
            slow_snapshot_delay: Duration::from_secs(1),
            failed_snapshot_rate: 0.1,
        }
    }

    /// Every rate multiplied by `factor` (probabilities capped at 1); durations unchanged.
    pub fn scaled(mut self, factor: f64) -> Self {
        let factor = sanitize(factor);
        for p in [
            &mut self.gap_rate,
            &mut self.duplicate_rate,
            &mut self.reorder_rate,
            &mut self.malformed_rate,
            &mut self.truncated_rate,
            &mut self.unknown_event_rate,
            &mut self.rest_429_rate,
            &mut self.slow_snapshot_rate,
            &mut self.failed_snapshot_rate,
        ] {
            *p = (*p * factor).min(1.0);
        }
        for r in [
            &mut self.disconnect_rate,
            &mut self.half_open_rate,
            &mut self.stall_rate,
            &mut self.planned_disconnect_rate,
        ] {
            *r *= factor;
        }
        self
    }

    /// Every problem with the settings: probabilities outside 0..=1, negative or
    /// non-finite rates.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let probabilities = [
            ("gap_rate", self.gap_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("reorder_rate", self.reorder_rate),
            ("malformed_rate", self.malformed_rate),
            ("truncated_rate", self.truncated_rate),
            ("unknown_event_rate", self.unknown_event_rate),
            ("rest_429_rate", self.rest_429_rate),
            ("slow_snapshot_rate", self.slow_snapshot_rate),
            ("failed_snapshot_rate", self.failed_snapshot_rate),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                out.push(format!("faults.{name} {p} not in 0..=1"));
            }
        }
        let rates = [
            ("disconnect_rate", self.disconnect_rate),
            ("half_open_rate", self.half_open_rate),
            ("stall_rate", self.stall_rate),
            ("planned_disconnect_rate", self.planned_disconnect_rate),
        ];
        for (name, r) in rates {
            if !r.is_finite() || r < 0.0 {
                out.push(format!("faults.{name} {r} must be a non-negative number"));
            }
        }
        out
    }
}

/// How many faults of each kind were injected since the simulator started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultStats {
    /// Depth diffs withheld by `gap_rate` while someone was subscribed.
    pub gaps: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub malformed: u64,
    pub truncated: u64,
    pub unknown: u64,
    pub disconnects: u64,
    pub half_open: u64,
    pub stalls: u64,
    /// `serverShutdown` notices sent by `planned_disconnect_rate`.
    pub planned: u64,
    /// `serverShutdown` notices sent because a connection reached `max_connection_age`.
    pub aged: u64,
    /// Injected 429s (not those earned by exceeding the weight limit).
    pub rest_429: u64,
    /// Injected 418s (not those earned by ignoring `Retry-After`).
    pub rest_418: u64,
    pub slow: u64,
    pub failed_snapshots: u64,
}

impl FaultStats {
    /// `(name, count)` for every kind, in declaration order.
    pub fn counts(&self) -> [(&'static str, u64); 15] {
        [
            ("gaps", self.gaps),
            ("duplicates", self.duplicates),
            ("reorders", self.reorders),
            ("malformed", self.malformed),
            ("truncated", self.truncated),
            ("unknown", self.unknown),
            ("disconnects", self.disconnects),
            ("half_open", self.half_open),
            ("stalls", self.stalls),
            ("planned", self.planned),
            ("aged", self.aged),
            ("rest_429", self.rest_429),
            ("rest_418", self.rest_418),
            ("slow", self.slow),
            ("failed_snapshots", self.failed_snapshots),
        ]
    }

    /// Sum over every kind.
    pub fn total(&self) -> u64 {
        self.counts().iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for FaultStats {
    /// `gaps=3 duplicates=1 ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, n)) in self.counts().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={n}")?;
        }
        Ok(())
    }
}

fn sanitize(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

/// An `f64` in an atomic.
struct Rate(AtomicU64);

impl Rate {
    fn new() -> Self {
        Rate(AtomicU64::new(0f64.to_bits()))
    }

    #[inline]
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }

    fn set(&self, v: f64) {
        self.0.store(sanitize(v).to_bits(), Relaxed);
    }
}

/// A duration in an atomic (nanoseconds); `u64::MAX` stands for `None`.
struct Span(AtomicU64);

impl Span {
    const NONE: u64 = u64::MAX;

    fn new() -> Self {
        Span(AtomicU64::new(Self::NONE))
    }

    fn get(&self) -> Option<Duration> {
        match self.0.load(Relaxed) {
            Self::NONE => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn set(&self, d: Option<Duration>) {
        let n = d.map_or(Self::NONE, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(Self::NONE - 1)
        });
        self.0.store(n, Relaxed);
    }
}

/// Counters behind [`FaultStats`].
#[derive(Default)]
pub(crate) struct FaultCounters {
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub reorders: AtomicU64,
    pub malformed: AtomicU64,
    pub truncated: AtomicU64,
    pub unknown: AtomicU64,
    pub disconnects: AtomicU64,
    pub half_open: AtomicU64,
    pub stalls: AtomicU64,
    pub planned: AtomicU64,
    pub aged: AtomicU64,
    pub rest_429: AtomicU64,
    pub rest_418: AtomicU64,
    pub slow: AtomicU64,
    pub failed_snapshots: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Per-frame probabilities of one connection, loaded once per batch of frames.
#[derive(Clone, Copy, Default)]
pub(crate) struct FrameRates {
    pub duplicate: f64,
    pub reorder: f64,
    pub malformed: f64,
    pub truncated: f64,
    pub unknown: f64,
}

impl FrameRates {
    pub fn any(&self) -> bool {
        self.duplicate > 0.0
            || self.reorder > 0.0
            || self.malformed > 0.0
            || self.truncated > 0.0
            || self.unknown > 0.0
    }
}

/// Connection faults, in events per second.
#[derive(Clone, Copy)]
pub(crate) struct LifecycleRates {
    pub disconnect: f64,
    pub half_open: f64,
    pub stall: f64,
    pub planned: f64,
}

/// `true` with probability `p`; draws nothing when `p` is 0.
#[inline]
pub(crate) fn roll(rng: &mut fastrand::Rng, p: f64) -> bool {
    p > 0.0 && rng.f64() < p
}

/// The live fault switches of a running simulator, from [`super::Simulator::faults`].
///
/// Every setting is its own atomic, so a change takes effect at the next frame, step,
/// connection check (every 10 ms) or request; [`Faults::set`] and [`Faults::update`]
/// store field by field, so call them from one controlling thread.
pub struct Faults {
    gap: Rate,
    duplicate: Rate,
    reorder: Rate,
    malformed: Rate,
    truncated: Rate,
    unknown: Rate,
    disconnect: Rate,
    half_open: Rate,
    half_open_for: Span,
    stall: Rate,
    stall_for: Span,
    planned: Rate,
    shutdown_grace: Span,
    max_connection_age: Span,
    rest_429: Rate,
    rest_418_after: AtomicU64,
    rest_429_retry_after: Span,
    rest_418_retry_after: Span,
    slow_snapshot: Rate,
    slow_snapshot_delay: Span,
    failed_snapshot: Rate,
    pub(crate) count: FaultCounters,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("config", &self.config())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Faults {
    pub(crate) fn new(cfg: &FaultConfig) -> Self {
        let f = Faults {
            gap: Rate::new(),
            duplicate: Rate::new(),
            reorder: Rate::new(),
            malformed: Rate::new(),
            truncated: Rate::new(),
            unknown: Rate::new(),
            disconnect: Rate::new(),
            half_open: Rate::new(),
            half_open_for: Span::new(),
            stall: Rate::new(),
            stall_for: Span::new(),
            planned: Rate::new(),
            shutdown_grace: Span::new(),
            max_connection_age: Span::new(),
            rest_429: Rate::new(),
            rest_418_after: AtomicU64::new(0),
            rest_429_retry_after: Span::new(),
            rest_418_retry_after: Span::new(),
            slow_snapshot: Rate::new(),
            slow_snapshot_delay: Span::new(),
            failed_snapshot: Rate::new(),
            count: FaultCounters::default(),
        };
        f.set(cfg);
        f
    }

    /// Switches to `cfg`. Probabilities above 1 act as 1; negative or non-finite rates as 0.
    pub fn set(&self, cfg: &FaultConfig) {
        self.gap.set(cfg.gap_rate);
        self.duplicate.set(cfg.duplicate_rate);
        self.reorder.set(cfg.reorder_rate);
        self.malformed.set(cfg.malformed_rate);
        self.truncated.set(cfg.truncated_rate);
        self.unknown.set(cfg.unknown_event_rate);
        self.disconnect.set(cfg.disconnect_rate);
        self.half_open.set(cfg.half_open_rate);
        self.half_open_for.set(cfg.half_open_for);
        self.stall.set(cfg.stall_rate);
        self.stall_for.set(cfg.stall_for);
        self.planned.set(cfg.planned_disconnect_rate);
        self.shutdown_grace.set(Some(cfg.shutdown_grace));
        self.max_connection_age.set(cfg.max_connection_age);
        self.rest_429.set(cfg.rest_429_rate);
        self.rest_418_after
            .store(u64::from(cfg.rest_418_after), Relaxed);
        self.rest_429_retry_after
            .set(Some(cfg.rest_429_retry_after));
        self.rest_418_retry_after
            .set(Some(cfg.rest_418_retry_after));
        self.slow_snapshot.set(cfg.slow_snapshot_rate);
        self.slow_snapshot_delay.set(Some(cfg.slow_snapshot_delay));
        self.failed_snapshot.set(cfg.failed_snapshot_rate);
    }

    /// The settings in effect.
    pub fn config(&self) -> FaultConfig {
        FaultConfig {
            gap_rate: self.gap.get(),
            duplicate_rate: self.duplicate.get(),
            reorder_rate: self.reorder.get(),
            malformed_rate: self.malformed.get(),
            truncated_rate: self.truncated.get(),
            unknown_event_rate: self.unknown.get(),
            disconnect_rate: self.disconnect.get(),
            half_open_rate: self.half_open.get(),
            half_open_for: self.half_open_for.get(),
            stall_rate: self.stall.get(),
            stall_for: self.stall_for.get(),
            planned_disconnect_rate: self.planned.get(),
            shutdown_grace: self.shutdown_grace(),
            max_connection_age: self.max_connection_age.get(),
            rest_429_rate: self.rest_429.get(),
            rest_418_after: u32::try_from(self.rest_418_after.load(Relaxed)).unwrap_or(u32::MAX),
            rest_429_retry_after: self.rest_429_retry_after(),
            rest_418_retry_after: self.rest_418_retry_after(),
            slow_snapshot_rate: self.slow_snapshot.get(),
            slow_snapshot_delay: self.slow_snapshot_delay(),
            failed_snapshot_rate: self.failed_snapshot.get(),
        }
    }

    /// Changes some settings: `faults.update(|f| f.duplicate_rate = 0.5)`.
    pub fn update(&self, change: impl FnOnce(&mut FaultConfig)) {
        let mut cfg = self.config();
        change(&mut cfg);
        self.set(&cfg);
    }

    /// Turns every fault off (counters are kept).
    pub fn clear(&self) {
        self.set(&FaultConfig::default());
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.count;
        let n = |a: &AtomicU64| a.load(Relaxed);
        FaultStats {
            gaps: n(&c.gaps),
            duplicates: n(&c.duplicates),
            reorders: n(&c.reorders),
            malformed: n(&c.malformed),
            truncated: n(&c.truncated),
            unknown: n(&c.unknown),
            disconnects: n(&c.disconnects),
            half_open: n(&c.half_open),
            stalls: n(&c.stalls),
            planned: n(&c.planned),
            aged: n(&c.aged),
            rest_429: n(&c.rest_429),
            rest_418: n(&c.rest_418),
            slow: n(&c.slow),
            failed_snapshots: n(&c.failed_snapshots),
        }
    }

    #[inline]
    pub(crate) fn gap_rate(&self) -> f64 {
        self.gap.get()
    }

    #[inline]
    pub(crate) fn frame_rates(&self) -> FrameRates {
        FrameRates {
            duplicate: self.duplicate.get(),
            reorder: self.reorder.get(),
            malformed: self.malformed.get(),
            truncated: self.truncated.get(),
            unknown: self.unknown.get(),
        }
    }

    pub(crate) fn lifecycle_rates(&self) -> LifecycleRates {
        LifecycleRates {
            disconnect: self.disconnect.get(),
            half_open: self.half_open.get(),
            stall: self.stall.get(),
            planned: self.planned.get(),
        }
    }

    pub(crate) fn half_open_for(&self) -> Option<Duration> {
        self.half_open_for.get()
    }

    pub(crate) fn stall_for(&self) -> Option<Duration> {
        self.stall_for.get()
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace.get().unwrap_or_default()
    }

    pub(crate) fn max_connection_age(&self) -> Option<Duration> {
        self.max_connection_age.get()
    }

    pub(crate) fn rest_429_rate(&self) -> f64 {
        self.rest_429.get()
    }

    pub(crate) fn rest_418_after(&self) -> u64 {
        self.rest_418_after.load(Relaxed)
    }

    pub(crate) fn rest_429_retry_after(&self) -> Duration {
        self.rest_429_retry_after.get().unwrap_or_default()
    }

    pub(crate) fn rest_418_retry_after(&self) -> Duration {
        self.rest_418_retry_after.get().unwrap_or_default()
    }

    pub(crate) fn slow_snapshot_rate(&self) -> f64 {
        self.slow_snapshot.get()
    }

    pub(crate) fn slow_snapshot_delay(&self) -> Duration {
        self.slow_snapshot_delay.get().unwrap_or_default()
    }

    pub(crate) fn failed_snapshot_rate(&self) -> f64 {
        self.failed_snapshot.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_the_atomics() {
        for cfg in [FaultConfig::none(), FaultConfig::all(), {
            let mut c = FaultConfig::all().scaled(3.0);
            c.half_open_for = None;
            c.max_connection_age = Some(Duration::from_millis(1500));
            c.shutdown_grace = Duration::ZERO;
            c
        }] {
            let f = Faults::new(&cfg);
            assert_eq!(f.config(), cfg);
        }
        let f = Faults::new(&FaultConfig::none());
        f.update(|c| c.duplicate_rate = 0.25);
        assert_eq!(f.config().duplicate_rate, 0.25);
        f.update(|c| c.gap_rate = f64::NAN);
        assert_eq!(f.config().gap_rate, 0.0);
        f.clear();
        assert_eq!(f.config(), FaultConfig::none());
    }

    #[test]
    fn scaled_caps_probabilities_and_validation_reports_every_problem() {
        let c = FaultConfig::all().scaled(1e6);
        assert_eq!(c.gap_rate, 1.0);
        assert!(c.disconnect_rate > 1000.0);
        assert!(c.problems().is_empty());
        let bad = FaultConfig {
            gap_rate: 1.5,
            duplicate_rate: -0.1,
            stall_rate: f64::INFINITY,
            ..FaultConfig::none()
        };
        assert_eq!(bad.problems().len(), 3, "{:?}", bad.problems());
        assert_eq!(
            FaultConfig::all().scaled(0.0).problems(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn stats_print_every_kind() {
        let s = FaultStats {
            gaps: 2,
            rest_418: 1,
            ..FaultStats::default()
        };
        let text = s.to_string();
        assert!(text.starts_with("gaps=2 duplicates=0"), "{text}");
        assert!(text.contains("rest_418=1"));
        assert_eq!(s.total(), 3);
        assert_eq!(text.split(' ').count(), s.counts().len());
    }
}
