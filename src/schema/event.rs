//! The canonical event: one shape for every message meltica publishes.
//!
//! JSON (NDJSON, WebSocket endpoint, NATS payload) is written by hand into a reused buffer:
//! field order and spelling are the public contract, and the writer never allocates beyond
//! the buffer's own growth.

use std::fmt;
use std::sync::Arc;

use super::{Decimal, Instrument, MARKET_BINANCE_SPOT};
use crate::clock;

/// Canonical event types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum EventType {
    Ticker,
    Trade,
    OrderbookTop,
    OrderbookSnapshot,
    OrderbookDelta,
    AnalyticsFused,
    ControlUpdate,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::Ticker,
        EventType::Trade,
        EventType::OrderbookTop,
        EventType::OrderbookSnapshot,
        EventType::OrderbookDelta,
        EventType::AnalyticsFused,
        EventType::ControlUpdate,
    ];
    pub const COUNT: usize = 7;

    /// Contract spelling, e.g. `ORDERBOOK.DELTA`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Ticker => "TICKER",
            EventType::Trade => "TRADE",
            EventType::OrderbookTop => "ORDERBOOK.TOP",
            EventType::OrderbookSnapshot => "ORDERBOOK.SNAPSHOT",
            EventType::OrderbookDelta => "ORDERBOOK.DELTA",
            EventType::AnalyticsFused => "ANALYTICS.FUSED",
            EventType::ControlUpdate => "CONTROL.UPDATE",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Dense index for per-type tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a consumer can trust the event's book state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Quality {
    /// Derived from a book that is provably in sync with the exchange.
    #[default]
    Live,
    /// The book is being rebuilt from a snapshot; book content is not trustworthy.
    Syncing,
    /// No update within the staleness window.
    Stale,
}

impl Quality {
    pub const fn as_str(self) -> &'static str {
        match self {
            Quality::Live => "live",
            Quality::Syncing => "syncing",
            Quality::Stale => "stale",
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One price level: `(price, quantity)`.
pub type Level = (Decimal, Decimal);

/// A 128-bit trace id; all zero means "none".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    pub const NONE: TraceId = TraceId([0; 16]);

    /// A random non-zero id from a fast generator.
    pub fn random(rng: &mut fastrand::Rng) -> TraceId {
        let v = rng.u128(1..);
        TraceId(v.to_be_bytes())
    }

    pub fn is_none(&self) -> bool {
        self.0 == [0; 16]
    }

    fn write_hex(&self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        }
    }

    /// Parses 32 lowercase or uppercase hex digits.
    pub fn parse_hex(s: &str) -> Option<TraceId> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, pair) in b.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            id[i] = (hi * 16 + lo) as u8;
        }
        Some(TraceId(id))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::with_capacity(32);
        self.write_hex(&mut v);
        f.write_str(std::str::from_utf8(&v).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `TICKER`: rolling 24 h statistics.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ticker {
    pub last_price: Decimal,
    pub last_qty: Decimal,
    pub price_change: Decimal,
    pub price_change_percent: Decimal,
    pub weighted_avg_price: Decimal,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub volume: Decimal,
    pub quote_volume: Decimal,
    pub bid_price: Decimal,
    pub bid_qty: Decimal,
    pub ask_price: Decimal,
    pub ask_qty: Decimal,
    pub open_time: i64,
    pub close_time: i64,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    pub trade_count: u64,
}

/// `TRADE`: one trade (`@trade`) or one aggregate trade (`@aggTrade`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Trade {
    /// Trade id, or the aggregate trade id.
    pub trade_id: u64,
    pub price: Decimal,
    pub quantity: Decimal,
    pub buyer_is_maker: bool,
    pub trade_time: i64,
    /// For aggregate trades: the first and last trade ids folded into this one.
    pub agg_range: Option<(u64, u64)>,
}

/// `ORDERBOOK.TOP`: best bid and ask.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BookTop {
    pub update_id: u64,
    pub bid_price: Decimal,
    pub bid_qty: Decimal,
    pub ask_price: Decimal,
    pub ask_qty: Decimal,
}

