//! Native stream names derived from canonical terms.

use crate::config::TradeStream;
use crate::schema::{EventType, Instrument};

/// The WebSocket streams a canonical type needs for one instrument.
/// `ORDERBOOK.SNAPSHOT` needs none (it is polled over REST); `ANALYTICS.FUSED` needs the
/// depth diffs (plus REST snapshots, which the conductor requests).
pub fn topics_for(t: EventType, instrument: &Instrument, trade: TradeStream) -> Vec<String> {
    let p = instrument.stream_prefix();
    match t {
        EventType::Ticker => vec![format!("{p}@ticker")],
        EventType::Trade => vec![format!("{p}@{}", trade.suffix())],
        EventType::OrderbookTop => vec![format!("{p}@bookTicker")],
        EventType::OrderbookDelta | EventType::AnalyticsFused => vec![format!("{p}@depth@100ms")],
        EventType::OrderbookSnapshot | EventType::ControlUpdate => Vec::new(),
    }
}

/// Whether a type needs a local order book (diffs fused with REST snapshots).
pub fn needs_book(t: EventType) -> bool {
    matches!(
        t,
        EventType::OrderbookDelta | EventType::AnalyticsFused | EventType::OrderbookSnapshot
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_to_native() {
        let i = Instrument::from_name(0, "BTC-USDT").unwrap();
        let t = |e| topics_for(e, &i, TradeStream::Trade);
        assert_eq!(t(EventType::Ticker), ["btcusdt@ticker"]);
        assert_eq!(t(EventType::Trade), ["btcusdt@trade"]);
        assert_eq!(
            topics_for(EventType::Trade, &i, TradeStream::AggTrade),
            ["btcusdt@aggTrade"]
        );
        assert_eq!(t(EventType::OrderbookTop), ["btcusdt@bookTicker"]);
        assert_eq!(t(EventType::OrderbookDelta), ["btcusdt@depth@100ms"]);
        assert_eq!(t(EventType::AnalyticsFused), ["btcusdt@depth@100ms"]);
        assert!(t(EventType::OrderbookSnapshot).is_empty());
    }
}
