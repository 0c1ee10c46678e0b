//! Per-symbol market model: a bounded two-sided book on the tick grid around a random-walk
//! reference price, stepped deterministically from a seed.
//!
//! Bids always sit at or below the reference tick `center`, asks strictly above it, so the
//! book can never cross.

use std::collections::{BTreeMap, VecDeque};

use super::events::Top;
use super::{BookState, SimSymbol};
use crate::schema::Decimal;

/// One trade produced by a step. Prices and quantities are raw fixed-point values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trade {
    pub id: u64,
    pub agg_id: u64,
    pub price: i64,
    pub qty: i64,
    pub buyer_maker: bool,
}

/// What one step changed. Level lists are `(price, qty)` raw values, best first, with the
/// final absolute quantity of every changed level (0 = removed).
#[derive(Debug, Clone, Default)]
pub(crate) struct StepOutput {
    pub first_id: u64,
    pub last_id: u64,
    pub bids: Vec<(i64, i64)>,
    pub asks: Vec<(i64, i64)>,
    pub trades: Vec<Trade>,
    pub top: Top,
}

/// Rolling statistics for the 24hr ticker (since start).
#[derive(Debug, Clone)]
pub(crate) struct TickerStats {
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub last: i64,
    pub last_qty: i64,
    pub volume: i128,
    pub quote_volume: i128,
    pub first_trade: Option<u64>,
    pub last_trade: u64,
    pub count: u64,
}

impl TickerStats {
    pub fn new(open: i64) -> Self {
        TickerStats {
            open,
            high: open,
            low: open,
            last: open,
            last_qty: 0,
            volume: 0,
            quote_volume: 0,
            first_trade: None,
            last_trade: 0,
            count: 0,
        }
    }

    fn record(&mut self, t: &Trade) {
        self.high = self.high.max(t.price);
        self.low = self.low.min(t.price);
        self.last = t.price;
        self.last_qty = t.qty;
        self.volume += i128::from(t.qty);
        self.quote_volume += i128::from(t.price) * i128::from(t.qty) / 100_000_000;
        self.first_trade.get_or_insert(t.id);
        self.last_trade = t.id;
        self.count += 1;
    }
}

const BID: bool = false;
const ASK: bool = true;

pub(crate) struct Market {
    tick: i64,
    step: i64,
    /// Reference tick: bids `<= center`, asks `> center`.
    center: i64,
    /// Tick index -> quantity in steps.
    bids: BTreeMap<i64, i64>,
    asks: BTreeMap<i64, i64>,
    levels: usize,
    max_qty: i64,
    trades_per_step: f64,
    last_id: u64,
    next_trade_id: u64,
    next_agg_id: u64,
    rng: fastrand::Rng,
    /// Levels touched in the current step with their quantity before it.
    touched: Vec<(bool, i64, i64)>,
    history: VecDeque<BookState>,
    history_cap: usize,
    pub stats: TickerStats,
}

impl Market {
    pub fn new(
        sym: &SimSymbol,
        levels: usize,
        trades_per_step: f64,
        history: usize,
        seed: u64,
    ) -> Self {
        let tick = sym.tick.raw();
        let step = sym.step.raw();
        let center = sym.mid.raw() / tick;
        // Level sizes worth up to ~100k quote units.
        let max_qty = (100_000i128 * 100_000_000 * 100_000_000
            / i128::from((center * tick).max(1))
            / i128::from(step))
        .clamp(10, 1_000_000_000_000) as i64;
        let mut rng = fastrand::Rng::with_seed(seed);
        let last_id = rng.u64(1_000_000_000..2_000_000_000);
        let next_trade_id = rng.u64(100_000_000..200_000_000);
        let next_agg_id = rng.u64(10_000_000..90_000_000);
        let mut m = Market {
            tick,
            step,
            center,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            levels,
            max_qty,
            trades_per_step,
            last_id,
            next_trade_id,
            next_agg_id,
            rng,
            touched: Vec::new(),
            history: VecDeque::with_capacity(history.clamp(1, 1 << 16)),
            history_cap: history.max(1),
            stats: TickerStats::new(center * tick),
        };
        let mut t = center;
        for _ in 0..levels {
            let q = m.rand_qty();
            m.bids.insert(t, q);
            t -= 1 + m.rng.i64(0..3);
        }
        let mut t = center + 1;
        for _ in 0..levels {
            let q = m.rand_qty();
            m.asks.insert(t, q);
            t += 1 + m.rng.i64(0..3);
        }
        m.record_history();
        m
    }

    /// The book after the step ending at `update_id`, if still in the history.
    pub fn book_at(&self, update_id: u64) -> Option<BookState> {
        let i = self
            .history
            .binary_search_by_key(&update_id, |b| b.last_update_id)
            .ok()?;
        self.history.get(i).cloned()
    }

