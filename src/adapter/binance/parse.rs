//! Frame parsing: one WebSocket text frame → a typed [`RawInstance`] or a reply to one of
//! our requests. Errors are small `Copy` values; nothing is formatted per frame.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::messages::*;
use crate::adapter::{InstrumentRegistry, RawBody, RawInstance};
use crate::schema::Instrument;

/// What a frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Instance(RawInstance),
    /// `{"result":…,"id":N}` or `{"error":{…},"id":N}`.
    Response(Response),
    /// `{"e":"serverShutdown","E":…}`: the server will close this connection soon; a
    /// client hands its streams over to a new connection before it does.
    ServerShutdown,
}

/// The exchange's answer to a SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS request.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    /// `Some` when the exchange refused the request.
    pub error: Option<String>,
    /// The stream list of a LIST_SUBSCRIPTIONS answer.
    pub streams: Option<Vec<String>>,
}

/// Why a frame was not turned into an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed frame")]
    Malformed,
    #[error("unknown event type")]
    UnknownType,
    #[error("symbol not subscribed by this engine")]
    UnknownSymbol,
}

/// Which message a stream carries, from the stream name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Depth,
    Trade,
    AggTrade,
    BookTicker,
    Ticker,
}

impl StreamKind {
    /// `btcusdt@depth@100ms` → (`btcusdt`, Depth).
    pub fn of_stream(stream: &str) -> Option<(&str, StreamKind)> {
        let (prefix, rest) = stream.split_once('@')?;
        let kind = match rest {
            "depth" | "depth@100ms" | "depth@1000ms" => StreamKind::Depth,
            "trade" => StreamKind::Trade,
            "aggTrade" => StreamKind::AggTrade,
            "bookTicker" => StreamKind::BookTicker,
            "ticker" => StreamKind::Ticker,
            _ => return None,
        };
        Some((prefix, kind))
    }

    fn of_event(e: Option<&str>) -> Option<StreamKind> {
        Some(match e {
            Some("depthUpdate") => StreamKind::Depth,
            Some("trade") => StreamKind::Trade,
            Some("aggTrade") => StreamKind::AggTrade,
            Some("24hrTicker") => StreamKind::Ticker,
            // bookTicker is the one message without an "e".
            None => StreamKind::BookTicker,
            Some(_) => return None,
        })
    }
}

#[derive(Deserialize)]
struct Combined<'a> {
    #[serde(borrow)]
    stream: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "e", borrow, default)]
    event: Option<&'a str>,
    #[serde(rename = "s", borrow, default)]
    symbol: Option<&'a str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, deserialize_with = "stream_list")]
    result: Option<Vec<String>>,
    #[serde(default)]
    error: Option<BinanceApiError>,
}

/// Binance allows this many streams on one connection; a LIST_SUBSCRIPTIONS answer longer
/// than that is not Binance's, and refusing it bounds what a hostile frame can make us hold.
pub const MAX_LISTED_STREAMS: usize = 1024;

/// `result`: `null`, or a list of at most [`MAX_LISTED_STREAMS`] stream names.
fn stream_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct Streams;
    impl<'de> serde::de::Visitor<'de> for Streams {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "null or at most {MAX_LISTED_STREAMS} stream names")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut streams = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                if streams.len() == MAX_LISTED_STREAMS {
                    return Err(serde::de::Error::invalid_length(streams.len() + 1, &self));
                }
                streams.push(s);
            }
            Ok(Some(streams))
        }
    }
    d.deserialize_option(Streams)
}

/// Parses one text frame from a combined (`/stream`) or raw (`/ws`) connection.
pub fn parse_frame(
    text: &str,
    registry: &InstrumentRegistry,
    ingress_ns: u64,
) -> Result<Frame, ParseError> {
    if let Some((stream, data)) = split_combined(text) {
        // Binance's exact envelope: the stream name and the data object are sliced out
        // without a first JSON pass, so the data is parsed once, straight into its type.
        let (prefix, kind) = StreamKind::of_stream(stream).ok_or(ParseError::UnknownType)?;
        let instrument = registry
            .by_stream_prefix(prefix)
            .ok_or(ParseError::UnknownSymbol)?;
        let body = parse_body(kind, data)?;
        return Ok(Frame::Instance(RawInstance {
            instrument: instrument.clone(),
            ingress_ns,
            body,
            trace: None,
        }));
    }
    if text.starts_with("{\"stream\"") {
        let c: Combined = serde_json::from_str(text).map_err(|_| ParseError::Malformed)?;
        let (prefix, kind) = StreamKind::of_stream(c.stream).ok_or(ParseError::UnknownType)?;
        let instrument = registry
            .by_stream_prefix(prefix)
            .ok_or(ParseError::UnknownSymbol)?;
        let body = parse_body(kind, c.data.get())?;
        return Ok(Frame::Instance(RawInstance {
            instrument: instrument.clone(),
            ingress_ns,
            body,
            trace: None,
        }));
    }
    let head: Head = serde_json::from_str(text).map_err(|_| ParseError::Malformed)?;
    if let Some(id) = head.id {
        return Ok(Frame::Response(Response {
            id,
            error: head.error.map(|e| format!("{} ({})", e.msg, e.code)),
            streams: head.result,
        }));
    }
    if head.event == Some("serverShutdown") {
        return Ok(Frame::ServerShutdown);
    }
    let kind = StreamKind::of_event(head.event).ok_or(ParseError::UnknownType)?;
    let symbol = head.symbol.ok_or(ParseError::Malformed)?;
    let instrument: &Instrument = registry
        .by_symbol(symbol)
        .ok_or(ParseError::UnknownSymbol)?;
    let body = parse_body(kind, text)?;
    Ok(Frame::Instance(RawInstance {
        instrument: instrument.clone(),
        ingress_ns,
        body,
        trace: None,
    }))
}

