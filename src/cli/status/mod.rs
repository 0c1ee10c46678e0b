//! The operator's live view on stderr, for `demo` and `run`.
//!
//! Every second, per instrument: best bid and ask, spread, published events per second by
//! type, ingress-to-publish latency p50/p99 over that second, book status and resyncs;
//! above them uptime, connections, reconnects, hand-overs, the dispatch version, total
//! events per second and drops by reason. At exit, a summary of every counter.
//!
//! On a terminal the frame is redrawn in place and the book status is coloured (green
//! live, yellow syncing, red stale) unless `NO_COLOR` is set to a non-empty value. When
//! stderr is not a terminal (a log file, a pipe, `TERM=dumb`), the view prints plain lines
//! with no escape sequences: one per instrument every five seconds, and one as soon as a
//! book changes status.
//!
//! Counts and book status come from the engine's atomics and snapshot store; latency comes
//! from a `drop_oldest` bus subscription drained by its own thread (see [`latency`]), so
//! the view never slows the data path.

mod format;
mod latency;

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use self::format::{Header, RATE_ORDER, Row};
use self::latency::LatencyTap;
use crate::engine::{Engine, EngineCounts};
use crate::schema::{EventType, Instrument, Quality};

/// Plain reports of every instrument fall on multiples of this much uptime.
const PLAIN_PERIOD: Duration = Duration::from_secs(5);
/// A report this close to due is printed now rather than a render later.
const PLAIN_SLACK: Duration = Duration::from_millis(500);

/// Where the view writes and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// A terminal: the frame is redrawn in place; `colour` paints the book status.
    Terminal { colour: bool },
    /// Anything else: plain lines, no escape sequences.
    Plain,
}

impl Output {
    fn detect() -> Output {
        let term = std::env::var_os("TERM");
        Output::choose(
            std::io::stderr().is_terminal() && term.is_none_or(|t| t != "dumb"),
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        )
    }

    fn choose(terminal: bool, no_color: bool) -> Output {
        if terminal {
            Output::Terminal { colour: !no_color }
        } else {
            Output::Plain
        }
    }
}

/// The latency subscription, taken at the first render (the engine is running by then).
enum Tap {
    Pending,
    Running(LatencyTap),
    /// The view thread could not start; latency shows as `-`.
    Off,
}

/// Where an instrument's current figures started counting.
struct Window {
    since: Instant,
    published: [u64; EventType::COUNT],
    /// Status in the last plain line printed for the instrument.
    printed: Option<Quality>,
}

/// The live view. `render` once per second while the engine runs, `summary` after it
/// has shut down.
pub struct StatusView {
    output: Output,
    tap: Tap,
    /// Indexed by instrument id.
    windows: Vec<Option<Window>>,
    created: Instant,
    header_since: Instant,
    header_published: u64,
    last_render: Option<Instant>,
    /// Lines of the frame on screen (terminal output).
    frame_lines: usize,
    /// Widest rate cell shown so far, so the columns after it do not jitter.
    rate_width: usize,
    /// Uptime at which every instrument is next reported (plain output); `None` before
    /// the first report.
    next_plain: Option<Duration>,
}

impl Default for StatusView {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusView {
    /// A view on stderr; whether it redraws and colours is decided from stderr, `TERM`
    /// and `NO_COLOR` now.
    pub fn new() -> Self {
        Self::with_output(Output::detect())
    }

    fn with_output(output: Output) -> Self {
        StatusView {
            output,
            tap: Tap::Pending,
            windows: Vec::new(),
            created: Instant::now(),
            header_since: Instant::now(),
            header_published: 0,
            last_render: None,
            frame_lines: 0,
            rate_width: 0,
            next_plain: None,
        }
    }

