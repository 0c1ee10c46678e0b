//! The in-memory store: one `ArcSwap<Record>` cell per key. Reads are lock-free (the
//! registry of cells is itself an `ArcSwap`, copied on the rare write that adds a key);
//! writes are version-tagged compare-and-swap on the cell.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;

use super::{Key, Record, SnapshotStore, StoreError};
use crate::schema::FusedBook;

/// One key's cell. Writers holding it skip the registry entirely.
pub type Cell = Arc<ArcSwapOption<Record>>;

#[derive(Default)]
pub struct MemorySnapshotStore {
    cells: ArcSwap<HashMap<Key, Cell>>,
    /// Serialises the rare registry changes (new keys), never reads or CAS.
    adding: Mutex<()>,
}

impl MemorySnapshotStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cell for `key`, created on first use.
    pub fn cell(&self, key: &Key) -> Cell {
        if let Some(c) = self.cells.load().get(key) {
            return c.clone();
        }
        let _g = self.adding.lock();
        if let Some(c) = self.cells.load().get(key) {
            return c.clone();
        }
        let mut next = HashMap::clone(&self.cells.load());
        let cell: Cell = Arc::new(ArcSwapOption::empty());
        next.insert(key.clone(), cell.clone());
        self.cells.store(Arc::new(next));
        cell
    }

    /// Every key with a cell, sorted.
    pub fn keys(&self) -> Vec<Key> {
        let mut k: Vec<Key> = self.cells.load().keys().cloned().collect();
        k.sort();
        k
    }

    /// Version-tagged CAS on a cell: writes `book` as version `expected_version + 1` only
    /// if the cell still holds `expected_version` (0: empty).
    pub fn cas_cell(
        cell: &Cell,
        expected_version: u64,
        book: Arc<FusedBook>,
    ) -> Result<u64, StoreError> {
        let current = cell.load_full();
        let found = current.as_ref().map_or(0, |r| r.version);
        if found != expected_version {
            return Err(StoreError::Conflict {
                expected: expected_version,
                current,
            });
        }
        let new = Arc::new(Record {
            version: found + 1,
            updated_ms: crate::clock::wall_ms(),
            book,
        });
        let prev = cell.compare_and_swap(&current, Some(new));
        if same(&prev, &current) {
            Ok(found + 1)
        } else {
            Err(StoreError::Conflict {
                expected: expected_version,
                current: cell.load_full(),
            })
        }
    }

    /// Removes records not written for `ttl_ms`. A record written concurrently is never
    /// removed: the removal is itself a CAS against the expired record.
    pub fn sweep(&self, now_ms: i64, ttl_ms: i64) -> usize {
        let mut removed = 0;
        for cell in self.cells.load().values() {
            let current = cell.load_full();
            let Some(r) = current.as_ref() else { continue };
            if now_ms - r.updated_ms < ttl_ms {
                continue;
            }
            let prev = cell.compare_and_swap(&current, None);
            if same(&prev, &current) {
                removed += 1;
            }
        }
        removed
    }
}

fn same<G: std::ops::Deref<Target = Option<Arc<Record>>>>(a: &G, b: &Option<Arc<Record>>) -> bool {
    match (a.as_ref(), b.as_ref()) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    }
}

impl SnapshotStore for MemorySnapshotStore {
    fn get(&self, key: &Key) -> Result<Option<Arc<Record>>, StoreError> {
        Ok(self.cells.load().get(key).and_then(|c| c.load_full()))
    }

    fn put(&self, key: &Key, book: Arc<FusedBook>) -> Result<u64, StoreError> {
        let cell = self.cell(key);
        loop {
            let v = cell.load().as_ref().map_or(0, |r| r.version);
            match Self::cas_cell(&cell, v, book.clone()) {
                Ok(v) => return Ok(v),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn compare_and_swap(
        &self,
        key: &Key,
        expected_version: u64,
        book: Arc<FusedBook>,
    ) -> Result<u64, StoreError> {
        Self::cas_cell(&self.cell(key), expected_version, book)
    }

    fn sweep_expired(&self, ttl: std::time::Duration) -> Result<usize, StoreError> {
        Ok(self.sweep(crate::clock::wall_ms(), ttl.as_millis() as i64))
    }
}