/// Splits `{"stream":"<name>","data":<object>}` (exactly Binance's layout, no whitespace)
/// into the name and the data text. `None` for anything else; the general path handles it.
#[inline]
fn split_combined(text: &str) -> Option<(&str, &str)> {
    const HEAD: &str = "{\"stream\":\"";
    const MID: &str = "\",\"data\":";
    let rest = text.strip_prefix(HEAD)?;
    let end = rest
        .as_bytes()
        .iter()
        .position(|&b| b == b'"' || b == b'\\')?;
    if rest.as_bytes()[end] != b'"' {
        return None;
    }
    let (stream, after) = rest.split_at(end);
    let data = after.strip_prefix(MID)?.strip_suffix('}')?;
    data.starts_with('{').then_some((stream, data))
}

/// Parses the data object of a stream of `kind`.
pub fn parse_body(kind: StreamKind, data: &str) -> Result<RawBody, ParseError> {
    let m = |_| ParseError::Malformed;
    Ok(match kind {
        StreamKind::Depth => RawBody::DepthUpdate(match super::fast::depth_update(data) {
            Some(d) => d,
            None => serde_json::from_str(data).map_err(m)?,
        }),
        StreamKind::Trade => RawBody::Trade(match super::fast::trade(data) {
            Some(t) => t,
            None => serde_json::from_str(data).map_err(m)?,
        }),
        StreamKind::AggTrade => RawBody::AggTrade(serde_json::from_str(data).map_err(m)?),
        StreamKind::BookTicker => RawBody::BookTicker(match super::fast::book_ticker(data) {
            Some(t) => t,
            None => serde_json::from_str(data).map_err(m)?,
        }),
        StreamKind::Ticker => RawBody::Ticker(serde_json::from_str(data).map_err(m)?),
    })
}