/// `ORDERBOOK.SNAPSHOT` (REST) and the levels of `ANALYTICS.FUSED`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BookSnapshot {
    pub last_update_id: u64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// `ORDERBOOK.DELTA`: one diff with its update-id range.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BookDelta {
    pub first_update_id: u64,
    pub final_update_id: u64,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// `ANALYTICS.FUSED`: the conductor's reconciled top-N book and its status.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FusedBook {
    pub last_update_id: u64,
    pub status: Quality,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// `CONTROL.UPDATE`: audit record of a control command.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ControlUpdate {
    pub command: String,
    pub event_type: String,
    pub consumer: String,
    pub status: String,
    pub dispatch_version: u64,
    pub detail: String,
}

/// Type-specific content of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Ticker(Ticker),
    Trade(Trade),
    Top(BookTop),
    Snapshot(BookSnapshot),
    Delta(BookDelta),
    /// Shared with the snapshot store: one allocation serves both.
    Fused(Arc<FusedBook>),
    Control(Box<ControlUpdate>),
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::Ticker(_) => EventType::Ticker,
            Payload::Trade(_) => EventType::Trade,
            Payload::Top(_) => EventType::OrderbookTop,
            Payload::Snapshot(_) => EventType::OrderbookSnapshot,
            Payload::Delta(_) => EventType::OrderbookDelta,
            Payload::Fused(_) => EventType::AnalyticsFused,
            Payload::Control(_) => EventType::ControlUpdate,
        }
    }
}

/// A canonical event. Consumers receive it as `Arc<Event>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_type: EventType,
    /// Where it came from, e.g. `binance.ws.depth`.
    pub source: &'static str,
    /// Event time, milliseconds since the epoch (the exchange's when it gives one).
    pub ts_ms: i64,
    /// `None` only for engine-wide events (control audit without an instrument).
    pub instrument: Option<Instrument>,
    /// Monotonic per (instrument, type), starting at 1.
    pub seq: u64,
    pub payload: Payload,
    /// Monotonic ingress time ([`clock::mono_ns`]) when the frame was read off the socket.
    pub ingress_ns: u64,
    /// Ingress → publish latency, set by the publishing stage.
    pub latency_ns: u64,
    pub trace_id: TraceId,
    /// For a sampled event, the span of the stage that handled it last (the parent of the
    /// next stage's span); 0 when not sampled. Not part of the JSON.
    pub span_id: u64,
    pub quality: Quality,
}

/// Shared event handed to every consumer.
pub type SharedEvent = Arc<Event>;

impl Event {
    pub fn instrument_name(&self) -> &str {
        self.instrument.as_ref().map_or("", |i| i.name())
    }

    /// Idempotency key `{instrument}:{type}:{seq}`.
    pub fn key(&self) -> String {
        let mut v = Vec::with_capacity(48);
        self.write_key(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.instrument_name().as_bytes());
        out.push(b':');
        out.extend_from_slice(self.event_type.as_str().as_bytes());
        out.push(b':');
        write_u64(self.seq, out);
    }

