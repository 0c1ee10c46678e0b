//! REST endpoints: `/api/v3/ping`, `/api/v3/time`, `/api/v3/exchangeInfo`, `/api/v3/depth`.

use std::fmt::Write as _;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::events::{push_fixed8, push_levels};
use super::faults::{bump, roll};
use super::server::{Request, write_response, write_truncated_response};
use super::{Shared, now_ms};

const ERR_MISSING_SYMBOL: &str = r#"{"code":-1102,"msg":"Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}"#;
const ERR_BAD_SYMBOL: &str = r#"{"code":-1121,"msg":"Invalid symbol."}"#;
const ERR_INTERNAL: &str =
    r#"{"code":-1001,"msg":"Internal error; unable to process your request. Please try again."}"#;

/// Requests in a row inside a `Retry-After` window before the IP is banned with 418.
const STRIKES_BEFORE_BAN: u64 = 3;

/// Binance's REST rate limiting for the one IP every loopback client shares: the request
/// weight of the current (wall-clock) minute, the `Retry-After` window of the latest 429,
/// an IP ban (418), and counters of every rejection.
#[derive(Default)]
pub(crate) struct RestLimits {
    minute: AtomicU64,
    used: AtomicU64,
    peak: AtomicU64,
    /// Wall-clock ms before which the client was told not to come back (429).
    retry_until: AtomicU64,
    /// Wall-clock ms until which every request is answered 418.
    banned_until: AtomicU64,
    /// Requests in a row that arrived inside a `Retry-After` window.
    strikes: AtomicU64,
    /// Injected 429s since the last injected 418.
    injected_since_418: AtomicU64,
    /// 429s for exceeding the weight limit.
    pub limit_429: AtomicU64,
    /// 429s for requests inside a `Retry-After` window.
    pub early_429: AtomicU64,
    /// 418s earned by ignoring `Retry-After` (the ban and requests during it).
    pub ban_418: AtomicU64,
    /// Requests that arrived before an earlier 429 or 418 allowed.
    pub early: AtomicU64,
}

impl RestLimits {
    /// Adds `weight` to the current minute; returns the minute's total.
    fn charge(&self, now: u64, weight: u64) -> u64 {
        let minute = now / 60_000;
        if self.minute.swap(minute, Ordering::AcqRel) != minute {
            self.used.store(0, Ordering::Release);
        }
        let used = self.used.fetch_add(weight, Ordering::AcqRel) + weight;
        self.peak.fetch_max(used, Ordering::Relaxed);
        used
    }

