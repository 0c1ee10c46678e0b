//! Control commands and their acknowledgements, shared by every control bus (in-process,
//! HTTP, NATS). The JSON body parser lives here so all facades accept exactly the same input.

use serde_json::Value;

use super::EventType;
use crate::config::{FilterConfig, FilterOp};

/// What a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOp {
    Subscribe,
    Unsubscribe,
    UpdateFilters,
}

impl ControlOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlOp::Subscribe => "subscribe",
            ControlOp::Unsubscribe => "unsubscribe",
            ControlOp::UpdateFilters => "filters",
        }
    }
}

/// One control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlCommand {
    pub op: ControlOp,
    pub event_type: EventType,
    /// Instruments a subscribe/unsubscribe covers (canonical names).
    pub instruments: Vec<String>,
    /// The route's new filters (`UpdateFilters` only).
    pub filters: Vec<FilterConfig>,
    /// Who holds the subscription; subscriptions are reference-counted per consumer.
    pub consumer: String,
    pub trace_id: Option<String>,
}

impl ControlCommand {
    pub fn subscribe(t: EventType, instruments: &[&str], consumer: &str) -> Self {
        ControlCommand {
            op: ControlOp::Subscribe,
            event_type: t,
            instruments: instruments.iter().map(|s| s.to_string()).collect(),
            filters: Vec::new(),
            consumer: consumer.to_owned(),
            trace_id: None,
        }
    }

    pub fn unsubscribe(t: EventType, instruments: &[&str], consumer: &str) -> Self {
        ControlCommand {
            op: ControlOp::Unsubscribe,
            ..Self::subscribe(t, instruments, consumer)
        }
    }

    pub fn update_filters(t: EventType, filters: Vec<FilterConfig>) -> Self {
        ControlCommand {
            op: ControlOp::UpdateFilters,
            event_type: t,
            instruments: Vec::new(),
            filters,
            consumer: "default".into(),
            trace_id: None,
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// The change is effective.
    Accepted,
    /// Nothing to change (already so).
    Noop,
    /// Refused; the dispatch table is untouched.
    Error,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Accepted => "accepted",
            AckStatus::Noop => "noop",
            AckStatus::Error => "error",
        }
    }
}

/// The reply to a command, sent once the change is effective.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The command's type as sent (`None` when the body could not be read).
    pub event_type: Option<String>,
    pub status: AckStatus,
    pub dispatch_version: u64,
    pub elapsed_ms: f64,
    pub error: Option<String>,
}

impl Ack {
    pub fn error(event_type: Option<String>, version: u64, reason: impl Into<String>) -> Self {
        Ack {
            event_type,
            status: AckStatus::Error,
            dispatch_version: version,
            elapsed_ms: 0.0,
            error: Some(reason.into()),
        }
    }

    /// `{"type":…,"status":…,"dispatchVersion":N,"elapsedMs":…,"error":…}`.
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            #[serde(rename = "type")]
            event_type: Option<&'a str>,
            status: &'a str,
            dispatch_version: u64,
            elapsed_ms: f64,
            error: Option<&'a str>,
        }
        serde_json::to_string(&Wire {
            event_type: self.event_type.as_deref(),
            status: self.status.as_str(),
            dispatch_version: self.dispatch_version,
            elapsed_ms: (self.elapsed_ms * 1e3).round() / 1e3,
            error: self.error.as_deref(),
        })
        .unwrap_or_default()
    }
}

/// Why a command body was refused, with the HTTP status a facade should answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not JSON, or not a JSON object (400).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// Valid JSON that is not a valid command: unknown type, bad filter (422).
    #[error("{0}")]
    Invalid(String),
}

impl CommandError {
    pub fn http_status(&self) -> u16 {
        match self {
            CommandError::Malformed(_) => 400,
            CommandError::Invalid(_) => 422,
        }
    }
}

/// Longest accepted command body.
pub const MAX_BODY: usize = 64 * 1024;

