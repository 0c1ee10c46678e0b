//! REST endpoints: `/api/v3/ping`, `/api/v3/time`, `/api/v3/exchangeInfo`, `/api/v3/depth`.

use std::fmt::Write as _;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use super::events::{push_fixed8, push_levels};
use super::server::{Request, write_response};
use super::{Shared, now_ms};

const ERR_MISSING_SYMBOL: &str = r#"{"code":-1102,"msg":"Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}"#;
const ERR_BAD_SYMBOL: &str = r#"{"code":-1121,"msg":"Invalid symbol."}"#;

/// Request weight used in the current minute, reported as `x-mbx-used-weight-1m`.
#[derive(Default)]
pub(crate) struct WeightMeter {
    minute: AtomicU64,
    used: AtomicU64,
}

impl WeightMeter {
    fn add(&self, weight: u64) -> u64 {
        let minute = now_ms() / 60_000;
        if self.minute.swap(minute, Ordering::AcqRel) != minute {
            self.used.store(0, Ordering::Release);
        }
        self.used.fetch_add(weight, Ordering::AcqRel) + weight
    }
}

struct Reply {
    status: u16,
    body: String,
    weight: u64,
}

fn reply(status: u16, body: impl Into<String>, weight: u64) -> Reply {
    Reply {
        status,
        body: body.into(),
        weight,
    }
}

/// Answers one REST request.
pub(crate) fn handle(
    shared: &Shared,
    stream: &mut TcpStream,
    req: &Request,
    keep_alive: bool,
) -> io::Result<()> {
    let r = route(shared, req);
    let used = shared.weight.add(r.weight).to_string();
    let headers = [
        ("x-mbx-used-weight", used.clone()),
        ("x-mbx-used-weight-1m", used),
    ];
    write_response(stream, r.status, &headers, &r.body, keep_alive)
}

fn route(shared: &Shared, req: &Request) -> Reply {
    if req.method != "GET" {
        return reply(405, r#"{"code":-1,"msg":"Method not allowed."}"#, 1);
    }
    match req.path.as_str() {
        "/api/v3/ping" => reply(200, "{}", 1),
        "/api/v3/time" => reply(200, format!("{{\"serverTime\":{}}}", now_ms()), 1),
        "/api/v3/exchangeInfo" => exchange_info(shared, req),
        "/api/v3/depth" => depth(shared, req),
        _ => reply(404, r#"{"code":-1,"msg":"Not found."}"#, 1),
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
            None => return reply(400, ERR_BAD_SYMBOL, 20),
        }
    } else if let Some(list) = req.param("symbols") {
        let Ok(names) = serde_json::from_str::<Vec<String>>(&list) else {
            let msg = "Illegal characters found in parameter 'symbols'; legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.";
            return reply(400, json!({"code": -1100, "msg": msg}).to_string(), 20);
        };
        let mut idx = Vec::with_capacity(names.len());
        for n in &names {
            match shared.symbol_index(n) {
                Some(i) => idx.push(i),
                None => return reply(400, ERR_BAD_SYMBOL, 20),
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
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": symbols,
    });
    reply(200, body.to_string(), 20)
}

fn depth(shared: &Shared, req: &Request) -> Reply {
    let sym = req.param("symbol").unwrap_or_default();
    if sym.is_empty() {
        return reply(400, ERR_MISSING_SYMBOL, 1);
    }
    let Some(i) = shared.symbol_index(&sym) else {
        return reply(400, ERR_BAD_SYMBOL, 1);
    };
    let limit = match req.param("limit") {
        None => 100,
        Some(l) => match l.parse::<u64>() {
            Ok(v) => v.clamp(1, 5000) as usize,
            Err(_) => {
                let msg = "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.";
                return reply(400, json!({"code": -1100, "msg": msg}).to_string(), 1);
            }
        },
    };
    let weight = match limit {
        0..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
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
    shared
        .depth_served
        .lock()
        .push((std::time::Instant::now(), sym.clone()));
    reply(200, body, weight)
}
