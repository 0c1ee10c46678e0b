//! Blocking REST client for Binance spot: exchange info and depth snapshots, under one
//! request-weight budget, honouring 429/418 and `Retry-After`.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::messages::{
    BinanceApiError, BinanceDepthSnapshot, BinanceExchangeInfo, BinanceSymbolInfo,
};
use super::parse::parse_depth_snapshot;
use crate::config::BinanceConfig;

/// Binance's IP request-weight limit per minute; meltica keeps below 80% of it.
const WEIGHT_LIMIT_PER_MINUTE: u32 = 6000;
const WEIGHT_BUDGET: u32 = WEIGHT_LIMIT_PER_MINUTE * 8 / 10;

/// Why a REST call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("rate limited (HTTP {status}); retry after {retry_after:?}")]
    RateLimited { status: u16, retry_after: Duration },
    #[error("request-weight budget exhausted; next window in {wait:?}")]
    BudgetExhausted { wait: Duration },
    #[error("Binance error {code} (HTTP {status}): {msg}")]
    Api { status: u16, code: i64, msg: String },
    #[error("unexpected HTTP {status} from {url}")]
    Http { status: u16, url: String },
    #[error("malformed response from {url}")]
    Malformed { url: String },
}

impl RestError {
    /// Worth trying again later (network trouble, rate limits, server errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            RestError::Transport { .. }
            | RestError::RateLimited { .. }
            | RestError::BudgetExhausted { .. } => true,
            RestError::Http { status, .. } => *status >= 500,
            RestError::Api { status, .. } => *status >= 500,
            RestError::Malformed { .. } => false,
        }
    }

    /// How long the exchange asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RestError::RateLimited { retry_after, .. } => Some(*retry_after),
            RestError::BudgetExhausted { wait } => Some(*wait),
            _ => None,
        }
    }

    /// The exchange does not list the requested symbol.
    pub fn is_invalid_symbol(&self) -> bool {
        matches!(self, RestError::Api { code: -1121, .. })
    }
}

/// Request weight of `GET /api/v3/depth` for a `limit`.
pub fn depth_weight(limit: u32) -> u32 {
    match limit {
        0..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
    }
}

struct Budget {
    window_start: Instant,
    used: u32,
    banned_until: Option<Instant>,
}

/// The REST client. Cheap to share by reference between threads.
pub struct BinanceRest {
    agent: ureq::Agent,
    base: String,
    budget: Mutex<Budget>,
}