/// Parses a command body. `op` comes from the path (`/control/subscribe` etc.).
pub fn parse_command(op: ControlOp, body: &[u8]) -> Result<ControlCommand, CommandError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| CommandError::Malformed(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| CommandError::Malformed("expected a JSON object".into()))?;
    let invalid = |m: String| CommandError::Invalid(m);
    for k in obj.keys() {
        if !["type", "filters", "consumer", "traceId"].contains(&k.as_str()) {
            return Err(invalid(format!("unknown field {k:?}")));
        }
    }
    let t = obj
        .get("type")
        .ok_or_else(|| invalid("missing field \"type\"".into()))?
        .as_str()
        .ok_or_else(|| invalid("\"type\" must be a string".into()))?;
    let event_type = match EventType::parse(t) {
        Some(EventType::ControlUpdate) | None => {
            return Err(invalid(format!(
                "unknown type {t:?}; expected TICKER, TRADE, ORDERBOOK.TOP, ORDERBOOK.SNAPSHOT, ORDERBOOK.DELTA or ANALYTICS.FUSED"
            )));
        }
        Some(t) => t,
    };
    let consumer = match obj.get("consumer") {
        None | Some(Value::Null) => "default".to_owned(),
        Some(Value::String(c)) if !c.is_empty() && c.len() <= 128 => c.clone(),
        Some(_) => {
            return Err(invalid(
                "\"consumer\" must be a non-empty string of at most 128 characters".into(),
            ));
        }
    };
    let trace_id = match obj.get("traceId") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.len() <= 128 => Some(t.clone()),
        Some(_) => return Err(invalid("\"traceId\" must be a string".into())),
    };
    let mut cmd = ControlCommand {
        op,
        event_type,
        instruments: Vec::new(),
        filters: Vec::new(),
        consumer,
        trace_id,
    };
    let filters = obj.get("filters").unwrap_or(&Value::Null);
    match op {
        ControlOp::Subscribe | ControlOp::Unsubscribe => {
            let f = filters.as_object().ok_or_else(|| {
                invalid("\"filters\" must be an object with \"instrument\"".into())
            })?;
            for (k, val) in f {
                match k.as_str() {
                    "instrument" => cmd.instruments = strings(val, "filters.instrument")?,
                    "market" => {
                        if val.as_str() != Some(crate::schema::MARKET_BINANCE_SPOT) {
                            return Err(invalid("filters.market must be \"BINANCE-SPOT\"".into()));
                        }
                    }
                    other => {
                        return Err(invalid(format!(
                            "filter field {other:?} cannot select a subscription; use instrument (and market), or /control/filters"
                        )));
                    }
                }
            }
            if cmd.instruments.is_empty() {
                return Err(invalid("filters.instrument is required".into()));
            }
            for i in &cmd.instruments {
                if crate::schema::split_canonical(i).is_none() {
                    return Err(invalid(format!("{i:?} is not an instrument like BTC-USDT")));
                }
            }
        }
        ControlOp::UpdateFilters => cmd.filters = parse_filters(filters)?,
    }
    Ok(cmd)
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, CommandError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| CommandError::Invalid(format!("{what} must hold strings")))
            })
            .collect(),
        _ => Err(CommandError::Invalid(format!(
            "{what} must be a string or a list of strings"
        ))),
    }
}

/// Filters as a list of `{"field","op","value"}`, or an object `{field: value}` (eq, or in
/// for a list).
pub fn parse_filters(v: &Value) -> Result<Vec<FilterConfig>, CommandError> {
    let invalid = |m: String| CommandError::Invalid(m);
    let mut out = Vec::new();
    match v {
        Value::Array(items) => {
            for it in items {
                let o = it.as_object().ok_or_else(|| {
                    invalid("each filter must be {\"field\",\"op\",\"value\"}".into())
                })?;
                for k in o.keys() {
                    if !["field", "op", "value"].contains(&k.as_str()) {
                        return Err(invalid(format!("unknown filter key {k:?}")));
                    }
                }
                let field = o
                    .get("field")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("filter needs a string \"field\"".into()))?;
                let op = o
                    .get("op")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("filter needs a string \"op\"".into()))?;
                let op = match op {
                    "eq" => FilterOp::Eq,
                    "neq" => FilterOp::Neq,
                    "in" => FilterOp::In,
                    "prefix" => FilterOp::Prefix,
                    other => {
                        return Err(invalid(format!(
                            "unknown filter operator {other:?}; expected eq, neq, in or prefix"
                        )));
                    }
                };
                let value = strings(o.get("value").unwrap_or(&Value::Null), "filter value")?;
                out.push(filter(field, op, value)?);
            }
        }
        Value::Object(map) => {
            for (field, val) in map {
                let value = strings(val, "filter value")?;
                let op = if val.is_array() {
                    FilterOp::In
                } else {
                    FilterOp::Eq
                };
                out.push(filter(field, op, value)?);
            }
        }
        Value::Null => {}
        _ => return Err(invalid("\"filters\" must be a list or an object".into())),
    }
    Ok(out)
}

