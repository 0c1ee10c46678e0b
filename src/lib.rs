//! # meltica
//!
//! A low-latency market-data engine for Binance spot: it ingests WebSocket streams and REST
//! depth snapshots, turns every message into one canonical [`schema::Event`], routes events
//! through a runtime dispatch table, fuses order-book diffs with snapshots into provably
//! correct local books, and fans the results out on a data bus.
//!
//! ```text
//! Binance WS   ─┐   ┌─────────┐ RawInstance ┌────────────┐ Event ┌───────────┐ Arc<Event> ┌──────────┐
//! Binance REST ─┼──►│ adapter │────────────►│ dispatcher │──────►│ conductor │───────────►│ data bus │──► consumers
//! simulator    ─┘   └─────────┘             └────────────┘       └───────────┘            └──────────┘
//!                        ▲              snapshot requests (resync)     │
//!                        └─────────────────────────────────────────────┘
//! ```
//!
//! Every stage is an OS thread (`meltica-ws-N`, `meltica-rest`, `meltica-dispatcher`,
//! `meltica-conductor`) joined by bounded crossbeam channels; there is no async runtime.
//!
//! ## Build → Run → Shutdown
//!
//! ```no_run
//! use meltica::bus::{SubscribeOptions, SubscriptionFilter};
//! use meltica::config::Config;
//! use meltica::engine::Engine;
//! use meltica::schema::EventType;
//!
//! let config = Config::load("config.yaml".as_ref())?;
//! let builder = Engine::builder(config);
//! let trades = builder.subscribe(
//!     SubscriptionFilter::types(&[EventType::Trade]),
//!     SubscribeOptions::default(),
//! );
//! let engine = builder.start()?;
//! for event in trades.iter().take(10) {
//!     println!("{}", event.to_json());
//! }
//! engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Against the built-in simulator (no internet)
//!
//! ```
//! use meltica::bus::{SubscribeOptions, SubscriptionFilter};
//! use meltica::config::Config;
//! use meltica::engine::Engine;
//! use meltica::schema::EventType;
//! use meltica::simulator::{Simulator, SimulatorConfig};
//! use std::time::Duration;
//!
//! let sim = Simulator::start(SimulatorConfig::default())?;
//! let mut config = Config::default();
//! config.adapter.binance.ws_url = sim.ws_url();
//! config.adapter.binance.rest_url = sim.rest_url();
//! config.control.addr = Some("127.0.0.1:0".parse()?); // any free port for the control API
//! let builder = Engine::builder(config);
//! let books = builder.subscribe(
//!     SubscriptionFilter::types(&[EventType::AnalyticsFused]),
//!     SubscribeOptions::default(),
//! );
//! let engine = builder.start()?;
//! let fused = books.recv_timeout(Duration::from_secs(30)).expect("a fused book");
//! assert_eq!(fused.event_type, EventType::AnalyticsFused);
//! engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cli;
pub mod clock;
#[macro_use]
pub mod log;
pub mod adapter;
pub mod bus;
pub mod conductor;
pub mod config;
pub mod dispatcher;
pub mod engine;
pub mod schema;
pub mod simulator;
pub mod snapshot;

pub use config::Config;
pub use engine::{Engine, EngineBuilder, EngineError};
pub use schema::{Event, EventType};