/// Parses a `GET /api/v3/depth` body.
pub fn parse_depth_snapshot(body: &str) -> Result<BinanceDepthSnapshot, ParseError> {
    serde_json::from_str(body).map_err(|_| ParseError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Decimal, InstrumentInfo};

    fn registry() -> InstrumentRegistry {
        let mut r = InstrumentRegistry::default();
        for (base, quote) in [("BNB", "BTC"), ("BNB", "USDT")] {
            let symbol = format!("{base}{quote}");
            r.insert(InstrumentInfo {
                id: 0,
                name: format!("{base}-{quote}").into(),
                stream_prefix: symbol.to_lowercase().into(),
                symbol: symbol.into(),
                base: base.into(),
                quote: quote.into(),
                tick_size: Decimal::ZERO,
                step_size: Decimal::ZERO,
            });
        }
        r
    }

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn instance(text: &str) -> RawInstance {
        match parse_frame(text, &registry(), 7) {
            Ok(Frame::Instance(i)) => i,
            other => panic!("{other:?}"),
        }
    }

    // Payloads below are the examples of Binance's spot WebSocket stream documentation.
    #[test]
    fn depth_update_from_docs() {
        let raw = r#"{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}"#;
        let i = instance(raw);
        assert_eq!(i.instrument.name(), "BNB-BTC");
        assert_eq!(i.ingress_ns, 7);
        assert_eq!(
            i.body,
            RawBody::DepthUpdate(BinanceDepthUpdate {
                event_time: 1672515782136,
                first_update_id: 157,
                final_update_id: 160,
                bids: vec![(d("0.0024"), d("10"))],
                asks: vec![(d("0.0026"), d("100"))],
            })
        );
        let combined = format!(r#"{{"stream":"bnbbtc@depth@100ms","data":{raw}}}"#);
        assert_eq!(instance(&combined).body, i.body);
    }

    #[test]
    fn trade_from_docs() {
        let raw = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;
        let RawBody::Trade(t) = instance(raw).body else {
            panic!()
        };
        assert_eq!(t.trade_id, 12345);
        assert_eq!(t.price, d("0.001"));
        assert_eq!(t.quantity, d("100"));
        assert!(t.buyer_is_maker);
    }

    #[test]
    fn agg_trade_from_docs() {
        let raw = r#"{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}"#;
        let RawBody::AggTrade(t) = instance(raw).body else {
            panic!()
        };
        assert_eq!(
            (t.agg_id, t.first_trade_id, t.last_trade_id),
            (12345, 100, 105)
        );
    }

    #[test]
    fn book_ticker_from_docs_has_no_event_field() {
        let raw = r#"{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#;
        let i = instance(raw);
        assert_eq!(i.instrument.name(), "BNB-USDT");
        let RawBody::BookTicker(t) = i.body else {
            panic!()
        };
        assert_eq!(t.update_id, 400900217);
        assert_eq!(t.ask_qty, d("40.66"));
    }

    #[test]
    fn ticker_from_docs() {
        let raw = r#"{"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00","w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10","a":"0.0026","A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18","O":0,"C":86400000,"F":0,"L":18150,"n":18151}"#;
        let RawBody::Ticker(t) = instance(raw).body else {
            panic!()
        };
        assert_eq!(t.last_price, d("0.0025"));
        assert_eq!(t.price_change_percent, d("250"));
        assert_eq!(t.trade_count, 18151);
    }

    #[test]
    fn depth_snapshot_from_docs() {
        let raw = r#"{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}"#;
        let s = parse_depth_snapshot(raw).unwrap();
        assert_eq!(s.last_update_id, 1027024);
        assert_eq!(s.bids, vec![(d("4"), d("431"))]);
        assert_eq!(s.asks, vec![(d("4.000002"), d("12"))]);
    }

    #[test]
    fn responses() {
        let r = registry();
        assert_eq!(
            parse_frame(r#"{"result":null,"id":1}"#, &r, 0),
            Ok(Frame::Response(Response {
                id: 1,
                error: None,
                streams: None
            }))
        );
        let Ok(Frame::Response(list)) =
            parse_frame(r#"{"result":["btcusdt@trade"],"id":3}"#, &r, 0)
        else {
            panic!()
        };
        assert_eq!(list.streams.unwrap(), vec!["btcusdt@trade".to_string()]);
        let Ok(Frame::Response(err)) = parse_frame(
            r#"{"error":{"code":2,"msg":"Invalid request: unknown variant"},"id":5}"#,
            &r,
            0,
        ) else {
            panic!()
        };
        assert!(err.error.unwrap().contains("Invalid request"));
    }

    #[test]
    fn a_stream_list_longer_than_binance_allows_is_malformed() {
        let r = registry();
        let list = |n: usize| {
            let names = vec![r#""btcusdt@trade""#; n].join(",");
            format!(r#"{{"result":[{names}],"id":7}}"#)
        };
        let Ok(Frame::Response(full)) = parse_frame(&list(MAX_LISTED_STREAMS), &r, 0) else {
            panic!()
        };
        assert_eq!(full.streams.unwrap().len(), MAX_LISTED_STREAMS);
        assert_eq!(
            parse_frame(&list(MAX_LISTED_STREAMS + 1), &r, 0),
            Err(ParseError::Malformed)
        );
        // A million empty names would have been held as a million strings.
        let hostile = format!(r#"{{"result":[{}""],"id":8}}"#, r#""","#.repeat(1_000_000));
        assert_eq!(parse_frame(&hostile, &r, 0), Err(ParseError::Malformed));
    }

    #[test]
    fn bad_frames_are_classified() {
        let r = registry();
        let cases = [
            ("not json", ParseError::Malformed),
            (
                r#"{"e":"trade","E":1,"s":"BNBBTC","t":1}"#,
                ParseError::Malformed,
            ),
            (
                r#"{"e":"trade","E":1,"s":"BNBBTC","t":1,"p":"x","q":"1","T":1,"m":true}"#,
                ParseError::Malformed,
            ),
            (
                r#"{"e":"kline","E":1,"s":"BNBBTC"}"#,
                ParseError::UnknownType,
            ),
            (
                r#"{"stream":"bnbbtc@kline_1m","data":{}}"#,
                ParseError::UnknownType,
            ),
            (
                r#"{"stream":"ethbtc@trade","data":{}}"#,
                ParseError::UnknownSymbol,
            ),
            (
                r#"{"e":"trade","E":1,"s":"XRPBTC"}"#,
                ParseError::UnknownSymbol,
            ),
            (
                r#"{"stream":"bnbbtc@trade","data":{"e":"trade"}"#,
                ParseError::Malformed,
            ),
        ];
        for (text, err) in cases {
            assert_eq!(parse_frame(text, &r, 0), Err(err), "{text}");
        }
    }
}
