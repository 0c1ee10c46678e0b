//! The dispatcher stage (`meltica-dispatcher`): applies the dispatch table to every raw
//! instance, filters, and canonicalises; the conductor, which publishes, numbers events
//! with a gap-free `seq` per (instrument, type).

pub mod canonicalize;
pub mod control;
pub mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};

pub use self::table::{DispatchTable, FieldView, Route};
use crate::adapter::{Ingress, RawBody, RawInstance};
use crate::config::WaitStrategy;
use crate::engine::stage::{Recv, recv_until};
use crate::schema::{Event, EventType, Instrument, TraceId};
use crate::telemetry::pipeline::Tracing;
use opentelemetry::KeyValue;

/// What the dispatcher hands the conductor. Events travel by value through the bounded
/// channel's preallocated slots; boxing them would cost an allocation per event.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Staged {
    /// A canonical event. `publish` is false for book input that no consumer asked for but
    /// the conductor needs (diffs and snapshots feeding a fused book).
    Event { event: Event, publish: bool },
    /// The instrument's diff stream was interrupted: resync its book.
    Reset(Instrument),
    /// Signal once everything before it has been published.
    Barrier(Sender<()>),
}

/// The dispatch table as the stages read it: swapped whole by the control plane.
pub type SharedTable = Arc<ArcSwap<DispatchTable>>;

/// Per-type counters of the dispatcher.
#[derive(Debug, Default)]
pub struct DispatcherStats {
    pub ingested: [AtomicU64; EventType::COUNT],
    pub filtered: [AtomicU64; EventType::COUNT],
    pub rejected: [AtomicU64; EventType::COUNT],
}

#[derive(Default)]
struct Local {
    ingested: [u64; EventType::COUNT],
    filtered: [u64; EventType::COUNT],
    rejected: [u64; EventType::COUNT],
}

impl Local {
    fn flush(&mut self, s: &DispatcherStats) {
        for i in 0..EventType::COUNT {
            for (local, shared) in [
                (&mut self.ingested[i], &s.ingested[i]),
                (&mut self.filtered[i], &s.filtered[i]),
                (&mut self.rejected[i], &s.rejected[i]),
            ] {
                if *local != 0 {
                    shared.fetch_add(*local, Ordering::Relaxed);
                    *local = 0;
                }
            }
        }
    }
}

/// The dispatcher stage.
pub struct Dispatcher {
    shared: SharedTable,
    table: Arc<DispatchTable>,
    rng: fastrand::Rng,
    stats: Arc<DispatcherStats>,
    warned_unrouted: [bool; EventType::COUNT],
    tracing: Tracing,
}

impl Dispatcher {
    pub fn new(shared: SharedTable, stats: Arc<DispatcherStats>) -> Self {
        Dispatcher {
            table: shared.load_full(),
            shared,
            rng: fastrand::Rng::new(),
            stats,
            warned_unrouted: [false; EventType::COUNT],
            tracing: Tracing::off(),
        }
    }

    /// Replay mode (see [`crate::engine::EngineBuilder::deterministic`]): trace ids from a
    /// fixed seed. (Times the exchange does not send are the frames' receive times, which a
    /// replay's frame source sets from the recording.)
    pub fn deterministic(mut self) -> Self {
        self.rng = fastrand::Rng::with_seed(0x006d_656c_7469_6361);
        self
    }

    /// Records `dispatcher.canonicalize` spans for events sampled at the adapter.
    pub fn with_tracing(mut self, tracing: Tracing) -> Self {
        self.tracing = tracing;
        self
    }

    /// One step of the stage, for hosts that drive it themselves (benchmarks, other
    /// runtimes): routes one raw instance and flushes the counters.
    pub fn process(&mut self, raw: RawInstance) -> Option<Staged> {
        let mut local = Local::default();
        let out = self.route(raw, &mut local);
        local.flush(&self.stats);
        out
    }

    pub fn table(&self) -> &DispatchTable {
        &self.table
    }

