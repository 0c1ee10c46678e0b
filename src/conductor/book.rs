//! A local order book: per side, one price-sorted vector with the best level at the END.
//! Binance diffs land overwhelmingly near the top of the book, so inserting or removing a
//! level there moves only the few levels above it; reading the top N is a reversed slice.
//! (Best-first storage would shift the whole side on every top-of-book insert; the bench in
//! `benches/conductor.rs` compares both layouts and a `BTreeMap`.)

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
        self.bids.clear();
        self.asks.clear();
        for &(p, q) in bids {
            self.set(Side::Bid, p, q);
        }
        for &(p, q) in asks {
            self.set(Side::Ask, p, q);
        }
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
        let (levels, pos) = match side {
            Side::Bid => {
                let pos = search_from_top(&self.bids, |l| l.0.cmp(&price));
                (&mut self.bids, pos)
            }
            Side::Ask => {
                let pos = search_from_top(&self.asks, |l| price.cmp(&l.0));
                (&mut self.asks, pos)
            }
        };
        match (pos, qty.is_zero()) {
            (Ok(i), true) => {
                levels.remove(i);
            }
            (Ok(i), false) => levels[i].1 = qty,
            (Err(_), true) => {}
            (Err(i), false) => levels.insert(i, (price, qty)),
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

/// Search for a vector whose "top" is its end. Most updates land within a few levels of
/// the top, so the last levels are scanned linearly before falling back to binary search.
#[inline]
fn search_from_top(
    levels: &[Level],
    cmp: impl Fn(&Level) -> std::cmp::Ordering,
) -> Result<usize, usize> {
    use std::cmp::Ordering::*;
    const SCAN: usize = 16;
    let n = levels.len();
    let stop = n.saturating_sub(SCAN);
    let mut i = n;
    while i > stop {
        match cmp(&levels[i - 1]) {
            Equal => return Ok(i - 1),
            Less => return Err(i),
            Greater => i -= 1,
        }
    }
    levels[..stop].binary_search_by(cmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn d(v: i64) -> Decimal {
        Decimal::from_raw(v)
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
            let side = if bid { &mut bids } else { &mut asks };
            if q.is_zero() {
                side.remove(&p);
            } else {
                side.insert(p, q);
            }
        }
        assert_eq!(
            book.bid_levels(),
            bids.into_iter().rev().collect::<Vec<_>>()
        );
        assert_eq!(book.ask_levels(), asks.into_iter().collect::<Vec<_>>());
    }
}
