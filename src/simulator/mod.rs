//! A Binance-protocol spot exchange on one loopback TCP port, for demos, tests and benchmarks.
//!
//! One port serves both the WebSocket market streams (`/stream`, `/stream?streams=..`, `/ws`,
//! `/ws/<stream>`) and the REST endpoints (`/api/v3/ping`, `/api/v3/time`,
//! `/api/v3/exchangeInfo`, `/api/v3/depth`). Payloads use Binance's field names and formats.
//!
//! Threads: one market thread steps every symbol on a deadline schedule and fans serialized
//! frames out to subscribers through bounded channels; one accept thread; one thread per
//! client connection. A subscriber whose queue overflows is disconnected, as Binance does,
//! so a slow client never stalls the market.
//!
//! Update ids: every market step changes at least one level and consumes one update id per
//! changed level, so a `depthUpdate` spans `U..=u` with `u - U + 1` equal to the number of
//! levels it carries, and consecutive diffs satisfy `next.U == prev.u + 1`. Snapshots and
//! [`Simulator::book_at`] exist only for the final id `u` of a step.
//!
//! REST limits: every request is charged its Binance weight against one per-minute meter
//! (all loopback clients share an IP, and Binance counts per IP), reported in
//! `x-mbx-used-weight-1m`. Beyond [`SimulatorConfig::rest_weight_limit`] (6000 by default)
//! requests get `429` with `Retry-After` until the minute ends, counted by
//! [`Simulator::limit_429_count`]. A request sent before a 429's `Retry-After` has passed
//! gets 429 again; the third such request in a row bans the IP: `418` with `Retry-After`
//! for [`SimulatorConfig::rest_ban`]. Those are counted by
//! [`Simulator::ignored_retry_after_count`], so a test can fail on any REST traffic a
//! well-behaved client would not have sent.
//!
//! # Fault injection
//!
//! Faults start from [`SimulatorConfig::faults`] and can be switched at any time through
//! [`Simulator::faults`]; [`FaultConfig::all`] turns every one on at a rate a one-minute
//! soak survives. [`Faults::stats`] counts what was injected. Faults are transport faults:
//! the market, [`Simulator::book_at`] and snapshots stay exact, so a client's book can
//! always be checked against the truth.
//!
//! - **Gaps** (`gap_rate`): a depth diff of a symbol is withheld from every subscriber, so
//!   all clients see the same update-id gap (as with [`Simulator::inject_gaps`]). The client
//!   must notice `U != prev.u + 1` and resync from a snapshot.
//! - **Duplicates** (`duplicate_rate`): a data frame is sent twice on one connection; the
//!   second copy of a diff has `u <= prev.u` and must be ignored, not treated as a gap.
//! - **Reordering** (`reorder_rate`): a data frame is held back and sent right after the next
//!   data frame of the same connection. For a depth stream that is a gap followed by a stale
//!   diff; the client must resync.
//! - **Malformed, truncated and unknown frames** (`malformed_rate`, `truncated_rate`,
//!   `unknown_event_rate`): extra text frames after a real one — invalid JSON, the first half
//!   of the real frame, or `{"stream":"btcusdt@foo","data":{"e":"mystery",..}}` (raw
//!   connections get the bare `data` object). They never replace a real diff, so on their own
//!   they cause no gap; the client should count and skip them without reconnecting.
//! - **Abrupt disconnects** (`disconnect_rate`): the TCP connection is shut down with no
//!   close frame. The client reconnects with backoff and resyncs.
//! - **Half-open connections** (`half_open_rate`, `half_open_for`): the server stops sending
//!   frames and pings and stops reading (client pings go unanswered) but keeps the socket
//!   open, until `half_open_for` passes (then it is dropped without a close frame) or the
//!   client hangs up. Only a client-side watchdog on silence can notice.
//! - **Stalled streams** (`stall_rate`, `stall_for`): data frames stop while pings, pongs and
//!   replies to requests continue, for `stall_for` (then data resumes with a gap) or for the
//!   rest of the connection. A watchdog that counts pings as traffic never notices; the client
//!   must watch data per stream.
//! - **Planned disconnects** (`planned_disconnect_rate`, `max_connection_age`): the server
//!   sends Binance's notice `{"e":"serverShutdown","E":<ms>}` as a text frame, keeps
//!   streaming for `shutdown_grace` (1 s by default), then sends a close frame (1001) and
//!   closes. `max_connection_age` does the same when a connection reaches that age, like
//!   Binance's 24-hour cut shortened. The client should open a new connection and resubscribe
//!   during the grace period and switch over once the new streams flow, so its books never
//!   go stale.
//! - **REST 429/418** (`rest_429_rate`, `rest_418_after`): a request is answered `429` with
//!   `Retry-After` (`rest_429_retry_after`, whole seconds); after `rest_418_after` injected
//!   429s the next is a `418` that bans the IP for `rest_418_retry_after`. These are counted
//!   apart from the limit 429s ([`Simulator::injected_429_count`] and
//!   [`FaultStats::rest_418`]). The client must wait out `Retry-After` for all REST traffic.
//! - **Slow snapshots** (`slow_snapshot_rate`, `slow_snapshot_delay`): the depth snapshot is
//!   taken on arrival and sent after the delay, so diffs newer than it queue up meanwhile.
//! - **Failed snapshots** (`failed_snapshot_rate`): half are `500` with Binance's `-1001`
//!   error body, half announce the full `Content-Length`, send half the body and close the
//!   connection. The client retries the snapshot.
//!
//! Connection faults are drawn every 10 ms, at most one at a time per connection; frame faults
//! per frame from a per-connection generator seeded from [`SimulatorConfig::seed`]. Fault
//! timing depends on thread scheduling, so runs are not bit-for-bit repeatable.

