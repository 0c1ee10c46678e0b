//! Measures applying one depth diff (up to 10 bids and 10 asks, near the top of a
//! 1000-level book) to meltica's sorted-vector book (whole sides in Binance's order, and
//! level by level), to a `BTreeMap` book, and through the full sync state machine
//! (`BookSync::on_delta`, live), on the same generated diffs.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meltica::conductor::book::{OrderBook, Side};
use meltica::conductor::sync::BookSync;
use meltica::schema::{BookDelta, BookSnapshot, Decimal, Level};

const LEVELS: i64 = 1000;
const MID: i64 = 5_000_000; // in ticks

fn snapshot() -> BookSnapshot {
    let q = Decimal::from_raw(100_000_000);
    BookSnapshot {
        last_update_id: 1,
        bids: (1..=LEVELS)
            .map(|i| (Decimal::from_raw(MID - i), q))
            .collect(),
        asks: (1..=LEVELS)
            .map(|i| (Decimal::from_raw(MID + i), q))
            .collect(),
    }
}

/// Diffs like a busy market's: mostly quantity changes near the top, some removals and
/// re-insertions, in Binance's order.
fn diffs(n: usize) -> Vec<BookDelta> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..n)
        .map(|k| {
            let mut side = |sign: i64| -> Vec<Level> {
                (0..10)
                    .map(|_| {
                        let depth = 1 + (rng.f64().powi(3) * 60.0) as i64;
                        let qty = if rng.u8(..) < 40 {
                            0
                        } else {
                            rng.i64(1..1_000_000_000)
                        };
                        (
                            Decimal::from_raw(MID + sign * depth),
                            Decimal::from_raw(qty),
                        )
                    })
                    .collect()
            };
            // Binance lists a diff's levels best first, each price once.
            let mut bids = side(-1);
            bids.sort_by_key(|l| std::cmp::Reverse(l.0));
            bids.dedup_by_key(|l| l.0);
            let mut asks = side(1);
            asks.sort_by_key(|l| l.0);
            asks.dedup_by_key(|l| l.0);
            BookDelta {
                first_update_id: 2 + k as u64,
                final_update_id: 2 + k as u64,
                bids,
                asks,
            }
        })
        .collect()
}

#[derive(Clone, Default)]
struct TreeBook {
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
}

impl TreeBook {
    fn apply(&mut self, d: &BookDelta) {
        for (side, levels) in [(&mut self.bids, &d.bids), (&mut self.asks, &d.asks)] {
            for &(p, q) in levels {
                if q.is_zero() {
                    side.remove(&p);
                } else {
                    side.insert(p, q);
                }
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    let ds = diffs(4096);
    let mut g = c.benchmark_group("conductor/diff20");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let mut book = OrderBook::default();
    book.reset(&snap.bids, &snap.asks, 1);
    let mut i = 0;
    g.bench_function("meltica_vec_book", |b| {
        b.iter(|| {
            let d = &ds[i % ds.len()];
            i += 1;
            book.apply(Side::Bid, &d.bids);
            book.apply(Side::Ask, &d.asks);
            black_box(&book);
        })
    });

    // The same diffs level by level, each searched from the top (as for levels that come
    // in no particular order).
    let mut book = OrderBook::default();
    book.reset(&snap.bids, &snap.asks, 1);
    let mut i = 0;
    g.bench_function("meltica_vec_book_level_by_level", |b| {
        b.iter(|| {
            let d = &ds[i % ds.len()];
            i += 1;
            for &(p, q) in &d.bids {
                book.set(Side::Bid, p, q);
            }
            for &(p, q) in &d.asks {
                book.set(Side::Ask, p, q);
            }
            black_box(&book);
        })
    });

    let mut tree = TreeBook::default();
    for &(p, q) in &snap.bids {
        tree.bids.insert(p, q);
    }
    for &(p, q) in &snap.asks {
        tree.asks.insert(p, q);
    }
    let mut i = 0;
    g.bench_function("btreemap_book", |b| {
        b.iter(|| {
            tree.apply(&ds[i % ds.len()]);
            i += 1;
            black_box(&tree);
        })
    });

    // The full state machine, live: continuity check, apply, crossed-book check.
    let mut sync = BookSync::new();
    let mut id = 1u64;
    let first = BookDelta {
        first_update_id: 1,
        final_update_id: 1,
        bids: vec![],
        asks: vec![],
    };
    sync.on_delta(&first);
    sync.on_snapshot(&snap);
    let mut i = 0;
    let mut d = ds[0].clone();
    g.bench_function("meltica_book_sync_live", |b| {
        b.iter(|| {
            let src = &ds[i % ds.len()];
            i += 1;
            id += 1;
            d.first_update_id = id;
            d.final_update_id = id;
            d.bids.clone_from(&src.bids);
            d.asks.clone_from(&src.asks);
            black_box(sync.on_delta(&d));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