impl BinanceRest {
    pub fn new(cfg: &BinanceConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.rest_timeout))
            .http_status_as_error(false)
            .user_agent("meltica")
            .build()
            .into();
        BinanceRest {
            agent,
            base: cfg.rest_url.trim_end_matches('/').to_owned(),
            budget: Mutex::new(Budget {
                window_start: Instant::now(),
                used: 0,
                banned_until: None,
            }),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Takes `weight` from the per-minute budget, or says how long to wait.
    fn reserve(&self, weight: u32) -> Result<(), RestError> {
        let mut b = self.budget.lock();
        let now = Instant::now();
        if let Some(until) = b.banned_until {
            if now < until {
                return Err(RestError::RateLimited {
                    status: 429,
                    retry_after: until - now,
                });
            }
            b.banned_until = None;
        }
        if now.duration_since(b.window_start) >= Duration::from_secs(60) {
            b.window_start = now;
            b.used = 0;
        }
        if b.used + weight > WEIGHT_BUDGET {
            return Err(RestError::BudgetExhausted {
                wait: Duration::from_secs(60).saturating_sub(now.duration_since(b.window_start)),
            });
        }
        b.used += weight;
        Ok(())
    }

    /// Weight used in the current minute, as the exchange reported it or as we counted.
    pub fn weight_used(&self) -> u32 {
        self.budget.lock().used
    }

    fn get(&self, path_and_query: &str, weight: u32) -> Result<String, RestError> {
        self.reserve(weight)?;
        let url = format!("{}{}", self.base, path_and_query);
        let transport = |e: ureq::Error| RestError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut resp = self.agent.get(&url).call().map_err(transport)?;
        // Our own count already holds every request we sent, including those still in
        // flight; the exchange's count is higher only when something else on this IP spent
        // weight. Answers arrive in any order, so the larger count stands.
        if let Some(used) = resp
            .headers()
            .get("x-mbx-used-weight-1m")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        {
            let mut b = self.budget.lock();
            b.used = b.used.max(used);
        }
        let status = resp.status().as_u16();
        if status == 429 || status == 418 {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(60));
            self.budget.lock().banned_until = Some(Instant::now() + retry_after);
            return Err(RestError::RateLimited {
                status,
                retry_after,
            });
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(transport)?;
        if status == 200 {
            return Ok(body);
        }
        match serde_json::from_str::<BinanceApiError>(&body) {
            Ok(e) => Err(RestError::Api {
                status,
                code: e.code,
                msg: e.msg,
            }),
            Err(_) => Err(RestError::Http { status, url }),
        }
    }

    /// `GET /api/v3/ping`.
    pub fn ping(&self) -> Result<(), RestError> {
        self.get("/api/v3/ping", 1).map(|_| ())
    }

    /// `GET /api/v3/exchangeInfo` for the given symbols.
    pub fn exchange_info(&self, symbols: &[&str]) -> Result<Vec<BinanceSymbolInfo>, RestError> {
        let list: Vec<String> = symbols.iter().map(|s| format!("%22{s}%22")).collect();
        let q = format!("/api/v3/exchangeInfo?symbols=%5B{}%5D", list.join(","));
        let body = self.get(&q, 20)?;
        let info: BinanceExchangeInfo =
            serde_json::from_str(&body).map_err(|_| RestError::Malformed {
                url: format!("{}{}", self.base, "/api/v3/exchangeInfo"),
            })?;
        Ok(info.symbols)
    }

    /// Looks up each symbol; the ones the exchange does not list come back in the second
    /// vector instead of failing the whole request.
    pub fn resolve_symbols(
        &self,
        symbols: &[&str],
    ) -> Result<(Vec<BinanceSymbolInfo>, Vec<String>), RestError> {
        match self.exchange_info(symbols) {
            Ok(found) => {
                let missing = symbols
                    .iter()
                    .filter(|s| !found.iter().any(|f| f.symbol == **s))
                    .map(|s| s.to_string())
                    .collect();
                Ok((found, missing))
            }
            Err(e) if e.is_invalid_symbol() => {
                let mut found = Vec::new();
                let mut missing = Vec::new();
                for s in symbols {
                    match self.exchange_info(&[s]) {
                        Ok(mut v) if !v.is_empty() => found.append(&mut v),
                        Ok(_) => missing.push(s.to_string()),
                        Err(e) if e.is_invalid_symbol() => missing.push(s.to_string()),
                        Err(e) => return Err(e),
                    }
                }
                Ok((found, missing))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v3/depth?symbol=…&limit=…`.
    pub fn depth(&self, symbol: &str, limit: u32) -> Result<BinanceDepthSnapshot, RestError> {
        self.parse_depth(&self.depth_body(symbol, limit)?)
    }

    /// `GET /api/v3/depth`, the body as received.
    pub fn depth_body(&self, symbol: &str, limit: u32) -> Result<String, RestError> {
        self.get(
            &format!("/api/v3/depth?symbol={symbol}&limit={limit}"),
            depth_weight(limit),
        )
    }

    /// Parses a `/api/v3/depth` body.
    pub fn parse_depth(&self, body: &str) -> Result<BinanceDepthSnapshot, RestError> {
        parse_depth_snapshot(body).map_err(|_| RestError::Malformed {
            url: format!("{}/api/v3/depth", self.base),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_binance_table() {
        assert_eq!(depth_weight(100), 5);
        assert_eq!(depth_weight(500), 25);
        assert_eq!(depth_weight(1000), 50);
        assert_eq!(depth_weight(5000), 250);
    }

    #[test]
    fn budget_refuses_past_the_limit() {
        let rest = BinanceRest::new(&crate::config::Config::default().adapter.binance);
        for _ in 0..(WEIGHT_BUDGET / 250) {
            rest.reserve(250).unwrap();
        }
        let e = rest.reserve(250).unwrap_err();
        assert!(e.is_retryable());
        assert!(e.retry_after().is_some());
    }
}