    /// Weight used in the current minute.
    fn used(&self, now: u64) -> u64 {
        if self.minute.load(Ordering::Acquire) == now / 60_000 {
            self.used.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// The most weight used within one minute.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// A request turned away before any work was done.
struct Rejection {
    status: u16,
    retry_after_secs: u64,
}

/// Whole seconds, rounded up.
fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// Decides whether a request of `weight` is served: the ban, the `Retry-After` window,
/// the per-minute weight limit, then injected 429/418 faults.
fn admit(shared: &Shared, rng: &mut fastrand::Rng, weight: u64) -> Result<(), Rejection> {
    let limits = &shared.rest;
    let faults = &shared.faults;
    let now = now_ms();
    let banned = limits.banned_until.load(Ordering::Acquire);
    if now < banned {
        bump(&limits.early);
        bump(&limits.ban_418);
        return Err(Rejection {
            status: 418,
            retry_after_secs: ceil_secs(banned - now),
        });
    }
    let used = limits.charge(now, weight);
    let until = limits.retry_until.load(Ordering::Acquire);
    if now < until {
        bump(&limits.early);
        if limits.strikes.fetch_add(1, Ordering::AcqRel) + 1 >= STRIKES_BEFORE_BAN {
            limits.strikes.store(0, Ordering::Release);
            let secs = ceil_secs(shared.cfg.rest_ban.as_millis() as u64).max(1);
            limits
                .banned_until
                .store(now + secs * 1000, Ordering::Release);
            bump(&limits.ban_418);
            return Err(Rejection {
                status: 418,
                retry_after_secs: secs,
            });
        }
        bump(&limits.early_429);
        return Err(Rejection {
            status: 429,
            retry_after_secs: ceil_secs(until - now),
        });
    }
    // Strikes count requests inside a window in a row.
    limits.strikes.store(0, Ordering::Release);
    if shared
        .cfg
        .rest_weight_limit
        .is_some_and(|limit| used > u64::from(limit))
    {
        // Binance lifts the limit when the minute ends.
        let secs = ceil_secs(60_000 - now % 60_000);
        limits
            .retry_until
            .store(now + secs * 1000, Ordering::Release);
        bump(&limits.limit_429);
        return Err(Rejection {
            status: 429,
            retry_after_secs: secs,
        });
    }
    if roll(rng, faults.rest_429_rate()) {
        let after = faults.rest_418_after();
        let n = limits.injected_since_418.fetch_add(1, Ordering::AcqRel) + 1;
        if after > 0 && n > after {
            limits.injected_since_418.store(0, Ordering::Release);
            let secs = ceil_secs(faults.rest_418_retry_after().as_millis() as u64);
            limits
                .banned_until
                .store(now + secs * 1000, Ordering::Release);
            bump(&faults.count.rest_418);
            return Err(Rejection {
                status: 418,
                retry_after_secs: secs,
            });
        }
        let secs = ceil_secs(faults.rest_429_retry_after().as_millis() as u64);
        limits
            .retry_until
            .store(now + secs * 1000, Ordering::Release);
        bump(&faults.count.rest_429);
        return Err(Rejection {
            status: 429,
            retry_after_secs: secs,
        });
    }
    Ok(())
}

struct Reply {
    status: u16,
    body: String,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        body: body.into(),
    }
}

/// Request weight as Binance counts it, known before the request is served.
fn request_weight(req: &Request) -> u64 {
    match req.path.as_str() {
        "/api/v3/exchangeInfo" => 20,
        "/api/v3/depth" => {
            let limit = req
                .param("limit")
                .and_then(|l| l.parse::<u64>().ok())
                .unwrap_or(100);
            match limit {
                0..=100 => 5,
                101..=500 => 25,
                501..=1000 => 50,
                _ => 250,
            }
        }
        _ => 1,
    }
}

/// Answers one REST request.
pub(crate) fn handle(
    shared: &Shared,
    stream: &mut TcpStream,
    req: &Request,
    keep_alive: bool,
    rng: &mut fastrand::Rng,
) -> io::Result<()> {
    let weight = request_weight(req);
    if let Err(r) = admit(shared, rng, weight) {
        let headers = [
            weight_header("x-mbx-used-weight", shared),
            weight_header("x-mbx-used-weight-1m", shared),
            ("Retry-After", r.retry_after_secs.to_string()),
        ];
        let body = if r.status == 418 {
            format!(
                "{{\"code\":-1003,\"msg\":\"Way too much request weight used; IP banned until {}. Please use WebSocket Streams for live updates to avoid bans.\"}}",
                now_ms() + r.retry_after_secs * 1000
            )
        } else {
            format!(
                "{{\"code\":-1003,\"msg\":\"Too much request weight used; current limit is {} request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.\"}}",
                shared.cfg.rest_weight_limit.unwrap_or(6000)
            )
        };
        return write_response(stream, r.status, &headers, &body, keep_alive);
    }
    let is_depth = req.path == "/api/v3/depth";
    let answering = is_depth.then(|| InProgress::enter(shared));
    let mut r = route(shared, req);
    let headers = [
        weight_header("x-mbx-used-weight", shared),
        weight_header("x-mbx-used-weight-1m", shared),
    ];
    if is_depth && r.status == 200 {
        let faults = &shared.faults;
        if roll(rng, faults.failed_snapshot_rate()) {
            bump(&faults.count.failed_snapshots);
            if rng.bool() {
                r = reply(500, ERR_INTERNAL);
            } else {
                // The head promises the whole body; half of it arrives, then the socket closes.
                let cut = r.body.len() / 2;
                write_truncated_response(stream, 200, &headers, &r.body, cut)?;
                return Err(io::Error::other("truncated snapshot"));
            }
        } else {
            if roll(rng, faults.slow_snapshot_rate()) {
                bump(&faults.count.slow);
                let until = Instant::now() + faults.slow_snapshot_delay();
                while Instant::now() < until && !shared.stopping() {
                    std::thread::sleep((until - Instant::now()).min(Duration::from_millis(10)));
                }
            }
            let sym = req.param("symbol").unwrap_or_default();
            shared.depth_served.lock().push((Instant::now(), sym));
        }
    }
    // Answered once the body is ready; writing it is the client's reading.
    drop(answering);
    write_response(stream, r.status, &headers, &r.body, keep_alive)
}

/// Counts a depth request as being answered until dropped.
struct InProgress<'a>(&'a Shared);

impl<'a> InProgress<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.depth_in_progress.fetch_add(1, Ordering::Relaxed) + 1;
        shared
            .depth_in_progress_peak
            .fetch_max(now, Ordering::Relaxed);
        InProgress(shared)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.depth_in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

fn weight_header(name: &'static str, shared: &Shared) -> (&'static str, String) {
    (name, shared.rest.used(now_ms()).to_string())
}

fn route(shared: &Shared, req: &Request) -> Reply {
    if req.method != "GET" {
        return reply(405, r#"{"code":-1,"msg":"Method not allowed."}"#);
    }
    match req.path.as_str() {
        "/api/v3/ping" => reply(200, "{}"),
        "/api/v3/time" => reply(200, format!("{{\"serverTime\":{}}}", now_ms())),
        "/api/v3/exchangeInfo" => exchange_info(shared, req),
        "/api/v3/depth" => depth(shared, req),
        _ => reply(404, r#"{"code":-1,"msg":"Not found."}"#),
    }
}

fn fixed8(raw: i64) -> String {
    let mut s = String::with_capacity(24);
    push_fixed8(&mut s, raw);
    s
}

fn exchange_info(shared: &Shared, req: &Request) -> Reply {
    let all = &shared.cfg.symbols;
    let selected: Vec<usize> = if let Some(sym) = req.param("symbol") {
        match shared.symbol_index(&sym) {
            Some(i) => vec![i],
            None => return reply(400, ERR_BAD_SYMBOL),
        }
    } else if let Some(list) = req.param("symbols") {
        let Ok(names) = serde_json::from_str::<Vec<String>>(&list) else {
            let msg = "Illegal characters found in parameter 'symbols'; legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.";
            return reply(400, json!({"code": -1100, "msg": msg}).to_string());
        };
        let mut idx = Vec::with_capacity(names.len());
        for n in &names {
            match shared.symbol_index(n) {
                Some(i) => idx.push(i),
                None => return reply(400, ERR_BAD_SYMBOL),
            }
        }
        idx
    } else {
        (0..all.len()).collect()
    };
    let symbols: Vec<Value> = selected
        .iter()
        .map(|&i| {
            let s = &all[i];
            json!({
                "symbol": s.symbol,
                "status": "TRADING",
                "baseAsset": s.base,
                "baseAssetPrecision": 8,
                "quoteAsset": s.quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": true,
                "ocoAllowed": true,
                "quoteOrderQtyMarketAllowed": true,
                "allowTrailingStop": true,
                "cancelReplaceAllowed": true,
                "isSpotTradingAllowed": true,
                "isMarginTradingAllowed": false,
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": fixed8(s.tick.raw()),
                        "maxPrice": "1000000.00000000",
                        "tickSize": fixed8(s.tick.raw()),
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": fixed8(s.step.raw()),
                        "maxQty": "9000.00000000",
                        "stepSize": fixed8(s.step.raw()),
                    },
                ],
                "permissions": [],
                "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            })
        })
        .collect();
    let body = json!({
        "timezone": "UTC",
        "serverTime": now_ms(),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": shared.cfg.rest_weight_limit.unwrap_or(6000)},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": symbols,
    });
    reply(200, body.to_string())
}

fn depth(shared: &Shared, req: &Request) -> Reply {
    let sym = req.param("symbol").unwrap_or_default();
    if sym.is_empty() {
        return reply(400, ERR_MISSING_SYMBOL);
    }
    let Some(i) = shared.symbol_index(&sym) else {
        return reply(400, ERR_BAD_SYMBOL);
    };
    let limit = match req.param("limit") {
        None => 100,
        Some(l) => match l.parse::<u64>() {
            Ok(v) => v.clamp(1, 5000) as usize,
            Err(_) => {
                let msg = "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.";
                return reply(400, json!({"code": -1100, "msg": msg}).to_string());
            }
        },
    };
    let mut body = String::with_capacity(64 + limit.min(200) * 2 * 40);
    {
        // Built under the market lock: the levels are exactly the book at lastUpdateId.
        let m = shared.markets[i].lock();
        let book = m.current();
        let _ = write!(body, "{{\"lastUpdateId\":{},\"bids\":", book.last_update_id);
        let raw = |&(p, q): &(crate::schema::Decimal, crate::schema::Decimal)| (p.raw(), q.raw());
        push_levels(&mut body, book.bids.iter().take(limit).map(raw));
        body.push_str(",\"asks\":");
        push_levels(&mut body, book.asks.iter().take(limit).map(raw));
        body.push('}');
    }
    reply(200, body)
}