    /// The current book (the newest history entry).
    pub fn current(&self) -> &BookState {
        self.history.back().expect("history is never empty")
    }

    pub fn top(&self) -> Top {
        let (bp, bq) = self.bids.last_key_value().map_or((0, 0), |(&p, &q)| (p, q));
        let (ap, aq) = self
            .asks
            .first_key_value()
            .map_or((0, 0), |(&p, &q)| (p, q));
        (
            bp * self.tick,
            bq * self.step,
            ap * self.tick,
            aq * self.step,
        )
    }

    fn rand_qty(&mut self) -> i64 {
        (self.rng.i64(1..=self.max_qty) / self.rng.i64(1..=8)).max(1)
    }

    fn side(&self, ask: bool) -> &BTreeMap<i64, i64> {
        if ask { &self.asks } else { &self.bids }
    }

    /// Sets a level's quantity in steps (0 removes it), remembering its pre-step value.
    fn set(&mut self, ask: bool, tick: i64, qty: i64) {
        let book = if ask { &mut self.asks } else { &mut self.bids };
        if !self.touched.iter().any(|&(a, t, _)| a == ask && t == tick) {
            let before = book.get(&tick).copied().unwrap_or(0);
            self.touched.push((ask, tick, before));
        }
        if qty > 0 {
            book.insert(tick, qty);
        } else {
            book.remove(&tick);
        }
    }

    /// The `i`-th level from the top of a side.
    fn nth(&self, ask: bool, i: usize) -> Option<(i64, i64)> {
        let kv = if ask {
            self.asks.iter().nth(i)
        } else {
            self.bids.iter().rev().nth(i)
        };
        kv.map(|(&t, &q)| (t, q))
    }

    fn add_level(&mut self, ask: bool) {
        let span = 2 * self.levels as i64 + 2;
        for _ in 0..8 {
            // Skewed toward the top of the book.
            let off = self.rng.i64(0..span) * self.rng.i64(0..span) / span;
            let tick = if ask {
                self.center + 1 + off
            } else {
                self.center - off
            };
            if tick > 0 && !self.side(ask).contains_key(&tick) {
                let q = self.rand_qty();
                self.set(ask, tick, q);
                return;
            }
        }
        // Dense near the top: extend beyond the worst level instead.
        let gap = 1 + self.rng.i64(0..3);
        let tick = if ask {
            self.asks
                .last_key_value()
                .map_or(self.center + 1, |(&t, _)| t + gap)
        } else {
            self.bids
                .first_key_value()
                .map_or(self.center, |(&t, _)| t - gap)
        };
        if tick > 0 {
            let q = self.rand_qty();
            self.set(ask, tick, q);
        }
    }

    /// Adds a level between the best price of a side and the reference tick, if there is room.
    fn improve_top(&mut self, ask: bool) {
        let (best, limit) = if ask {
            let best = self
                .asks
                .first_key_value()
                .map_or(self.center + 2, |(&t, _)| t);
            (best, self.center + 1)
        } else {
            let best = self
                .bids
                .last_key_value()
                .map_or(self.center - 1, |(&t, _)| t);
            (best, self.center)
        };
        let room = (best - limit).abs();
        if room == 0 {
            return;
        }
        let step_in = 1 + self.rng.i64(0..room);
        let tick = if ask { best - step_in } else { best + step_in };
        let q = self.rand_qty();
        self.set(ask, tick, q);
    }

    fn trade(&mut self, out: &mut StepOutput) {
        // A seller-initiated trade hits the best bid (the buyer is the maker).
        let sell = self.rng.bool();
        let Some((tick, avail)) = self.nth(!sell, 0) else {
            return;
        };
        let q = if self.rng.u32(0..100) < 15 {
            avail
        } else {
            (self.rng.i64(1..=avail) / self.rng.i64(1..=4)).max(1)
        };
        self.set(!sell, tick, avail - q);
        let t = Trade {
            id: self.next_trade_id,
            agg_id: self.next_agg_id,
            price: tick * self.tick,
            qty: q * self.step,
            buyer_maker: sell,
        };
        self.next_trade_id += 1;
        self.next_agg_id += 1;
        self.stats.record(&t);
        out.trades.push(t);
    }