    /// The contract JSON as a `String`.
    pub fn to_json(&self) -> String {
        let mut v = Vec::with_capacity(256);
        self.write_json(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    /// Appends the contract JSON (one object, no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(self.event_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"source\":\"");
        out.extend_from_slice(self.source.as_bytes());
        out.extend_from_slice(b"\",\"ts\":\"");
        clock::write_rfc3339_ms(self.ts_ms, out);
        out.extend_from_slice(b"\",\"instrument\":\"");
        out.extend_from_slice(self.instrument_name().as_bytes());
        out.extend_from_slice(b"\",\"market\":\"");
        out.extend_from_slice(MARKET_BINANCE_SPOT.as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
        write_u64(self.seq, out);
        out.extend_from_slice(b",\"key\":\"");
        self.write_key(out);
        out.extend_from_slice(b"\",\"payload\":");
        write_payload(&self.payload, out);
        out.extend_from_slice(b",\"latencyNs\":");
        write_u64(self.latency_ns, out);
        out.extend_from_slice(b",\"traceId\":\"");
        self.trace_id.write_hex(out);
        out.extend_from_slice(b"\",\"quality\":\"");
        out.extend_from_slice(self.quality.as_str().as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

fn write_payload(p: &Payload, out: &mut Vec<u8>) {
    match p {
        Payload::Ticker(t) => {
            out.push(b'{');
            dec_field(out, "lastPrice", t.last_price, true);
            dec_field(out, "lastQty", t.last_qty, false);
            dec_field(out, "priceChange", t.price_change, false);
            dec_field(out, "priceChangePercent", t.price_change_percent, false);
            dec_field(out, "weightedAvgPrice", t.weighted_avg_price, false);
            dec_field(out, "open", t.open, false);
            dec_field(out, "high", t.high, false);
            dec_field(out, "low", t.low, false);
            dec_field(out, "volume", t.volume, false);
            dec_field(out, "quoteVolume", t.quote_volume, false);
            dec_field(out, "bidPrice", t.bid_price, false);
            dec_field(out, "bidQty", t.bid_qty, false);
            dec_field(out, "askPrice", t.ask_price, false);
            dec_field(out, "askQty", t.ask_qty, false);
            int_field(out, "openTime", t.open_time);
            int_field(out, "closeTime", t.close_time);
            int_field(out, "firstTradeId", t.first_trade_id);
            int_field(out, "lastTradeId", t.last_trade_id);
            out.extend_from_slice(b",\"tradeCount\":");
            write_u64(t.trade_count, out);
            out.push(b'}');
        }
        Payload::Trade(t) => {
            out.extend_from_slice(b"{\"tradeId\":");
            write_u64(t.trade_id, out);
            dec_field(out, "price", t.price, false);
            dec_field(out, "quantity", t.quantity, false);
            out.extend_from_slice(b",\"side\":\"");
            // The buyer is the maker: the aggressor sold.
            out.extend_from_slice(if t.buyer_is_maker { b"sell" } else { b"buy" });
            out.extend_from_slice(b"\",\"buyerIsMaker\":");
            out.extend_from_slice(if t.buyer_is_maker { b"true" } else { b"false" });
            int_field(out, "tradeTime", t.trade_time);
            if let Some((first, last)) = t.agg_range {
                out.extend_from_slice(b",\"firstTradeId\":");
                write_u64(first, out);
                out.extend_from_slice(b",\"lastTradeId\":");
                write_u64(last, out);
            }
            out.push(b'}');
        }
        Payload::Top(t) => {
            out.extend_from_slice(b"{\"updateId\":");
            write_u64(t.update_id, out);
            dec_field(out, "bidPrice", t.bid_price, false);
            dec_field(out, "bidQty", t.bid_qty, false);
            dec_field(out, "askPrice", t.ask_price, false);
            dec_field(out, "askQty", t.ask_qty, false);
            out.push(b'}');
        }
        Payload::Snapshot(s) => {
            out.extend_from_slice(b"{\"lastUpdateId\":");
            write_u64(s.last_update_id, out);
            write_sides(out, &s.bids, &s.asks);
            out.push(b'}');
        }
        Payload::Delta(d) => {
            out.extend_from_slice(b"{\"firstUpdateId\":");
            write_u64(d.first_update_id, out);
            out.extend_from_slice(b",\"finalUpdateId\":");
            write_u64(d.final_update_id, out);
            write_sides(out, &d.bids, &d.asks);
            out.push(b'}');
        }
        Payload::Fused(f) => {
            out.extend_from_slice(b"{\"lastUpdateId\":");
            write_u64(f.last_update_id, out);
            out.extend_from_slice(b",\"status\":\"");
            out.extend_from_slice(f.status.as_str().as_bytes());
            out.push(b'"');
            write_sides(out, &f.bids, &f.asks);
            out.push(b'}');
        }
        Payload::Control(c) => {
            out.push(b'{');
            str_field(out, "command", &c.command, true);
            str_field(out, "type", &c.event_type, false);
            str_field(out, "consumer", &c.consumer, false);
            str_field(out, "status", &c.status, false);
            out.extend_from_slice(b",\"dispatchVersion\":");
            write_u64(c.dispatch_version, out);
            str_field(out, "detail", &c.detail, false);
            out.push(b'}');
        }
    }
}

fn write_sides(out: &mut Vec<u8>, bids: &[Level], asks: &[Level]) {
    out.extend_from_slice(b",\"bids\":");
    write_levels(out, bids);
    out.extend_from_slice(b",\"asks\":");
    write_levels(out, asks);
}

fn write_levels(out: &mut Vec<u8>, levels: &[Level]) {
    out.push(b'[');
    for (i, (p, q)) in levels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"[\"");
        p.write_to(out);
        out.extend_from_slice(b"\",\"");
        q.write_to(out);
        out.extend_from_slice(b"\"]");
    }
    out.push(b']');
}

fn dec_field(out: &mut Vec<u8>, name: &str, v: Decimal, first: bool) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    v.write_to(out);
    out.push(b'"');
}

fn int_field(out: &mut Vec<u8>, name: &str, v: i64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    if v < 0 {
        out.push(b'-');
    }
    write_u64(v.unsigned_abs(), out);
}

fn str_field(out: &mut Vec<u8>, name: &str, v: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    write_json_string(v, out);
}

/// Writes `s` as a JSON string literal with escapes.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Writes an unsigned integer in decimal.
pub fn write_u64(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn delta_json_matches_contract() {
        let ev = Event {
            event_type: EventType::OrderbookDelta,
            source: "binance.ws.depth",
            ts_ms: 1_796_299_200_123,
            instrument: Instrument::from_name(0, "BTC-USDT"),
            seq: 42,
            payload: Payload::Delta(BookDelta {
                first_update_id: 100,
                final_update_id: 102,
                bids: vec![(d("50000.01"), d("1.5"))],
                asks: vec![],
            }),
            ingress_ns: 0,
            latency_ns: 12345,
            trace_id: TraceId::parse_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: 0,
            quality: Quality::Live,
        };
        let expected = r#"{"type":"ORDERBOOK.DELTA","source":"binance.ws.depth","ts":"2026-12-03T12:00:00.123Z","instrument":"BTC-USDT","market":"BINANCE-SPOT","seq":42,"key":"BTC-USDT:ORDERBOOK.DELTA:42","payload":{"firstUpdateId":100,"finalUpdateId":102,"bids":[["50000.01","1.5"]],"asks":[]},"latencyNs":12345,"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","quality":"live"}"#;
        assert_eq!(ev.to_json(), expected);
        assert_eq!(ev.key(), "BTC-USDT:ORDERBOOK.DELTA:42");
    }

    #[test]
    fn every_payload_is_valid_json() {
        let inst = Instrument::from_name(0, "ETH-USDT");
        let payloads = vec![
            Payload::Ticker(Ticker::default()),
            Payload::Trade(Trade {
                agg_range: Some((1, 3)),
                ..Trade::default()
            }),
            Payload::Top(BookTop::default()),
            Payload::Snapshot(BookSnapshot {
                last_update_id: 7,
                bids: vec![(d("1"), d("2"))],
                asks: vec![(d("3"), d("4")), (d("5"), d("6"))],
            }),
            Payload::Fused(Arc::default()),
            Payload::Control(Box::new(ControlUpdate {
                detail: "quote \" and \\ and \n".into(),
                ..ControlUpdate::default()
            })),
        ];
        for p in payloads {
            let ev = Event {
                event_type: p.event_type(),
                source: "test",
                ts_ms: 0,
                instrument: inst.clone(),
                seq: 1,
                payload: p,
                ingress_ns: 0,
                latency_ns: 0,
                trace_id: TraceId::NONE,
                span_id: 0,
                quality: Quality::Syncing,
            };
            let v: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
            assert_eq!(v["type"], ev.event_type.as_str());
            assert_eq!(v["quality"], "syncing");
        }
    }
}
