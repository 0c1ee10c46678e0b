//! Fast paths for the three hottest messages, `depthUpdate`, `trade` and `bookTicker`, in
//! exactly the layout Binance sends (its field order, no whitespace, no escapes). Fields are
//! read in one pass over the bytes, decimals converted in place. Anything else (another order, an extra
//! field, whitespace, an escape) returns `None` and the frame takes the general serde path,
//! so the fast path never changes what is accepted, only how fast.

use super::messages::{BinanceBookTicker, BinanceDepthUpdate, BinanceTrade};
use crate::schema::{Decimal, Level, pool};

/// A cursor over a JSON object's bytes.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn new(data: &'a str) -> Self {
        Cur {
            b: data.as_bytes(),
            i: 0,
        }
    }

    #[inline]
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + s.len())? == s {
            self.i += s.len();
            Some(())
        } else {
            None
        }
    }

    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    /// An unsigned integer.
    #[inline]
    fn u64(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(d))?;
            self.i += 1;
        }
        (self.i > start).then_some(v)
    }

    #[inline]
    fn i64(&mut self) -> Option<i64> {
        i64::try_from(self.u64()?).ok()
    }

    /// A string without escapes, returned without its quotes.
    #[inline]
    fn str(&mut self) -> Option<&'a [u8]> {
        self.lit(b"\"")?;
        let start = self.i;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\')?;
        if self.b[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        Some(&self.b[start..start + len])
    }

    /// A quoted plain decimal (`"123.45"`), read in the same pass that finds its end.
    /// Anything else (a sign, an exponent, a ninth significant fractional digit, a value
    /// past `i64::MAX` / 1e8) is left to the general path.
    #[inline]
    fn decimal(&mut self) -> Option<Decimal> {
        const POW10: [u64; 9] = [
            100_000_000,
            10_000_000,
            1_000_000,
            100_000,
            10_000,
            1_000,
            100,
            10,
            1,
        ];
        self.lit(b"\"")?;
        let b = self.b;
        let mut i = self.i;
        let mut int: u64 = 0;
        let start = i;
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            int = int * 10 + u64::from(d);
            i += 1;
            if i - start > 11 {
                return None;
            }
        }
        if i == start {
            return None;
        }
        let mut frac: u64 = 0;
        let mut digits = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            // Binance writes exactly eight fractional digits: read them as one word.
            if let Some(word) = b.get(i..i + 8)
                && b.get(i + 8) == Some(&b'"')
            {
                let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
                if all_digits(word) {
                    self.i = i + 9;
                    let raw = int * 100_000_000 + eight_digits(word);
                    return i64::try_from(raw).ok().map(Decimal::from_raw);
                }
            }
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                if digits < 8 {
                    frac = frac * 10 + u64::from(d);
                    digits += 1;
                } else if d != 0 {
                    return None;
                }
                i += 1;
            }
        }
        if b.get(i) != Some(&b'"') {
            return None;
        }
        self.i = i + 1;
        let raw = int * 100_000_000 + frac * POW10[digits];
        i64::try_from(raw).ok().map(Decimal::from_raw)
    }

    #[inline]
    fn bool(&mut self) -> Option<bool> {
        if self.lit(b"true").is_some() {
            Some(true)
        } else {
            self.lit(b"false").map(|_| false)
        }
    }

    /// `[["price","qty"],…]` into a pooled vector.
    fn levels(&mut self) -> Option<Vec<Level>> {
        self.lit(b"[")?;
        let mut v = pool::take_levels(16);
        if self.lit(b"]").is_some() {
            return Some(v);
        }
        loop {
            let level = (|| {
                self.lit(b"[")?;
                let p = self.decimal()?;
                self.lit(b",")?;
                let q = self.decimal()?;
                self.lit(b"]")?;
                Some((p, q))
            })();
            let Some(level) = level else {
                pool::give_levels(v);
                return None;
            };
            v.push(level);
            match self.byte() {
                Some(b',') => {}
                Some(b']') => return Some(v),
                _ => {
                    pool::give_levels(v);
                    return None;
                }
            }
        }
    }
}

