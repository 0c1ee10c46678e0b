//! Property test of the book sync procedure against a reference model: random update
//! streams with gaps, duplicates, reordering, stale and early snapshots. Whenever the book
//! says `live`, it equals the exchange's true book at its update id, and it is never crossed.

use std::collections::BTreeMap;

use meltica::conductor::sync::{BookSync, SyncStatus};
use meltica::schema::{BookDelta, BookSnapshot, Decimal, Level};
use proptest::prelude::*;

const BASE_ID: u64 = 1_000;

/// The exchange: the true book after every update id.
struct Truth {
    books: Vec<(BTreeMap<i64, i64>, BTreeMap<i64, i64>)>,
}

impl Truth {
    fn at(&self, id: u64) -> &(BTreeMap<i64, i64>, BTreeMap<i64, i64>) {
        &self.books[(id - BASE_ID) as usize]
    }
    fn snapshot(&self, id: u64) -> BookSnapshot {
        let (b, a) = self.at(id);
        BookSnapshot {
            last_update_id: id,
            bids: b.iter().rev().map(|(p, q)| lv(*p, *q)).collect(),
            asks: a.iter().map(|(p, q)| lv(*p, *q)).collect(),
        }
    }
}

fn lv(p: i64, q: i64) -> Level {
    (Decimal::from_int(p), Decimal::from_int(q))
}

/// One update: (is bid, price, quantity; 0 removes).
type Update = (bool, i64, i64);

fn build(updates: &[Vec<Update>], groups: &[usize]) -> (Truth, Vec<BookDelta>) {
    let mut bids = BTreeMap::new();
    let mut asks = BTreeMap::new();
    for p in 40..50 {
        bids.insert(p, 10);
    }
    for p in 51..61 {
        asks.insert(p, 10);
    }
    let mut books = vec![(bids.clone(), asks.clone())];
    for u in updates {
        for &(bid, p, q) in u {
            let side = if bid { &mut bids } else { &mut asks };
            if q == 0 {
                side.remove(&p);
            } else {
                side.insert(p, q);
            }
        }
        books.push((bids.clone(), asks.clone()));
    }
    // Group consecutive update ids into diffs carrying the final quantity of each level.
    let mut diffs = Vec::new();
    let mut i = 0;
    let mut g = 0;
    while i < updates.len() {
        let n = groups[g % groups.len()].min(updates.len() - i);
        g += 1;
        let mut b: BTreeMap<i64, i64> = BTreeMap::new();
        let mut a: BTreeMap<i64, i64> = BTreeMap::new();
        for u in &updates[i..i + n] {
            for &(bid, p, q) in u {
                if bid {
                    b.insert(p, q)
                } else {
                    a.insert(p, q)
                };
            }
        }
        diffs.push(BookDelta {
            first_update_id: BASE_ID + 1 + i as u64,
            final_update_id: BASE_ID + (i + n) as u64,
            bids: b.into_iter().map(|(p, q)| lv(p, q)).collect(),
            asks: a.into_iter().map(|(p, q)| lv(p, q)).collect(),
        });
        i += n;
    }
    (Truth { books }, diffs)
}

fn check(sync: &BookSync, truth: &Truth) -> Result<(), TestCaseError> {
    if sync.status != SyncStatus::Live {
        return Ok(());
    }
    prop_assert!(!sync.book.is_crossed(), "crossed book published as live");
    let want = truth.snapshot(sync.book.last_update_id);
    prop_assert_eq!(
        &sync.book.bid_levels(),
        &want.bids,
        "bids at {}",
        sync.book.last_update_id
    );
    prop_assert_eq!(
        &sync.book.ask_levels(),
        &want.asks,
        "asks at {}",
        sync.book.last_update_id
    );
    Ok(())
}

fn update() -> impl Strategy<Value = Vec<Update>> {
    prop::collection::vec(
        prop_oneof![
            (Just(true), 35i64..51, 0i64..5),
            (Just(false), 51i64..66, 0i64..5),
        ],
        1..4,
    )
}

/// What happens to each diff on its way, and where snapshots land.
#[derive(Debug, Clone)]
enum Fault {
    Deliver,
    Drop,
    Duplicate,
    SwapWithNext,
    /// A snapshot at (last delivered id + offset) before this diff.
    Snapshot(i64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        10 => Just(Fault::Deliver),
        1 => Just(Fault::Drop),
        1 => Just(Fault::Duplicate),
        1 => Just(Fault::SwapWithNext),
        2 => (-6i64..6).prop_map(Fault::Snapshot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn live_books_always_equal_the_exchange(
        updates in prop::collection::vec(update(), 20..150),
        groups in prop::collection::vec(1usize..4, 1..8),
        faults in prop::collection::vec(fault(), 1..200),
    ) {
        let (truth, diffs) = build(&updates, &groups);
        let last_id = BASE_ID + updates.len() as u64;
        let mut sync = BookSync::new();
        let mut delivered_id = BASE_ID;
        let mut k = 0;
        let mut i = 0;
        while i < diffs.len() {
            let f = faults[k % faults.len()].clone();
            k += 1;
            match f {
                Fault::Deliver => {
                    sync.on_delta(&diffs[i]);
                    delivered_id = diffs[i].final_update_id;
                    i += 1;
                }
                Fault::Drop => i += 1,
                Fault::Duplicate => {
                    sync.on_delta(&diffs[i]);
                    check(&sync, &truth)?;
                    sync.on_delta(&diffs[i]);
                    delivered_id = diffs[i].final_update_id;
                    i += 1;
                }
                Fault::SwapWithNext => {
                    if i + 1 < diffs.len() {
                        sync.on_delta(&diffs[i + 1]);
                        check(&sync, &truth)?;
                        sync.on_delta(&diffs[i]);
                        delivered_id = diffs[i + 1].final_update_id;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                Fault::Snapshot(off) => {
                    let id = (delivered_id as i64 + off).clamp(BASE_ID as i64, last_id as i64) as u64;
                    sync.on_snapshot(&truth.snapshot(id));
                    check(&sync, &truth)?;
                    sync.on_delta(&diffs[i]);
                    delivered_id = diffs[i].final_update_id;
                    i += 1;
                }
            }
            check(&sync, &truth)?;
        }
        // A clean ending: a fresh snapshot, then the exchange keeps going.
        let (truth2, more) = {
            let mut all = updates.clone();
            all.push(vec![(true, 45, 7)]);
            all.push(vec![(false, 55, 7)]);
            // One diff per update, so the tail starts right after `last_id`.
            build(&all, &[1])
        };
        let tail: Vec<&BookDelta> = more.iter().filter(|d| d.final_update_id > last_id).collect();
        if !tail.is_empty() {
            for d in &tail {
                sync.on_delta(d);
                check(&sync, &truth2)?;
            }
            // The snapshot the resync asked for, taken after the stream resumed.
            sync.on_snapshot(&truth2.snapshot(tail[0].first_update_id - 1));
            prop_assert_eq!(sync.status, SyncStatus::Live, "did not recover");
            check(&sync, &truth2)?;
        }
    }
}
