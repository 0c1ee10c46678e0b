//! `RawInstance` → canonical `Event`.

use crate::adapter::{RawBody, RawInstance};
use crate::clock;
use crate::schema::{
    BookDelta, BookSnapshot, BookTop, Event, EventType, Payload, Quality, Ticker, TraceId, Trade,
};

/// The canonical type and source of a raw instance.
#[inline]
pub fn classify(body: &RawBody) -> (EventType, &'static str) {
    match body {
        RawBody::DepthUpdate(_) => (EventType::OrderbookDelta, "binance.ws.depth"),
        RawBody::Trade(_) => (EventType::Trade, "binance.ws.trade"),
        RawBody::AggTrade(_) => (EventType::Trade, "binance.ws.aggTrade"),
        RawBody::BookTicker(_) => (EventType::OrderbookTop, "binance.ws.bookTicker"),
        RawBody::Ticker(_) => (EventType::Ticker, "binance.ws.ticker"),
        RawBody::DepthSnapshot(..) | RawBody::StreamReset => {
            (EventType::OrderbookSnapshot, "binance.rest.depth")
        }
    }
}

/// The trade side an event exposes to filters.
#[inline]
pub fn side_of(body: &RawBody) -> Option<&'static str> {
    let maker = match body {
        RawBody::Trade(t) => t.buyer_is_maker,
        RawBody::AggTrade(t) => t.buyer_is_maker,
        _ => return None,
    };
    Some(if maker { "sell" } else { "buy" })
}

/// Builds the canonical event. Moves level vectors; allocates only for the boxed ticker.
pub fn canonicalize(raw: RawInstance, seq: u64, trace_id: TraceId) -> Event {
    let (event_type, source) = classify(&raw.body);
    let (ts_ms, payload) = match raw.body {
        RawBody::DepthUpdate(d) => (
            d.event_time,
            Payload::Delta(BookDelta {
                first_update_id: d.first_update_id,
                final_update_id: d.final_update_id,
                bids: d.bids,
                asks: d.asks,
            }),
        ),
        RawBody::Trade(t) => (
            t.event_time,
            Payload::Trade(Trade {
                trade_id: t.trade_id,
                price: t.price,
                quantity: t.quantity,
                buyer_is_maker: t.buyer_is_maker,
                trade_time: t.trade_time,
                agg_range: None,
            }),
        ),
        RawBody::AggTrade(t) => (
            t.event_time,
            Payload::Trade(Trade {
                trade_id: t.agg_id,
                price: t.price,
                quantity: t.quantity,
                buyer_is_maker: t.buyer_is_maker,
                trade_time: t.trade_time,
                agg_range: Some((t.first_trade_id, t.last_trade_id)),
            }),
        ),
        RawBody::BookTicker(b) => (
            b.received_ms,
            Payload::Top(BookTop {
                update_id: b.update_id,
                bid_price: b.bid_price,
                bid_qty: b.bid_qty,
                ask_price: b.ask_price,
                ask_qty: b.ask_qty,
            }),
        ),
        RawBody::Ticker(t) => (
            t.event_time,
            Payload::Ticker(Ticker {
                last_price: t.last_price,
                last_qty: t.last_qty,
                price_change: t.price_change,
                price_change_percent: t.price_change_percent,
                weighted_avg_price: t.weighted_avg_price,
                open: t.open,
                high: t.high,
                low: t.low,
                volume: t.volume,
                quote_volume: t.quote_volume,
                bid_price: t.bid_price,
                bid_qty: t.bid_qty,
                ask_price: t.ask_price,
                ask_qty: t.ask_qty,
                open_time: t.open_time,
                close_time: t.close_time,
                first_trade_id: t.first_trade_id,
                last_trade_id: t.last_trade_id,
                trade_count: t.trade_count,
            }),
        ),
        RawBody::StreamReset => (clock::wall_ms(), Payload::Snapshot(BookSnapshot::default())),
        RawBody::DepthSnapshot(s, received_ms) => (
            received_ms,
            Payload::Snapshot(BookSnapshot {
                last_update_id: s.last_update_id,
                bids: s.bids,
                asks: s.asks,
            }),
        ),
    };
    Event {
        event_type,
        source,
        ts_ms,
        instrument: Some(raw.instrument),
        seq,
        payload,
        ingress_ns: raw.ingress_ns,
        latency_ns: 0,
        trace_id,
        span_id: 0,
        quality: Quality::Live,
    }
}
