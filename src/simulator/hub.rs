//! Connection registry and stream fan-out.
//!
//! Each (symbol, stream kind) pair is a slot holding its subscribers. The market thread
//! serializes an event only when its slot has subscribers, once per frame shape (raw or
//! combined), and hands every subscriber a cheap clone through a bounded channel.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use tungstenite::Utf8Bytes;

use super::SimSymbol;
use super::events;
use super::market::{Market, StepOutput};

/// Stream name suffixes, indexed by kind.
const KINDS: [&str; 6] = [
    "trade",
    "aggTrade",
    "bookTicker",
    "ticker",
    "depth",
    "depth@100ms",
];
const TRADE: usize = 0;
const AGG_TRADE: usize = 1;
const BOOK_TICKER: usize = 2;
const TICKER: usize = 3;
const DEPTH: usize = 4;
const DEPTH_100MS: usize = 5;

/// Control block of one client connection (WebSocket or REST).
pub(crate) struct ConnCtl {
    pub id: u64,
    stream: TcpStream,
    ws: AtomicBool,
    /// Frames are wrapped as `{"stream":..,"data":..}`.
    pub combined: AtomicBool,
    killed: AtomicBool,
}

impl ConnCtl {
    /// Shuts the socket down (no close frame); the connection thread then exits.
    pub fn kill(&self) {
        if !self.killed.swap(true, Ordering::AcqRel) {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

struct Sub {
    conn: Arc<ConnCtl>,
    tx: Sender<Utf8Bytes>,
}

pub(crate) struct Hub {
    /// Upper-case symbols, by symbol index.
    symbols: Vec<String>,
    /// Stream names by slot (`symbol_index * KINDS.len() + kind`).
    names: Vec<String>,
    slots: RwLock<Vec<Vec<Sub>>>,
    conns: Mutex<HashMap<u64, Arc<ConnCtl>>>,
    next_id: AtomicU64,
    /// Per symbol: how many upcoming depth diffs to withhold (an update-id gap for clients).
    skip_depth: Vec<AtomicU64>,
}

impl Hub {
    pub fn new(symbols: &[SimSymbol]) -> Self {
        let names: Vec<String> = symbols
            .iter()
            .flat_map(|s| {
                let lower = s.symbol.to_ascii_lowercase();
                KINDS.iter().map(move |k| format!("{lower}@{k}"))
            })
            .collect();
        Hub {
            symbols: symbols.iter().map(|s| s.symbol.clone()).collect(),
            slots: RwLock::new((0..names.len()).map(|_| Vec::new()).collect()),
            names,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            skip_depth: symbols.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Slot of a stream name such as `btcusdt@depth@100ms` (symbol part case-insensitive).
    pub fn resolve(&self, stream: &str) -> Option<usize> {
        let (sym, kind) = stream.split_once('@')?;
        let k = KINDS.iter().position(|&x| x == kind)?;
        let s = self
            .symbols
            .iter()
            .position(|x| x.eq_ignore_ascii_case(sym))?;
        Some(s * KINDS.len() + k)
    }

    pub fn name(&self, slot: usize) -> &str {
        &self.names[slot]
    }

    /// Registers an accepted socket so it can be killed by `drop_connections`/shutdown.
    pub fn register(&self, stream: &TcpStream) -> io::Result<Arc<ConnCtl>> {
        let ctl = Arc::new(ConnCtl {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            stream: stream.try_clone()?,
            ws: AtomicBool::new(false),
            combined: AtomicBool::new(true),
            killed: AtomicBool::new(false),
        });
        self.conns.lock().insert(ctl.id, Arc::clone(&ctl));
        Ok(ctl)
    }

    pub fn mark_ws(&self, ctl: &ConnCtl) {
        ctl.ws.store(true, Ordering::Release);
    }

    /// Forgets a connection and its subscriptions (idempotent).
    pub fn unregister(&self, ctl: &ConnCtl) {
        self.conns.lock().remove(&ctl.id);
        if ctl.ws.load(Ordering::Acquire) {
            for subs in self.slots.write().iter_mut() {
                subs.retain(|s| s.conn.id != ctl.id);
            }
        }
    }

    /// Adds a subscription; a no-op when already subscribed.
    pub fn subscribe(&self, ctl: &Arc<ConnCtl>, tx: &Sender<Utf8Bytes>, slot: usize) {
        let mut slots = self.slots.write();
        if ctl.killed() || slots[slot].iter().any(|s| s.conn.id == ctl.id) {
            return;
        }
        slots[slot].push(Sub {
            conn: Arc::clone(ctl),
            tx: tx.clone(),
        });
    }

    pub fn unsubscribe(&self, ctl: &ConnCtl, slot: usize) {
        self.slots.write()[slot].retain(|s| s.conn.id != ctl.id);
    }

    pub fn subscription_count(&self) -> usize {
        self.slots
            .read()
            .iter()
            .flatten()
            .filter(|s| !s.conn.killed())
            .count()
    }

    pub fn ws_connection_count(&self) -> usize {
        self.conns
            .lock()
            .values()
            .filter(|c| c.ws.load(Ordering::Acquire) && !c.killed())
            .count()
    }

    /// Kills every WebSocket connection and drops its subscriptions right away.
    pub fn kill_ws_connections(&self) {
        let victims: Vec<Arc<ConnCtl>> = {
            let mut conns = self.conns.lock();
            let ids: Vec<u64> = conns
                .values()
                .filter(|c| c.ws.load(Ordering::Acquire))
                .map(|c| c.id)
                .collect();
            ids.iter().filter_map(|id| conns.remove(id)).collect()
        };
        for c in &victims {
            c.kill();
        }
        for subs in self.slots.write().iter_mut() {
            subs.retain(|s| !s.conn.killed());
        }
    }

    /// Kills every connection (shutdown).
    pub fn kill_all(&self) {
        let all: Vec<Arc<ConnCtl>> = self.conns.lock().drain().map(|(_, c)| c).collect();
        for c in &all {
            c.kill();
        }
        for subs in self.slots.write().iter_mut() {
            subs.clear();
        }
    }

    /// Publishes the events of one market step of symbol `sym`. With `drop_depth` the
    /// step's depth diff is withheld from every client (a gap fault); returns whether that
    /// withheld a diff somebody was subscribed to.
    pub fn publish_step(
        &self,
        sym: usize,
        out: &StepOutput,
        ms: u64,
        buf: &mut String,
        drop_depth: bool,
    ) -> bool {
        let slots = self.slots.read();
        let base = sym * KINDS.len();
        let symbol = self.symbols[sym].as_str();
        let (depth, depth_fast) = (&slots[base + DEPTH], &slots[base + DEPTH_100MS]);
        let listened = !depth.is_empty() || !depth_fast.is_empty();
        let withhold = drop_depth
            || self.skip_depth[sym]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
        if !withhold && listened {
            buf.clear();
            events::depth_update(buf, ms, symbol, out);
            self.fan_out(depth, base + DEPTH, buf);
            self.fan_out(depth_fast, base + DEPTH_100MS, buf);
        }
        let (trades, aggs) = (&slots[base + TRADE], &slots[base + AGG_TRADE]);
        for t in &out.trades {
            if !trades.is_empty() {
                buf.clear();
                events::trade(buf, ms, symbol, t);
                self.fan_out(trades, base + TRADE, buf);
            }
            if !aggs.is_empty() {
                buf.clear();
                events::agg_trade(buf, ms, symbol, t);
                self.fan_out(aggs, base + AGG_TRADE, buf);
            }
        }
        let tickers = &slots[base + BOOK_TICKER];
        if !tickers.is_empty() {
            buf.clear();
            events::book_ticker(buf, out.last_id, symbol, out.top);
            self.fan_out(tickers, base + BOOK_TICKER, buf);
        }
        drop_depth && listened
    }

    /// Withholds the next `n` depth diffs of symbol `sym`.
    pub fn inject_gaps(&self, sym: usize, n: u64) {
        self.skip_depth[sym].fetch_add(n, Ordering::Relaxed);
    }

    /// Publishes the 24hr ticker of symbol `sym` if anyone listens.
    pub fn publish_ticker(&self, sym: usize, market: &Mutex<Market>, ms: u64, buf: &mut String) {
        let slots = self.slots.read();
        let slot = sym * KINDS.len() + TICKER;
        if slots[slot].is_empty() {
            return;
        }
        buf.clear();
        {
            let m = market.lock();
            events::ticker(buf, ms, &self.symbols[sym], &m.stats, m.top());
        }
        self.fan_out(&slots[slot], slot, buf);
    }

    fn fan_out(&self, subs: &[Sub], slot: usize, data: &str) {
        let mut raw: Option<Utf8Bytes> = None;
        let mut combined: Option<Utf8Bytes> = None;
        for s in subs {
            if s.conn.killed() {
                continue;
            }
            let frame = if s.conn.combined.load(Ordering::Relaxed) {
                combined
                    .get_or_insert_with(|| {
                        let name = &self.names[slot];
                        let mut f = String::with_capacity(data.len() + name.len() + 22);
                        f.push_str("{\"stream\":\"");
                        f.push_str(name);
                        f.push_str("\",\"data\":");
                        f.push_str(data);
                        f.push('}');
                        Utf8Bytes::from(f)
                    })
                    .clone()
            } else {
                raw.get_or_insert_with(|| Utf8Bytes::from(data)).clone()
            };
            match s.tx.try_send(frame) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                // Too slow to keep up: disconnect, as Binance does.
                Err(TrySendError::Full(_)) => s.conn.kill(),
            }
        }
    }
}