/// Whether all eight bytes of a little-endian word are ASCII digits.
#[inline]
fn all_digits(word: u64) -> bool {
    let above = word.wrapping_add(0x4646_4646_4646_4646);
    let below = word.wrapping_sub(0x3030_3030_3030_3030);
    (above | below) & 0x8080_8080_8080_8080 == 0
}

/// The value of eight ASCII digits in a little-endian word (first digit most significant),
/// in three multiplications instead of eight steps.
#[inline]
fn eight_digits(word: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = word - 0x3030_3030_3030_3030;
    let v = v * 10 + (v >> 8);
    let hi = (v & MASK).wrapping_mul(MUL1);
    let lo = ((v >> 16) & MASK).wrapping_mul(MUL2);
    (hi.wrapping_add(lo) >> 32) & 0xFFFF_FFFF
}

/// `{"e":"depthUpdate","E":…,"s":"…","U":…,"u":…,"b":[…],"a":[…]}`.
pub fn depth_update(data: &str) -> Option<BinanceDepthUpdate> {
    let mut c = Cur::new(data);
    c.lit(b"{\"e\":\"depthUpdate\",\"E\":")?;
    let event_time = c.i64()?;
    c.lit(b",\"s\":")?;
    c.str()?;
    c.lit(b",\"U\":")?;
    let first_update_id = c.u64()?;
    c.lit(b",\"u\":")?;
    let final_update_id = c.u64()?;
    c.lit(b",\"b\":")?;
    let bids = c.levels()?;
    let rest = (|| {
        c.lit(b",\"a\":")?;
        let asks = c.levels()?;
        c.lit(b"}")?;
        (c.i == c.b.len()).then_some(asks)
    })();
    let Some(asks) = rest else {
        pool::give_levels(bids);
        return None;
    };
    Some(BinanceDepthUpdate {
        event_time,
        first_update_id,
        final_update_id,
        bids,
        asks,
    })
}

/// `{"e":"trade","E":…,"s":"…","t":…,"p":"…","q":"…","T":…,"m":…,"M":…}`.
pub fn trade(data: &str) -> Option<BinanceTrade> {
    let mut c = Cur::new(data);
    c.lit(b"{\"e\":\"trade\",\"E\":")?;
    let event_time = c.i64()?;
    c.lit(b",\"s\":")?;
    c.str()?;
    c.lit(b",\"t\":")?;
    let trade_id = c.u64()?;
    c.lit(b",\"p\":")?;
    let price = c.decimal()?;
    c.lit(b",\"q\":")?;
    let quantity = c.decimal()?;
    c.lit(b",\"T\":")?;
    let trade_time = c.i64()?;
    c.lit(b",\"m\":")?;
    let buyer_is_maker = c.bool()?;
    c.lit(b",\"M\":")?;
    c.bool()?;
    c.lit(b"}")?;
    (c.i == c.b.len()).then_some(BinanceTrade {
        event_time,
        trade_id,
        price,
        quantity,
        trade_time,
        buyer_is_maker,
    })
}

