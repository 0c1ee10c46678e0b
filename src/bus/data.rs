//! The `DataBus` contract and the consumer side of a subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use parking_lot::Mutex;

use crate::config::BackpressurePolicy;
use crate::schema::{Event, EventType, SharedEvent};

/// Which events a subscriber wants. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionFilter {
    pub types: Vec<EventType>,
    pub instruments: Vec<String>,
    pub markets: Vec<String>,
}

impl SubscriptionFilter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn types(types: &[EventType]) -> Self {
        SubscriptionFilter {
            types: types.to_vec(),
            ..Self::default()
        }
    }

    pub fn with_instruments(mut self, instruments: &[&str]) -> Self {
        self.instruments = instruments.iter().map(|s| s.to_string()).collect();
        self
    }

    #[inline]
    pub fn matches(&self, e: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&e.event_type))
            && (self.instruments.is_empty()
                || self.instruments.iter().any(|i| i == e.instrument_name()))
            && (self.markets.is_empty()
                || self
                    .markets
                    .iter()
                    .any(|m| m == crate::schema::MARKET_BINANCE_SPOT))
    }
}

/// How a subscriber's queue behaves.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub capacity: usize,
    pub policy: BackpressurePolicy,
    /// Shown in logs and stats.
    pub name: String,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            capacity: 65_536,
            policy: BackpressurePolicy::Block,
            name: "consumer".into(),
        }
    }
}

impl SubscribeOptions {
    pub fn new(name: &str, capacity: usize, policy: BackpressurePolicy) -> Self {
        SubscribeOptions {
            capacity,
            policy,
            name: name.to_owned(),
        }
    }
}

/// Why events did not reach a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `drop_newest`: the queue was full; the new event was discarded.
    QueueFull,
    /// `drop_oldest`: the oldest queued event was evicted to make room.
    Evicted,
    /// `conflate`: a newer event for the same (instrument, type) replaced it.
    Conflated,
    /// `disconnect`: the subscriber was cut off; everything after that is dropped.
    Disconnected,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Evicted => "evicted",
            DropReason::Conflated => "conflated",
            DropReason::Disconnected => "disconnected",
        }
    }
}

/// Per-subscriber counters. Once the queue is drained:
/// `offered = delivered + dropped`, and `delivered` is what the consumer received.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    pub offered: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_evicted: AtomicU64,
    pub dropped_conflated: AtomicU64,
    pub dropped_disconnected: AtomicU64,
    /// Drops the consumer has already been told about.
    pub(crate) notified: AtomicU64,
    pub(crate) closed: AtomicBool,
    pub(crate) disconnect_reason: Mutex<Option<String>>,
}

impl SubscriptionStats {
    pub fn offered(&self) -> u64 {
        self.offered.load(Ordering::Relaxed)
    }
    /// Offered and not dropped: queued for, or received by, the consumer.
    pub fn delivered(&self) -> u64 {
        self.offered().saturating_sub(self.dropped())
    }
    /// Drops for one reason.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::Evicted => &self.dropped_evicted,
            DropReason::Conflated => &self.dropped_conflated,
            DropReason::Disconnected => &self.dropped_disconnected,
        }
        .load(Ordering::Relaxed)
    }
    /// Drops for every reason.
    pub fn dropped(&self) -> u64 {
        [
            DropReason::QueueFull,
            DropReason::Evicted,
            DropReason::Conflated,
            DropReason::Disconnected,
        ]
        .into_iter()
        .map(|r| self.dropped_for(r))
        .sum()
    }
    pub(crate) fn count_drop(&self, reason: DropReason) {
        match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::Evicted => &self.dropped_evicted,
            DropReason::Conflated => &self.dropped_conflated,
            DropReason::Disconnected => &self.dropped_disconnected,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    /// Why the bus cut this subscriber off, if it did.
    pub fn disconnect_reason(&self) -> Option<String> {
        self.disconnect_reason.lock().clone()
    }
}

/// Conflation key: instrument id (or `u32::MAX` for none) and type.
pub(crate) type ConflateKey = (u32, EventType);

/// The shared slots of a `conflate` subscriber: the latest event per key.
pub(crate) type ConflateSlots = Arc<Mutex<HashMap<ConflateKey, SharedEvent>>>;

pub(crate) enum Inner {
    Queue(Receiver<SharedEvent>),
    /// Keys in the order they became pending; the event is taken from the slots.
    Conflate(Receiver<ConflateKey>, ConflateSlots),
}

/// What [`Subscription::next`] hands the consumer.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(SharedEvent),
    /// `count` events were dropped since the last notice (by the subscriber's policy).
    Missed {
        count: u64,
    },
}

