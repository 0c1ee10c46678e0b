//! The conductor stage (`meltica-conductor`): keeps one local book per instrument in sync
//! with the exchange (diffs fused with REST snapshots), publishes `ANALYTICS.FUSED` at most
//! once per throttle window per instrument, writes each fused book to the snapshot store,
//! and passes every other event through to the data bus.

pub mod book;
pub mod sync;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use self::sync::{BookSync, Step, SyncError, SyncStatus};
use crate::adapter::binance::{SnapshotReason, SnapshotRequest};
use crate::bus::DataBus;
use crate::clock;
use crate::config::{ConductorConfig, WaitStrategy};
use crate::dispatcher::{DispatchTable, SharedTable, Staged};
use crate::engine::stage::{Recv, recv_until};
use crate::schema::{Event, EventType, FusedBook, Instrument, Payload, Quality, TraceId, pool};
use crate::snapshot::memory::{Cell, MemorySnapshotStore};
use crate::snapshot::{Key, SnapshotMirror, StoreError};
use crate::telemetry::pipeline::Tracing;
use opentelemetry::KeyValue;
use std::time::SystemTime;

/// Counters of the conductor, readable from any thread.
#[derive(Debug)]
pub struct ConductorStats {
    /// Published events per instrument id and type.
    pub published: Vec<[AtomicU64; EventType::COUNT]>,
    /// Fused states replaced within a throttle window, per instrument.
    pub coalesced: Vec<AtomicU64>,
    pub resyncs: Vec<AtomicU64>,
    /// 0 syncing, 1 live, 2 stale.
    pub status: Vec<AtomicU8>,
    pub cas_conflicts: AtomicU64,
    /// Events not published, per type, because they repeated what the book already had
    /// (duplicate or replayed diffs).
    pub dropped_duplicate: [AtomicU64; EventType::COUNT],
}

impl ConductorStats {
    /// Counters for up to `instruments` instruments (ids `0..instruments`).
    pub fn new(instruments: usize) -> Self {
        ConductorStats {
            published: (0..instruments).map(|_| Default::default()).collect(),
            coalesced: (0..instruments).map(|_| AtomicU64::new(0)).collect(),
            resyncs: (0..instruments).map(|_| AtomicU64::new(0)).collect(),
            status: (0..instruments).map(|_| AtomicU8::new(0)).collect(),
            cas_conflicts: AtomicU64::new(0),
            dropped_duplicate: Default::default(),
        }
    }

    pub fn status(&self, id: u32) -> Quality {
        match self.status[id as usize].load(Ordering::Relaxed) {
            1 => Quality::Live,
            2 => Quality::Stale,
            _ => Quality::Syncing,
        }
    }

    /// Published count of a type, over all instruments.
    pub fn published_of(&self, t: EventType) -> u64 {
        self.published
            .iter()
            .map(|p| p[t.index()].load(Ordering::Relaxed))
            .sum()
    }
}

struct Slot {
    instrument: Instrument,
    sync: BookSync,
    needs_book: bool,
    fuses: bool,
    last_publish: Option<Instant>,
    dirty: bool,
    last_diff: Instant,
    last_ingress_ns: u64,
    last_trace: TraceId,
    cell: Cell,
    version: u64,
    key: Key,
}

/// The conductor stage.
pub struct Conductor {
    cfg: ConductorConfig,
    /// Indexed by instrument id; created when an instrument first shows up.
    slots: Vec<Option<Slot>>,
    shared_table: SharedTable,
    table: Arc<DispatchTable>,
    store: Arc<MemorySnapshotStore>,
    mirror: Option<Arc<dyn SnapshotMirror>>,
    deterministic: bool,
    snapshots: Sender<SnapshotRequest>,
    bus: Arc<dyn DataBus>,
    stats: Arc<ConductorStats>,
    local_published: Vec<[u64; EventType::COUNT]>,
    /// Instrument ids with unflushed counts, so a flush touches only those.
    touched: Vec<u32>,
    /// Last published `seq` per instrument id and type.
    seqs: Vec<[u64; EventType::COUNT]>,
    tracing: Tracing,
    rng: fastrand::Rng,
    e2e_latency: Option<opentelemetry::metrics::Histogram<f64>>,
    /// Published events, oldest first. Once every consumer has dropped one, its
    /// allocation is reused for a new event: steady-state publishing does not allocate.
    recycle: std::collections::VecDeque<Arc<Event>>,
    spare_books: std::collections::VecDeque<Arc<FusedBook>>,
}