    /// Routes one raw instance: `Some` when it goes on to the conductor.
    #[inline]
    fn route(&mut self, raw: RawInstance, local: &mut Local) -> Option<Staged> {
        if matches!(raw.body, RawBody::StreamReset) {
            return self
                .table
                .needs_book(raw.instrument.id())
                .then_some(Staged::Reset(raw.instrument));
        }
        let (t, _) = canonicalize::classify(&raw.body);
        let ti = t.index();
        local.ingested[ti] += 1;
        let id = raw.instrument.id();
        let routed = self.table.covers(t, id);
        let book_input = matches!(
            raw.body,
            RawBody::DepthUpdate(_) | RawBody::DepthSnapshot(..)
        ) && self.table.needs_book(id);
        if !routed && !book_input {
            // An event the table has no route for: rejected, never silently dropped.
            local.rejected[ti] += 1;
            if !self.warned_unrouted[ti] {
                self.warned_unrouted[ti] = true;
                crate::warn!(
                    "rejected {t} for {}: no route in the dispatch table (further rejections are only counted)",
                    raw.instrument
                );
            }
            return None;
        }
        let mut publish = routed;
        if routed
            && let Some(route) = self.table.route(t)
            && !route.filters.is_empty()
        {
            let view = FieldView {
                instrument: raw.instrument.name(),
                side: canonicalize::side_of(&raw.body),
            };
            if !route.filters.iter().all(|f| f.matches(&view)) {
                publish = false;
            }
        }
        if !publish && !book_input {
            local.filtered[ti] += 1;
            return None;
        }
        if !publish {
            // Counted as filtered for consumers; the conductor still consumes it.
            local.filtered[ti] += 1;
        }
        let Some(ctx) = raw.trace else {
            let trace = TraceId::random(&mut self.rng);
            // `seq` is assigned by the publishing stage, so it stays gap-free.
            let event = canonicalize::canonicalize(raw, 0, trace);
            return Some(Staged::Event { event, publish });
        };
        // A sampled event: its trace id is the adapter's; this stage's span is its parent
        // from here on.
        let start = std::time::SystemTime::now();
        let mut event = canonicalize::canonicalize(raw, 0, ctx.trace_id);
        event.span_id = self.tracing.span(
            &mut self.rng,
            "dispatcher.canonicalize",
            ctx.trace_id,
            ctx.span_id,
            start,
            std::time::SystemTime::now(),
            &[
                KeyValue::new("instrument", event.instrument_name().to_owned()),
                KeyValue::new("type", t.as_str()),
                KeyValue::new("source", event.source),
                KeyValue::new("published", publish),
            ],
        );
        Some(Staged::Event { event, publish })
    }

    /// Runs until `input` closes and is drained; `output` closes when this returns.
    pub fn run(mut self, input: Receiver<Ingress>, output: Sender<Staged>, wait: WaitStrategy) {
        let mut local = Local::default();
        loop {
            // The table is read once per batch (and again after a barrier): lock-free.
            self.table = self.shared.load_full();
            let deadline = Instant::now() + Duration::from_millis(100);
            let first = match recv_until(&input, deadline, wait) {
                Recv::Item(r) => r,
                Recv::Timeout => continue,
                Recv::Closed => break,
            };
            // Drain what is already queued before blocking again; flush counters per batch.
            let mut next = Some(first);
            let mut n = 0;
            while let Some(item) = next {
                let staged = match item {
                    Ingress::Raw(raw) => self.route(raw, &mut local),
                    Ingress::Barrier(tx) => {
                        // The control plane stored its new table before sending this.
                        self.table = self.shared.load_full();
                        Some(Staged::Barrier(tx))
                    }
                    Ingress::Stop => {
                        // Everything queued ahead of the stop marker is processed; then out.
                        while let Ok(item) = input.try_recv() {
                            let staged = match item {
                                Ingress::Raw(raw) => self.route(raw, &mut local),
                                Ingress::Barrier(tx) => Some(Staged::Barrier(tx)),
                                Ingress::Stop => None,
                            };
                            if let Some(staged) = staged
                                && output.send(staged).is_err()
                            {
                                break;
                            }
                        }
                        local.flush(&self.stats);
                        return;
                    }
                };
                if let Some(staged) = staged
                    && output.send(staged).is_err()
                {
                    local.flush(&self.stats);
                    return;
                }
                n += 1;
                next = if n < 1024 {
                    input.try_recv().ok()
                } else {
                    None
                };
            }
            local.flush(&self.stats);
        }
        local.flush(&self.stats);
    }
}
