//! Binance spot wire types, decoded straight from the socket's bytes. Decimal strings are
//! parsed into fixed-point values in place; symbols are borrowed from the frame.

use serde::Deserialize;

use crate::schema::{Decimal, Level};

/// `depthUpdate`: a diff of the order book between update ids `U` and `u`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BinanceDepthUpdate {
    #[serde(rename = "E")]
    pub event_time: i64,
    #[serde(rename = "U")]
    pub first_update_id: u64,
    #[serde(rename = "u")]
    pub final_update_id: u64,
    #[serde(rename = "b", deserialize_with = "levels")]
    pub bids: Vec<Level>,
    #[serde(rename = "a", deserialize_with = "levels")]
    pub asks: Vec<Level>,
}

/// Reads `[["price","qty"],…]` into a pooled vector (see [`crate::schema::pool`]), so a
/// steady stream of diffs allocates nothing.
fn levels<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Level>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Level>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [price, quantity] pairs")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Level>, A::Error> {
            let mut v =
                crate::schema::pool::take_levels(seq.size_hint().unwrap_or(0).clamp(16, 5000));
            while let Some(l) = seq.next_element::<Level>()? {
                v.push(l);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(V)
}

/// `trade`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BinanceTrade {
    #[serde(rename = "E")]
    pub event_time: i64,
    #[serde(rename = "t")]
    pub trade_id: u64,
    #[serde(rename = "p")]
    pub price: Decimal,
    #[serde(rename = "q")]
    pub quantity: Decimal,
    #[serde(rename = "T")]
    pub trade_time: i64,
    #[serde(rename = "m")]
    pub buyer_is_maker: bool,
}

/// `aggTrade`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BinanceAggTrade {
    #[serde(rename = "E")]
    pub event_time: i64,
    #[serde(rename = "a")]
    pub agg_id: u64,
    #[serde(rename = "p")]
    pub price: Decimal,
    #[serde(rename = "q")]
    pub quantity: Decimal,
    #[serde(rename = "f")]
    pub first_trade_id: u64,
    #[serde(rename = "l")]
    pub last_trade_id: u64,
    #[serde(rename = "T")]
    pub trade_time: i64,
    #[serde(rename = "m")]
    pub buyer_is_maker: bool,
}

/// `bookTicker`: best bid and ask. It carries no `"e"` and no event time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BinanceBookTicker {
    #[serde(rename = "u")]
    pub update_id: u64,
    #[serde(rename = "b")]
    pub bid_price: Decimal,
    #[serde(rename = "B")]
    pub bid_qty: Decimal,
    #[serde(rename = "a")]
    pub ask_price: Decimal,
    #[serde(rename = "A")]
    pub ask_qty: Decimal,
    /// When meltica received it, in milliseconds since the epoch: a `bookTicker` carries no
    /// event time. Set by whoever read the frame (0 straight out of the parser).
    #[serde(skip)]
    pub received_ms: i64,
}

/// `24hrTicker`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BinanceTicker {
    #[serde(rename = "E")]
    pub event_time: i64,
    #[serde(rename = "p")]
    pub price_change: Decimal,
    #[serde(rename = "P")]
    pub price_change_percent: Decimal,
    #[serde(rename = "w")]
    pub weighted_avg_price: Decimal,
    #[serde(rename = "c")]
    pub last_price: Decimal,
    #[serde(rename = "Q")]
    pub last_qty: Decimal,
    #[serde(rename = "b")]
    pub bid_price: Decimal,
    #[serde(rename = "B")]
    pub bid_qty: Decimal,
    #[serde(rename = "a")]
    pub ask_price: Decimal,
    #[serde(rename = "A")]
    pub ask_qty: Decimal,
    #[serde(rename = "o")]
    pub open: Decimal,
    #[serde(rename = "h")]
    pub high: Decimal,
    #[serde(rename = "l")]
    pub low: Decimal,
    #[serde(rename = "v")]
    pub volume: Decimal,
    #[serde(rename = "q")]
    pub quote_volume: Decimal,
    #[serde(rename = "O")]
    pub open_time: i64,
    #[serde(rename = "C")]
    pub close_time: i64,
    #[serde(rename = "F")]
    pub first_trade_id: i64,
    #[serde(rename = "L")]
    pub last_trade_id: i64,
    #[serde(rename = "n")]
    pub trade_count: u64,
}

/// `GET /api/v3/depth`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BinanceDepthSnapshot {
    #[serde(rename = "lastUpdateId")]
    pub last_update_id: u64,
    #[serde(deserialize_with = "levels")]
    pub bids: Vec<Level>,
    #[serde(deserialize_with = "levels")]
    pub asks: Vec<Level>,
}

/// One symbol of `GET /api/v3/exchangeInfo`.
#[derive(Debug, Clone, Deserialize)]
pub struct BinanceSymbolInfo {
    pub symbol: String,
    pub status: String,
    #[serde(rename = "baseAsset")]
    pub base_asset: String,
    #[serde(rename = "quoteAsset")]
    pub quote_asset: String,
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BinanceExchangeInfo {
    pub symbols: Vec<BinanceSymbolInfo>,
}

/// Binance's REST error body, `{"code":-1121,"msg":"Invalid symbol."}`.
#[derive(Debug, Clone, Deserialize)]
pub struct BinanceApiError {
    pub code: i64,
    pub msg: String,
}

impl BinanceSymbolInfo {
    /// `tickSize` of `PRICE_FILTER` and `stepSize` of `LOT_SIZE`, zero when absent.
    pub fn tick_and_step(&self) -> (Decimal, Decimal) {
        let find = |kind: &str, field: &str| {
            self.filters
                .iter()
                .find(|f| f["filterType"] == kind)
                .and_then(|f| f[field].as_str())
                .and_then(|s| Decimal::parse(s).ok())
                .unwrap_or(Decimal::ZERO)
        };
        (
            find("PRICE_FILTER", "tickSize"),
            find("LOT_SIZE", "stepSize"),
        )
    }
}
