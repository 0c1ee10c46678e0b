//! Measures the snapshot store: a lock-free read of the latest book, an uncontended
//! version-tagged CAS, and CAS with a second thread writing the same key, beside an
//! `RwLock<HashMap>` store doing the same.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meltica::schema::FusedBook;
use meltica::snapshot::{Key, MemorySnapshotStore, Record, SnapshotStore};
use parking_lot::RwLock;

/// The baseline's write: bump the version of `key`'s record under the write lock.
fn rwlock_write(map: &RwLock<HashMap<Key, Arc<Record>>>, key: &Key, book: &Arc<FusedBook>) {
    let mut m = map.write();
    let r = m.get_mut(key).unwrap();
    *r = Arc::new(Record {
        version: r.version + 1,
        updated_ms: 0,
        book: book.clone(),
    });
}

fn bench(c: &mut Criterion) {
    let store = Arc::new(MemorySnapshotStore::new());
    let key = Key::fused("BTC-USDT");
    let book = Arc::new(FusedBook::default());
    store.put(&key, book.clone()).unwrap();
    let cell = store.cell(&key);

    let baseline: Arc<RwLock<HashMap<Key, Arc<Record>>>> = Arc::new(RwLock::new(HashMap::new()));
    baseline.write().insert(
        key.clone(),
        Arc::new(Record {
            version: 1,
            updated_ms: 0,
            book: book.clone(),
        }),
    );

    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("read/meltica_cell", |b| {
        b.iter(|| black_box(cell.load().as_ref().map(|r| r.version)))
    });
    g.bench_function("read/meltica_store_get", |b| {
        b.iter(|| black_box(store.get(&key).unwrap()))
    });
    g.bench_function("read/rwlock_hashmap", |b| {
        b.iter(|| black_box(baseline.read().get(&key).cloned()))
    });

    let mut v = store.get(&key).unwrap().unwrap().version;
    g.bench_function("cas_uncontended/meltica", |b| {
        b.iter(|| {
            v = MemorySnapshotStore::cas_cell(&cell, v, book.clone()).unwrap();
        })
    });
    g.bench_function("cas_uncontended/rwlock_hashmap", |b| {
        b.iter(|| {
            rwlock_write(&baseline, &key, &book);
        })
    });

    // A second thread keeps writing the same key.
    for (name, meltica) in [
        ("cas_contended/meltica", true),
        ("cas_contended/rwlock_hashmap", false),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let other = {
            let (stop, cell, baseline, book, key) = (
                stop.clone(),
                cell.clone(),
                baseline.clone(),
                book.clone(),
                key.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if meltica {
                        let v = cell.load().as_ref().map_or(0, |r| r.version);
                        let _ = MemorySnapshotStore::cas_cell(&cell, v, book.clone());
                    } else {
                        rwlock_write(&baseline, &key, &book);
                    }
                }
            })
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                if meltica {
                    loop {
                        let v = cell.load().as_ref().map_or(0, |r| r.version);
                        if MemorySnapshotStore::cas_cell(&cell, v, book.clone()).is_ok() {
                            break;
                        }
                    }
                } else {
                    rwlock_write(&baseline, &key, &book);
                }
            })
        });
        stop.store(true, Ordering::Relaxed);
        other.join().unwrap();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