mod events;
mod faults;
mod hub;
mod market;
mod rest;
mod server;
mod ws;

#[cfg(test)]
mod tests;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::schema::Decimal;
pub use faults::{FaultConfig, FaultStats, Faults};
use hub::Hub;
use market::{Market, StepOutput};

/// One listed trading pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSymbol {
    /// Upper-case exchange symbol, e.g. `"BTCUSDT"`.
    pub symbol: String,
    pub base: String,
    pub quote: String,
    /// Initial mid price (rounded down to the tick grid).
    pub mid: Decimal,
    /// Price tick size.
    pub tick: Decimal,
    /// Quantity step size.
    pub step: Decimal,
}

impl SimSymbol {
    /// Builds a symbol from decimal strings; panics on malformed literals.
    pub fn new(symbol: &str, base: &str, quote: &str, mid: &str, tick: &str, step: &str) -> Self {
        let dec = |s: &str| Decimal::parse(s).unwrap_or_else(|e| panic!("bad decimal {s:?}: {e}"));
        SimSymbol {
            symbol: symbol.to_string(),
            base: base.to_string(),
            quote: quote.to_string(),
            mid: dec(mid),
            tick: dec(tick),
            step: dec(step),
        }
    }
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Listen address; port 0 picks a free port.
    pub addr: SocketAddr,
    pub symbols: Vec<SimSymbol>,
    /// Market steps per second per symbol; each step emits one `depthUpdate`. 0 = frozen.
    pub updates_per_sec: u32,
    /// Expected number of trades per step (e.g. 0.3 = a trade in ~30% of steps).
    pub trades_per_step: f64,
    /// Levels per side kept in the book, 1..=100 (a depth snapshot with limit 100 holds all).
    pub book_levels: usize,
    /// Server WebSocket ping interval (Binance: 20 s).
    pub ping_interval: Duration,
    /// A connection that sends no pong for this long is closed (Binance: 1 min).
    pub pong_timeout: Duration,
    pub seed: u64,
    /// Past book states kept per symbol for [`Simulator::book_at`].
    pub history: usize,
    /// Frames queued per connection before it counts as too slow and is disconnected.
    pub send_queue: usize,
    /// Client messages (text, ping, pong) allowed per second per connection before the
    /// connection is cut, as Binance does; `None` disables the check.
    pub client_message_limit: Option<u32>,
    /// REST request weight allowed per minute (Binance: 6000); beyond it requests get 429
    /// until the minute ends. `None` disables the limit.
    pub rest_weight_limit: Option<u32>,
    /// Length of the IP ban (418) for a client that keeps sending inside a `Retry-After`
    /// window (Binance: from 2 minutes up).
    pub rest_ban: Duration,
    /// Faults injected from the start; change them later through [`Simulator::faults`].
    pub faults: FaultConfig,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            symbols: vec![
                SimSymbol::new("BTCUSDT", "BTC", "USDT", "50000", "0.01", "0.00001"),
                SimSymbol::new("ETHUSDT", "ETH", "USDT", "3000", "0.01", "0.0001"),
                SimSymbol::new("SOLUSDT", "SOL", "USDT", "150", "0.01", "0.001"),
            ],
            updates_per_sec: 20,
            trades_per_step: 0.3,
            book_levels: 40,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(60),
            seed: 0x006d_656c_7469_6361,
            history: 4096,
            send_queue: 65_536,
            client_message_limit: Some(5),
            rest_weight_limit: Some(6000),
            rest_ban: Duration::from_secs(120),
            faults: FaultConfig::default(),
        }
    }
}