    /// Advances the market by one step, filling `out` with everything it changed.
    pub fn step(&mut self, out: &mut StepOutput) {
        out.bids.clear();
        out.asks.clear();
        out.trades.clear();
        self.touched.clear();

        let whole = self.trades_per_step.floor();
        let mut n = whole as u32;
        if self.rng.f64() < self.trades_per_step - whole {
            n += 1;
        }
        for _ in 0..n.min(1000) {
            self.trade(out);
        }

        // Random walk of the reference price, dropping levels that would end up on the
        // wrong side.
        let r = self.rng.u32(0..100);
        if r < 6 {
            self.center += 1;
            if self.asks.contains_key(&self.center) {
                self.set(ASK, self.center, 0);
            }
        } else if r < 12 && self.center > 4 * self.levels as i64 + 4 {
            let old = self.center;
            self.center -= 1;
            if self.bids.contains_key(&old) {
                self.set(BID, old, 0);
            }
        }

        // Quantity changes, biased toward the top of the book.
        for _ in 0..1 + self.rng.usize(0..3) {
            let ask = self.rng.bool();
            let len = self.side(ask).len();
            if len == 0 {
                continue;
            }
            let i = self.rng.usize(0..len).min(self.rng.usize(0..len));
            if let Some((tick, _)) = self.nth(ask, i) {
                let q = self.rand_qty();
                self.set(ask, tick, q);
            }
        }
        // Occasional cancel of a whole level below the top, or a new level.
        if self.rng.u32(0..100) < 10 {
            let ask = self.rng.bool();
            let len = self.side(ask).len();
            if len > 1 {
                let i = 1 + self.rng.usize(0..len - 1);
                if let Some((tick, _)) = self.nth(ask, i) {
                    self.set(ask, tick, 0);
                }
            }
        }
        if self.rng.u32(0..100) < 15 {
            let ask = self.rng.bool();
            self.add_level(ask);
        }
        // Makers step into a wide spread.
        if self.rng.u32(0..100) < 30 {
            let ask = self.rng.bool();
            self.improve_top(ask);
        }
        // Keep exactly `levels` per side.
        for ask in [BID, ASK] {
            let mut guard = 0;
            while self.side(ask).len() < self.levels && guard < 4 * self.levels {
                self.add_level(ask);
                guard += 1;
            }
            while self.side(ask).len() > self.levels {
                let worst = if ask {
                    self.asks.last_key_value()
                } else {
                    self.bids.first_key_value()
                };
                let tick = *worst.expect("side is non-empty").0;
                self.set(ask, tick, 0);
            }
        }

        self.collect_changes(out);
        if out.bids.is_empty() && out.asks.is_empty() {
            // Every step produces a diff: nudge the best bid.
            if let Some((tick, q)) = self.nth(BID, 0) {
                let nq = if q < self.max_qty { q + 1 } else { q - 1 };
                self.set(BID, tick, nq);
                self.collect_changes(out);
            }
        }
        let changed = (out.bids.len() + out.asks.len()) as u64;
        out.first_id = self.last_id + 1;
        self.last_id += changed.max(1);
        out.last_id = self.last_id;
        out.top = self.top();
        self.record_history();
    }

    fn collect_changes(&self, out: &mut StepOutput) {
        out.bids.clear();
        out.asks.clear();
        for &(ask, tick, before) in &self.touched {
            let now = self.side(ask).get(&tick).copied().unwrap_or(0);
            if now != before {
                let level = (tick * self.tick, now * self.step);
                if ask {
                    out.asks.push(level);
                } else {
                    out.bids.push(level);
                }
            }
        }
        out.bids.sort_unstable_by_key(|l| std::cmp::Reverse(l.0));
        out.asks.sort_unstable_by_key(|l| l.0);
    }

