//! The canonical schema: events, instruments, fixed-point decimals.

pub mod control;
pub mod decimal;
pub mod event;
pub mod instrument;
pub mod pool;

pub use decimal::{Decimal, DecimalError};
pub use event::{
    BookDelta, BookSnapshot, BookTop, ControlUpdate, Event, EventType, FusedBook, Level, Payload,
    Quality, SharedEvent, Ticker, TraceId, Trade,
};
pub use instrument::{Instrument, InstrumentInfo, MARKET_BINANCE_SPOT, split_canonical};