/// A full order book at one update id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BookState {
    pub last_update_id: u64,
    /// Best (highest) first.
    pub bids: Vec<(Decimal, Decimal)>,
    /// Best (lowest) first.
    pub asks: Vec<(Decimal, Decimal)>,
}

/// State shared by all simulator threads.
pub(crate) struct Shared {
    pub cfg: SimulatorConfig,
    pub markets: Vec<Mutex<Market>>,
    pub hub: Hub,
    pub stop: AtomicBool,
    pub paused: AtomicBool,
    /// Held for the whole of each market step, so `set_paused` can wait out a running step.
    pub step_gate: Mutex<()>,
    pub frames_sent: AtomicU64,
    pub conn_threads: Mutex<Vec<JoinHandle<()>>>,
    pub rest: rest::RestLimits,
    pub faults: Faults,
    pub client: ClientAccounting,
    /// When each depth snapshot was served, and for which symbol.
    pub depth_served: Mutex<Vec<(Instant, String)>>,
    /// Depth requests being answered right now, and the most there ever were at once.
    pub depth_in_progress: AtomicU64,
    pub depth_in_progress_peak: AtomicU64,
}

/// A SUBSCRIBE or UNSUBSCRIBE the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    pub at: std::time::Instant,
    pub connection: u64,
    pub method: String,
    pub params: Vec<String>,
}

/// What clients sent: Binance allows 5 messages per second per connection (text, ping and
/// pong frames alike) and disconnects a connection that sends more.
#[derive(Default)]
pub(crate) struct ClientAccounting {
    pub requests: Mutex<Vec<ClientRequest>>,
    pub max_per_second: std::sync::atomic::AtomicU32,
    pub violations: AtomicU64,
}

