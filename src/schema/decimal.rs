//! Fixed-point decimal: an `i64` scaled by 1e8.
//!
//! Binance sends prices and quantities as strings with at most 8 fractional digits, and its
//! own limits stay below `i64::MAX / 1e8`. Parsing never touches floating point; rendering
//! gives back the shortest exact decimal string.

use std::fmt;

/// Number of fractional digits carried by [`Decimal`].
pub const SCALE_DIGITS: u32 = 8;
/// `10^SCALE_DIGITS`.
pub const SCALE: i64 = 100_000_000;

/// A fixed-point decimal number: `raw / 1e8`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Decimal(i64);

/// Why a decimal string was refused. Small and `Copy`: it is built on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("empty decimal")]
    Empty,
    #[error("invalid character in decimal")]
    InvalidChar,
    #[error("more than 8 fractional digits")]
    TooPrecise,
    #[error("decimal out of range")]
    Overflow,
}

impl Decimal {
    pub const ZERO: Decimal = Decimal(0);
    pub const ONE: Decimal = Decimal(SCALE);

    /// Wraps a raw scaled value (`raw / 1e8`).
    pub const fn from_raw(raw: i64) -> Self {
        Decimal(raw)
    }

    /// The raw scaled value.
    pub const fn raw(self) -> i64 {
        self.0
    }