/// `{"u":…,"s":"…","b":"…","B":"…","a":"…","A":"…"}`.
pub fn book_ticker(data: &str) -> Option<BinanceBookTicker> {
    let mut c = Cur::new(data);
    c.lit(b"{\"u\":")?;
    let update_id = c.u64()?;
    c.lit(b",\"s\":")?;
    c.str()?;
    c.lit(b",\"b\":")?;
    let bid_price = c.decimal()?;
    c.lit(b",\"B\":")?;
    let bid_qty = c.decimal()?;
    c.lit(b",\"a\":")?;
    let ask_price = c.decimal()?;
    c.lit(b",\"A\":")?;
    let ask_qty = c.decimal()?;
    c.lit(b"}")?;
    (c.i == c.b.len()).then_some(BinanceBookTicker {
        update_id,
        bid_price,
        bid_qty,
        ask_price,
        ask_qty,
        received_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPTH: &str = r#"{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"],["0.0023","0"]],"a":[["0.0026","100"]]}"#;
    const TRADE: &str = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;

    #[test]
    fn agrees_with_the_general_path() {
        let slow: BinanceDepthUpdate = serde_json::from_str(DEPTH).unwrap();
        assert_eq!(depth_update(DEPTH), Some(slow));
        let slow: BinanceTrade = serde_json::from_str(TRADE).unwrap();
        assert_eq!(trade(TRADE), Some(slow));
        for (p, q) in [
            ("50000.01000000", "0.00100000"),
            ("1.", "92233720368.54775807"),
            ("0", "0.000000010000"),
            ("12345678901", "7"),
        ] {
            let t = TRADE
                .replace("\"p\":\"0.001\"", &format!("\"p\":\"{p}\""))
                .replace("\"q\":\"100\"", &format!("\"q\":\"{q}\""));
            let slow: BinanceTrade = serde_json::from_str(&t).unwrap();
            assert_eq!(trade(&t), Some(slow), "{t}");
        }
        let top = r#"{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#;
        let slow: BinanceBookTicker = serde_json::from_str(top).unwrap();
        assert_eq!(book_ticker(top), Some(slow));
        assert!(book_ticker(&top.replace("\"s\"", "\"x\"")).is_none());
        let empty = r#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]}"#;
        assert_eq!(
            depth_update(empty),
            Some(serde_json::from_str(empty).unwrap())
        );
    }

    #[test]
    fn eight_fractional_digits_read_as_a_word_agree_with_the_general_path() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let digits = rng.u32(1..12);
            let int = rng.u64(..10u64.pow(digits));
            let frac: String = (0..8).map(|_| rng.char('0'..='9')).collect();
            let text = format!("\"{int}.{frac}\"");
            let mut c = Cur::new(&text);
            let general: Option<Decimal> = serde_json::from_str(&text).ok();
            assert_eq!(c.decimal(), general, "{text}");
        }
        for odd in [
            "\"1.2345678a\"",
            "\"1.2345678/\"",
            "\"1.:2345678\"",
            "\"1.12345678",
        ] {
            let mut c = Cur::new(odd);
            assert_eq!(c.decimal(), None, "{odd}");
        }
    }

    #[test]
    fn anything_unusual_takes_the_general_path() {
        for s in [
            r#"{"e":"depthUpdate", "E":1,"s":"X","U":1,"u":2,"b":[],"a":[]}"#,
            r#"{"E":1,"e":"depthUpdate","s":"X","U":1,"u":2,"b":[],"a":[]}"#,
            r#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["1","x"]],"a":[]}"#,
            r#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[],"x":1}"#,
            r#"{"e":"depthUpdate","E":1,"s":"X\"","U":1,"u":2,"b":[],"a":[]}"#,
            r#"{"e":"depthUpdate","E":1,"s":"X","U":99999999999999999999,"u":2,"b":[],"a":[]}"#,
            r#"{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["1","2"]"#,
            r#"{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","T":1,"m":true,"M":true,"extra":0}"#,
            r#"{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","T":1,"m":1,"M":true}"#,
            r#"{"e":"trade","E":1,"s":"X","t":1,"p":"-1","q":"1","T":1,"m":true,"M":true}"#,
            r#"{"e":"trade","E":1,"s":"X","t":1,"p":"1e5","q":"1","T":1,"m":true,"M":true}"#,
            r#"{"e":"trade","E":1,"s":"X","t":1,"p":"0.000000001","q":"1","T":1,"m":true,"M":true}"#,
            r#"{"e":"trade","E":1,"s":"X","t":1,"p":"92233720368.54775808","q":"1","T":1,"m":true,"M":true}"#,
        ] {
            assert!(
                depth_update(s).is_none() && trade(s).is_none(),
                "fast path took {s}"
            );
        }
    }
}
