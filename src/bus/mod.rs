//! The data bus: fans canonical events out to consumers.

pub mod control;
pub mod data;
pub mod http;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod ws;

pub use control::{ControlBus, MemoryControlBus};
pub use data::{
    DataBus, Deduplicator, Delivery, DropReason, SubscribeOptions, Subscription,
    SubscriptionFilter, SubscriptionStats,
};
pub use memory::MemoryDataBus;

/// Compares a presented token with the expected one in time that depends only on their
/// lengths (the HTTP API, the WebSocket endpoint and NATS control share it).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