impl Shared {
    pub fn symbol_index(&self, symbol: &str) -> Option<usize> {
        self.cfg.symbols.iter().position(|s| s.symbol == symbol)
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A running simulated exchange. Dropping it stops every thread and frees the port.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Binds the listener, spawns the `meltica-sim-*` threads and returns immediately.
    pub fn start(cfg: SimulatorConfig) -> std::io::Result<Simulator> {
        validate(&cfg)?;
        let markets = cfg
            .symbols
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                Mutex::new(Market::new(
                    s,
                    cfg.book_levels,
                    cfg.trades_per_step,
                    cfg.history,
                    seed,
                ))
            })
            .collect();
        let listener = TcpListener::bind(cfg.addr)?;
        let addr = listener.local_addr()?;
        let hub = Hub::new(&cfg.symbols);
        let faults = Faults::new(&cfg.faults);
        let shared = Arc::new(Shared {
            cfg,
            markets,
            hub,
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            step_gate: Mutex::new(()),
            frames_sent: AtomicU64::new(0),
            conn_threads: Mutex::new(Vec::new()),
            rest: rest::RestLimits::default(),
            faults,
            client: ClientAccounting::default(),
            depth_served: Mutex::new(Vec::new()),
            depth_in_progress: AtomicU64::new(0),
            depth_in_progress_peak: AtomicU64::new(0),
        });
        let mut threads = Vec::with_capacity(2);
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("meltica-sim-market".into())
                .spawn(move || market_loop(&s))?,
        );
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("meltica-sim-accept".into())
            .spawn(move || server::accept_loop(&s, listener));
        match accept {
            Ok(h) => threads.push(h),
            Err(e) => {
                let mut sim = Simulator {
                    shared,
                    addr,
                    threads,
                };
                sim.stop();
                return Err(e);
            }
        }
        Ok(Simulator {
            shared,
            addr,
            threads,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Combined-stream base URL, e.g. `ws://127.0.0.1:PORT/stream`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    /// REST base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Listed symbols.
    pub fn symbols(&self) -> &[SimSymbol] {
        &self.shared.cfg.symbols
    }

    /// Listed instruments in canonical `BASE-QUOTE` form, e.g. `"BTC-USDT"`.
    pub fn instruments(&self) -> Vec<String> {
        self.shared
            .cfg
            .symbols
            .iter()
            .map(|s| format!("{}-{}", s.base, s.quote))
            .collect()
    }

    /// The full book right after the step whose final update id is `update_id`; `None` for
    /// unknown symbols, ids inside a step, and ids evicted from the history.
    pub fn book_at(&self, symbol: &str, update_id: u64) -> Option<BookState> {
        let i = self.shared.symbol_index(symbol)?;
        self.shared.markets[i].lock().book_at(update_id)
    }

    /// The current full book.
    pub fn current_book(&self, symbol: &str) -> Option<BookState> {
        let i = self.shared.symbol_index(symbol)?;
        Some(self.shared.markets[i].lock().current().clone())
    }

    /// Active stream subscriptions over all live connections.
    pub fn subscription_count(&self) -> usize {
        self.shared.hub.subscription_count()
    }

    /// Withholds the next `n` depth diffs of `symbol` from every client: each one is an
    /// update-id gap a correct client must detect. False for an unknown symbol.
    pub fn inject_gaps(&self, symbol: &str, n: u64) -> bool {
        match self.shared.symbol_index(symbol) {
            Some(i) => {
                self.shared.hub.inject_gaps(i, n);
                true
            }
            None => false,
        }
    }

    /// When each `/api/v3/depth` snapshot was served, and for which symbol.
    pub fn depth_snapshots_served(&self) -> Vec<(Instant, String)> {
        self.shared.depth_served.lock().clone()
    }

    /// The most `/api/v3/depth` requests that were being answered at the same time.
    pub fn peak_concurrent_snapshots(&self) -> u64 {
        self.shared.depth_in_progress_peak.load(Ordering::Relaxed)
    }

    /// Every SUBSCRIBE and UNSUBSCRIBE received, in order.
    pub fn client_requests(&self) -> Vec<ClientRequest> {
        self.shared.client.requests.lock().clone()
    }

    /// The most client messages any connection sent within one second.
    pub fn max_client_messages_per_second(&self) -> u32 {
        self.shared.client.max_per_second.load(Ordering::Relaxed)
    }

    /// Connections cut for sending more than 5 messages in a second.
    pub fn rate_violations(&self) -> u64 {
        self.shared.client.violations.load(Ordering::Relaxed)
    }

    /// Live WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.shared.hub.ws_connection_count()
    }

    /// Data frames handed to WebSocket connections (excluding control replies and pings).
    pub fn frames_sent(&self) -> u64 {
        self.shared.frames_sent.load(Ordering::Relaxed)
    }

    /// Abruptly closes every WebSocket connection (TCP shutdown, no close frame) and forgets
    /// their subscriptions; the listener keeps accepting.
    pub fn drop_connections(&self) {
        self.shared.hub.kill_ws_connections();
    }

    /// Stops (`true`) or resumes market steps. When this returns `true`, no step is running
    /// and none starts until resumed.
    pub fn set_paused(&self, paused: bool) {
        let _gate = self.shared.step_gate.lock();
        self.shared.paused.store(paused, Ordering::Release);
    }

    /// The live fault switches and counters of what was injected.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Every 429 answered: injected, over the weight limit, and inside a `Retry-After`
    /// window.
    pub fn rest_429_count(&self) -> u64 {
        let r = &self.shared.rest;
        self.injected_429_count()
            + r.limit_429.load(Ordering::Relaxed)
            + r.early_429.load(Ordering::Relaxed)
    }

    /// Every 418 answered: injected bans, and bans earned by ignoring `Retry-After`
    /// (including requests sent during a ban).
    pub fn rest_418_count(&self) -> u64 {
        self.shared.faults.count.rest_418.load(Ordering::Relaxed)
            + self.shared.rest.ban_418.load(Ordering::Relaxed)
    }

    /// 429s earned by exceeding [`SimulatorConfig::rest_weight_limit`] within a minute. A
    /// client that keeps to the budget never sees one.
    pub fn limit_429_count(&self) -> u64 {
        self.shared.rest.limit_429.load(Ordering::Relaxed)
    }

    /// 429s injected by [`FaultConfig::rest_429_rate`].
    pub fn injected_429_count(&self) -> u64 {
        self.shared.faults.count.rest_429.load(Ordering::Relaxed)
    }

    /// Requests that arrived before an earlier 429's or 418's `Retry-After` had passed
    /// (answered 429, or 418 once the client is banned). A client that honours
    /// `Retry-After` never sends one.
    pub fn ignored_retry_after_count(&self) -> u64 {
        self.shared.rest.early.load(Ordering::Relaxed)
    }

    /// The most request weight used within one wall-clock minute, rejected requests
    /// included.
    pub fn rest_weight_peak_per_minute(&self) -> u64 {
        self.shared.rest.peak()
    }

    /// Stops all threads and releases the port (same as dropping).
    pub fn shutdown(self) {}

    fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wake the accept thread, which is blocked in accept().
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let woke = TcpStream::connect_timeout(&wake, Duration::from_secs(2)).is_ok();
        for h in self.threads.drain(..) {
            let accept = h.thread().name() == Some("meltica-sim-accept");
            if accept && !woke {
                // Cannot reach our own listener; leave that thread detached.
                continue;
            }
            let _ = h.join();
        }
        self.shared.hub.kill_all();
        let handles = std::mem::take(&mut *self.shared.conn_threads.lock());
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn validate(cfg: &SimulatorConfig) -> std::io::Result<()> {
    let bad = |msg: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
    if cfg.symbols.is_empty() {
        return bad("simulator needs at least one symbol".into());
    }
    if !(1..=100).contains(&cfg.book_levels) {
        return bad(format!("book_levels {} not in 1..=100", cfg.book_levels));
    }
    if !cfg.trades_per_step.is_finite() || cfg.trades_per_step < 0.0 {
        return bad("trades_per_step must be a non-negative number".into());
    }
    let problems = cfg.faults.problems();
    if !problems.is_empty() {
        return bad(problems.join("; "));
    }
    for (i, s) in cfg.symbols.iter().enumerate() {
        if s.symbol.is_empty()
            || !s
                .symbol
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return bad(format!(
                "symbol {:?} must be upper-case alphanumeric",
                s.symbol
            ));
        }
        if cfg.symbols[..i].iter().any(|o| o.symbol == s.symbol) {
            return bad(format!("duplicate symbol {}", s.symbol));
        }
        if s.tick.raw() <= 0 || s.step.raw() <= 0 {
            return bad(format!("{}: tick and step must be positive", s.symbol));
        }
        if s.mid.raw() / s.tick.raw() <= 10 * cfg.book_levels as i64 {
            return bad(format!(
                "{}: mid must exceed 10 * book_levels ticks",
                s.symbol
            ));
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Steps every symbol on a deadline schedule and publishes the resulting events.
fn market_loop(shared: &Shared) {
    let rate = shared.cfg.updates_per_sec;
    let n = shared.cfg.symbols.len();
    let mut outs: Vec<StepOutput> = (0..n).map(|_| StepOutput::default()).collect();
    let mut scratch = String::with_capacity(4096);
    let mut rng = fastrand::Rng::with_seed(shared.cfg.seed ^ 0x6761_7073);
    let mut next_ticker: Vec<Instant> = vec![Instant::now() + Duration::from_secs(1); n];
    let period = Duration::from_nanos(1_000_000_000 / u64::from(rate.max(1)));
    let mut origin = Instant::now();
    let mut done: u32 = 0;
    while !shared.stopping() {
        if rate == 0 || shared.paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(2));
            origin = Instant::now();
            done = 0;
            continue;
        }
        let now = Instant::now();
        let due = origin + period * done;
        if now < due {
            // Bounded so a stop request is noticed promptly even at low rates.
            std::thread::sleep((due - now).min(Duration::from_millis(20)));
            continue;
        }
        if now - due > Duration::from_secs(1) || done == u32::MAX {
            // Far behind (stall or a machine slower than the rate): restart the schedule.
            origin = now;
            done = 0;
        }
        done += 1;

        let _gate = shared.step_gate.lock();
        if shared.paused.load(Ordering::Acquire) {
            continue;
        }
        let ms = now_ms();
        let gap_rate = shared.faults.gap_rate();
        for (i, out) in outs.iter_mut().enumerate() {
            shared.markets[i].lock().step(out);
            let drop_depth = faults::roll(&mut rng, gap_rate);
            if shared
                .hub
                .publish_step(i, out, ms, &mut scratch, drop_depth)
            {
                faults::bump(&shared.faults.count.gaps);
            }
            if now >= next_ticker[i] {
                next_ticker[i] = now + Duration::from_secs(1);
                shared
                    .hub
                    .publish_ticker(i, &shared.markets[i], ms, &mut scratch);
            }
        }
    }
}