/// How many published events are kept for reuse.
const RECYCLE: usize = 4096;
/// Fused books kept for reuse once no reader holds them.
const SPARE_BOOKS: usize = 64;

impl Conductor {
    pub fn new(
        cfg: ConductorConfig,
        table: SharedTable,
        snapshots: Sender<SnapshotRequest>,
        bus: Arc<dyn DataBus>,
        store: Arc<MemorySnapshotStore>,
        stats: Arc<ConductorStats>,
    ) -> Self {
        let n = stats.published.len();
        Conductor {
            cfg,
            slots: Vec::new(),
            table: table.load_full(),
            shared_table: table,
            store,
            mirror: None,
            deterministic: false,
            snapshots,
            bus,
            stats,
            local_published: vec![[0; EventType::COUNT]; n],
            touched: Vec::with_capacity(64),
            seqs: Vec::new(),
            tracing: Tracing::off(),
            rng: fastrand::Rng::new(),
            e2e_latency: None,
            recycle: std::collections::VecDeque::with_capacity(RECYCLE),
            spare_books: std::collections::VecDeque::with_capacity(SPARE_BOOKS),
        }
    }

    /// Replay mode (see [`crate::engine::EngineBuilder::deterministic`]): a fused book's time
    /// is its last input's recorded receive time, and `latency_ns` is 0.
    pub fn deterministic(mut self) -> Self {
        self.deterministic = true;
        self
    }

    /// Also offers every stored book to `mirror` (a Redis write-through).
    pub fn with_mirror(mut self, mirror: Arc<dyn SnapshotMirror>) -> Self {
        self.mirror = Some(mirror);
        self
    }

    /// Records `conductor.orchestrate` and `databus.publish` spans (and the end-to-end
    /// latency of sampled events).
    pub fn with_tracing(mut self, tracing: Tracing) -> Self {
        self.e2e_latency = tracing.is_enabled().then(|| {
            tracing
                .meter()
                .f64_histogram("meltica.e2e.latency")
                .with_unit("us")
                .with_description("ingress to publish latency of sampled events")
                .build()
        });
        self.tracing = tracing;
        self
    }

    fn slot_index(&mut self, inst: &Instrument) -> usize {
        let id = inst.id() as usize;
        if self.slots.len() <= id {
            self.slots.resize_with(id + 1, || None);
        }
        if self.slots[id].is_none() {
            let key = Key::fused(inst.name());
            self.slots[id] = Some(Slot {
                instrument: inst.clone(),
                sync: BookSync::new(),
                needs_book: self.table.needs_book(inst.id()),
                fuses: self.table.fuses(inst.id()),
                last_publish: None,
                dirty: false,
                last_diff: Instant::now(),
                last_ingress_ns: 0,
                last_trace: TraceId::NONE,
                cell: self.store.cell(&key),
                version: 0,
                key,
            });
        }
        id
    }

    fn slot(&mut self, id: usize) -> &mut Slot {
        self.slots[id].as_mut().expect("slot exists once indexed")
    }

    /// Picks up a new dispatch table: books no longer needed are dropped (they would miss
    /// diffs), books newly needed start syncing.
    fn refresh_table(&mut self) {
        let table = self.shared_table.load_full();
        if table.version == self.table.version {
            return;
        }
        self.table = table;
        for id in 0..self.slots.len() {
            let Some(slot) = self.slots[id].as_mut() else {
                continue;
            };
            let needs = self.table.needs_book(id as u32);
            let fuses = self.table.fuses(id as u32);
            if slot.needs_book && !needs {
                slot.sync.lose_sync(SyncError::StreamReset);
                slot.dirty = false;
                self.stats.status[id].store(0, Ordering::Relaxed);
            }
            slot.needs_book = needs;
            slot.fuses = fuses;
        }
    }

