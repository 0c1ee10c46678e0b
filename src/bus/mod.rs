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
