//! Configuration: the runtime structs, their defaults (all in this file), loading from YAML
//! with every problem reported at once ([`validate`]), and environment overrides ([`env`]).

pub mod env;
pub mod node;
pub mod render;
pub mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::schema::EventType;

pub use node::Loc;

/// The effective configuration of an engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Instruments to stream, canonical `BASE-QUOTE`.
    pub instruments: Vec<String>,
    pub adapter: AdapterConfig,
    pub dispatcher: DispatcherConfig,
    pub conductor: ConductorConfig,
    pub snapshot_store: SnapshotStoreConfig,
    pub bus: BusConfig,
    pub shard: ShardConfig,
    pub control: ControlConfig,
    pub telemetry: TelemetryConfig,
    pub threads: ThreadsConfig,
    /// Log level for stderr: `error`, `warn`, `info`, `debug`.
    pub log: LogLevel,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub binance: BinanceConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BinanceConfig {
    /// Combined-stream base, e.g. `wss://stream.binance.com:9443/stream`.
    pub ws_url: String,
    /// REST base, e.g. `https://api.binance.com`.
    pub rest_url: String,
    pub handshake_timeout: Duration,
    /// A connection that delivers nothing (not even a ping) for this long is replaced.
    pub no_data_timeout: Duration,
    /// A connection carrying subscriptions that delivers no market data for this long (its
    /// pings do not count: a stream can stop while the socket stays open) is replaced.
    pub stream_timeout: Duration,
    /// A connection older than this is handed over to a fresh one (Binance cuts at 24 h).
    pub max_connection_age: Duration,
    pub reconnect: BackoffConfig,
    pub snapshot: SnapshotFetchConfig,
    /// `TRADE` comes from `@trade` or `@aggTrade`.
    pub trade_stream: TradeStream,
    /// Binance allows 1024 streams per connection; another connection opens beyond it.
    pub max_streams_per_connection: usize,
    /// Binance allows 5 client messages per second per connection.
    pub messages_per_second: u32,
    pub rest_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotFetchConfig {
    /// `limit` of `/api/v3/depth`: 5, 10, 20, 50, 100, 500, 1000 or 5000.
    pub depth: u32,
    /// Periodic snapshot refresh; zero fetches only on subscription and resync.
    pub interval: Duration,
    /// Snapshots fetched at once (one thread each), all under the one weight budget. Above 1,
    /// requests already in flight when a 429 comes back reach the exchange inside its
    /// `Retry-After`.
    pub concurrency: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TradeStream {
    Trade,
    AggTrade,
}

impl TradeStream {
    pub fn suffix(self) -> &'static str {
        match self {
            TradeStream::Trade => "trade",
            TradeStream::AggTrade => "aggTrade",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct DispatcherConfig {
    pub routes: Vec<RouteConfig>,
}

/// One route of the dispatch table.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteConfig {
    pub event_type: EventType,
    /// Instruments this route covers; empty means every configured instrument.
    pub instruments: Vec<String>,
    /// Extra native WebSocket topics to subscribe besides the derived ones.
    pub ws_topics: Vec<String>,
    pub rest_pollers: Vec<PollerConfig>,
    pub filters: Vec<FilterConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PollerConfig {
    pub name: String,
    /// REST path; `/api/v3/depth` is supported.
    pub endpoint: String,
    pub interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// `instrument`, `market`, or a payload field (`side`).
    pub field: String,
    pub op: FilterOp,
    pub value: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Neq,
    In,
    Prefix,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConductorConfig {
    /// Levels per side in `ANALYTICS.FUSED`.
    pub book_depth: usize,
    /// Per-instrument publish window for fused books; zero publishes every change.
    pub throttle: Duration,
    /// A book with no diff for this long turns `stale`.
    pub staleness: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotStoreConfig {
    pub backend: StoreBackend,
    pub ttl: Duration,
}

/// Where fused books are kept besides the in-process store (which is always the hot-path
/// copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    /// Written through to Redis from its own thread (feature `redis`).
    Redis(RedisConfig),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://`).
    pub url: String,
    /// Key prefix: records live at `<prefix>:snap:<market>:<type>:<instrument>`.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".into(),
            prefix: "meltica".into(),
        }
    }
}

/// Where events go besides in-process subscribers.
#[derive(Clone, Debug, PartialEq)]
pub enum BusBackend {
    Memory,
    /// Also published to NATS from a bridge thread (feature `nats`).
    Nats(NatsConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NatsConfig {
    /// `nats://host:port`.
    pub url: String,
    /// Subjects are `<prefix>.<market>.<type>.<instrument>`.
    pub subject_prefix: String,
    /// Names this engine on the control subject `<prefix>.control.<engine_id>`.
    pub engine_id: String,
    /// Serve control commands by request-reply on the control subject.
    pub control: bool,
    /// Durable, replayable delivery through a JetStream stream.
    pub jetstream: Option<JetStreamConfig>,
    /// The bridge's queue: capacity and what happens when NATS cannot keep up.
    pub queue: usize,
    pub policy: BackpressurePolicy,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "meltica".into(),
            engine_id: "meltica".into(),
            control: true,
            jetstream: None,
            queue: 65_536,
            policy: BackpressurePolicy::DropOldest,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct JetStreamConfig {
    pub stream: String,
    /// Events older than this are discarded (zero: kept until `max_msgs`).
    pub max_age: Duration,
    /// The stream keeps at most this many events (zero: unlimited).
    pub max_msgs: u64,
    /// Messages with the same id (the event key) within this window are stored once.
    pub duplicate_window: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream: "MELTICA".into(),
            max_age: Duration::from_secs(3600),
            max_msgs: 0,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Which share of the instruments this engine streams when several engines split them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Engines splitting the instruments.
    pub count: u32,
    /// This engine's share, 0-based: it keeps the instruments whose
    /// [`shard_of`] is `index`.
    pub index: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig { count: 1, index: 0 }
    }
}

/// The shard an instrument belongs to among `count`: FNV-1a of its canonical name, so every
/// engine computes the same split without talking to the others.
pub fn shard_of(instrument: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instrument.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as u32
}

#[derive(Clone, Debug, PartialEq)]
pub struct BusConfig {
    pub backend: BusBackend,
    /// Capacity of each channel between stages.
    pub stage_queue: usize,
    /// Default capacity of a subscriber's queue.
    pub subscriber_queue: usize,
    /// Default backpressure policy of a subscriber.
    pub policy: BackpressurePolicy,
    /// The WebSocket endpoint for consumers (`ws://ADDR/events?type=…`); `None` = off. A
    /// non-loopback address requires `control.token`, which it then also requires.
    pub ws_addr: Option<SocketAddr>,
}

/// What a subscriber's queue does when it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Lossless: the publisher waits.
    Block,
    DropOldest,
    DropNewest,
    /// Keep only the latest event per (instrument, type); replaced ones are conflated.
    Conflate,
    /// Cut the consumer off when its queue is full; the others continue.
    Disconnect,
}

impl BackpressurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            BackpressurePolicy::Block => "block",
            BackpressurePolicy::DropOldest => "drop_oldest",
            BackpressurePolicy::DropNewest => "drop_newest",
            BackpressurePolicy::Conflate => "conflate",
            BackpressurePolicy::Disconnect => "disconnect",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    /// Where the HTTP control API listens; `None` disables it (the in-process control
    /// handle always works). A non-loopback address requires a token.
    pub addr: Option<SocketAddr>,
    pub token: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint; none means no-op providers.
    pub endpoint: Option<String>,
    pub service_name: String,
    /// Trace sampling ratio in [0, 1].
    pub sampling: f64,
    pub disabled: bool,
    pub batch_delay: Duration,
    pub metric_interval: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ThreadsConfig {
    /// Core ids to pin stages to, in order: dispatcher, conductor, then WebSocket connections.
    /// Empty: no pinning.
    pub pin: Vec<usize>,
    pub wait: WaitStrategy,
}

/// How a stage waits for input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Block on the channel (crossbeam spins briefly, then parks). The default.
    Block,
    /// Busy-spin; only for hosts with a spare core per stage.
    Spin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<LogLevel> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(LogLevel::Error),
            "warn" | "warning" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" | "trace" => Some(LogLevel::Debug),
            _ => None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instruments: vec!["BTC-USDT".into(), "ETH-USDT".into()],
            adapter: AdapterConfig {
                binance: BinanceConfig {
                    ws_url: "wss://stream.binance.com:9443/stream".into(),
                    rest_url: "https://api.binance.com".into(),
                    handshake_timeout: Duration::from_secs(10),
                    no_data_timeout: Duration::from_secs(30),
                    max_connection_age: Duration::from_secs(23 * 3600 + 30 * 60),
                    stream_timeout: Duration::from_secs(60),
                    reconnect: BackoffConfig {
                        initial: Duration::from_millis(250),
                        max: Duration::from_secs(30),
                    },
                    snapshot: SnapshotFetchConfig {
                        depth: 1000,
                        interval: Duration::ZERO,
                        concurrency: 1,
                    },
                    trade_stream: TradeStream::Trade,
                    max_streams_per_connection: 1024,
                    messages_per_second: 5,
                    rest_timeout: Duration::from_secs(10),
                },
            },
            dispatcher: DispatcherConfig {
                routes: default_routes(),
            },
            conductor: ConductorConfig {
                book_depth: 20,
                throttle: Duration::from_millis(100),
                staleness: Duration::from_secs(10),
            },
            snapshot_store: SnapshotStoreConfig {
                backend: StoreBackend::Memory,
                ttl: Duration::from_secs(3600),
            },
            bus: BusConfig {
                backend: BusBackend::Memory,
                stage_queue: 65_536,
                subscriber_queue: 65_536,
                policy: BackpressurePolicy::Block,
                ws_addr: None,
            },
            shard: ShardConfig::default(),
            control: ControlConfig {
                addr: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
                token: None,
            },
            telemetry: TelemetryConfig {
                endpoint: None,
                service_name: "meltica".into(),
                sampling: 0.01,
                disabled: false,
                batch_delay: Duration::from_secs(5),
                metric_interval: Duration::from_secs(60),
            },
            threads: ThreadsConfig {
                pin: Vec::new(),
                wait: WaitStrategy::Block,
            },
            log: LogLevel::Info,
        }
    }
}

/// A route per market-data type, over every configured instrument.
pub fn default_routes() -> Vec<RouteConfig> {
    [
        EventType::Trade,
        EventType::Ticker,
        EventType::OrderbookTop,
        EventType::OrderbookDelta,
        EventType::AnalyticsFused,
    ]
    .into_iter()
    .map(RouteConfig::for_type)
    .collect()
}

impl RouteConfig {
    pub fn for_type(event_type: EventType) -> Self {
        RouteConfig {
            event_type,
            instruments: Vec::new(),
            ws_topics: Vec::new(),
            rest_pollers: Vec::new(),
            filters: Vec::new(),
        }
    }
}

/// One configuration problem; `loc` is absent for problems that come from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigProblem {
    pub loc: Option<Loc>,
    /// Dotted path of the key, e.g. `adapter.binance.handshake_timeout`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.loc {
            Some(l) => write!(f, "line {}, column {}: ", l.line, l.column)?,
            None => f.write_str("environment: ")?,
        }
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in {origin}:\n{}", problems.len(), render(problems))]
    Invalid {
        origin: String,
        problems: Vec<ConfigProblem>,
    },
}