fn filter(field: &str, op: FilterOp, value: Vec<String>) -> Result<FilterConfig, CommandError> {
    if !["instrument", "market", "side"].contains(&field) {
        return Err(CommandError::Invalid(format!(
            "unknown filter field {field:?}; expected instrument, market or side"
        )));
    }
    if op != FilterOp::In && value.len() != 1 {
        return Err(CommandError::Invalid(
            "eq, neq and prefix take a single value".into(),
        ));
    }
    Ok(FilterConfig {
        field: field.to_owned(),
        op,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_examples() {
        let c = parse_command(
            ControlOp::Subscribe,
            br#"{"type":"TICKER","filters":{"instrument":"BTC-USDT"},"consumer":"ops","traceId":"t1"}"#,
        )
        .unwrap();
        assert_eq!(c.event_type, EventType::Ticker);
        assert_eq!(c.instruments, ["BTC-USDT"]);
        assert_eq!(c.consumer, "ops");
        assert_eq!(c.trace_id.as_deref(), Some("t1"));
        let f = parse_command(
            ControlOp::UpdateFilters,
            br#"{"type":"TRADE","filters":[{"field":"side","op":"eq","value":"buy"}]}"#,
        )
        .unwrap();
        assert_eq!(f.filters[0].op, FilterOp::Eq);
    }

    #[test]
    fn refuses_bad_bodies_with_the_right_status() {
        let cases: &[(ControlOp, &[u8], u16)] = &[
            (ControlOp::Subscribe, b"{not json", 400),
            (ControlOp::Subscribe, b"[1,2]", 400),
            (
                ControlOp::Subscribe,
                br#"{"type":"CANDLES","filters":{"instrument":"BTC-USDT"}}"#,
                422,
            ),
            (
                ControlOp::Subscribe,
                br#"{"type":"CONTROL.UPDATE","filters":{"instrument":"BTC-USDT"}}"#,
                422,
            ),
            (ControlOp::Subscribe, br#"{"type":"TICKER"}"#, 422),
            (
                ControlOp::Subscribe,
                br#"{"type":"TICKER","filters":{"instrument":"btc"}}"#,
                422,
            ),
            (
                ControlOp::UpdateFilters,
                br#"{"type":"TRADE","filters":[{"field":"side","op":"like","value":"b"}]}"#,
                422,
            ),
            (
                ControlOp::UpdateFilters,
                br#"{"type":"TRADE","filters":[{"field":"colour","op":"eq","value":"b"}]}"#,
                422,
            ),
            (
                ControlOp::Subscribe,
                br#"{"type":"TICKER","filters":{"instrument":"BTC-USDT"},"extra":1}"#,
                422,
            ),
        ];
        for (op, body, status) in cases {
            let e = parse_command(*op, body).unwrap_err();
            assert_eq!(
                e.http_status(),
                *status,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn ack_json() {
        let a = Ack {
            event_type: Some("TICKER".into()),
            status: AckStatus::Accepted,
            dispatch_version: 3,
            elapsed_ms: 12.5,
            error: None,
        };
        let v: Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(v["status"], "accepted");
        assert_eq!(v["dispatchVersion"], 3);
        assert_eq!(v["error"], Value::Null);
    }
}