    /// Runs until `input` closes and is drained; publishes pending fused books on the way out.
    pub fn run(mut self, input: Receiver<Staged>, wait: WaitStrategy) {
        let tick = Duration::from_millis(50);
        loop {
            let now = Instant::now();
            let deadline = self
                .next_deadline(now)
                .unwrap_or(now + tick)
                .min(now + tick);
            match recv_until(&input, deadline, wait) {
                Recv::Item(first) => {
                    let mut next = Some(first);
                    let mut n = 0;
                    while let Some(s) = next {
                        self.handle(s);
                        n += 1;
                        next = if n < 1024 {
                            input.try_recv().ok()
                        } else {
                            None
                        };
                    }
                }
                Recv::Timeout => {}
                Recv::Closed => break,
            }
            self.timers(Instant::now());
            self.flush_stats();
        }
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|s| s.dirty) {
                self.publish_fused(i, Instant::now());
            }
        }
        self.flush_stats();
    }

    /// One step of the stage, for hosts that drive it themselves (benchmarks, other
    /// runtimes): handles one staged event and runs the timers. Counters are flushed by
    /// [`Conductor::finish`].
    pub fn process(&mut self, staged: Staged) {
        self.handle(staged);
    }

    /// Publishes pending fused books and flushes counters.
    pub fn finish(&mut self) {
        self.timers(Instant::now());
        self.flush_stats();
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.dirty)
            .map(|s| s.last_publish.map_or(now, |t| t + self.cfg.throttle))
            .min()
    }

    fn handle(&mut self, staged: Staged) {
        let (mut event, publish) = match staged {
            Staged::Event { event, publish } => (event, publish),
            Staged::Reset(instrument) => {
                let id = self.slot_index(&instrument);
                if self.slot(id).needs_book {
                    let step = self.slot(id).sync.lose_sync(SyncError::StreamReset);
                    self.after_step(id, step, Instant::now());
                }
                return;
            }
            Staged::Barrier(done) => {
                self.refresh_table();
                self.flush_stats();
                let _ = done.send(());
                return;
            }
        };
        let started = (event.span_id != 0).then(SystemTime::now);
        let Some(inst) = event.instrument.clone() else {
            self.emit(event, started);
            return;
        };
        let id = self.slot_index(&inst);
        if self.slot(id).needs_book {
            // The clock is read only for book input (staleness, throttle), not per event.
            let now = Instant::now();
            let step = match &event.payload {
                Payload::Delta(d) => {
                    let slot = self.slots[id].as_mut().expect("indexed");
                    slot.last_diff = now;
                    slot.last_ingress_ns = event.ingress_ns;
                    slot.last_trace = event.trace_id;
                    let step = slot.sync.on_delta(d);
                    event.quality = slot.sync.status.quality();
                    Some(step)
                }
                Payload::Snapshot(s) => {
                    let slot = self.slots[id].as_mut().expect("indexed");
                    slot.last_ingress_ns = event.ingress_ns;
                    slot.last_trace = event.trace_id;
                    Some(slot.sync.on_snapshot(s))
                }
                _ => None,
            };
            if let Some(step) = step {
                if step.ignored {
                    // A duplicate or replayed diff: the book already has it; publishing it
                    // again would hand consumers the same change twice.
                    self.stats.dropped_duplicate[event.event_type.index()]
                        .fetch_add(1, Ordering::Relaxed);
                    self.reclaim(event.payload);
                    return;
                }
                self.after_step(id, step, now);
            }
        }
        // Book input nobody subscribed to stops here (the dispatcher counted it filtered).
        if publish {
            self.emit(event, started);
        } else {
            self.reclaim(event.payload);
        }
    }

    /// Keeps the reusable parts of a payload nobody reads any more: diff vectors go back to
    /// the parser's pool, fused books to this stage's own.
    #[inline]
    fn reclaim(&mut self, payload: Payload) {
        match payload {
            Payload::Delta(d) => {
                pool::give_levels(d.bids);
                pool::give_levels(d.asks);
            }
            Payload::Snapshot(s) => {
                pool::give_levels(s.bids);
                pool::give_levels(s.asks);
            }
            Payload::Fused(book) if self.spare_books.len() < SPARE_BOOKS => {
                self.spare_books.push_back(book);
            }
            _ => {}
        }
    }

    /// A fused book to fill: a spare one no reader holds any more, or a new one.
    fn fresh_book(&mut self) -> Arc<FusedBook> {
        // The oldest spares are the likeliest to be free; a few tries bound the cost.
        for _ in 0..self.spare_books.len().min(4) {
            let mut b = self.spare_books.pop_front().expect("counted");
            if let Some(book) = Arc::get_mut(&mut b) {
                book.bids.clear();
                book.asks.clear();
                return b;
            }
            self.spare_books.push_back(b);
        }
        Arc::new(FusedBook::default())
    }

    fn after_step(&mut self, id: usize, step: Step, now: Instant) {
        let slot = self.slots[id].as_mut().expect("indexed");
        if let Some(e) = step.lost {
            crate::info!("{}: {e}; resyncing", slot.instrument);
            self.stats.resyncs[id].store(slot.sync.resyncs, Ordering::Relaxed);
        }
        if step.request_snapshot {
            let _ = self.snapshots.send(SnapshotRequest {
                instrument: slot.instrument.clone(),
                reason: SnapshotReason::Resync,
            });
        }
        if step.status_changed {
            let code = match slot.sync.status {
                SyncStatus::Syncing => 0,
                SyncStatus::Live => 1,
                SyncStatus::Stale => 2,
            };
            self.stats.status[id].store(code, Ordering::Relaxed);
            crate::info!("{}: book {}", slot.instrument, slot.sync.status.quality());
            // Status changes are published as they happen, outside the throttle.
            if slot.fuses {
                self.publish_fused(id, now);
            }
        } else if step.changed && slot.fuses && slot.sync.in_sync() {
            if slot.dirty {
                self.stats.coalesced[id].fetch_add(1, Ordering::Relaxed);
            }
            slot.dirty = true;
            let due = slot
                .last_publish
                .is_none_or(|t| now.duration_since(t) >= self.cfg.throttle);
            if due {
                self.publish_fused(id, now);
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        for id in 0..self.slots.len() {
            let Some(s) = self.slots[id].as_ref() else {
                continue;
            };
            if s.dirty
                && s.last_publish
                    .is_none_or(|t| now.duration_since(t) >= self.cfg.throttle)
            {
                self.publish_fused(id, now);
            }
            let s = self.slots[id].as_mut().expect("checked above");
            if s.needs_book
                && s.sync.status == SyncStatus::Live
                && now.duration_since(s.last_diff) > self.cfg.staleness
            {
                let step = s.sync.mark_stale();
                self.after_step(id, step, now);
            }
        }
    }

    fn publish_fused(&mut self, id: usize, now: Instant) {
        let depth = self.cfg.book_depth;
        let slot = self.slots[id].as_mut().expect("indexed");
        slot.dirty = false;
        slot.last_publish = Some(now);
        let status = slot.sync.status.quality();
        let mut book = self.fresh_book();
        let slot = self.slots[id].as_mut().expect("indexed");
        let fused = Arc::get_mut(&mut book).expect("fresh books are unshared");
        fused.last_update_id = slot.sync.book.last_update_id;
        fused.status = status;
        // A book that is not in sync is never published with content.
        if slot.sync.in_sync() {
            fused.bids.reserve(depth.min(slot.sync.book.depth().0));
            fused.asks.reserve(depth.min(slot.sync.book.depth().1));
            slot.sync
                .book
                .top_into(depth, &mut fused.bids, &mut fused.asks);
        }
        loop {
            match MemorySnapshotStore::cas_cell(&slot.cell, slot.version, book.clone()) {
                Ok(v) => {
                    slot.version = v;
                    if let Some(m) = &self.mirror {
                        m.offer(slot.key.clone(), book.clone());
                    }
                    break;
                }
                Err(StoreError::Conflict { current, .. }) => {
                    self.stats.cas_conflicts.fetch_add(1, Ordering::Relaxed);
                    slot.version = current.map_or(0, |r| r.version);
                }
                Err(e) => {
                    // The store is part of what consumers read: a book that cannot be
                    // stored is reported stale until it can.
                    crate::warn!("{}: snapshot store: {e}", slot.instrument);
                    if slot.sync.status == SyncStatus::Live {
                        slot.sync.mark_stale();
                        self.stats.status[id].store(2, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        let event = Event {
            event_type: EventType::AnalyticsFused,
            source: "meltica.conductor",
            ts_ms: if self.deterministic {
                (slot.last_ingress_ns / 1_000_000) as i64
            } else {
                clock::wall_ms()
            },
            instrument: Some(slot.instrument.clone()),
            seq: 0,
            payload: Payload::Fused(book),
            ingress_ns: slot.last_ingress_ns,
            latency_ns: 0,
            trace_id: slot.last_trace,
            span_id: 0,
            quality: status,
        };
        self.emit(event, None);
    }

    /// Numbers the event (gap-free per instrument and type) and publishes it.
    #[inline]
    fn emit(&mut self, mut event: Event, started: Option<SystemTime>) {
        if event.ingress_ns != 0 && !self.deterministic {
            event.latency_ns = clock::mono_ns().saturating_sub(event.ingress_ns);
        }
        if let Some(i) = &event.instrument {
            let id = i.id() as usize;
            if self.seqs.len() <= id {
                self.seqs.resize(id + 1, [0; EventType::COUNT]);
            }
            let seq = &mut self.seqs[id][event.event_type.index()];
            *seq += 1;
            event.seq = *seq;
            let counts = &mut self.local_published[id];
            if counts.iter().all(|c| *c == 0) {
                self.touched.push(id as u32);
            }
            counts[event.event_type.index()] += 1;
        }
        let Some(started) = started else {
            let shared = self.share(event);
            self.bus.publish(shared);
            return;
        };
        // A sampled event: conductor.orchestrate, then databus.publish, each the child of
        // the span before it.
        let attrs = [
            KeyValue::new("instrument", event.instrument_name().to_owned()),
            KeyValue::new("type", event.event_type.as_str()),
            KeyValue::new("seq", event.seq as i64),
            KeyValue::new("quality", event.quality.as_str()),
        ];
        let (trace, parent, latency) = (event.trace_id, event.span_id, event.latency_ns);
        let now = SystemTime::now();
        let orchestrate = self.tracing.span(
            &mut self.rng,
            "conductor.orchestrate",
            trace,
            parent,
            started,
            now,
            &attrs,
        );
        let publish_start = SystemTime::now();
        let shared = self.share(event);
        self.bus.publish(shared);
        self.tracing.span(
            &mut self.rng,
            "databus.publish",
            trace,
            orchestrate,
            publish_start,
            SystemTime::now(),
            &attrs,
        );
        if let Some(h) = &self.e2e_latency {
            h.record(
                latency as f64 / 1e3,
                &[KeyValue::new("type", attrs[1].value.as_str().into_owned())],
            );
        }
    }

    /// Wraps an event for publishing, reusing the allocation of the oldest published event
    /// when no consumer holds it any more.
    #[inline]
    fn share(&mut self, event: Event) -> Arc<Event> {
        let shared = match self.recycle.front_mut().and_then(Arc::get_mut) {
            Some(slot) => {
                let old = std::mem::replace(slot, event);
                let shared = self.recycle.pop_front().expect("front exists");
                self.reclaim(old.payload);
                shared
            }
            None => {
                if self.recycle.len() >= RECYCLE {
                    self.recycle.pop_front();
                }
                Arc::new(event)
            }
        };
        self.recycle.push_back(shared.clone());
        shared
    }

    fn flush_stats(&mut self) {
        for id in self.touched.drain(..) {
            let local = &mut self.local_published[id as usize];
            for (l, s) in local.iter_mut().zip(&self.stats.published[id as usize]) {
                if *l != 0 {
                    s.fetch_add(*l, Ordering::Relaxed);
                    *l = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::InstrumentRegistry;
    use crate::bus::{MemoryDataBus, SubscribeOptions, SubscriptionFilter};
    use crate::config::{Config, TradeStream, default_routes};
    use crate::schema::{BookDelta, BookSnapshot, Decimal, InstrumentInfo, SharedEvent};
    use crossbeam_channel::unbounded;

    struct Rig {
        tx: Sender<Staged>,
        sub: crate::bus::Subscription,
        stats: Arc<ConductorStats>,
        inst: Instrument,
        handle: std::thread::JoinHandle<()>,
        snaps: Receiver<SnapshotRequest>,
    }

    fn rig(throttle: Duration) -> Rig {
        let mut reg = InstrumentRegistry::default();
        let inst = reg.insert(InstrumentInfo::named("BTC-USDT").unwrap());
        let table = DispatchTable::from_config(&default_routes(), &reg, TradeStream::Trade);
        let shared: SharedTable = Arc::new(arc_swap::ArcSwap::from_pointee(table));
        let bus = Arc::new(MemoryDataBus::new());
        let sub = bus.subscribe(SubscriptionFilter::all(), SubscribeOptions::default());
        let stats = Arc::new(ConductorStats::new(4));
        let (snap_tx, snaps) = unbounded();
        let mut cfg = Config::default().conductor;
        cfg.throttle = throttle;
        let c = Conductor::new(
            cfg,
            shared,
            snap_tx,
            bus,
            Arc::new(MemorySnapshotStore::new()),
            stats.clone(),
        );
        let (tx, rx) = unbounded();
        let handle = std::thread::spawn(move || c.run(rx, WaitStrategy::Block));
        Rig {
            tx,
            sub,
            stats,
            inst,
            handle,
            snaps,
        }
    }

    fn event(inst: &Instrument, payload: Payload) -> Staged {
        Staged::Event {
            event: Event {
                event_type: payload.event_type(),
                source: "test",
                ts_ms: 0,
                instrument: Some(inst.clone()),
                seq: 0,
                payload,
                ingress_ns: 1,
                latency_ns: 0,
                trace_id: TraceId::NONE,
                span_id: 0,
                quality: Quality::Live,
            },
            publish: true,
        }
    }

    fn diff(u: u64, price: i64, qty: i64) -> Payload {
        Payload::Delta(BookDelta {
            first_update_id: u,
            final_update_id: u,
            bids: vec![(Decimal::from_int(price), Decimal::from_int(qty))],
            asks: vec![],
        })
    }

    fn snapshot(u: u64) -> Payload {
        Payload::Snapshot(BookSnapshot {
            last_update_id: u,
            bids: vec![(Decimal::from_int(100), Decimal::from_int(1))],
            asks: vec![(Decimal::from_int(200), Decimal::from_int(1))],
        })
    }

    fn drain(r: Rig) -> (Vec<SharedEvent>, Arc<ConductorStats>) {
        drop(r.tx);
        r.handle.join().unwrap();
        drop(r.snaps);
        let mut out = Vec::new();
        while let Ok(e) = r.sub.try_recv() {
            out.push(e);
        }
        (out, r.stats)
    }

    #[test]
    fn duplicate_diffs_produce_no_events_and_seq_stays_gap_free() {
        let r = rig(Duration::ZERO);
        let i = r.inst.clone();
        r.tx.send(event(&i, diff(10, 90, 1))).unwrap();
        assert!(
            r.snaps.recv_timeout(Duration::from_secs(5)).is_ok(),
            "snapshot requested"
        );
        r.tx.send(event(&i, snapshot(10))).unwrap();
        r.tx.send(event(&i, diff(11, 91, 1))).unwrap();
        r.tx.send(event(&i, diff(11, 91, 1))).unwrap(); // replayed
        r.tx.send(event(&i, diff(12, 92, 1))).unwrap();
        r.tx.send(event(&i, diff(10, 90, 1))).unwrap(); // old
        let (events, stats) = drain(r);
        let deltas: Vec<u64> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Delta(d) => Some(d.final_update_id),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, [10, 11, 12]);
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.event_type == EventType::OrderbookDelta)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(
            stats.dropped_duplicate[EventType::OrderbookDelta.index()].load(Ordering::Relaxed),
            2
        );
        let keys: Vec<String> = events.iter().map(|e| e.key()).collect();
        let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "keys are unique");
    }

    #[test]
    fn throttle_publishes_the_final_state_of_each_window() {
        let r = rig(Duration::from_millis(200));
        let i = r.inst.clone();
        r.tx.send(event(&i, diff(10, 90, 1))).unwrap();
        r.tx.send(event(&i, snapshot(10))).unwrap();
        for u in 11..=30 {
            r.tx.send(event(&i, diff(u, 90, u as i64))).unwrap();
        }
        std::thread::sleep(Duration::from_millis(400));
        let (events, stats) = drain(r);
        let fused: Vec<&FusedBook> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Fused(f) => Some(&**f),
                _ => None,
            })
            .collect();
        assert!(fused.len() < 20, "coalesced: {} fused events", fused.len());
        let last = fused.last().unwrap();
        assert_eq!(last.last_update_id, 30, "the final state is never lost");
        assert_eq!(last.bids[1], (Decimal::from_int(90), Decimal::from_int(30)));
        assert!(stats.coalesced[0].load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn zero_window_publishes_every_update() {
        let r = rig(Duration::ZERO);
        let i = r.inst.clone();
        r.tx.send(event(&i, diff(10, 90, 1))).unwrap();
        r.tx.send(event(&i, snapshot(10))).unwrap();
        for u in 11..=30 {
            r.tx.send(event(&i, diff(u, 90, u as i64))).unwrap();
        }
        let (events, _) = drain(r);
        let ids: Vec<u64> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Fused(f) if f.status == Quality::Live => Some(f.last_update_id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, (10..=30).collect::<Vec<_>>());
    }
}