fn render(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

impl Config {
    /// Parses and validates YAML text (no environment overrides).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        validate::compile(text).map_err(|problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// Reads a YAML file, validates it, and applies the process environment's overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Config::from_yaml_str(&text, &path.display().to_string())?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Applies environment overrides through `lookup` (the process environment in
    /// [`Config::load`]; a map in tests).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let mut problems = env::apply(self, lookup);
        problems.extend(self.check_rules(None));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: "environment".into(),
                problems,
            })
        }
    }

    /// Rules across keys that environment overrides can break too.
    pub fn check_rules(&self, loc: Option<Loc>) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if let Some(a) = self.control.addr
            && !a.ip().is_loopback()
            && self.control.token.is_none()
        {
            out.push(ConfigProblem {
                    loc,
                    path: "control".into(),
                    message: format!(
                        "the control API on non-loopback address {a} needs a token (control.token or MELTICA_CONTROL_TOKEN)"
                    ),
                });
        }
        if let Some(a) = self.bus.ws_addr
            && !a.ip().is_loopback()
            && self.control.token.is_none()
        {
            out.push(ConfigProblem {
                loc,
                path: "bus.ws_addr".into(),
                message: format!(
                    "the WebSocket endpoint on non-loopback address {a} needs a token (control.token or MELTICA_CONTROL_TOKEN)"
                ),
            });
        }
        out
    }

    /// The configured instruments this engine streams: all of them, or its shard's share.
    pub fn shard_instruments(&self) -> Vec<String> {
        self.instruments
            .iter()
            .filter(|i| shard_of(i, self.shard.count) == self.shard.index)
            .cloned()
            .collect()
    }

    /// The config path from `--config`, else `$MELTICA_CONFIG`, else `./config.yaml`.
    pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
        if let Some(p) = cli {
            return p.to_owned();
        }
        match std::env::var_os("MELTICA_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from("config.yaml"),
        }
    }
}