    fn record_history(&mut self) {
        let mut state = if self.history.len() >= self.history_cap {
            self.history.pop_front().unwrap_or_default()
        } else {
            BookState::default()
        };
        let (tick, step) = (self.tick, self.step);
        let conv =
            |(&t, &q): (&i64, &i64)| (Decimal::from_raw(t * tick), Decimal::from_raw(q * step));
        state.last_update_id = self.last_id;
        state.bids.clear();
        state.bids.extend(self.bids.iter().rev().map(conv));
        state.asks.clear();
        state.asks.extend(self.asks.iter().map(conv));
        self.history.push_back(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn market(seed: u64, tps: f64) -> Market {
        let sym = SimSymbol::new("BTCUSDT", "BTC", "USDT", "50000", "0.01", "0.00001");
        Market::new(&sym, 40, tps, 100_000, seed)
    }

    fn apply(book: &mut BTreeMap<Decimal, Decimal>, levels: &[(i64, i64)]) {
        for &(p, q) in levels {
            if q == 0 {
                book.remove(&Decimal::from_raw(p));
            } else {
                book.insert(Decimal::from_raw(p), Decimal::from_raw(q));
            }
        }
    }

    #[test]
    fn never_crossed_and_bounded() {
        let mut m = market(1, 0.8);
        let mut out = StepOutput::default();
        for _ in 0..20_000 {
            m.step(&mut out);
            let b = m.current();
            assert_eq!(b.bids.len(), 40);
            assert_eq!(b.asks.len(), 40);
            assert!(b.bids[0].0 < b.asks[0].0, "crossed at {}", b.last_update_id);
            assert!(b.bids.windows(2).all(|w| w[0].0 > w[1].0));
            assert!(b.asks.windows(2).all(|w| w[0].0 < w[1].0));
            let on_grid = |(p, q): &(Decimal, Decimal)| {
                p.raw() % 1_000_000 == 0 && q.raw() % 1000 == 0 && q.raw() > 0
            };
            assert!(b.bids.iter().all(on_grid) && b.asks.iter().all(on_grid));
            let top = m.top();
            assert_eq!((top.0, top.1), (b.bids[0].0.raw(), b.bids[0].1.raw()));
            assert_eq!((top.2, top.3), (b.asks[0].0.raw(), b.asks[0].1.raw()));
        }
    }

    #[test]
    fn ids_are_contiguous_and_diffs_reproduce_history() {
        let mut m = market(2, 0.5);
        let start = m.current().clone();
        let mut bids: BTreeMap<Decimal, Decimal> = start.bids.iter().copied().collect();
        let mut asks: BTreeMap<Decimal, Decimal> = start.asks.iter().copied().collect();
        let mut prev = start.last_update_id;
        let mut out = StepOutput::default();
        let mut trades = 0;
        for _ in 0..10_000 {
            m.step(&mut out);
            assert_eq!(out.first_id, prev + 1);
            assert_eq!(
                out.last_id - out.first_id + 1,
                (out.bids.len() + out.asks.len()) as u64
            );
            prev = out.last_id;
            trades += out.trades.len();
            apply(&mut bids, &out.bids);
            apply(&mut asks, &out.asks);
            let truth = m.book_at(out.last_id).expect("in history");
            let rb: Vec<_> = bids.iter().rev().map(|(&p, &q)| (p, q)).collect();
            let ra: Vec<_> = asks.iter().map(|(&p, &q)| (p, q)).collect();
            assert_eq!(rb, truth.bids);
            assert_eq!(ra, truth.asks);
            if out.first_id < out.last_id {
                assert_eq!(m.book_at(out.first_id), None);
            }
        }
        assert!(trades > 3000, "trades {trades}");
    }

    #[test]
    fn trades_consume_the_touched_level() {
        let mut m = market(3, 1.0);
        let mut out = StepOutput::default();
        for _ in 0..2000 {
            let before = m.current().clone();
            m.step(&mut out);
            for t in &out.trades {
                let side = if t.buyer_maker {
                    &before.bids
                } else {
                    &before.asks
                };
                // The first trade of a step prices at the pre-step best level.
                assert!(side.iter().any(|l| l.0.raw() == t.price));
                assert!(t.qty > 0);
            }
            if let Some(t) = out.trades.first() {
                let diff = if t.buyer_maker { &out.bids } else { &out.asks };
                assert!(
                    diff.iter().any(|l| l.0 == t.price),
                    "trade level not in diff"
                );
            }
        }
    }

    #[test]
    fn spread_stays_tight_on_average() {
        let mut m = market(4, 0.5);
        let mut out = StepOutput::default();
        let mut total = 0;
        for _ in 0..10_000 {
            m.step(&mut out);
            let b = m.current();
            total += (b.asks[0].0.raw() - b.bids[0].0.raw()) / 1_000_000;
        }
        let avg = total as f64 / 10_000.0;
        assert!(avg < 6.0, "average spread {avg} ticks");
    }

    #[test]
    fn deterministic_from_seed() {
        let (mut a, mut b) = (market(9, 0.3), market(9, 0.3));
        let (mut oa, mut ob) = (StepOutput::default(), StepOutput::default());
        for _ in 0..500 {
            a.step(&mut oa);
            b.step(&mut ob);
            assert_eq!(oa.bids, ob.bids);
            assert_eq!(oa.trades, ob.trades);
        }
        assert_eq!(a.current(), b.current());
    }

    #[test]
    fn history_evicts_oldest() {
        let sym = SimSymbol::new("ETHUSDT", "ETH", "USDT", "3000", "0.01", "0.0001");
        let mut m = Market::new(&sym, 10, 0.2, 8, 5);
        let first = m.current().last_update_id;
        let mut out = StepOutput::default();
        let mut ids = vec![first];
        for _ in 0..20 {
            m.step(&mut out);
            ids.push(out.last_id);
        }
        assert_eq!(m.book_at(first), None);
        for &id in &ids[ids.len() - 8..] {
            assert_eq!(m.book_at(id).map(|b| b.last_update_id), Some(id));
        }
        assert_eq!(m.book_at(ids[ids.len() - 9]), None);
    }
}
