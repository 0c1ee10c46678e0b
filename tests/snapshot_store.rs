//! The snapshot store contract against the in-memory store.

mod support;

use std::sync::Arc;

use meltica::snapshot::MemorySnapshotStore;
use support::store_contract;

#[test]
fn memory_store_basic_contract() {
    store_contract::basic(&MemorySnapshotStore::new(), "MEM");
}

#[test]
fn memory_store_ttl_sweep() {
    store_contract::ttl(&MemorySnapshotStore::new(), "MEM");
}

#[test]
fn memory_store_contended_cas_loses_nothing() {
    store_contract::contended(Arc::new(MemorySnapshotStore::new()), "MEM", 20_000);
}