/// The consumer end of a subscription. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) inner: Inner,
    pub(crate) stats: Arc<SubscriptionStats>,
}

impl Subscription {
    fn take(&self, key: ConflateKey, slots: &ConflateSlots) -> Option<SharedEvent> {
        slots.lock().remove(&key)
    }

    /// Blocks for the next event; `None` once the bus closed (or cut this subscriber off)
    /// and the queue is drained.
    pub fn recv(&self) -> Option<SharedEvent> {
        match &self.inner {
            Inner::Queue(rx) => rx.recv().ok(),
            Inner::Conflate(keys, slots) => loop {
                let k = keys.recv().ok()?;
                if let Some(e) = self.take(k, slots) {
                    return Some(e);
                }
            },
        }
    }

    /// Waits up to `timeout`. `Err(true)` when closed and drained, `Err(false)` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<SharedEvent, bool> {
        match &self.inner {
            Inner::Queue(rx) => rx
                .recv_timeout(timeout)
                .map_err(|e| matches!(e, RecvTimeoutError::Disconnected)),
            Inner::Conflate(keys, slots) => {
                let deadline = Instant::now() + timeout;
                loop {
                    let k = keys
                        .recv_deadline(deadline)
                        .map_err(|e| matches!(e, RecvTimeoutError::Disconnected))?;
                    if let Some(e) = self.take(k, slots) {
                        return Ok(e);
                    }
                }
            }
        }
    }

    /// Never blocks. `Err(true)` when closed and drained, `Err(false)` when empty.
    pub fn try_recv(&self) -> Result<SharedEvent, bool> {
        match &self.inner {
            Inner::Queue(rx) => rx
                .try_recv()
                .map_err(|e| matches!(e, TryRecvError::Disconnected)),
            Inner::Conflate(keys, slots) => loop {
                let k = keys
                    .try_recv()
                    .map_err(|e| matches!(e, TryRecvError::Disconnected))?;
                if let Some(e) = self.take(k, slots) {
                    return Ok(e);
                }
            },
        }
    }

    /// Like [`Subscription::recv`], but first tells the consumer how many events it
    /// missed since the last notice, so a lossy consumer knows it has a hole.
    pub fn next(&self) -> Option<Delivery> {
        if let Some(n) = self.missed() {
            return Some(Delivery::Missed { count: n });
        }
        let ev = self.recv();
        match ev {
            Some(e) => Some(Delivery::Event(e)),
            None => self.missed().map(|count| Delivery::Missed { count }),
        }
    }

    /// Events dropped since the last call (or since the last [`Delivery::Missed`]).
    pub fn missed(&self) -> Option<u64> {
        let dropped = self.stats.dropped();
        let seen = self.stats.notified.swap(dropped, Ordering::Relaxed);
        (dropped > seen).then_some(dropped - seen)
    }

    /// Events queued right now.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Queue(rx) => rx.len(),
            Inner::Conflate(_, slots) => slots.lock().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> &SubscriptionStats {
        &self.stats
    }

    /// Blocking iterator that ends when the bus closes.
    pub fn iter(&self) -> impl Iterator<Item = SharedEvent> + '_ {
        std::iter::from_fn(move || self.recv())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stats.closed.store(true, Ordering::Relaxed);
    }
}

/// Fans events out to subscribers.
pub trait DataBus: Send + Sync {
    /// Publishes one event to every matching subscriber (one allocation shared by all).
    fn publish(&self, event: SharedEvent);
    fn subscribe(&self, filter: SubscriptionFilter, options: SubscribeOptions) -> Subscription;
    /// Ends every subscription once its queue is drained.
    fn close(&self);
}

/// Drops events already seen, for consumers of at-least-once sources (a replayed stream,
/// a redelivering broker): an event is new if its `seq` is above the last one seen for its
/// (instrument, type) — equivalently, if its `key` was not seen.
#[derive(Debug, Default)]
pub struct Deduplicator {
    last: HashMap<(String, EventType), u64>,
    duplicates: u64,
}

impl Deduplicator {
    pub fn new() -> Self {
        Self::default()
    }

    /// True the first time an event's key is seen (and for every later `seq`).
    pub fn is_new(&mut self, e: &Event) -> bool {
        let last = self
            .last
            .entry((e.instrument_name().to_owned(), e.event_type))
            .or_insert(0);
        if e.seq > *last {
            *last = e.seq;
            true
        } else {
            self.duplicates += 1;
            false
        }
    }

    /// How many duplicates were refused.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}
