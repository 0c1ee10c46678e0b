//! In-memory data bus: one bounded crossbeam queue per subscriber; the subscriber list is
//! an `ArcSwap` read without locks on every publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use parking_lot::Mutex;

use super::data::*;
use crate::config::BackpressurePolicy;
use crate::schema::SharedEvent;

struct Entry {
    filter: SubscriptionFilter,
    policy: BackpressurePolicy,
    tx: Sender<SharedEvent>,
    /// For `drop_oldest` only: the publisher pops the oldest queued event to make room.
    /// (Other policies hold no receiver, so a dropped consumer disconnects the queue.)
    rx: Option<Receiver<SharedEvent>>,
    stats: Arc<SubscriptionStats>,
    name: String,
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

    fn prune(&self) {
        let _w = self.writers.lock();
        let cur = self.entries.load_full();
        let kept: Vec<Arc<Entry>> = cur
            .iter()
            .filter(|e| !e.stats.closed.load(Ordering::Relaxed))
            .cloned()
            .collect();
        if kept.len() != cur.len() {
            self.entries.store(Arc::new(kept));
        }
    }
}

impl DataBus for MemoryDataBus {
    fn publish(&self, event: SharedEvent) {
        let entries = self.entries.load();
        let mut dead = false;
        for e in entries.iter() {
            if !e.filter.matches(&event) {
                continue;
            }
            if e.stats.closed.load(Ordering::Relaxed) {
                dead = true;
                continue;
            }
            e.stats.offered.fetch_add(1, Ordering::Relaxed);
            let delivered = match e.policy {
                BackpressurePolicy::Block => e.tx.send(event.clone()).is_ok(),
                BackpressurePolicy::DropNewest => match e.tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
                },
                BackpressurePolicy::DropOldest => {
                    let mut ev = event.clone();
                    let mut ok = false;
                    for _ in 0..4 {
                        match e.tx.try_send(ev) {
                            Ok(()) => {
                                ok = true;
                                break;
                            }
                            Err(TrySendError::Full(back)) => {
                                ev = back;
                                if e.rx.as_ref().is_some_and(|rx| rx.try_recv().is_ok()) {
                                    // The evicted event counts as this subscriber's drop.
                                    e.stats.dropped.fetch_add(1, Ordering::Relaxed);
                                    e.stats.delivered.fetch_sub(1, Ordering::Relaxed);
                                }
                            }
                            Err(TrySendError::Disconnected(_)) => break,
                        }
                    }
                    ok
                }
            };
            if delivered {
                e.stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                e.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if e.stats.closed.load(Ordering::Relaxed) {
                    dead = true;
                }
            }
        }
        if dead {
            self.prune();
        }
    }

    fn subscribe(&self, filter: SubscriptionFilter, options: SubscribeOptions) -> Subscription {
        let (tx, rx) = bounded(options.capacity.max(1));
        let stats = Arc::new(SubscriptionStats::default());
        if self.closed.load(Ordering::SeqCst) {
            drop(tx);
            return Subscription { rx, stats };
        }
        let entry = Arc::new(Entry {
            filter,
            policy: options.policy,
            tx,
            rx: (options.policy == BackpressurePolicy::DropOldest).then(|| rx.clone()),
            stats: stats.clone(),
            name: options.name,
        });
        let _w = self.writers.lock();
        let mut v: Vec<Arc<Entry>> = self.entries.load().iter().cloned().collect();
        v.push(entry);
        self.entries.store(Arc::new(v));
        Subscription { rx, stats }
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
