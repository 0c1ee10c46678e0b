//! In-memory data bus: one bounded crossbeam queue per subscriber (or a slot per key for
//! `conflate`); the subscriber list is an `ArcSwap` read without locks on every publish.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use parking_lot::Mutex;

use super::data::*;
use crate::config::BackpressurePolicy;
use crate::schema::SharedEvent;

enum Sink {
    Queue {
        tx: Sender<SharedEvent>,
        /// For `drop_oldest` only: the publisher pops the oldest queued event to make
        /// room. Other policies hold no receiver, so a dropped consumer disconnects.
        rx: Option<Receiver<SharedEvent>>,
    },
    Conflate {
        keys: Sender<ConflateKey>,
        slots: ConflateSlots,
    },
}

struct Entry {
    filter: SubscriptionFilter,
    policy: BackpressurePolicy,
    sink: Sink,
    stats: Arc<SubscriptionStats>,
    name: String,
    /// Set when `disconnect` cut this subscriber off.
    cut: AtomicBool,
}

#[derive(Default)]
pub struct MemoryDataBus {
    entries: ArcSwap<Vec<Arc<Entry>>>,
    writers: Mutex<()>,
    closed: AtomicBool,
}

impl MemoryDataBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.entries.load().len()
    }

    /// Removes closed and cut-off subscribers; their senders drop with them, which ends
    /// their consumers' iterators once drained.
    fn prune(&self) {
        let _w = self.writers.lock();
        let cur = self.entries.load_full();
        let kept: Vec<Arc<Entry>> = cur
            .iter()
            .filter(|e| !e.stats.closed.load(Ordering::Relaxed) && !e.cut.load(Ordering::Relaxed))
            .cloned()
            .collect();
        if kept.len() != cur.len() {
            self.entries.store(Arc::new(kept));
        }
    }

    /// Offers one event to one subscriber; false when the subscriber must be pruned.
    #[inline]
    fn offer(e: &Entry, event: &SharedEvent) -> bool {
        let stats = &e.stats;
        if e.cut.load(Ordering::Relaxed) {
            stats.offered.fetch_add(1, Ordering::Relaxed);
            stats.count_drop(DropReason::Disconnected);
            return false;
        }
        stats.offered.fetch_add(1, Ordering::Relaxed);
        let ok = match (&e.sink, e.policy) {
            (Sink::Queue { tx, .. }, BackpressurePolicy::Block) => tx.send(event.clone()).is_ok(),
            (Sink::Queue { tx, .. }, BackpressurePolicy::DropNewest) => {
                match tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        stats.count_drop(DropReason::QueueFull);
                        return true;
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
            }
            (Sink::Queue { tx, rx }, BackpressurePolicy::DropOldest) => {
                let mut ev = event.clone();
                loop {
                    match tx.try_send(ev) {
                        Ok(()) => break true,
                        Err(TrySendError::Full(back)) => {
                            ev = back;
                            if rx.as_ref().is_some_and(|rx| rx.try_recv().is_ok()) {
                                stats.count_drop(DropReason::Evicted);
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => break false,
                    }
                }
            }
            (Sink::Queue { tx, .. }, _) => match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    // `disconnect`: a consumer that cannot keep up is cut off with a reason.
                    e.cut.store(true, Ordering::Relaxed);
                    *stats.disconnect_reason.lock() = Some(format!(
                        "queue of {} full: consumer too slow; cut off (policy disconnect)",
                        tx.capacity().unwrap_or(0)
                    ));
                    stats.count_drop(DropReason::Disconnected);
                    crate::warn!("subscriber {} cut off: queue full", e.name);
                    return false;
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
            (Sink::Conflate { keys, slots }, _) => {
                let key = (
                    event.instrument.as_ref().map_or(u32::MAX, |i| i.id()),
                    event.event_type,
                );
                let replaced = slots.lock().insert(key, event.clone());
                if replaced.is_some() {
                    stats.count_drop(DropReason::Conflated);
                    true
                } else {
                    keys.send(key).is_ok()
                }
            }
        };
        ok && !stats.closed.load(Ordering::Relaxed)
    }
}

impl DataBus for MemoryDataBus {
    fn publish(&self, event: SharedEvent) {
        let entries = self.entries.load();
        let mut prune = false;
        for e in entries.iter() {
            if e.filter.matches(&event) && !Self::offer(e, &event) {
                prune = true;
            }
        }
        if prune {
            self.prune();
        }
    }

    fn subscribe(&self, filter: SubscriptionFilter, options: SubscribeOptions) -> Subscription {
        let stats = Arc::new(SubscriptionStats::default());
        let (sink, inner) = if options.policy == BackpressurePolicy::Conflate {
            let (ktx, krx) = unbounded();
            let slots: ConflateSlots = Arc::new(Mutex::new(HashMap::new()));
            (
                Sink::Conflate {
                    keys: ktx,
                    slots: slots.clone(),
                },
                Inner::Conflate(krx, slots),
            )
        } else {
            let (tx, rx) = bounded(options.capacity.max(1));
            let keep = (options.policy == BackpressurePolicy::DropOldest).then(|| rx.clone());
            (Sink::Queue { tx, rx: keep }, Inner::Queue(rx))
        };
        if self.closed.load(Ordering::SeqCst) {
            drop(sink);
            return Subscription { inner, stats };
        }
        let entry = Arc::new(Entry {
            filter,
            policy: options.policy,
            sink,
            stats: stats.clone(),
            name: options.name,
            cut: AtomicBool::new(false),
        });
        let _w = self.writers.lock();
        // Subscriptions closed since the last publish that matched them go now, so one that
        // never matches anything does not keep its queue for ever.
        let mut v: Vec<Arc<Entry>> = self
            .entries
            .load()
            .iter()
            .filter(|e| !e.stats.closed.load(Ordering::Relaxed) && !e.cut.load(Ordering::Relaxed))
            .cloned()
            .collect();
        v.push(entry);
        self.entries.store(Arc::new(v));
        Subscription { inner, stats }
    }

    fn close(&self) {
        let _w = self.writers.lock();
        self.closed.store(true, Ordering::SeqCst);
        for e in self.entries.load().iter() {
            if e.stats.dropped() > 0 {
                crate::info!(
                    "subscriber {} dropped {} of {} events ({})",
                    e.name,
                    e.stats.dropped(),
                    e.stats.offered(),
                    e.policy.as_str()
                );
            }
        }
        self.entries.store(Arc::new(Vec::new()));
    }
}
