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
//! Build an [`Engine`] from a [`Config`] (loaded from YAML, or written in code), take
//! subscriptions on the builder so nothing is missed, start it, consume, shut down. Shutdown
//! stops the sources first, lets every queue drain, joins the threads in order and ends
//! every subscription's iterator. Dropping the engine does the same.
//!
//! ```no_run
//! use meltica::bus::{SubscribeOptions, SubscriptionFilter};
//! use meltica::{Config, Engine, EventType};
//!
//! let config = Config::load("config.yaml".as_ref())?; // or Config::default(), edited in code
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
//! ## Embedded in a host, against the built-in simulator
//!
//! A host subscribes to fused books of one instrument and reads the latest book from the
//! snapshot store (a lock-free read) whenever it likes.
//!
//! ```
//! use meltica::bus::{SubscribeOptions, SubscriptionFilter};
//! use meltica::schema::{EventType, Quality};
//! use meltica::simulator::{Simulator, SimulatorConfig};
//! use meltica::{Config, Engine};
//! use std::time::Duration;
//!
//! let sim = Simulator::start(SimulatorConfig::default())?;
//! let mut config = Config::default();
//! config.adapter.binance.ws_url = sim.ws_url();
//! config.adapter.binance.rest_url = sim.rest_url();
//! config.control.addr = None; // no HTTP control API in this host
//! let builder = Engine::builder(config);
//! let books = builder.subscribe(
//!     SubscriptionFilter::types(&[EventType::AnalyticsFused]).with_instruments(&["BTC-USDT"]),
//!     SubscribeOptions::default(),
//! );
//! let engine = builder.start()?;
//! let live = books
//!     .iter()
//!     .find(|e| e.quality == Quality::Live)
//!     .expect("a live book");
//! assert_eq!(live.instrument_name(), "BTC-USDT");
//! let latest = engine.latest_book("BTC-USDT").expect("the store holds the book");
//! assert!(latest.book.last_update_id >= 1);
//! assert!(!latest.book.bids.is_empty());
//! engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Feeding frames yourself (a replay, another transport)
//!
//! With a [`engine::FrameSource`] the engine does not connect anywhere: the host pushes raw
//! Binance frames and REST bodies, which go through the real parser and the whole pipeline.
//!
//! ```
//! use meltica::bus::{SubscribeOptions, SubscriptionFilter};
//! use meltica::{Config, Engine, EventType};
//!
//! let mut config = Config::default();
//! config.instruments = vec!["BNB-BTC".into()];
//! config.control.addr = None;
//! let mut builder = Engine::builder(config);
//! let source = builder.frame_source();
//! let trades = builder.subscribe(SubscriptionFilter::types(&[EventType::Trade]), SubscribeOptions::default());
//! let engine = builder.start()?;
//! source.push_frame(r#"{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}"#)?;
//! let trade = trades.recv().expect("the trade comes out canonical");
//! assert_eq!(trade.key(), "BNB-BTC:TRADE:1");
//! assert!(source.push_frame("not json").is_err()); // counted, reported, harmless
//! engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Changing routes at runtime
//!
//! [`Engine::control`] is the in-process control handle: the same commands and acks as the
//! HTTP API. An ack arrives once the exchange confirmed and the new table is in effect.
//!
//! ```
//! use meltica::bus::ControlBus;
//! use meltica::schema::control::{AckStatus, ControlCommand};
//! use meltica::simulator::{Simulator, SimulatorConfig};
//! use meltica::{Config, Engine, EventType};
//! use std::time::Duration;
//!
//! let sim = Simulator::start(SimulatorConfig::default())?;
//! let mut config = Config::default();
//! config.adapter.binance.ws_url = sim.ws_url();
//! config.adapter.binance.rest_url = sim.rest_url();
//! config.control.addr = None;
//! let engine = Engine::start(config)?;
//! let ack = engine.control().execute(
//!     ControlCommand::subscribe(EventType::Ticker, &["SOL-USDT"], "risk"),
//!     Duration::from_secs(10),
//! );
//! assert_eq!(ack.status, AckStatus::Accepted);
//! engine.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Feature flags
//!
//! None yet: the in-memory buses and snapshot store are always built.

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
pub mod telemetry;

pub use config::Config;
pub use engine::{Engine, EngineBuilder, EngineError};
pub use schema::{Event, EventType};
