//! A local order book: per side, one price-sorted vector with the best level at the END.
//! Binance diffs land overwhelmingly near the top of the book, so inserting or removing a
//! level there moves only the few levels above it; reading the top N is a reversed slice.
//! (Best-first storage would shift the whole side on every top-of-book insert; the bench in
//! `benches/conductor.rs` compares both layouts and a `BTreeMap`.)

use std::cmp::Ordering;

use crate::schema::{Decimal, Level};

/// One side's ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Bid,
    Ask,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderBook {
    /// Ascending price: best (highest) bid last.
    bids: Vec<Level>,
    /// Descending price: best (lowest) ask last.
    asks: Vec<Level>,
    pub last_update_id: u64,
}

impl OrderBook {
    /// Replaces the whole book with a snapshot's levels (quantity-zero levels skipped).
    pub fn reset(&mut self, bids: &[Level], asks: &[Level], last_update_id: u64) {
        fill(&mut self.bids, bids, bid_order);
        fill(&mut self.asks, asks, ask_order);
        self.last_update_id = last_update_id;
    }

    pub fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
        self.last_update_id = 0;
    }

    /// Sets a level's absolute quantity; zero removes it (removing an absent level is normal).
    #[inline]
    pub fn set(&mut self, side: Side, price: Decimal, qty: Decimal) {
        self.apply(side, &[(price, qty)]);
    }

    /// Sets each level of one side of a diff, in order. Binance lists a diff's levels best
    /// first, so each search starts where the previous level landed instead of at the top;
    /// a level out of that order searches from the top again.
    #[inline]
    pub fn apply(&mut self, side: Side, diff: &[Level]) {
        match side {
            Side::Bid => apply_side(&mut self.bids, diff, bid_order),
            Side::Ask => apply_side(&mut self.asks, diff, ask_order),
        }
    }

    /// Bids, best first.
    pub fn bids(&self) -> impl ExactSizeIterator<Item = &Level> + DoubleEndedIterator {
        self.bids.iter().rev()
    }

    /// Asks, best first.
    pub fn asks(&self) -> impl ExactSizeIterator<Item = &Level> + DoubleEndedIterator {
        self.asks.iter().rev()
    }

    /// Bids, best first, as a vector.
    pub fn bid_levels(&self) -> Vec<Level> {
        self.bids().copied().collect()
    }

    /// Asks, best first, as a vector.
    pub fn ask_levels(&self) -> Vec<Level> {
        self.asks().copied().collect()
    }

    pub fn depth(&self) -> (usize, usize) {
        (self.bids.len(), self.asks.len())
    }

    pub fn best_bid(&self) -> Option<Level> {
        self.bids.last().copied()
    }

    pub fn best_ask(&self) -> Option<Level> {
        self.asks.last().copied()
    }

    /// A crossed book (best bid ≥ best ask) cannot be a correct Binance book.
    pub fn is_crossed(&self) -> bool {
        matches!((self.best_bid(), self.best_ask()), (Some(b), Some(a)) if b.0 >= a.0)
    }

    /// Copies the top `n` levels of each side, best first, into `bids` / `asks`.
    pub fn top_into(&self, n: usize, bids: &mut Vec<Level>, asks: &mut Vec<Level>) {
        bids.clear();
        asks.clear();
        bids.extend(self.bids().take(n).copied());
        asks.extend(self.asks().take(n).copied());
    }
}

/// Where `level` sits against `price` in the bids' vector order (ascending).
#[inline]
fn bid_order(level: Decimal, price: Decimal) -> Ordering {
    level.cmp(&price)
}

/// Where `level` sits against `price` in the asks' vector order (descending).
#[inline]
fn ask_order(level: Decimal, price: Decimal) -> Ordering {
    price.cmp(&level)
}

/// Replaces a side with a snapshot's levels. A snapshot lists them best first, which is
/// this vector's order reversed; anything else is applied level by level.
fn fill(
    levels: &mut Vec<Level>,
    from: &[Level],
    order: impl Fn(Decimal, Decimal) -> Ordering + Copy,
) {
    levels.clear();
    if from
        .windows(2)
        .all(|w| order(w[0].0, w[1].0) == Ordering::Greater)
    {
        levels.extend(from.iter().rev().filter(|l| !l.1.is_zero()));
    } else {
        apply_side(levels, from, order);
    }
}

/// Sets each of `diff`'s levels in `levels` (best at the end, ordered by `order`).
#[inline]
fn apply_side(
    levels: &mut Vec<Level>,
    diff: &[Level],
    order: impl Fn(Decimal, Decimal) -> Ordering + Copy,
) {
    // Every level at or above `top` is better than the one being set.
    let mut top = levels.len();
    let mut prev: Option<Decimal> = None;
    for &(price, qty) in diff {
        if prev.is_some_and(|p| order(p, price) != Ordering::Greater) {
            top = levels.len();
        }
        prev = Some(price);
        let pos = search_from_top(&levels[..top], price, order);
        top = match (pos, qty.is_zero()) {
            (Ok(i), true) => {
                levels.remove(i);
                i
            }
            (Ok(i), false) => {
                levels[i].1 = qty;
                i
            }
            (Err(i), true) => i,
            (Err(i), false) => {
                levels.insert(i, (price, qty));
                i
            }
        };
    }
}

