//! The instruments the engine knows, by exchange symbol and by canonical name.

use std::collections::HashMap;

use crate::schema::{Instrument, InstrumentInfo};

/// Instruments resolved from the exchange at start. Lookups by symbol borrow the frame's
/// `&str` and never allocate.
#[derive(Debug, Default, Clone)]
pub struct InstrumentRegistry {
    by_symbol: HashMap<Box<str>, Instrument>,
    by_name: HashMap<Box<str>, Instrument>,
    by_stream: HashMap<Box<str>, Instrument>,
    list: Vec<Instrument>,
}

impl InstrumentRegistry {
    /// Most instruments one engine streams.
    pub const MAX: usize = 4096;

    /// Adds an instrument (its `id` is assigned here) and returns its handle.
    pub fn insert(&mut self, mut info: InstrumentInfo) -> Instrument {
        if let Some(i) = self.by_name.get(&info.name) {
            return i.clone();
        }
        info.id = self.list.len() as u32;
        let inst = Instrument::new(info);
        self.by_symbol.insert(inst.symbol().into(), inst.clone());
        self.by_name.insert(inst.name().into(), inst.clone());
        self.by_stream
            .insert(inst.stream_prefix().into(), inst.clone());
        self.list.push(inst.clone());
        inst
    }

    #[inline]
    pub fn by_symbol(&self, symbol: &str) -> Option<&Instrument> {
        self.by_symbol.get(symbol)
    }

    /// By lowercase stream prefix (`btcusdt`).
    #[inline]
    pub fn by_stream_prefix(&self, prefix: &str) -> Option<&Instrument> {
        self.by_stream.get(prefix)
    }

    pub fn by_name(&self, name: &str) -> Option<&Instrument> {
        self.by_name.get(name)
    }

    /// Instruments in id order.
    pub fn all(&self) -> &[Instrument] {
        &self.list
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
