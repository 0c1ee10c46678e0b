//! The `DataBus` contract and the consumer side of a subscription.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

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

/// Per-subscriber counters: `offered = delivered + dropped`.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    pub offered: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub(crate) closed: AtomicBool,
}

impl SubscriptionStats {
    pub fn offered(&self) -> u64 {
        self.offered.load(Ordering::Relaxed)
    }
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The consumer end of a subscription. Dropping it unsubscribes.
pub struct Subscription {
    pub(crate) rx: Receiver<SharedEvent>,
    pub(crate) stats: Arc<SubscriptionStats>,
}

impl Subscription {
    /// Blocks for the next event; `None` once the bus closed and the queue is drained.
    pub fn recv(&self) -> Option<SharedEvent> {
        self.rx.recv().ok()
    }

    /// Waits up to `timeout`. `Err(true)` when the bus closed and the queue is drained,
    /// `Err(false)` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<SharedEvent, bool> {
        self.rx
            .recv_timeout(timeout)
            .map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
    }

    /// Never blocks. `Err(true)` when closed and drained, `Err(false)` when empty.
    pub fn try_recv(&self) -> Result<SharedEvent, bool> {
        self.rx
            .try_recv()
            .map_err(|e| matches!(e, TryRecvError::Disconnected))
    }

    /// Events queued right now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    pub fn stats(&self) -> &SubscriptionStats {
        &self.stats
    }

    /// Blocking iterator that ends when the bus closes.
    pub fn iter(&self) -> impl Iterator<Item = SharedEvent> + '_ {
        self.rx.iter()
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
