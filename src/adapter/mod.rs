//! Adapters own everything exchange-specific: sockets, the wire protocol, parsing. What
//! leaves an adapter is a typed [`RawInstance`]; nothing downstream sees JSON.

pub mod binance;
pub mod record;
pub mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use binance::messages::{
    BinanceAggTrade, BinanceBookTicker, BinanceDepthSnapshot, BinanceDepthUpdate, BinanceTicker,
    BinanceTrade,
};
pub use registry::InstrumentRegistry;

use crate::schema::Instrument;

/// What flows from the adapter into the dispatcher.
#[derive(Debug)]
pub enum Ingress {
    Raw(RawInstance),
    /// A marker the dispatcher and conductor pass along in order; the sender is signalled
    /// once everything ahead of it has been published. The control plane uses it to make a
    /// routing change effective before acknowledging it.
    Barrier(crossbeam_channel::Sender<()>),
    /// Shutdown: the dispatcher processes what is already queued, then exits, whoever
    /// still holds a sender (a host's frame source, say).
    Stop,
}

impl From<RawInstance> for Ingress {
    fn from(r: RawInstance) -> Self {
        Ingress::Raw(r)
    }
}

/// The instrument registry, swapped whole when an instrument is added at runtime.
pub type SharedRegistry = Arc<arc_swap::ArcSwap<InstrumentRegistry>>;

/// One parsed exchange message, bound to a known instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInstance {
    pub instrument: Instrument,
    /// [`crate::clock::mono_ns`] when the frame was read.
    pub ingress_ns: u64,
    pub body: RawBody,
    /// Set when this instance was sampled for tracing: its trace and the receive span.
    pub trace: Option<SpanCtx>,
}

impl RawInstance {
    /// Stamps the receive time on a body that carries no event time of its own (a
    /// `bookTicker`); `now` is read only for such a body.
    #[inline]
    pub fn stamp_received(&mut self, now: impl FnOnce() -> i64) {
        if let RawBody::BookTicker(b) = &mut self.body {
            b.received_ms = now();
        }
    }
}

/// The trace an event belongs to and the span of the stage that handled it last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanCtx {
    pub trace_id: crate::schema::TraceId,
    pub span_id: u64,
}

/// The venue-typed content of a [`RawInstance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawBody {
    DepthUpdate(BinanceDepthUpdate),
    Trade(BinanceTrade),
    AggTrade(BinanceAggTrade),
    BookTicker(BinanceBookTicker),
    Ticker(BinanceTicker),
    /// A REST depth snapshot, with the wall time it was received.
    DepthSnapshot(BinanceDepthSnapshot, i64),
    /// The connection carrying this instrument's diffs was re-established: diffs were
    /// missed, so its book must resync. Not an event; never published.
    StreamReset,
}

/// Counters shared by an adapter's threads; each thread adds its local counts per batch.
#[derive(Debug, Default)]
pub struct AdapterStats {
    pub frames: AtomicU64,
    pub instances: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_type: AtomicU64,
    pub unknown_symbol: AtomicU64,
    pub reconnects: AtomicU64,
    /// Planned hand-overs to a new connection (before the 24 h cut, on `serverShutdown`).
    pub handovers: AtomicU64,
    /// Messages both connections delivered during a hand-over; the second copy is dropped.
    pub overlap_duplicates: AtomicU64,
    pub connections: AtomicU64,
    pub snapshots: AtomicU64,
    pub snapshot_failures: AtomicU64,
    pub rest_weight_used: AtomicU64,
}

/// A thread's local view of [`AdapterStats`], flushed with [`LocalStats::flush`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalStats {
    pub frames: u64,
    pub instances: u64,
    pub malformed: u64,
    pub unknown_type: u64,
    pub unknown_symbol: u64,
}

impl LocalStats {
    pub fn flush(&mut self, into: &AdapterStats) {
        if self.frames == 0 {
            return;
        }
        into.frames.fetch_add(self.frames, Ordering::Relaxed);
        into.instances.fetch_add(self.instances, Ordering::Relaxed);
        into.malformed.fetch_add(self.malformed, Ordering::Relaxed);
        into.unknown_type
            .fetch_add(self.unknown_type, Ordering::Relaxed);
        into.unknown_symbol
            .fetch_add(self.unknown_symbol, Ordering::Relaxed);
        *self = LocalStats::default();
    }
}

/// A snapshot of [`AdapterStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AdapterCounts {
    pub frames: u64,
    pub instances: u64,
    pub malformed: u64,
    pub unknown_type: u64,
    pub unknown_symbol: u64,
    pub reconnects: u64,
    pub handovers: u64,
    pub overlap_duplicates: u64,
    pub connections: u64,
    pub snapshots: u64,
    pub snapshot_failures: u64,
}

impl AdapterStats {
    pub fn counts(&self) -> AdapterCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AdapterCounts {
            frames: l(&self.frames),
            instances: l(&self.instances),
            malformed: l(&self.malformed),
            unknown_type: l(&self.unknown_type),
            unknown_symbol: l(&self.unknown_symbol),
            reconnects: l(&self.reconnects),
            handovers: l(&self.handovers),
            overlap_duplicates: l(&self.overlap_duplicates),
            connections: l(&self.connections),
            snapshots: l(&self.snapshots),
            snapshot_failures: l(&self.snapshot_failures),
        }
    }
}

/// Shared handle on adapter counters.
pub type SharedAdapterStats = Arc<AdapterStats>;
