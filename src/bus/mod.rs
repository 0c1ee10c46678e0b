//! The data bus: fans canonical events out to consumers.

pub mod data;
pub mod memory;

pub use data::{DataBus, SubscribeOptions, Subscription, SubscriptionFilter, SubscriptionStats};
pub use memory::MemoryDataBus;
