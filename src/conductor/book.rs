//! A local order book: two price-sorted vectors (bids descending, asks ascending).
//! Updates near the top — where almost all of them land — move few elements, and
//! reading the top N is a slice.

use crate::schema::{Decimal, Level};

/// One side's ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Bid,
    Ask,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderBook {
    /// Best (highest) first.
    pub bids: Vec<Level>,
    /// Best (lowest) first.
    pub asks: Vec<Level>,
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
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        let pos = match side {
            Side::Bid => levels.binary_search_by(|l| price.cmp(&l.0)),
            Side::Ask => levels.binary_search_by(|l| l.0.cmp(&price)),
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

    pub fn best_bid(&self) -> Option<Level> {
        self.bids.first().copied()
    }

    pub fn best_ask(&self) -> Option<Level> {
        self.asks.first().copied()
    }

    /// A crossed book (best bid ≥ best ask) cannot be a correct Binance book.
    pub fn is_crossed(&self) -> bool {
        matches!((self.best_bid(), self.best_ask()), (Some(b), Some(a)) if b.0 >= a.0)
    }

    /// Copies the top `n` levels of each side into `bids` / `asks` (cleared first).
    pub fn top_into(&self, n: usize, bids: &mut Vec<Level>, asks: &mut Vec<Level>) {
        bids.clear();
        asks.clear();
        bids.extend_from_slice(&self.bids[..n.min(self.bids.len())]);
        asks.extend_from_slice(&self.asks[..n.min(self.asks.len())]);
    }
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
        assert_eq!(b.bids, vec![(d(102), d(2)), (d(101), d(3)), (d(100), d(1))]);
        assert_eq!(b.asks, vec![(d(103), d(1)), (d(105), d(1))]);
        b.set(Side::Bid, d(101), d(0));
        b.set(Side::Bid, d(99), d(0));
        b.set(Side::Bid, d(100), d(7));
        assert_eq!(b.bids, vec![(d(102), d(2)), (d(100), d(7))]);
        assert!(!b.is_crossed());
    }

    #[test]
    fn matches_a_btreemap_reference_on_random_updates() {
        let mut rng = fastrand::Rng::with_seed(42);
        let mut book = OrderBook::default();
        let mut bids: BTreeMap<Decimal, Decimal> = BTreeMap::new();
        for _ in 0..20_000 {
            let p = d(rng.i64(1..200));
            let q = if rng.u8(..) < 64 {
                d(0)
            } else {
                d(rng.i64(1..1000))
            };
            book.set(Side::Bid, p, q);
            if q.is_zero() {
                bids.remove(&p);
            } else {
                bids.insert(p, q);
            }
        }
        let reference: Vec<Level> = bids.into_iter().rev().collect();
        assert_eq!(book.bids, reference);
    }
}