    /// Shows the figures since the previous call; meant to be called once per second.
    /// The first call subscribes the view to the engine's bus for latency samples.
    pub fn render(&mut self, engine: &Engine) {
        if let Tap::Pending = self.tap {
            self.tap = match LatencyTap::start(engine) {
                Ok(t) => Tap::Running(t),
                Err(e) => {
                    crate::warn!("status view: no latency figures: cannot start thread: {e}");
                    Tap::Off
                }
            };
        }
        let now = Instant::now();
        let text = match self.output {
            Output::Terminal { colour } => self.frame(engine, now, colour),
            Output::Plain => self.plain(engine, now),
        };
        self.last_render = Some(now);
        if !text.is_empty() {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }

    /// Prints the exit summary: per type ingested, published, filtered, coalesced,
    /// dropped and rejected; the adapter's counters; latency over the run.
    pub fn summary(&mut self, counts: &EngineCounts) {
        let (latency, evicted) = match &mut self.tap {
            Tap::Running(t) => {
                // The engine has shut down: the thread records what was queued and ends.
                t.finish();
                (t.run(), t.evicted())
            }
            Tap::Pending | Tap::Off => (None, 0),
        };
        let text = format::summary(counts, latency, evicted);
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn frame(&mut self, engine: &Engine, now: Instant, colour: bool) -> String {
        let header = self.header(engine, now);
        let rows: Vec<Row> = engine
            .instruments()
            .iter()
            .map(|i| self.row(engine, i, now))
            .collect();
        let widest = rows.iter().map(|r| format::rates(r).len()).max();
        self.rate_width = self.rate_width.max(widest.unwrap_or(0));
        let lines = format::table(&header, &rows, self.rate_width, colour);
        let text = format::redraw(&lines, self.frame_lines);
        self.frame_lines = lines.len();
        text
    }

    fn plain(&mut self, engine: &Engine, now: Instant) -> String {
        let mut out = String::new();
        let t = engine.uptime();
        let due = match self.next_plain {
            None => {
                out.push_str(&format::legend(PLAIN_PERIOD));
                out.push('\n');
                true
            }
            Some(next) => t + PLAIN_SLACK >= next,
        };
        if due {
            // The next multiple of the period; after a stall, no burst of reports.
            let period = PLAIN_PERIOD.as_secs();
            let next = ((t + PLAIN_SLACK).as_secs() / period + 1) * period;
            self.next_plain = Some(Duration::from_secs(next));
            out.push_str(&format::plain_header(&self.header(engine, now)));
            out.push('\n');
        }
        for inst in engine.instruments() {
            let status = engine.book_status(&inst);
            let printed = self
                .windows
                .get(inst.id() as usize)
                .and_then(|w| w.as_ref())
                .and_then(|w| w.printed);
            if due || printed != Some(status) {
                let row = self.row(engine, &inst, now);
                if let Some(Some(w)) = self.windows.get_mut(inst.id() as usize) {
                    w.printed = Some(row.status);
                }
                out.push_str(&format::plain_row(t, &row));
                out.push('\n');
            }
        }
        out
    }

    /// Engine-wide figures; the events/s window restarts.
    fn header(&mut self, engine: &Engine, now: Instant) -> Header {
        let c = engine.counts();
        let published: u64 = c.published.iter().sum();
        let secs = now
            .duration_since(self.header_since)
            .as_secs_f64()
            .max(1e-3);
        let rate = published.saturating_sub(self.header_published) as f64 / secs;
        self.header_since = now;
        self.header_published = published;
        Header {
            uptime: engine.uptime(),
            connections: c.adapter.connections,
            reconnects: c.adapter.reconnects,
            handovers: c.adapter.handovers,
            dispatch_version: engine.dispatch_version(),
            events_per_sec: rate,
            duplicate: c.dropped.iter().sum(),
            coalesced: c.coalesced,
            rejected: c.rejected.iter().sum(),
            malformed: c.adapter.malformed,
            overlap: c.adapter.overlap_duplicates,
            view_evicted: match &self.tap {
                Tap::Running(t) => t.evicted(),
                Tap::Pending | Tap::Off => 0,
            },
        }
    }

    /// An instrument's figures since its window started; the window restarts.
    fn row(&mut self, engine: &Engine, inst: &Instrument, now: Instant) -> Row {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = engine.conductor_stats();
        let id = inst.id() as usize;
        let mut published = [0u64; EventType::COUNT];
        if let Some(p) = stats.published.get(id) {
            for (n, c) in published.iter_mut().zip(p) {
                *n = c.load(Relaxed);
            }
        }
        if self.windows.len() <= id {
            self.windows.resize_with(id + 1, || None);
        }
        let since = self.last_render.unwrap_or(self.created);
        let w = self.windows[id].get_or_insert(Window {
            since,
            published: [0; EventType::COUNT],
            printed: None,
        });
        let secs = now.duration_since(w.since).as_secs_f64().max(1e-3);
        let rates = RATE_ORDER
            .into_iter()
            .filter(|t| published[t.index()] > 0)
            .map(|t| {
                let n = published[t.index()].saturating_sub(w.published[t.index()]);
                (t, n as f64 / secs)
            })
            .collect();
        w.since = now;
        w.published = published;
        let book = engine.latest_book(inst.name());
        let top = |side: &[crate::schema::Level]| side.first().map(|l| l.0);
        Row {
            name: inst.name().to_owned(),
            bid: book.as_ref().and_then(|r| top(&r.book.bids)),
            ask: book.as_ref().and_then(|r| top(&r.book.asks)),
            rates,
            latency: match &self.tap {
                Tap::Running(t) => t.take(inst.id()),
                Tap::Pending | Tap::Off => None,
            },
            status: engine.book_status(inst),
            resyncs: stats.resyncs.get(id).map_or(0, |r| r.load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_turns_colour_off_on_a_terminal_only() {
        assert_eq!(
            Output::choose(true, false),
            Output::Terminal { colour: true }
        );
        assert_eq!(
            Output::choose(true, true),
            Output::Terminal { colour: false }
        );
        assert_eq!(Output::choose(false, false), Output::Plain);
        assert_eq!(Output::choose(false, true), Output::Plain);
    }
}
