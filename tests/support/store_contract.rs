//! The `SnapshotStore` contract, written once and run against every store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meltica::schema::{Decimal, EventType, FusedBook, Quality};
use meltica::snapshot::{Key, SnapshotStore, StoreError};

fn book(id: u64) -> Arc<FusedBook> {
    Arc::new(FusedBook {
        last_update_id: id,
        status: Quality::Live,
        bids: vec![(Decimal::from_int(100), Decimal::from_raw(id as i64))],
        asks: vec![(Decimal::from_int(101), Decimal::from_raw(id as i64))],
    })
}

fn key(instrument: &str) -> Key {
    Key {
        market: "BINANCE-SPOT".into(),
        instrument: instrument.into(),
        event_type: EventType::AnalyticsFused,
    }
}

/// get / put / compare_and_swap semantics.
pub fn basic<S: SnapshotStore>(store: &S, prefix: &str) {
    let k = key(&format!("{prefix}-BASIC"));
    assert!(store.get(&k).unwrap().is_none(), "fresh key is empty");
    assert_eq!(store.compare_and_swap(&k, 0, book(1)).unwrap(), 1);
    let r = store.get(&k).unwrap().unwrap();
    assert_eq!((r.version, r.book.last_update_id), (1, 1));
    // A stale expectation conflicts and returns the current record.
    match store.compare_and_swap(&k, 0, book(9)) {
        Err(StoreError::Conflict {
            current: Some(cur), ..
        }) => assert_eq!(cur.version, 1),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.compare_and_swap(&k, 1, book(2)).unwrap(), 2);
    assert_eq!(store.put(&k, book(3)).unwrap(), 3);
    let r = store.get(&k).unwrap().unwrap();
    assert_eq!((r.version, r.book.last_update_id), (3, 3));
    assert_eq!(*r.book, *book(3), "the book round-trips intact");
    // Keys are independent.
    assert!(
        store
            .get(&key(&format!("{prefix}-OTHER")))
            .unwrap()
            .is_none()
    );
}

/// Records older than the TTL are swept; fresh ones stay.
pub fn ttl<S: SnapshotStore>(store: &S, prefix: &str) {
    let old = key(&format!("{prefix}-OLD"));
    let fresh = key(&format!("{prefix}-FRESH"));
    store.put(&old, book(1)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    store.put(&fresh, book(1)).unwrap();
    let removed = store.sweep_expired(Duration::from_millis(200)).unwrap();
    assert!(removed >= 1);
    assert!(store.get(&old).unwrap().is_none(), "expired record swept");
    assert!(store.get(&fresh).unwrap().is_some(), "fresh record kept");
    // A swept key starts again from version 0.
    assert_eq!(store.compare_and_swap(&old, 0, book(5)).unwrap(), 1);
}

/// 4 writers CAS the same key; readers never see a torn record; no update is lost.
pub fn contended<S: SnapshotStore + 'static>(store: Arc<S>, prefix: &str, per_thread: u64) {
    let k = key(&format!("{prefix}-HOT"));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, k, stop) = (store.clone(), k.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = store.get(&k).unwrap() {
                        // Each write stores its own version in the book: a torn record would
                        // mix two writes.
                        assert_eq!(r.version, r.book.last_update_id, "torn record");
                        assert_eq!(r.book.bids[0].1.raw() as u64, r.version, "torn record");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            std::thread::spawn(move || {
                let mut wins = 0;
                let mut conflicts = 0u64;
                let mut expected = store.get(&k).unwrap().map_or(0, |r| r.version);
                while wins < per_thread {
                    match store.compare_and_swap(&k, expected, book(expected + 1)) {
                        Ok(v) => {
                            wins += 1;
                            expected = v;
                        }
                        Err(StoreError::Conflict { current, .. }) => {
                            conflicts += 1;
                            expected = current.map_or(0, |r| r.version);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let r = store.get(&k).unwrap().unwrap();
    assert_eq!(r.version, 4 * per_thread, "an update was lost");
    println!(
        "contended CAS: {} wins, {conflicts} conflicts retried, {reads} consistent reads",
        4 * per_thread
    );
}