    /// An integer value.
    pub const fn from_int(v: i64) -> Self {
        Decimal(v * SCALE)
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses `-?digits[.digits]` with at most 8 fractional digits, without floats.
    /// Trailing zeros beyond the eighth fractional digit are accepted.
    pub fn parse(s: &str) -> Result<Self, DecimalError> {
        Self::parse_bytes(s.as_bytes())
    }

    /// Same as [`Decimal::parse`] on raw bytes.
    #[inline]
    pub fn parse_bytes(b: &[u8]) -> Result<Self, DecimalError> {
        const POW10: [u64; 9] = [
            1,
            10,
            100,
            1_000,
            10_000,
            100_000,
            1_000_000,
            10_000_000,
            100_000_000,
        ];
        let (neg, digits) = match b.first() {
            None => return Err(DecimalError::Empty),
            Some(b'-') => (true, &b[1..]),
            Some(b'+') => (false, &b[1..]),
            Some(_) => (false, b),
        };
        let (int_part, frac_part) = match digits.iter().position(|&c| c == b'.') {
            Some(i) => (&digits[..i], Some(&digits[i + 1..])),
            None => (digits, None),
        };
        if int_part.is_empty() && frac_part.is_none_or(|f| f.is_empty()) {
            return Err(DecimalError::Empty);
        }
        // Integer part: at most 19 digits fit a u64 without overflow checks per digit.
        if int_part.len() > 19 {
            return Err(if int_part.iter().all(u8::is_ascii_digit) {
                DecimalError::Overflow
            } else {
                DecimalError::InvalidChar
            });
        }
        let mut int: u64 = 0;
        for &c in int_part {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return Err(DecimalError::InvalidChar);
            }
            int = int * 10 + u64::from(d);
        }
        let mut frac: u64 = 0;
        if let Some(f) = frac_part {
            let (kept, extra) = f.split_at(f.len().min(SCALE_DIGITS as usize));
            for &c in kept {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    return Err(DecimalError::InvalidChar);
                }
                frac = frac * 10 + u64::from(d);
            }
            // Digits past the eighth are accepted only as trailing zeros.
            for &c in extra {
                match c {
                    b'0' => {}
                    b'1'..=b'9' => return Err(DecimalError::TooPrecise),
                    _ => return Err(DecimalError::InvalidChar),
                }
            }
            frac *= POW10[SCALE_DIGITS as usize - kept.len()];
        }
        let raw = int
            .checked_mul(SCALE as u64)
            .and_then(|v| v.checked_add(frac))
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or(DecimalError::Overflow)? as i64;
        Ok(Decimal(if neg { -raw } else { raw }))
    }

    /// Writes the shortest exact decimal string (`"50000.01"`, `"1.5"`, `"0"`) into `out`
    /// without allocating beyond `out`'s own growth.
    pub fn write_to(self, out: &mut Vec<u8>) {
        let mut buf = [0u8; 32];
        let n = self.render(&mut buf, false);
        out.extend_from_slice(&buf[..n]);
    }

    /// Renders with exactly 8 fractional digits, as Binance does (`"50000.01000000"`).
    pub fn to_fixed8(self) -> String {
        let mut buf = [0u8; 32];
        let n = self.render(&mut buf, true);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn render(self, buf: &mut [u8; 32], fixed: bool) -> usize {
        let neg = self.0 < 0;
        let v = self.0.unsigned_abs();
        let scale = SCALE as u64;
        let int = v / scale;
        let mut frac = v % scale;
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        let mut x = int;
        loop {
            i -= 1;
            tmp[i] = b'0' + (x % 10) as u8;
            x /= 10;
            if x == 0 {
                break;
            }
        }
        let mut n = 0;
        if neg {
            buf[0] = b'-';
            n = 1;
        }
        for &c in &tmp[i..] {
            buf[n] = c;
            n += 1;
        }
        let mut digits = SCALE_DIGITS as usize;
        if !fixed {
            if frac == 0 {
                return n;
            }
            while frac.is_multiple_of(10) {
                frac /= 10;
                digits -= 1;
            }
        }
        buf[n] = b'.';
        n += 1;
        for k in (0..digits).rev() {
            buf[n + k] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        n + digits
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        let n = self.render(&mut buf, false);
        // The renderer only writes ASCII digits, '-' and '.'.
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Decimal {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decimal::parse(s)
    }
}

impl serde::Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 32];
        let n = self.render(&mut buf, false);
        s.serialize_str(std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> serde::Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Decimal, E> {
                Decimal::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binance_strings() {
        let cases = [
            ("0.01000000", 1_000_000),
            ("50000.01", 5_000_001_000_000),
            ("1.5", 150_000_000),
            ("0", 0),
            ("0.00000001", 1),
            ("92233720368.54775807", i64::MAX),
            ("-2.5", -250_000_000),
            ("431.00000000", 43_100_000_000),
            ("1.123456780000", 112_345_678),
        ];
        for (s, raw) in cases {
            assert_eq!(Decimal::parse(s), Ok(Decimal::from_raw(raw)), "{s}");
        }
    }

    #[test]
    fn rejects_bad_strings() {
        assert_eq!(Decimal::parse(""), Err(DecimalError::Empty));
        assert_eq!(Decimal::parse("."), Err(DecimalError::Empty));
        assert_eq!(Decimal::parse("1.2.3"), Err(DecimalError::InvalidChar));
        assert_eq!(Decimal::parse("1e5"), Err(DecimalError::InvalidChar));
        assert_eq!(Decimal::parse("0.000000001"), Err(DecimalError::TooPrecise));
        assert_eq!(Decimal::parse("92233720369"), Err(DecimalError::Overflow));
    }

    #[test]
    fn renders_shortest_and_fixed() {
        assert_eq!(
            Decimal::parse("50000.01000000").unwrap().to_string(),
            "50000.01"
        );
        assert_eq!(Decimal::parse("1.50").unwrap().to_string(), "1.5");
        assert_eq!(Decimal::parse("0.00000000").unwrap().to_string(), "0");
        assert_eq!(Decimal::parse("-0.5").unwrap().to_string(), "-0.5");
        assert_eq!(Decimal::parse("12").unwrap().to_fixed8(), "12.00000000");
        assert_eq!(
            Decimal::from_raw(i64::MAX).to_string(),
            "92233720368.54775807"
        );
    }

    #[test]
    fn round_trips() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let d = Decimal::from_raw(rng.i64(..));
            assert_eq!(Decimal::parse(&d.to_string()), Ok(d));
            assert_eq!(Decimal::parse(&d.to_fixed8()), Ok(d));
        }
    }
}
