//! Snapshot store: the latest fused book per (market, instrument, type), readable without
//! locks and updated by version-tagged compare-and-swap.

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;

pub use memory::MemorySnapshotStore;

use crate::schema::{EventType, FusedBook};

/// Identifies a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Shared strings: a key is cloned per write-through without allocating.
    pub market: Arc<str>,
    pub instrument: Arc<str>,
    pub event_type: EventType,
}

impl Key {
    pub fn fused(instrument: &str) -> Key {
        Key {
            market: crate::schema::MARKET_BINANCE_SPOT.into(),
            instrument: instrument.into(),
            event_type: EventType::AnalyticsFused,
        }
    }
}

/// A stored value with its version (bumped by every successful write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    /// Wall-clock milliseconds of the write.
    pub updated_ms: i64,
    pub book: Arc<FusedBook>,
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("version conflict: expected {expected}, found {}", current.as_ref().map_or(0, |r| r.version))]
    Conflict {
        expected: u64,
        /// The record as it is now (None if absent).
        current: Option<Arc<Record>>,
    },
    #[error("snapshot store unavailable: {0}")]
    Unavailable(String),
}

/// A copy of the store kept elsewhere (Redis), written from its own thread: `offer` never
/// blocks the conductor, and a newer book for a key supersedes an older one not yet written.
pub trait SnapshotMirror: Send + Sync {
    fn offer(&self, key: Key, book: Arc<FusedBook>);
}

/// The snapshot store contract, shared by every backend.
pub trait SnapshotStore: Send + Sync {
    fn get(&self, key: &Key) -> Result<Option<Arc<Record>>, StoreError>;
    /// Writes unconditionally; returns the new version.
    fn put(&self, key: &Key, book: Arc<FusedBook>) -> Result<u64, StoreError>;
    /// Writes only if the stored version is `expected_version` (0: absent); on conflict
    /// returns the current record so the caller can retry against it.
    fn compare_and_swap(
        &self,
        key: &Key,
        expected_version: u64,
        book: Arc<FusedBook>,
    ) -> Result<u64, StoreError>;
    /// Removes records older than `ttl` without ever undoing a concurrent write; returns
    /// how many were removed.
    fn sweep_expired(&self, ttl: std::time::Duration) -> Result<usize, StoreError>;
}
