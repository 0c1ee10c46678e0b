//! Binance JSON payloads, written straight into a reusable `String`.

use std::fmt::Write;

use super::market::{StepOutput, TickerStats, Trade};

/// Appends a raw fixed-point value with 8 fractional digits (Binance's `"50000.01000000"`).
pub(crate) fn push_fixed8(out: &mut String, raw: i64) {
    if raw < 0 {
        out.push('-');
    }
    let v = raw.unsigned_abs();
    let _ = write!(out, "{}.{:08}", v / 100_000_000, v % 100_000_000);
}

fn push_str_field(out: &mut String, key: &str, raw: i64) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":\"");
    push_fixed8(out, raw);
    out.push('"');
}

/// `[["price","qty"],...]`
pub(crate) fn push_levels(out: &mut String, levels: impl Iterator<Item = (i64, i64)>) {
    out.push('[');
    for (i, (p, q)) in levels.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("[\"");
        push_fixed8(out, p);
        out.push_str("\",\"");
        push_fixed8(out, q);
        out.push_str("\"]");
    }
    out.push(']');
}

pub(crate) fn depth_update(out: &mut String, ms: u64, symbol: &str, step: &StepOutput) {
    let _ = write!(
        out,
        "{{\"e\":\"depthUpdate\",\"E\":{ms},\"s\":\"{symbol}\",\"U\":{},\"u\":{},\"b\":",
        step.first_id, step.last_id
    );
    push_levels(out, step.bids.iter().copied());
    out.push_str(",\"a\":");
    push_levels(out, step.asks.iter().copied());
    out.push('}');
}

pub(crate) fn trade(out: &mut String, ms: u64, symbol: &str, t: &Trade) {
    let _ = write!(
        out,
        "{{\"e\":\"trade\",\"E\":{ms},\"s\":\"{symbol}\",\"t\":{}",
        t.id
    );
    push_str_field(out, "p", t.price);
    push_str_field(out, "q", t.qty);
    let _ = write!(out, ",\"T\":{ms},\"m\":{},\"M\":true}}", t.buyer_maker);
}

pub(crate) fn agg_trade(out: &mut String, ms: u64, symbol: &str, t: &Trade) {
    let _ = write!(
        out,
        "{{\"e\":\"aggTrade\",\"E\":{ms},\"s\":\"{symbol}\",\"a\":{}",
        t.agg_id
    );
    push_str_field(out, "p", t.price);
    push_str_field(out, "q", t.qty);
    let _ = write!(
        out,
        ",\"f\":{},\"l\":{},\"T\":{ms},\"m\":{},\"M\":true}}",
        t.id, t.id, t.buyer_maker
    );
}

/// Best bid/ask: `(bid price, bid qty, ask price, ask qty)`, raw values.
pub(crate) type Top = (i64, i64, i64, i64);

pub(crate) fn book_ticker(out: &mut String, update_id: u64, symbol: &str, top: Top) {
    let _ = write!(out, "{{\"u\":{update_id},\"s\":\"{symbol}\"");
    push_str_field(out, "b", top.0);
    push_str_field(out, "B", top.1);
    push_str_field(out, "a", top.2);
    push_str_field(out, "A", top.3);
    out.push('}');
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

pub(crate) fn ticker(out: &mut String, ms: u64, symbol: &str, s: &TickerStats, top: Top) {
    let _ = write!(out, "{{\"e\":\"24hrTicker\",\"E\":{ms},\"s\":\"{symbol}\"");
    let change = s.last - s.open;
    push_str_field(out, "p", change);
    // Percent with 3 decimals, as Binance renders priceChangePercent.
    let pct_milli = i128::from(change) * 100_000 / i128::from(s.open.max(1));
    let sign = if pct_milli < 0 { "-" } else { "" };
    let a = pct_milli.unsigned_abs();
    let _ = write!(out, ",\"P\":\"{sign}{}.{:03}\"", a / 1000, a % 1000);
    let wavg = if s.volume > 0 {
        s.quote_volume * 100_000_000 / s.volume
    } else {
        i128::from(s.last)
    };
    push_str_field(out, "w", clamp_i64(wavg));
    push_str_field(out, "x", s.open);
    push_str_field(out, "c", s.last);
    push_str_field(out, "Q", s.last_qty);
    push_str_field(out, "b", top.0);
    push_str_field(out, "B", top.1);
    push_str_field(out, "a", top.2);
    push_str_field(out, "A", top.3);
    push_str_field(out, "o", s.open);
    push_str_field(out, "h", s.high);
    push_str_field(out, "l", s.low);
    push_str_field(out, "v", clamp_i64(s.volume));
    push_str_field(out, "q", clamp_i64(s.quote_volume));
    let (first, last) = match s.first_trade {
        Some(f) => (f as i64, s.last_trade as i64),
        None => (-1, -1),
    };
    let _ = write!(
        out,
        ",\"O\":{},\"C\":{ms},\"F\":{first},\"L\":{last},\"n\":{}}}",
        ms.saturating_sub(86_400_000),
        s.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Decimal;

    #[test]
    fn fixed8_matches_decimal() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            let raw = rng.i64(..);
            let mut s = String::new();
            push_fixed8(&mut s, raw);
            assert_eq!(s, Decimal::from_raw(raw).to_fixed8());
        }
    }

    #[test]
    fn payloads_are_valid_json() {
        let step = StepOutput {
            first_id: 5,
            last_id: 6,
            bids: vec![(100_000_000, 0)],
            asks: vec![(200_000_000, 150_000_000)],
            ..StepOutput::default()
        };
        let mut s = String::new();
        depth_update(&mut s, 7, "BTCUSDT", &step);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["U"], 5);
        assert_eq!(v["b"][0][1], "0.00000000");
        assert_eq!(v["a"][0][0], "2.00000000");

        let t = Trade {
            id: 9,
            agg_id: 4,
            price: 100_000_000,
            qty: 1,
            buyer_maker: true,
        };
        s.clear();
        agg_trade(&mut s, 7, "BTCUSDT", &t);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["a"], 4);
        assert_eq!(v["f"], 9);
        assert_eq!(v["q"], "0.00000001");
        assert_eq!(v["m"], true);

        s.clear();
        let stats = TickerStats::new(100_000_000);
        ticker(&mut s, 7, "BTCUSDT", &stats, (1, 2, 3, 4));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["e"], "24hrTicker");
        assert_eq!(v["P"], "0.000");
        assert_eq!(v["F"], -1);
    }
}
