//! The in-memory store: one `ArcSwap<Record>` cell per key. Reads are lock-free; the
//! registry of cells changes only when a key is first written.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use parking_lot::RwLock;

use super::{Key, Record, SnapshotStore, StoreError};
use crate::schema::FusedBook;

/// One key's cell. Writers holding it skip the registry entirely.
pub type Cell = Arc<ArcSwapOption<Record>>;

#[derive(Default)]
pub struct MemorySnapshotStore {
    cells: RwLock<HashMap<Key, Cell>>,
}

impl MemorySnapshotStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cell for `key`, created on first use.
    pub fn cell(&self, key: &Key) -> Cell {
        if let Some(c) = self.cells.read().get(key) {
            return c.clone();
        }
        self.cells
            .write()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(ArcSwapOption::empty()))
            .clone()
    }

    /// Every key with a record.
    pub fn keys(&self) -> Vec<Key> {
        let mut k: Vec<Key> = self.cells.read().keys().cloned().collect();
        k.sort();
        k
    }

    /// Version-tagged CAS on a cell.
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
        let same = match (prev.as_ref(), current.as_ref()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            Ok(found + 1)
        } else {
            Err(StoreError::Conflict {
                expected: expected_version,
                current: cell.load_full(),
            })
        }
    }
}

impl SnapshotStore for MemorySnapshotStore {
    fn get(&self, key: &Key) -> Result<Option<Arc<Record>>, StoreError> {
        Ok(self.cells.read().get(key).and_then(|c| c.load_full()))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_is_version_tagged() {
        let s = MemorySnapshotStore::new();
        let k = Key::fused("BTC-USDT");
        assert_eq!(s.get(&k).unwrap(), None);
        assert_eq!(s.compare_and_swap(&k, 0, Arc::default()).unwrap(), 1);
        let e = s.compare_and_swap(&k, 0, Arc::default()).unwrap_err();
        let StoreError::Conflict { current, .. } = e else {
            panic!()
        };
        assert_eq!(current.unwrap().version, 1);
        assert_eq!(s.put(&k, Arc::default()).unwrap(), 2);
        assert_eq!(s.get(&k).unwrap().unwrap().version, 2);
    }

    #[test]
    fn concurrent_cas_never_loses_an_increment() {
        let s = Arc::new(MemorySnapshotStore::new());
        let k = Key::fused("ETH-USDT");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                let k = k.clone();
                std::thread::spawn(move || {
                    let mut wins = 0;
                    while wins < 500 {
                        let v = s.get(&k).unwrap().map_or(0, |r| r.version);
                        if s.compare_and_swap(&k, v, Arc::default()).is_ok() {
                            wins += 1;
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.get(&k).unwrap().unwrap().version, 2000);
    }
}
