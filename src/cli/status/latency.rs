//! Ingress-to-publish latency of published events, per instrument, for the status view.
//!
//! A `drop_oldest` subscription on the data bus feeds a `meltica-view` thread that reads
//! each event's `latency_ns` and lets go of the event at once, so the conductor's recycled
//! allocations come back to it and a slow terminal never holds the data path: the thread
//! only records into histograms, and rendering (which writes to the terminal) happens on
//! the caller's thread. If the thread falls behind anyway, the bus evicts its oldest
//! queued events and counts them; the engine never waits for the view.
//!
//! Only the types that pass through the engine are measured (those in
//! [`EngineCounts::INGESTED_TYPES`]): an `ANALYTICS.FUSED` event carries the ingress time
//! of the last diff it fused, so its latency includes the throttle window by design.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::bus::{SubscribeOptions, Subscription, SubscriptionFilter, SubscriptionStats};
use crate::config::BackpressurePolicy;
use crate::engine::{Engine, EngineCounts};
use crate::schema::Event;

/// Queue of the view's subscription. Holds pointers only; the thread keeps it near empty.
const CAPACITY: usize = 4096;
/// Events recorded per lock of the shared histograms.
const BATCH: usize = 1024;
/// Longest latency told apart (the rest is clamped), in nanoseconds.
const MAX_NS: u64 = 60_000_000_000;

/// Latency percentiles of a set of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Latency {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub count: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            max_ns: h.max(),
            count: h.len(),
        })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 2).expect("static histogram bounds are valid")
}

/// What the thread has recorded: one histogram per instrument id since it was last read,
/// and one over the whole run.
struct Windows {
    by_instrument: Vec<Histogram<u64>>,
    run: Histogram<u64>,
}

impl Windows {
    fn record(&mut self, e: &Event) {
        // 0: not measured (no ingress time, or a deterministic replay).
        let (Some(inst), ns @ 1..) = (&e.instrument, e.latency_ns) else {
            return;
        };
        let id = inst.id() as usize;
        if self.by_instrument.len() <= id {
            self.by_instrument.resize_with(id + 1, histogram);
        }
        self.by_instrument[id].saturating_record(ns);
        self.run.saturating_record(ns);
    }
}

/// The view's subscription and the thread that drains it.
pub(super) struct LatencyTap {
    windows: Arc<Mutex<Windows>>,
    stats: Arc<SubscriptionStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LatencyTap {
    /// Subscribes to the engine's bus and starts the `meltica-view` thread.
    pub fn start(engine: &Engine) -> std::io::Result<LatencyTap> {
        let sub = engine.subscribe(
            SubscriptionFilter::types(&EngineCounts::INGESTED_TYPES),
            SubscribeOptions::new("status-view", CAPACITY, BackpressurePolicy::DropOldest),
        );
        let windows = Arc::new(Mutex::new(Windows {
            by_instrument: Vec::new(),
            run: histogram(),
        }));
        let stats = sub.stats.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("meltica-view".into())
            .spawn({
                let (windows, stop) = (windows.clone(), stop.clone());
                move || drain(&sub, &windows, &stop)
            })?;
        Ok(LatencyTap {
            windows,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Latency of an instrument's events since the last call for it; `None` if none came.
    pub fn take(&self, id: u32) -> Option<Latency> {
        let mut w = self.windows.lock();
        let h = w.by_instrument.get_mut(id as usize)?;
        let l = Latency::of(h);
        h.reset();
        l
    }

    /// Latency over every event seen since the tap started.
    pub fn run(&self) -> Option<Latency> {
        Latency::of(&self.windows.lock().run)
    }

    /// Events the bus evicted from the view's queue because the thread fell behind.
    pub fn evicted(&self) -> u64 {
        self.stats.dropped_for(crate::bus::DropReason::Evicted)
    }

    /// Stops the thread once it has recorded what is queued, and waits for it.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LatencyTap {
    fn drop(&mut self) {
        self.finish();
    }
}

fn drain(sub: &Subscription, windows: &Mutex<Windows>, stop: &AtomicBool) {
    loop {
        if stop.load(Ordering::Relaxed) {
            // What is queued now, and no more: a busy bus never runs dry.
            let mut w = windows.lock();
            for _ in 0..sub.len() {
                match sub.try_recv() {
                    Ok(e) => w.record(&e),
                    Err(_) => break,
                }
            }
            return;
        }
        let first = match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => e,
            // The bus closed and the queue is drained.
            Err(true) => return,
            Err(false) => continue,
        };
        let mut w = windows.lock();
        w.record(&first);
        drop(first);
        for _ in 1..BATCH {
            match sub.try_recv() {
                Ok(e) => w.record(&e),
                Err(_) => break,
            }
        }
    }
}