/// Where `price` is, or would go, in `levels` (best at the end, ordered by `order`). Most
/// updates land within a few levels of the top, so the top levels are counted without a
/// branch (the ones better than `price` are a run at the end; a scan that stops at the
/// first worse level mispredicts its exit on nearly every call), with a binary search
/// below them.
#[inline]
fn search_from_top(
    levels: &[Level],
    price: Decimal,
    order: impl Fn(Decimal, Decimal) -> Ordering,
) -> Result<usize, usize> {
    const SCAN: usize = 16;
    let n = levels.len();
    let lo = n.saturating_sub(SCAN);
    let better = levels[lo..]
        .iter()
        .filter(|l| order(l.0, price) == Ordering::Greater)
        .count();
    let i = n - better;
    if i == lo && lo > 0 {
        return levels[..lo].binary_search_by(|l| order(l.0, price));
    }
    match i.checked_sub(1) {
        Some(j) if levels[j].0 == price => Ok(j),
        _ => Err(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn d(v: i64) -> Decimal {
        Decimal::from_raw(v)
    }

    /// The reference semantics: zero removes a level, anything else sets it.
    fn set(side: &mut BTreeMap<Decimal, Decimal>, p: Decimal, q: Decimal) {
        if q.is_zero() {
            side.remove(&p);
        } else {
            side.insert(p, q);
        }
    }

    #[test]
    fn levels_stay_sorted_and_zero_removes() {
        let mut b = OrderBook::default();
        b.set(Side::Bid, d(100), d(1));
        b.set(Side::Bid, d(102), d(2));
        b.set(Side::Bid, d(101), d(3));
        b.set(Side::Ask, d(105), d(1));
        b.set(Side::Ask, d(103), d(1));
        assert_eq!(
            b.bid_levels(),
            vec![(d(102), d(2)), (d(101), d(3)), (d(100), d(1))]
        );
        assert_eq!(b.ask_levels(), vec![(d(103), d(1)), (d(105), d(1))]);
        b.set(Side::Bid, d(101), d(0));
        b.set(Side::Bid, d(99), d(0));
        b.set(Side::Bid, d(100), d(7));
        assert_eq!(b.bid_levels(), vec![(d(102), d(2)), (d(100), d(7))]);
        assert_eq!(b.best_bid(), Some((d(102), d(2))));
        assert_eq!(b.best_ask(), Some((d(103), d(1))));
        assert!(!b.is_crossed());
        let (mut tb, mut ta) = (Vec::new(), Vec::new());
        b.top_into(1, &mut tb, &mut ta);
        assert_eq!((tb, ta), (vec![(d(102), d(2))], vec![(d(103), d(1))]));
    }

    #[test]
    fn matches_a_btreemap_reference_on_random_updates() {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut book = OrderBook::default();
        let mut bids: BTreeMap<Decimal, Decimal> = BTreeMap::new();
        let mut asks: BTreeMap<Decimal, Decimal> = BTreeMap::new();
        for _ in 0..20_000 {
            let bid = rng.bool();
            let p = d(rng.i64(1..200));
            let q = if rng.u8(..) < 64 {
                d(0)
            } else {
                d(rng.i64(1..1000))
            };
            book.set(if bid { Side::Bid } else { Side::Ask }, p, q);
            set(if bid { &mut bids } else { &mut asks }, p, q);
        }
        assert_eq!(
            book.bid_levels(),
            bids.into_iter().rev().collect::<Vec<_>>()
        );
        assert_eq!(book.ask_levels(), asks.into_iter().collect::<Vec<_>>());
    }

    /// Whole diffs and snapshots, in Binance's order (best first) and shuffled, with
    /// repeated prices: the same book as a `BTreeMap` setting level by level.
    #[test]
    fn diffs_and_snapshots_match_a_btreemap_in_any_order() {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut book = OrderBook::default();
        let mut reference: [BTreeMap<Decimal, Decimal>; 2] = Default::default();
        let side_levels = |rng: &mut fastrand::Rng, bid: bool| {
            let mut v: Vec<Level> = (0..rng.usize(0..12))
                .map(|_| {
                    let q = if rng.u8(..) < 80 { 0 } else { rng.i64(1..1000) };
                    (
                        d(if bid {
                            100 - rng.i64(0..60)
                        } else {
                            101 + rng.i64(0..60)
                        }),
                        d(q),
                    )
                })
                .collect();
            match rng.u8(0..3) {
                0 => {}
                1 => {
                    v.sort_by(|a, b| if bid { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) });
                    v.dedup_by_key(|l| l.0);
                }
                _ => v.sort_by(|a, b| if bid { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) }),
            }
            v
        };
        for round in 0..5_000 {
            let (bids, asks) = (side_levels(&mut rng, true), side_levels(&mut rng, false));
            if round % 500 == 0 {
                book.reset(&bids, &asks, round);
                reference.iter_mut().for_each(BTreeMap::clear);
            } else {
                book.apply(Side::Bid, &bids);
                book.apply(Side::Ask, &asks);
            }
            for (side, levels) in reference.iter_mut().zip([&bids, &asks]) {
                for &(p, q) in levels {
                    set(side, p, q);
                }
            }
            assert_eq!(
                book.bid_levels(),
                reference[0]
                    .iter()
                    .rev()
                    .map(|(p, q)| (*p, *q))
                    .collect::<Vec<_>>(),
                "round {round}"
            );
            assert_eq!(
                book.ask_levels(),
                reference[1]
                    .iter()
                    .map(|(p, q)| (*p, *q))
                    .collect::<Vec<_>>(),
                "round {round}"
            );
        }
    }
}
