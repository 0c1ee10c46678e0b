//! Instruments: the canonical `BASE-QUOTE` name beside Binance's symbol.

use std::fmt;
use std::sync::Arc;

use super::Decimal;

/// The only market meltica speaks today.
pub const MARKET_BINANCE_SPOT: &str = "BINANCE-SPOT";

/// What the exchange says about one instrument. Shared by `Arc`, so cloning an
/// [`Instrument`] on the hot path is a reference-count increment, never an allocation.
#[derive(Debug, PartialEq, Eq)]
pub struct InstrumentInfo {
    /// Dense index (0..n) assigned at start, used for per-instrument tables.
    pub id: u32,
    /// Canonical name, `BASE-QUOTE`.
    pub name: Box<str>,
    /// Exchange symbol, `BASEQUOTE`.
    pub symbol: Box<str>,
    /// Lowercase exchange symbol, the stream prefix (`btcusdt`).
    pub stream_prefix: Box<str>,
    pub base: Box<str>,
    pub quote: Box<str>,
    pub tick_size: Decimal,
    pub step_size: Decimal,
}

impl InstrumentInfo {
    /// An instrument known by its canonical name alone (tick and step unknown); `id` is
    /// assigned when it joins a registry.
    pub fn named(name: &str) -> Option<InstrumentInfo> {
        let (base, quote) = split_canonical(name)?;
        let symbol = format!("{base}{quote}");
        Some(InstrumentInfo {
            id: 0,
            name: name.into(),
            stream_prefix: symbol.to_ascii_lowercase().into(),
            symbol: symbol.into(),
            base: base.into(),
            quote: quote.into(),
            tick_size: Decimal::ZERO,
            step_size: Decimal::ZERO,
        })
    }
}

/// A handle on an instrument known to the engine.
#[derive(Clone, PartialEq, Eq)]
pub struct Instrument(Arc<InstrumentInfo>);

impl Instrument {
    pub fn new(info: InstrumentInfo) -> Self {
        Instrument(Arc::new(info))
    }

    /// Builds an instrument from a canonical name alone (tick and step unknown).
    pub fn from_name(id: u32, name: &str) -> Option<Self> {
        let mut info = InstrumentInfo::named(name)?;
        info.id = id;
        Some(Instrument::new(info))
    }

    pub fn id(&self) -> u32 {
        self.0.id
    }
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn symbol(&self) -> &str {
        &self.0.symbol
    }
    pub fn stream_prefix(&self) -> &str {
        &self.0.stream_prefix
    }
    pub fn info(&self) -> &InstrumentInfo {
        &self.0
    }
}

impl fmt::Debug for Instrument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name)
    }
}

impl fmt::Display for Instrument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name)
    }
}

/// Splits `BASE-QUOTE` into its two upper-case alphanumeric parts.
pub fn split_canonical(name: &str) -> Option<(&str, &str)> {
    let (base, quote) = name.split_once('-')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 20
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    (ok(base) && ok(quote)).then_some((base, quote))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(split_canonical("BTC-USDT"), Some(("BTC", "USDT")));
        assert_eq!(split_canonical("1INCH-USDT"), Some(("1INCH", "USDT")));
        assert_eq!(split_canonical("btc-usdt"), None);
        assert_eq!(split_canonical("BTCUSDT"), None);
        assert_eq!(split_canonical("-USDT"), None);
        let i = Instrument::from_name(0, "ETH-BTC").unwrap();
        assert_eq!(i.symbol(), "ETHBTC");
        assert_eq!(i.stream_prefix(), "ethbtc");
    }
}
