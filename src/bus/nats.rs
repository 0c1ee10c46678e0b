//! The NATS bus (feature `nats`): the data bus published to other machines, the control bus
//! as NATS request-reply, and the consumer behind `meltica tail`.
//!
//! async-nats needs an async runtime; meltica's data path has none. Each piece here runs a
//! current-thread tokio runtime confined to its own named bridge thread, and talks to the
//! engine only through meltica's synchronous interfaces:
//!
//! ```text
//! conductor ──Arc<Event>──► Subscription (capacity + policy) ──► meltica-nats ──► NATS / JetStream
//! NATS request ──► meltica-nats-control ──► ControlBus::execute (own OS thread) ──► Ack reply
//! NATS / JetStream ──► meltica-nats-tail ──► crossbeam channel ──► NatsTail::recv_timeout
//! ```
//!
//! # Subjects
//!
//! Every event goes to `<prefix>.<market>.<type>.<instrument>`, e.g.
//! `meltica.BINANCE-SPOT.TRADE.BTC-USDT`. Each part is exactly one subject token, so a
//! consumer can wildcard any of them (`meltica.*.TRADE.*`, `meltica.*.*.BTC-USDT`):
//! - the type's dots become underscores: `ORDERBOOK.DELTA` → `ORDERBOOK_DELTA` (see
//!   [`type_token`]);
//! - engine-wide events (a control audit without an instrument) use `_` as instrument;
//! - characters NATS gives a meaning in subjects (`.`, `*`, `>`, whitespace, control
//!   characters) are replaced by `_` (see [`subject_token`]). Canonical instruments
//!   (`BASE-QUOTE`) never contain them.
//!
//! Control requests go to `<prefix>.control.<engine id>`. Data subjects have three tokens
//! after the prefix and control subjects two, so a JetStream stream over `<prefix>.*.*.*`
//! captures every event and never a control request.
//!
//! # Headers
//!
//! - `Nats-Msg-Id: <event key>` (`{instrument}:{type}:{seq}`): JetStream drops a repeat
//!   within the stream's duplicate window. Keys restart with the engine's `seq`, so a
//!   restarted engine publishing into the same stream within that window has its first
//!   events refused as duplicates; give each engine run its own stream, or wait out the
//!   window.
//! - `traceparent: 00-<trace id>-<span id>-01` for a sampled event (one whose span id is set;
//!   W3C forbids an all-zero parent id, so an unsampled event carries none; its `traceId` is
//!   in the JSON either way).
//!
//! # Delivery
//!
//! The bridge reads its [`Subscription`], so the conductor never waits on the network: the
//! subscription's capacity and backpressure policy decide what happens when NATS is slow or
//! away (only `block` lets a full queue push back on the conductor), and its own stats count
//! every drop with its reason. One task publishes everything
//! over one connection, in subscription order, and never retries, so per-instrument order
//! holds on the wire and in the stream; a message that cannot be confirmed leaves a gap
//! (visible in `seq`) and is counted, never reordered.
//!
//! - While the connection is down (async-nats reconnects by itself) the bridge stops
//!   reading: events wait, in order, in the subscription's queue, or are dropped and counted
//!   there by its policy.
//! - With JetStream every message is acknowledged; up to [`MAX_IN_FLIGHT`] acks are awaited
//!   at once in the background, each with its own timeout, and counted in publish order. A
//!   refused or unanswered publish counts as `failed` (it may still have been stored if only
//!   the ack was lost; consumers de-duplicate by key).
//! - Core NATS is at most once: the server confirms nothing. The bridge sends a round trip
//!   after each burst of publishes; what was published after the last completed round trip
//!   when the connection drops counts as `in_doubt`.
//!
//! # Control request-reply
//!
//! The request body is the HTTP API's POST body plus a required `"op"` field:
//! `{"op":"subscribe","type":"TICKER","filters":{"instrument":"BTC-USDT"},"consumer":"ops"}`,
//! with `op` one of `subscribe`, `unsubscribe`, `filters` (as the HTTP paths) or `routes`
//! (the dispatch table, as `GET /control/routes`). A `Meltica-Op` header may carry the op
//! instead of the body field. When a token is configured the request needs the header
//! `Authorization: Bearer <token>`. The reply body is the same JSON as the HTTP API's (an
//! [`Ack`], or the routes); the reply header `Meltica-Status` carries the HTTP status the API
//! would have answered: 202 for an ack (whatever its status), 200 for routes, 400 malformed
//! JSON, 401 token, 413 over 64 KiB, 422 invalid command or op. Refused requests get an
//! error ack and never reach the dispatch table.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::{Client, ConnectOptions, HeaderMap, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::bus::{ControlBus, Subscription, SubscriptionStats};
use crate::schema::control::{Ack, CommandError, ControlOp, MAX_BODY, parse_command};
use crate::schema::{Event, EventType, MARKET_BINANCE_SPOT, SharedEvent};

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "meltica";
/// Most JetStream publishes awaiting their ack at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Header carrying the event key (JetStream de-duplication).
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header of a control reply carrying the HTTP-equivalent status.
pub const STATUS_HEADER: &str = "Meltica-Status";
/// Header that may carry a control request's op instead of the body's `"op"` field.
pub const OP_HEADER: &str = "Meltica-Op";

/// Events taken from the subscription per batch.
const MAX_BATCH: usize = 1024;
/// How long the bridge blocks on its subscription while acks or replies are pending; the
/// runtime (acks, pings, reconnects) only runs between two waits.
const BUSY_POLL: Duration = Duration::from_millis(1);
/// How long it blocks when nothing is pending.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Core NATS: at most one confirming round trip per this period while publishing.
const CONFIRM_EVERY: Duration = Duration::from_millis(20);
/// How long a control request waits for its ack (as the HTTP API).
const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Capacity of the tail's hand-off channel.
const TAIL_QUEUE: usize = 65_536;

/// Why a NATS piece could not start or stopped abnormally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsError {
    /// No connection within the connect timeout, or refused.
    #[error("nats at {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A setting NATS cannot use (subject tokens, stream name, windows).
    #[error("invalid NATS setting: {0}")]
    Config(String),
    /// The JetStream stream could not be created, updated or found.
    #[error("JetStream stream {stream:?}: {reason}")]
    Stream { stream: String, reason: String },
    /// A subscription or consumer could not be set up.
    #[error("cannot subscribe to {subject:?}: {reason}")]
    Subscribe { subject: String, reason: String },
    /// The bridge thread or its runtime could not start.
    #[error("cannot start thread {name}: {reason}")]
    Spawn { name: String, reason: String },
    /// The bridge thread panicked.
    #[error("thread {0} panicked")]
    Panicked(String),
}

impl NatsError {
    /// Worth trying again later (the server may come back); configuration errors are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            NatsError::Unreachable { .. } | NatsError::Stream { .. } | NatsError::Subscribe { .. }
        )
    }
}

/// The JetStream stream the publisher writes into.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamConfig {
    /// Stream name (no `.`, `*`, `>`, whitespace or path separators).
    pub stream: String,
    /// Oldest message kept.
    pub max_age: Duration,
    /// Most messages kept; -1 for no limit.
    pub max_msgs: i64,
    /// How long the stream remembers a `Nats-Msg-Id`; at most `max_age`.
    pub duplicate_window: Duration,
    /// How long a publish waits for its ack before it counts as failed.
    pub ack_timeout: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream: "MELTICA".into(),
            max_age: Duration::from_secs(24 * 3600),
            max_msgs: 10_000_000,
            duplicate_window: Duration::from_secs(120),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// Settings shared by the publisher, the control server and the tail.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsBusConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222` (credentials in the URL are never logged).
    pub url: String,
    /// First subject token(s); default `meltica`.
    pub subject_prefix: String,
    /// Publish into JetStream (acked, replayable) instead of core NATS.
    pub jetstream: Option<JetStreamConfig>,
    /// Names this engine's control subject `<prefix>.control.<engine id>`; one token.
    pub engine_id: String,
    /// Bound on connecting (and on setting up the stream) at start.
    pub connect_timeout: Duration,
    /// Bound on `shutdown`: publishing what is queued and waiting for acks or replies.
    pub shutdown_timeout: Duration,
    /// Bearer token control requests must carry, if set.
    pub control_token: Option<String>,
    /// Identifies this run of the engine; when set, message ids are `<key>@<run>`, so a
    /// restarted engine (whose `seq` starts over) is not taken for a repeat of the last run.
    pub msg_id_run: String,
}

impl Default for NatsBusConfig {
    fn default() -> Self {
        NatsBusConfig {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: DEFAULT_PREFIX.into(),
            jetstream: None,
            engine_id: "meltica".into(),
            connect_timeout: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(5),
            control_token: None,
            msg_id_run: String::new(),
        }
    }
}

impl NatsBusConfig {
    /// Checks every setting, reporting all problems at once.
    pub fn validate(&self) -> Result<(), NatsError> {
        let mut problems = Vec::new();
        if self.url.trim().is_empty() {
            problems.push("url is empty".to_owned());
        }
        if let Err(e) = validate_prefix(&self.subject_prefix) {
            problems.push(e);
        }
        if !is_token(&self.engine_id) {
            problems.push(format!(
                "engine_id {:?} must be one subject token (no '.', '*', '>', whitespace)",
                self.engine_id
            ));
        }
        if self.connect_timeout.is_zero() {
            problems.push("connect_timeout must be above zero".to_owned());
        }
        if let Some(js) = &self.jetstream {
            let bad = |c: char| is_special(c) || c == '/' || c == '\\';
            if js.stream.is_empty() || js.stream.chars().any(bad) {
                problems.push(format!(
                    "stream name {:?} must be non-empty without '.', '*', '>', '/', '\\' or whitespace",
                    js.stream
                ));
            }
            if !js.max_age.is_zero() && js.duplicate_window > js.max_age {
                problems.push("duplicate_window must not exceed max_age".to_owned());
            }
            if js.max_msgs == 0 || js.max_msgs < -1 {
                problems.push("max_msgs must be positive, or -1 for no limit".to_owned());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NatsError::Config(problems.join("; ")))
        }
    }

    /// `<prefix>.control.<engine id>`.
    pub fn control_subject(&self) -> String {
        format!("{}.control.{}", self.subject_prefix, self.engine_id)
    }

    /// The stream's subject filter: every event subject, no control subject.
    pub fn stream_subjects(&self) -> String {
        format!("{}.*.*.*", self.subject_prefix)
    }
}

fn validate_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.is_empty() && prefix.split('.').all(is_token) {
        Ok(())
    } else {
        Err(format!(
            "subject_prefix {prefix:?} must be dot-separated non-empty tokens without '*', '>' or whitespace"
        ))
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control()
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(is_special)
}

/// The subject token of a type: its contract name with `.` replaced by `_`.
pub const fn type_token(t: EventType) -> &'static str {
    match t {
        EventType::Ticker => "TICKER",
        EventType::Trade => "TRADE",
        EventType::OrderbookTop => "ORDERBOOK_TOP",
        EventType::OrderbookSnapshot => "ORDERBOOK_SNAPSHOT",
        EventType::OrderbookDelta => "ORDERBOOK_DELTA",
        EventType::AnalyticsFused => "ANALYTICS_FUSED",
        EventType::ControlUpdate => "CONTROL_UPDATE",
    }
}

/// One subject token from free text: `.`, `*`, `>`, whitespace and control characters
/// become `_`; the empty string becomes `_`.
pub fn subject_token(raw: &str) -> Cow<'_, str> {
    if raw.is_empty() {
        Cow::Borrowed("_")
    } else if !raw.chars().any(is_special) {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(
            raw.chars()
                .map(|c| if is_special(c) { '_' } else { c })
                .collect(),
        )
    }
}

/// `<prefix>.<market>.<type>.<instrument>` of an event.
pub fn subject_for(prefix: &str, event: &Event) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        MARKET_BINANCE_SPOT,
        type_token(event.event_type),
        subject_token(event.instrument_name())
    )
}

/// The W3C `traceparent` of a sampled event; `None` when it has no trace or no span.
pub fn traceparent(event: &Event) -> Option<String> {
    (!event.trace_id.is_none() && event.span_id != 0)
        .then(|| format!("00-{}-{:016x}-01", event.trace_id, event.span_id))
}

/// The address part of a URL, without scheme or credentials, for messages.
fn display_addr(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once('@').map_or(rest, |(_, host)| host)
}

/// True when a URL's host is a loopback address or `localhost`.
fn is_loopback(url: &str) -> bool {
    let addr = display_addr(url);
    let host = match addr.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, NatsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NatsError::Spawn {
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

/// Connects once, bounded by `timeout`; no retry at start, so a wrong address fails fast.
async fn connect(
    url: &str,
    name: &str,
    timeout: Duration,
    link: Arc<Link>,
) -> Result<Client, NatsError> {
    let unreachable = |reason: String| NatsError::Unreachable {
        addr: display_addr(url).to_owned(),
        reason,
    };
    let cb_link = link.clone();
    let options = ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .event_callback(move |event| {
            let link = cb_link.clone();
            async move { link.on_event(event) }
        });
    match tokio::time::timeout(timeout, options.connect(url)).await {
        Err(_) => Err(unreachable(format!("no connection within {timeout:?}"))),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Ok(Ok(client)) => {
            link.connected.store(true, Ordering::Relaxed);
            Ok(client)
        }
    }
}

/// Connection state, fed by async-nats' event callback.
#[derive(Default)]
struct Link {
    connected: AtomicBool,
    /// Set once a disconnect was seen, so the next `Connected` is a reconnect.
    was_down: AtomicBool,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Core publisher only: moves unconfirmed messages to `in_doubt` on a disconnect.
    counters: Option<Arc<Counters>>,
}

impl Link {
    fn with_counters(counters: Arc<Counters>) -> Self {
        Link {
            counters: Some(counters),
            ..Link::default()
        }
    }

    fn on_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                self.connected.store(true, Ordering::Relaxed);
                if self.was_down.swap(false, Ordering::Relaxed) {
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    crate::info!("nats: reconnected");
                }
            }
            async_nats::Event::Disconnected => {
                self.connected.store(false, Ordering::Relaxed);
                self.was_down.store(true, Ordering::Relaxed);
                *self.last_error.lock() = Some("disconnected".into());
                if let Some(c) = &self.counters {
                    c.settle_in_doubt();
                }
                crate::warn!("nats: disconnected; reconnecting");
            }
            async_nats::Event::Closed => {
                self.connected.store(false, Ordering::Relaxed);
            }
            async_nats::Event::ServerError(e) => {
                *self.last_error.lock() = Some(format!("server error: {e}"));
                crate::warn!("nats: server error: {e}");
            }
            async_nats::Event::ClientError(e) => {
                *self.last_error.lock() = Some(format!("client error: {e}"));
            }
            async_nats::Event::SlowConsumer(_)
            | async_nats::Event::LameDuckMode
            | async_nats::Event::Draining => {}
        }
    }
}

/// The publisher's counters.
#[derive(Default)]
struct Counters {
    /// Core: every message handed to the connection. JetStream: every message sent.
    published: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    in_doubt: AtomicU64,
    /// Core: `published` as of the last completed round trip.
    confirmed: AtomicU64,
    in_flight: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, n: u64, reason: String) {
        self.failed.fetch_add(n, Ordering::Relaxed);
        *self.last_failure.lock() = Some(reason);
    }

    /// Everything published since the last round trip is now in doubt.
    fn settle_in_doubt(&self) {
        let published = self.published.load(Ordering::Relaxed);
        let confirmed = self.confirmed.swap(published, Ordering::Relaxed);
        if published > confirmed {
            self.in_doubt
                .fetch_add(published - confirmed, Ordering::Relaxed);
        }
    }
}

/// A snapshot of the publisher's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsBusStats {
    /// Messages handed to NATS (core) or sent to JetStream.
    pub published: u64,
    /// JetStream: positive acks, duplicates included.
    pub acked: u64,
    /// JetStream: acks saying the stream already held the message.
    pub duplicates: u64,
    /// Refused, unacknowledged, or not publishable before the shutdown deadline.
    pub failed: u64,
    /// Core: published but unconfirmed when the connection dropped (possibly lost).
    pub in_doubt: u64,
    /// Connections re-established after a disconnect.
    pub reconnects: u64,
    pub connected: bool,
    /// The latest failure or connection error.
    pub last_error: Option<String>,
}

struct Shared {
    counters: Arc<Counters>,
    link: Arc<Link>,
    stop: AtomicBool,
}

impl Shared {
    fn stats(&self) -> NatsBusStats {
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NatsBusStats {
            published: r(&c.published),
            acked: r(&c.acked),
            duplicates: r(&c.duplicates),
            failed: r(&c.failed),
            in_doubt: r(&c.in_doubt),
            reconnects: r(&self.link.reconnects),
            connected: self.link.connected.load(Ordering::Relaxed),
            last_error: c
                .last_failure
                .lock()
                .clone()
                .or_else(|| self.link.last_error.lock().clone()),
        }
    }
}

/// Publishes a subscription's events to NATS from the `meltica-nats` bridge thread.
pub struct NatsPublisher {
    shared: Arc<Shared>,
    subscription: Arc<Subscription>,
    handle: Option<JoinHandle<()>>,
}

impl NatsPublisher {
    /// Connects (bounded by `connect_timeout`), creates or updates the JetStream stream when
    /// configured, and starts publishing `subscription`'s events. Take the subscription from
    /// the engine (or its builder, to miss nothing) with the capacity and backpressure policy
    /// the operator chose for this consumer.
    pub fn start(
        config: NatsBusConfig,
        subscription: Subscription,
    ) -> Result<NatsPublisher, NatsError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let link = Arc::new(if config.jetstream.is_none() {
            Link::with_counters(counters.clone())
        } else {
            Link::default()
        });
        let shared = Arc::new(Shared {
            counters,
            link,
            stop: AtomicBool::new(false),
        });
        let subscription = Arc::new(subscription);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (s, sub) = (shared.clone(), subscription.clone());
        let handle = std::thread::Builder::new()
            .name("meltica-nats".into())
            .spawn(move || run_publisher(config, sub, s, ready_tx))
            .map_err(|e| NatsError::Spawn {
                name: "meltica-nats".into(),
                reason: e.to_string(),
            })?;
        let started = ready_rx
            .recv()
            .unwrap_or(Err(NatsError::Panicked("meltica-nats".into())));
        match started {
            Ok(()) => Ok(NatsPublisher {
                shared,
                subscription,
                handle: Some(handle),
            }),
            Err(e) => {
                let _ = handle.join();
                Err(e)
            }
        }
    }

    /// The publisher's counters right now.
    pub fn stats(&self) -> NatsBusStats {
        self.shared.stats()
    }

    /// The feeding subscription's counters: what the bus offered, and what its policy dropped
    /// (and why) while NATS was slow or away.
    pub fn subscription_stats(&self) -> &SubscriptionStats {
        self.subscription.stats()
    }

    pub fn is_connected(&self) -> bool {
        self.shared.link.connected.load(Ordering::Relaxed)
    }

    /// Stops reading the subscription, publishes what was queued at that moment, waits for
    /// the outstanding acks (or a final round trip), all within `shutdown_timeout`, and joins
    /// the bridge thread. Anything left unpublished or unacknowledged counts as failed.
    pub fn shutdown(mut self) -> Result<NatsBusStats, NatsError> {
        self.stop_and_join()?;
        Ok(self.shared.stats())
    }

    fn stop_and_join(&mut self) -> Result<(), NatsError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| NatsError::Panicked("meltica-nats".into())),
            None => Ok(()),
        }
    }
}

impl Drop for NatsPublisher {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            crate::error!("{e}");
        }
    }
}

fn run_publisher(
    config: NatsBusConfig,
    sub: Arc<Subscription>,
    shared: Arc<Shared>,
    ready: crossbeam_channel::Sender<Result<(), NatsError>>,
) {
    let rt = match runtime("meltica-nats") {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let client = match connect(
            &config.url,
            "meltica-publisher",
            config.connect_timeout,
            shared.link.clone(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut sink = match &config.jetstream {
            None => Sink::Core {
                confirm_subject: Subject::from(format!("{}.confirm", client.new_inbox())),
                confirming: Arc::new(AtomicBool::new(false)),
                last_confirm: Instant::now(),
            },
            Some(js) => match jetstream_sink(&client, &config, js, &shared.counters).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            },
        };
        let _ = ready.send(Ok(()));
        crate::info!(
            "nats: publishing to {} on {}{}",
            config.stream_subjects(),
            display_addr(&config.url),
            config
                .jetstream
                .as_ref()
                .map(|j| format!(" (JetStream stream {})", j.stream))
                .unwrap_or_default()
        );
        let mut bridge = Bridge {
            client,
            prefix: config.subject_prefix.clone(),
            subjects: HashMap::new(),
            buf: Vec::with_capacity(1024),
            counters: shared.counters.clone(),
            msg_id_run: config.msg_id_run.clone(),
        };
        let deadline = bridge
            .run(&sub, &shared.stop, &mut sink, config.shutdown_timeout)
            .await;
        bridge.finish(sink, deadline).await;
    });
}

async fn jetstream_sink(
    client: &Client,
    config: &NatsBusConfig,
    js: &JetStreamConfig,
    counters: &Arc<Counters>,
) -> Result<Sink, NatsError> {
    let context = jetstream::ContextBuilder::new()
        .timeout(js.ack_timeout)
        .max_ack_inflight(MAX_IN_FLIGHT * 2)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let stream_config = jetstream::stream::Config {
        name: js.stream.clone(),
        subjects: vec![config.stream_subjects()],
        max_age: js.max_age,
        max_messages: js.max_msgs,
        duplicate_window: js.duplicate_window,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let fail = |reason: String| NatsError::Stream {
        stream: js.stream.clone(),
        reason,
    };
    match tokio::time::timeout(
        config.connect_timeout,
        context.create_or_update_stream(stream_config),
    )
    .await
    {
        Err(_) => {
            return Err(fail(format!(
                "no answer within {:?}",
                config.connect_timeout
            )));
        }
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Ok(Ok(_)) => {}
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Notify::new());
    let acker = tokio::spawn(collect_acks(rx, counters.clone(), room.clone()));
    Ok(Sink::JetStream {
        context,
        acks: tx,
        room,
        acker,
    })
}

/// Awaits acks concurrently (each with its own timeout) and counts them in publish order.
async fn collect_acks(
    mut rx: mpsc::UnboundedReceiver<PublishAckFuture>,
    counters: Arc<Counters>,
    room: Arc<Notify>,
) {
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            ack = rx.recv(), if open => match ack {
                Some(ack) => pending.push_back(ack.into_future()),
                None => open = false,
            },
            Some(result) = pending.next(), if !pending.is_empty() => {
                match result {
                    Ok(a) => {
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        if a.duplicate {
                            counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => counters.fail(1, format!("JetStream ack: {e}")),
                }
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                room.notify_one();
            }
            else => break,
        }
    }
}

enum Sink {
    Core {
        confirm_subject: Subject,
        confirming: Arc<AtomicBool>,
        last_confirm: Instant,
    },
    JetStream {
        context: jetstream::Context,
        acks: mpsc::UnboundedSender<PublishAckFuture>,
        /// Signalled whenever an ack resolves, freeing room in the window.
        room: Arc<Notify>,
        acker: tokio::task::JoinHandle<()>,
    },
}

/// One round trip to the server: a request no one answers comes back as "no responders"
/// once the server has processed everything sent before it on this connection.
async fn round_trip(client: &Client, subject: &Subject, timeout: Duration) -> bool {
    let request = async_nats::Request::new()
        .payload(Bytes::new())
        .timeout(Some(timeout));
    match client.send_request(subject.clone(), request).await {
        Ok(_) => true,
        Err(e) => e.kind() == async_nats::RequestErrorKind::NoResponders,
    }
}

struct Bridge {
    client: Client,
    prefix: String,
    /// Subject per (type, instrument id); `u32::MAX` for engine-wide events.
    subjects: HashMap<(EventType, u32), Subject>,
    buf: Vec<u8>,
    counters: Arc<Counters>,
    msg_id_run: String,
}

impl Bridge {
    fn subject(&mut self, e: &Event) -> Subject {
        let id = e.instrument.as_ref().map_or(u32::MAX, |i| i.id());
        let prefix = &self.prefix;
        self.subjects
            .entry((e.event_type, id))
            .or_insert_with(|| Subject::from(subject_for(prefix, e)))
            .clone()
    }

    /// Publishes until the subscription ends or a stop is requested; returns the shutdown
    /// deadline.
    async fn run(
        &mut self,
        sub: &Subscription,
        stop: &AtomicBool,
        sink: &mut Sink,
        shutdown_timeout: Duration,
    ) -> Instant {
        let mut pending: VecDeque<SharedEvent> = VecDeque::with_capacity(MAX_BATCH);
        let mut closed = false;
        // Once stopping: the deadline and how many queued events are still to publish.
        let mut stopping: Option<(Instant, usize)> = None;
        let mut published_since_confirm = false;
        loop {
            if stopping.is_none() && stop.load(Ordering::Relaxed) {
                stopping = Some((Instant::now() + shutdown_timeout, sub.len()));
            }
            if pending.is_empty() {
                match &mut stopping {
                    Some((_, left)) => {
                        while *left > 0 && pending.len() < MAX_BATCH {
                            match sub.try_recv() {
                                Ok(e) => {
                                    pending.push_back(e);
                                    *left -= 1;
                                }
                                Err(_) => {
                                    *left = 0;
                                }
                            }
                        }
                        if pending.is_empty() {
                            break;
                        }
                    }
                    None if closed => break,
                    None => {
                        let busy = self.counters.in_flight.load(Ordering::Relaxed) > 0
                            || published_since_confirm;
                        match sub.recv_timeout(if busy { BUSY_POLL } else { IDLE_POLL }) {
                            Ok(e) => pending.push_back(e),
                            Err(c) => closed = c,
                        }
                        while !closed && pending.len() < MAX_BATCH {
                            match sub.try_recv() {
                                Ok(e) => pending.push_back(e),
                                Err(c) => {
                                    closed = c;
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            if !pending.is_empty() {
                if self.client.connection_state() != State::Connected {
                    // Events wait here and in the subscription, in order, until the
                    // connection is back.
                    if let Some((deadline, left)) = stopping
                        && Instant::now() >= deadline
                    {
                        let n = (pending.len() + left) as u64;
                        self.counters.fail(
                            n,
                            format!("{n} events not published: NATS disconnected at shutdown"),
                        );
                        break;
                    }
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                }
                while let Some(e) = pending.front() {
                    if self.client.connection_state() != State::Connected {
                        break;
                    }
                    let e = e.clone();
                    published_since_confirm |= self.publish(&e, sink).await;
                    pending.pop_front();
                }
            }
            // Let the connection write, read acks and answer pings.
            tokio::task::yield_now().await;
            if let Sink::Core {
                confirm_subject,
                confirming,
                last_confirm,
            } = sink
                && published_since_confirm
                && last_confirm.elapsed() >= CONFIRM_EVERY
                && !confirming.swap(true, Ordering::Relaxed)
            {
                *last_confirm = Instant::now();
                published_since_confirm = false;
                let upto = self.counters.published.load(Ordering::Relaxed);
                let (client, subject) = (self.client.clone(), confirm_subject.clone());
                let (counters, flag) = (self.counters.clone(), confirming.clone());
                tokio::spawn(async move {
                    if round_trip(&client, &subject, Duration::from_secs(5)).await {
                        counters.confirmed.fetch_max(upto, Ordering::Relaxed);
                    }
                    flag.store(false, Ordering::Relaxed);
                });
            }
        }
        stopping.map_or_else(|| Instant::now() + shutdown_timeout, |(d, _)| d)
    }

    /// Encodes and sends one event; false (and counted) when NATS refused it.
    async fn publish(&mut self, e: &Event, sink: &mut Sink) -> bool {
        let sent = self.send(e, sink).await;
        if sent {
            // Counted per message: a disconnect noticed mid-batch sees the exact figure.
            self.counters.published.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    async fn send(&mut self, e: &Event, sink: &mut Sink) -> bool {
        let subject = self.subject(e);
        self.buf.clear();
        e.write_json(&mut self.buf);
        let payload = Bytes::copy_from_slice(&self.buf);
        let mut headers = HeaderMap::new();
        let mut id = e.key();
        if !self.msg_id_run.is_empty() {
            id.push('@');
            id.push_str(&self.msg_id_run);
        }
        headers.insert(MSG_ID_HEADER, id);
        if let Some(tp) = traceparent(e) {
            headers.insert("traceparent", tp);
        }
        match sink {
            Sink::Core { .. } => match self
                .client
                .publish_with_headers(subject, headers, payload)
                .await
            {
                Ok(()) => true,
                Err(err) => {
                    self.counters.fail(1, format!("publish: {err}"));
                    false
                }
            },
            Sink::JetStream {
                context,
                acks,
                room,
                ..
            } => {
                // At most MAX_IN_FLIGHT unacknowledged publishes.
                while self.counters.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT as u64 {
                    room.notified().await;
                }
                let msg = jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .headers(headers);
                match context.send_publish(subject, msg).await {
                    Ok(ack) => {
                        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
                        if acks.send(ack).is_err() {
                            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                            self.counters
                                .fail(1, "JetStream ack collector ended".into());
                        }
                        true
                    }
                    Err(err) => {
                        self.counters.fail(1, format!("JetStream publish: {err}"));
                        false
                    }
                }
            }
        }
    }

    /// Waits, until `deadline`, for the outstanding acks (JetStream) or for a final round
    /// trip (core); whatever is still unconfirmed then is counted.
    async fn finish(self, sink: Sink, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        match sink {
            Sink::JetStream { acks, acker, .. } => {
                drop(acks);
                let abort = acker.abort_handle();
                if tokio::time::timeout(left, acker).await.is_err() {
                    abort.abort();
                    let n = self.counters.in_flight.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        self.counters
                            .fail(n, format!("{n} JetStream acks missing at shutdown"));
                    }
                }
            }
            Sink::Core {
                confirm_subject, ..
            } => {
                let upto = self.counters.published.load(Ordering::Relaxed);
                let flushed = tokio::time::timeout(left, self.client.flush()).await;
                let left = deadline.saturating_duration_since(Instant::now());
                if matches!(flushed, Ok(Ok(())))
                    && round_trip(&self.client, &confirm_subject, left.max(BUSY_POLL)).await
                {
                    self.counters.confirmed.fetch_max(upto, Ordering::Relaxed);
                } else {
                    self.counters.settle_in_doubt();
                }
            }
        }
    }
}

/// The control facade's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsControlStats {
    /// Requests answered (acks and refusals).
    pub requests: u64,
    /// Requests refused before reaching the control plane (4xx).
    pub refused: u64,
    /// Messages without a reply subject, ignored.
    pub ignored: u64,
    pub connected: bool,
}

#[derive(Default)]
struct ControlCounters {
    requests: AtomicU64,
    refused: AtomicU64,
    ignored: AtomicU64,
}

/// Serves the control bus as NATS request-reply on `<prefix>.control.<engine id>`, from the
/// `meltica-nats-control` thread.
pub struct NatsControlServer {
    subject: String,
    counters: Arc<ControlCounters>,
    link: Arc<Link>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// What a control request asks for, once read and checked.
#[derive(Debug)]
enum ControlRequest {
    Command(crate::schema::control::ControlCommand),
    Routes,
}

/// A refused request: the HTTP-equivalent status and the error ack.
type Refusal = (u16, Ack);

impl NatsControlServer {
    /// Connects, subscribes, and serves until shut down. As with the HTTP API, a server
    /// that is not on loopback (anyone on it could send commands) requires a token.
    pub fn start(
        config: &NatsBusConfig,
        bus: Arc<dyn ControlBus>,
    ) -> Result<NatsControlServer, NatsError> {
        config.validate()?;
        if config.control_token.is_none() && !is_loopback(&config.url) {
            return Err(NatsError::Config(format!(
                "control over NATS at non-loopback {} needs a token (control_token)",
                display_addr(&config.url)
            )));
        }
        let subject = config.control_subject();
        let counters = Arc::new(ControlCounters::default());
        let link = Arc::new(Link::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let ctx = ControlCtx {
            url: config.url.clone(),
            subject: subject.clone(),
            token: config.control_token.clone(),
            connect_timeout: config.connect_timeout,
            shutdown_timeout: config.shutdown_timeout,
            bus,
            counters: counters.clone(),
            link: link.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("meltica-nats-control".into())
            .spawn(move || run_control(ctx, stop_rx, ready_tx))
            .map_err(|e| NatsError::Spawn {
                name: "meltica-nats-control".into(),
                reason: e.to_string(),
            })?;
        match ready_rx
            .recv()
            .unwrap_or(Err(NatsError::Panicked("meltica-nats-control".into())))
        {
            Ok(()) => Ok(NatsControlServer {
                subject,
                counters,
                link,
                stop: Some(stop_tx),
                handle: Some(handle),
            }),
            Err(e) => {
                let _ = handle.join();
                Err(e)
            }
        }
    }

    /// The subject requests go to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn stats(&self) -> NatsControlStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NatsControlStats {
            requests: r(&self.counters.requests),
            refused: r(&self.counters.refused),
            ignored: r(&self.counters.ignored),
            connected: self.link.connected.load(Ordering::Relaxed),
        }
    }

    /// Unsubscribes, answers the commands still in progress (within `shutdown_timeout`) and
    /// joins the thread.
    pub fn shutdown(mut self) -> Result<(), NatsError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), NatsError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| NatsError::Panicked("meltica-nats-control".into())),
            None => Ok(()),
        }
    }
}

impl Drop for NatsControlServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            crate::error!("{e}");
        }
    }
}

struct ControlCtx {
    url: String,
    subject: String,
    token: Option<String>,
    connect_timeout: Duration,
    shutdown_timeout: Duration,
    bus: Arc<dyn ControlBus>,
    counters: Arc<ControlCounters>,
    link: Arc<Link>,
}

/// A finished command's reply: (reply subject, status, body).
type Reply = (Subject, u16, String);

fn run_control(
    ctx: ControlCtx,
    mut stop: oneshot::Receiver<()>,
    ready: crossbeam_channel::Sender<Result<(), NatsError>>,
) {
    let rt = match runtime("meltica-nats-control") {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    rt.block_on(async {
        let client = match connect(
            &ctx.url,
            "meltica-control",
            ctx.connect_timeout,
            ctx.link.clone(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut requests = match client.subscribe(ctx.subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(NatsError::Subscribe {
                    subject: ctx.subject.clone(),
                    reason: e.to_string(),
                }));
                return;
            }
        };
        // The SUB reaches the server before anyone is told the facade is up.
        if let Err(e) = client.flush().await {
            let _ = ready.send(Err(NatsError::Subscribe {
                subject: ctx.subject.clone(),
                reason: e.to_string(),
            }));
            return;
        }
        let _ = ready.send(Ok(()));
        crate::info!("nats: control requests on {}", ctx.subject);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Reply>();
        let mut outstanding = 0usize;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                msg = requests.next() => {
                    let Some(msg) = msg else {
                        crate::warn!("nats: control subscription on {} ended", ctx.subject);
                        break;
                    };
                    let Some(reply) = msg.reply.clone() else {
                        ctx.counters.ignored.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match read_request(&msg.payload, msg.headers.as_ref(), &ctx) {
                        Err((status, ack)) => {
                            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
                            respond(&client, reply, status, ack.to_json(), &ctx).await;
                        }
                        Ok(ControlRequest::Routes) => {
                            respond(&client, reply, 200, ctx.bus.routes_json(), &ctx).await;
                        }
                        Ok(ControlRequest::Command(cmd)) => {
                            // `execute` blocks until the change is effective; it runs on its
                            // own OS thread so the runtime keeps serving.
                            let (bus, tx) = (ctx.bus.clone(), done_tx.clone());
                            let reply_on_error = reply.clone();
                            let spawned = std::thread::Builder::new()
                                .name("meltica-nats-control-req".into())
                                .spawn(move || {
                                    let ack = bus.execute(cmd, ACK_TIMEOUT);
                                    let _ = tx.send((reply, 202, ack.to_json()));
                                });
                            match spawned {
                                Ok(h) => {
                                    outstanding += 1;
                                    workers.push(h);
                                }
                                Err(e) => {
                                    let ack = Ack::error(None, ctx.bus.dispatch_version(),
                                        format!("cannot start a request thread: {e}"));
                                    respond(&client, reply_on_error, 503, ack.to_json(), &ctx)
                                        .await;
                                }
                            }
                        }
                    }
                }
                Some((reply, status, body)) = done_rx.recv() => {
                    outstanding -= 1;
                    respond(&client, reply, status, body, &ctx).await;
                    workers.retain(|h| !h.is_finished());
                }
            }
        }
        drop(requests);
        // Commands already submitted still get their answer.
        let deadline = Instant::now() + ctx.shutdown_timeout;
        while outstanding > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, done_rx.recv()).await {
                Ok(Some((reply, status, body))) => {
                    outstanding -= 1;
                    respond(&client, reply, status, body, &ctx).await;
                }
                _ => break,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left.max(BUSY_POLL), client.flush()).await;
    });
    for h in workers {
        if h.is_finished() {
            let _ = h.join();
        }
        // An unfinished one ends by itself within ACK_TIMEOUT; its reply has nowhere to go.
    }
}

async fn respond(client: &Client, reply: Subject, status: u16, body: String, ctx: &ControlCtx) {
    ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
    let mut headers = HeaderMap::new();
    headers.insert(STATUS_HEADER, status.to_string());
    headers.insert("Content-Type", "application/json");
    if let Err(e) = client
        .publish_with_headers(reply, headers, Bytes::from(body))
        .await
    {
        crate::warn!("nats control: cannot reply: {e}");
    }
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

/// Checks and parses a control request with the HTTP API's rules, in its order: token
/// (401), size (413), JSON (400), command (422).
fn read_request(
    body: &[u8],
    headers: Option<&HeaderMap>,
    ctx: &ControlCtx,
) -> Result<ControlRequest, Refusal> {
    parse_request(
        body,
        headers,
        ctx.token.as_deref(),
        ctx.bus.dispatch_version(),
    )
}

fn parse_request(
    body: &[u8],
    headers: Option<&HeaderMap>,
    token: Option<&str>,
    version: u64,
) -> Result<ControlRequest, Refusal> {
    let refuse = |status: u16, t: Option<String>, reason: String| {
        Err((status, Ack::error(t, version, reason)))
    };
    if let Some(token) = token {
        let expected = format!("Bearer {token}");
        let given = header(headers, "Authorization").unwrap_or("");
        if !super::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return refuse(401, None, "missing or wrong bearer token".into());
        }
    }
    if body.len() > MAX_BODY {
        return refuse(413, None, "body over 64 KiB".into());
    }
    let mut value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                400,
                None,
                CommandError::Malformed(e.to_string()).to_string(),
            );
        }
    };
    let Some(obj) = value.as_object_mut() else {
        let e = CommandError::Malformed("expected a JSON object".into());
        return refuse(400, None, e.to_string());
    };
    let event_type = obj.get("type").and_then(Value::as_str).map(str::to_owned);
    let op = match obj.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => return refuse(422, event_type, "\"op\" must be a string".into()),
        None => match header(headers, OP_HEADER) {
            Some(op) => op.to_owned(),
            None => {
                return refuse(
                    422,
                    event_type,
                    "missing field \"op\" (subscribe, unsubscribe, filters or routes)".into(),
                );
            }
        },
    };
    let op = match op.as_str() {
        "subscribe" => ControlOp::Subscribe,
        "unsubscribe" => ControlOp::Unsubscribe,
        "filters" => ControlOp::UpdateFilters,
        "routes" => return Ok(ControlRequest::Routes),
        other => {
            return refuse(
                422,
                event_type,
                format!("unknown op {other:?}; expected subscribe, unsubscribe, filters or routes"),
            );
        }
    };
    let rest = serde_json::to_vec(&value).unwrap_or_default();
    match parse_command(op, &rest) {
        Ok(cmd) => Ok(ControlRequest::Command(cmd)),
        Err(e) => refuse(e.http_status(), event_type, e.to_string()),
    }
}

/// Where a JetStream tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailStart {
    /// The oldest message the stream still holds.
    First,
    /// A stream sequence number.
    Sequence(u64),
    /// The first message stored at or after this time.
    Time(SystemTime),
    /// Only messages stored from now on.
    New,
}

struct TailShared {
    received: AtomicU64,
    duplicates: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Consumes meltica events from NATS (core, or a JetStream stream through an ordered
/// consumer) on the `meltica-nats-tail` thread and hands each event's JSON over a blocking
/// API. Events already seen (by `key`: a `seq` not above the last one of its instrument and
/// type) are skipped and counted as duplicates.
pub struct NatsTail {
    rx: crossbeam_channel::Receiver<String>,
    shared: Arc<TailShared>,
    subjects: Vec<String>,
    stream: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl NatsTail {
    /// Subscribes to the events of `types` for `instruments` (empty means all) under
    /// `prefix`. With `from_jetstream`, reads the stream that captures those subjects from
    /// the given start instead, gap-free and in stream order.
    pub fn connect(
        url: &str,
        prefix: &str,
        types: &[EventType],
        instruments: &[String],
        from_jetstream: Option<TailStart>,
    ) -> Result<NatsTail, NatsError> {
        validate_prefix(prefix).map_err(NatsError::Config)?;
        let filter = TailFilter::new(prefix, types, instruments);
        let subjects = filter.subjects();
        let shared = Arc::new(TailShared {
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            error: Mutex::new(None),
        });
        let (tx, rx) = crossbeam_channel::bounded(TAIL_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (url, s) = (url.to_owned(), shared.clone());
        let subs = subjects.clone();
        let handle = std::thread::Builder::new()
            .name("meltica-nats-tail".into())
            .spawn(move || run_tail(url, filter, subs, from_jetstream, tx, s, stop_rx, ready_tx))
            .map_err(|e| NatsError::Spawn {
                name: "meltica-nats-tail".into(),
                reason: e.to_string(),
            })?;
        match ready_rx
            .recv()
            .unwrap_or(Err(NatsError::Panicked("meltica-nats-tail".into())))
        {
            Ok(stream) => Ok(NatsTail {
                rx,
                shared,
                subjects,
                stream,
                stop: Some(stop_tx),
                handle: Some(handle),
            }),
            Err(e) => {
                let _ = handle.join();
                Err(e)
            }
        }
    }

    /// Waits up to `timeout` for the next event's JSON. `Err(true)` when the tail ended (see
    /// [`NatsTail::error`]) and everything was read, `Err(false)` on timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<String, bool> {
        self.rx
            .recv_timeout(timeout)
            .map_err(|e| matches!(e, crossbeam_channel::RecvTimeoutError::Disconnected))
    }

    /// Blocks for the next event's JSON; `None` once the tail ended.
    pub fn recv(&self) -> Option<String> {
        self.rx.recv().ok()
    }

    /// Blocking iterator over events' JSON, ending with the tail.
    pub fn iter(&self) -> impl Iterator<Item = String> + '_ {
        self.rx.iter()
    }

    /// Events handed over so far.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Events skipped because their key was already seen.
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// The subjects this tail covers (one per type and instrument asked for).
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// The JetStream stream read, if any.
    pub fn stream(&self) -> Option<&str> {
        self.stream.as_deref()
    }

    /// Why the tail ended, if it ended on an error.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().clone()
    }

    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for NatsTail {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The (type, instrument) subjects a tail asked for.
#[derive(Debug, Clone)]
struct TailFilter {
    prefix: String,
    /// Type tokens; empty for all.
    types: Vec<&'static str>,
    /// Instrument tokens; empty for all.
    instruments: Vec<String>,
}

impl TailFilter {
    fn new(prefix: &str, types: &[EventType], instruments: &[String]) -> Self {
        let mut t: Vec<&'static str> = types.iter().map(|t| type_token(*t)).collect();
        t.sort_unstable();
        t.dedup();
        let mut i: Vec<String> = instruments
            .iter()
            .map(|i| subject_token(i).into_owned())
            .collect();
        i.sort_unstable();
        i.dedup();
        TailFilter {
            prefix: prefix.to_owned(),
            types: t,
            instruments: i,
        }
    }

    /// One subject per (type, instrument), with `*` for "all".
    fn subjects(&self) -> Vec<String> {
        let types: Vec<&str> = if self.types.is_empty() {
            vec!["*"]
        } else {
            self.types.clone()
        };
        let instruments: Vec<&str> = if self.instruments.is_empty() {
            vec!["*"]
        } else {
            self.instruments.iter().map(String::as_str).collect()
        };
        let mut out = Vec::with_capacity(types.len() * instruments.len());
        for t in &types {
            for i in &instruments {
                out.push(format!("{}.*.{t}.{i}", self.prefix));
            }
        }
        out
    }

    /// The narrowest single subject covering every subject asked for.
    fn covering(&self) -> String {
        let one = |v: &[&str]| {
            if v.len() == 1 {
                v[0].to_owned()
            } else {
                "*".into()
            }
        };
        let instruments: Vec<&str> = self.instruments.iter().map(String::as_str).collect();
        format!(
            "{}.*.{}.{}",
            self.prefix,
            one(&self.types),
            one(&instruments)
        )
    }

    /// True when a subject under the covering one is one of those asked for.
    fn matches(&self, subject: &str) -> bool {
        let Some(rest) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        let mut tokens = rest.split('.');
        let (Some(_market), Some(t), Some(i), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return false;
        };
        (self.types.is_empty() || self.types.contains(&t))
            && (self.instruments.is_empty() || self.instruments.iter().any(|x| x == i))
    }
}

/// The `key` of an event's JSON. The contract puts `key` before `payload`, and a quote
/// inside a string value is always escaped, so the first `"key":"` is the event's own.
fn event_key(json: &str) -> Option<&str> {
    let start = json.find("\"key\":\"")? + 7;
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
}

/// Remembers the last `seq` per (instrument, type), from event keys.
#[derive(Default)]
struct KeyDedup {
    last: HashMap<String, u64>,
}

impl KeyDedup {
    /// False for an event already seen; events without a readable key always pass.
    fn is_new(&mut self, json: &str) -> bool {
        let Some((stream, seq)) = event_key(json).and_then(|k| k.rsplit_once(':')) else {
            return true;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            return true;
        };
        match self.last.get_mut(stream) {
            Some(last) if seq <= *last => false,
            Some(last) => {
                *last = seq;
                true
            }
            None => {
                self.last.insert(stream.to_owned(), seq);
                true
            }
        }
    }
}

fn start_policy(start: TailStart) -> Result<DeliverPolicy, NatsError> {
    Ok(match start {
        TailStart::First => DeliverPolicy::All,
        TailStart::New => DeliverPolicy::New,
        TailStart::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: start_sequence.max(1),
        },
        TailStart::Time(t) => {
            let ms = t
                .duration_since(UNIX_EPOCH)
                .map_err(|_| NatsError::Config("start time before 1970".into()))?
                .as_millis() as i64;
            let mut text = Vec::with_capacity(24);
            crate::clock::write_rfc3339_ms(ms, &mut text);
            let text = String::from_utf8_lossy(&text);
            let start_time = async_nats::datetime::parse_rfc3339(&text)
                .map_err(|e| NatsError::Config(format!("start time {text}: {e}")))?;
            DeliverPolicy::ByStartTime { start_time }
        }
    })
}

/// Hands one message over; false once the reader is gone or a stop arrived.
async fn forward(
    tx: &crossbeam_channel::Sender<String>,
    payload: &[u8],
    dedup: &mut KeyDedup,
    shared: &TailShared,
    stop: &mut oneshot::Receiver<()>,
) -> bool {
    let json = String::from_utf8_lossy(payload).into_owned();
    if !dedup.is_new(&json) {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let mut item = json;
    loop {
        match tx.try_send(item) {
            Ok(()) => {
                shared.received.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
            Err(crossbeam_channel::TrySendError::Full(back)) => {
                item = back;
                // The reader is behind: wait for it (the server holds the rest).
                tokio::select! {
                    _ = &mut *stop => return false,
                    _ = tokio::time::sleep(BUSY_POLL) => {}
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_tail(
    url: String,
    filter: TailFilter,
    subjects: Vec<String>,
    from: Option<TailStart>,
    tx: crossbeam_channel::Sender<String>,
    shared: Arc<TailShared>,
    mut stop: oneshot::Receiver<()>,
    ready: crossbeam_channel::Sender<Result<Option<String>, NatsError>>,
) {
    let rt = match runtime("meltica-nats-tail") {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let timeout = NatsBusConfig::default().connect_timeout;
        let link = Arc::new(Link::default());
        let client = match connect(&url, "meltica-tail", timeout, link).await {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut dedup = KeyDedup::default();
        match from {
            None => {
                let mut subs = Vec::with_capacity(subjects.len());
                for s in &subjects {
                    match client.subscribe(s.clone()).await {
                        Ok(sub) => subs.push(sub),
                        Err(e) => {
                            let _ = ready.send(Err(NatsError::Subscribe {
                                subject: s.clone(),
                                reason: e.to_string(),
                            }));
                            return;
                        }
                    }
                }
                if let Err(e) = client.flush().await {
                    let _ = ready.send(Err(NatsError::Unreachable {
                        addr: display_addr(&url).to_owned(),
                        reason: e.to_string(),
                    }));
                    return;
                }
                let _ = ready.send(Ok(None));
                let mut all = futures_util::stream::select_all(subs);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        msg = all.next() => {
                            let Some(msg) = msg else { break };
                            if !forward(&tx, &msg.payload, &mut dedup, &shared, &mut stop).await {
                                break;
                            }
                        }
                    }
                }
            }
            Some(start) => {
                let (name, mut messages) =
                    match ordered_consumer(&client, &filter, start, timeout).await {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                let _ = ready.send(Ok(Some(name)));
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        msg = messages.next() => match msg {
                            None => break,
                            Some(Err(e)) => {
                                *shared.error.lock() = Some(format!("JetStream consumer: {e}"));
                                break;
                            }
                            Some(Ok(msg)) => {
                                if !filter.matches(msg.subject.as_str()) {
                                    continue;
                                }
                                if !forward(&tx, &msg.payload, &mut dedup, &shared, &mut stop).await {
                                    break;
                                }
                            }
                        },
                    }
                }
            }
        }
    });
}

/// Finds the stream capturing the tail's subjects and opens an ordered consumer on it. On
/// servers before 2.10 a consumer has one filter subject, so it reads the covering subject
/// and [`TailFilter::matches`] keeps the ones asked for.
async fn ordered_consumer(
    client: &Client,
    filter: &TailFilter,
    start: TailStart,
    timeout: Duration,
) -> Result<(String, jetstream::consumer::pull::Ordered), NatsError> {
    let covering = filter.covering();
    let js = jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client.clone());
    let stream_err = |stream: &str, reason: String| NatsError::Stream {
        stream: stream.to_owned(),
        reason,
    };
    let name = js
        .stream_by_subject(covering.clone())
        .await
        .map_err(|e| stream_err(&covering, format!("no stream captures {covering}: {e}")))?;
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|e| stream_err(&name, e.to_string()))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: covering.clone(),
            deliver_policy: start_policy(start)?,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::Subscribe {
            subject: covering.clone(),
            reason: e.to_string(),
        })?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| NatsError::Subscribe {
            subject: covering,
            reason: e.to_string(),
        })?;
    Ok((name, messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Instrument, Payload, Quality, TraceId, Trade};

    fn trade(instrument: Option<&str>, seq: u64) -> Event {
        Event {
            event_type: EventType::Trade,
            source: "binance.ws.trade",
            ts_ms: 1_796_299_200_123,
            instrument: instrument.and_then(|i| Instrument::from_name(3, i)),
            seq,
            payload: Payload::Trade(Trade::default()),
            ingress_ns: 0,
            latency_ns: 0,
            trace_id: TraceId::NONE,
            span_id: 0,
            quality: Quality::Live,
        }
    }

    #[test]
    fn subjects_have_one_token_per_part() {
        let e = trade(Some("BTC-USDT"), 1);
        assert_eq!(
            subject_for("meltica", &e),
            "meltica.BINANCE-SPOT.TRADE.BTC-USDT"
        );
        let mut delta = e.clone();
        delta.event_type = EventType::OrderbookDelta;
        assert_eq!(
            subject_for("prod.md", &delta),
            "prod.md.BINANCE-SPOT.ORDERBOOK_DELTA.BTC-USDT"
        );
        assert_eq!(
            subject_for("meltica", &trade(None, 1)),
            "meltica.BINANCE-SPOT.TRADE._"
        );
        for t in EventType::ALL {
            assert!(is_token(type_token(t)), "{t}");
        }
    }

    #[test]
    fn subject_tokens_are_sanitised() {
        let cases = [
            ("BTC-USDT", "BTC-USDT"),
            ("", "_"),
            ("a.b", "a_b"),
            ("a*b>c", "a_b_c"),
            ("a b\tc\n", "a_b_c_"),
        ];
        for (raw, want) in cases {
            assert_eq!(subject_token(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn control_subjects_stay_out_of_the_stream() {
        let cfg = NatsBusConfig::default();
        assert_eq!(cfg.control_subject(), "meltica.control.meltica");
        assert_eq!(cfg.stream_subjects(), "meltica.*.*.*");
        // Four tokens against three: `meltica.*.*.*` cannot match a control subject.
        assert_eq!(cfg.control_subject().split('.').count(), 3);
    }

    #[test]
    fn config_problems_are_reported_together() {
        let cfg = NatsBusConfig {
            subject_prefix: "bad.*".into(),
            engine_id: "two.tokens".into(),
            jetstream: Some(JetStreamConfig {
                stream: "a.b".into(),
                max_age: Duration::from_secs(10),
                duplicate_window: Duration::from_secs(60),
                ..JetStreamConfig::default()
            }),
            ..NatsBusConfig::default()
        };
        let NatsError::Config(msg) = cfg.validate().unwrap_err() else {
            panic!("a config error")
        };
        for part in [
            "subject_prefix",
            "engine_id",
            "stream name",
            "duplicate_window",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
        assert!(NatsBusConfig::default().validate().is_ok());
    }

    #[test]
    fn traceparent_only_for_sampled_events() {
        let mut e = trade(Some("BTC-USDT"), 1);
        assert_eq!(traceparent(&e), None);
        e.trace_id = TraceId::parse_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(traceparent(&e), None, "no span: not sampled");
        e.span_id = 0x00f0_67aa_0ba9_02b7;
        assert_eq!(
            traceparent(&e).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn addresses_are_shown_without_credentials() {
        assert_eq!(display_addr("nats://u:p@10.0.0.1:4222"), "10.0.0.1:4222");
        assert_eq!(display_addr("127.0.0.1:4222"), "127.0.0.1:4222");
        for (url, local) in [
            ("nats://127.0.0.1:4222", true),
            ("localhost:4222", true),
            ("nats://[::1]:4222", true),
            ("nats://u:p@127.0.0.2", true),
            ("nats://10.0.0.1:4222", false),
            ("nats://nats.example:4222", false),
        ] {
            assert_eq!(is_loopback(url), local, "{url}");
        }
    }

    #[test]
    fn control_requests_get_the_http_statuses() {
        let big = format!(r#"{{"op":"subscribe","type":"{}"}}"#, "x".repeat(MAX_BODY));
        let cases: &[(&str, Option<&str>, u16)] = &[
            ("{not json", Some("t"), 400),
            ("[1]", Some("t"), 400),
            (
                r#"{"type":"TICKER","filters":{"instrument":"BTC-USDT"}}"#,
                Some("t"),
                422,
            ),
            (r#"{"op":"drop","type":"TICKER"}"#, Some("t"), 422),
            (
                r#"{"op":"subscribe","type":"CANDLES","filters":{"instrument":"BTC-USDT"}}"#,
                Some("t"),
                422,
            ),
            (
                r#"{"op":"subscribe","type":"TICKER","filters":{"instrument":"BTC-USDT"}}"#,
                None,
                401,
            ),
            (
                r#"{"op":"subscribe","type":"TICKER","filters":{"instrument":"BTC-USDT"}}"#,
                Some("x"),
                401,
            ),
            (&big, Some("t"), 413),
        ];
        for (body, token, status) in cases {
            let mut h = HeaderMap::new();
            if let Some(t) = token {
                h.insert("Authorization", format!("Bearer {t}"));
            }
            let (got, ack) = parse_request(body.as_bytes(), Some(&h), Some("t"), 7).unwrap_err();
            assert_eq!(got, *status, "{}", &body[..body.len().min(80)]);
            assert_eq!(ack.dispatch_version, 7);
            assert!(ack.error.is_some());
        }
        let ok = parse_request(
            br#"{"op":"subscribe","type":"TICKER","filters":{"instrument":"BTC-USDT"},"consumer":"ops"}"#,
            None,
            None,
            1,
        )
        .unwrap();
        let ControlRequest::Command(cmd) = ok else {
            panic!("a command")
        };
        assert_eq!(cmd.op, ControlOp::Subscribe);
        assert_eq!(cmd.consumer, "ops");
        let mut h = HeaderMap::new();
        h.insert(OP_HEADER, "unsubscribe");
        let ControlRequest::Command(cmd) = parse_request(
            br#"{"type":"TICKER","filters":{"instrument":"BTC-USDT"}}"#,
            Some(&h),
            None,
            1,
        )
        .unwrap() else {
            panic!("a command")
        };
        assert_eq!(cmd.op, ControlOp::Unsubscribe);
        assert!(matches!(
            parse_request(br#"{"op":"routes"}"#, None, None, 1).unwrap(),
            ControlRequest::Routes
        ));
    }

    #[test]
    fn tail_filters() {
        let f = TailFilter::new(
            "m",
            &[EventType::Trade, EventType::OrderbookDelta],
            &["BTC-USDT".into()],
        );
        assert_eq!(
            f.subjects(),
            ["m.*.ORDERBOOK_DELTA.BTC-USDT", "m.*.TRADE.BTC-USDT"]
        );
        assert_eq!(f.covering(), "m.*.*.BTC-USDT");
        assert!(f.matches("m.BINANCE-SPOT.TRADE.BTC-USDT"));
        assert!(!f.matches("m.BINANCE-SPOT.TICKER.BTC-USDT"));
        assert!(!f.matches("m.BINANCE-SPOT.TRADE.ETH-USDT"));
        assert!(!f.matches("mx.BINANCE-SPOT.TRADE.BTC-USDT"));
        let all = TailFilter::new("m", &[], &[]);
        assert_eq!(all.subjects(), ["m.*.*.*"]);
        assert_eq!(all.covering(), "m.*.*.*");
        assert!(all.matches("m.BINANCE-SPOT.TICKER._"));
    }

    #[test]
    fn dedup_by_key() {
        let mut d = KeyDedup::default();
        let j = |i: &str, s: u64| trade(Some(i), s).to_json();
        assert!(d.is_new(&j("BTC-USDT", 1)));
        assert!(d.is_new(&j("BTC-USDT", 2)));
        assert!(!d.is_new(&j("BTC-USDT", 2)));
        assert!(!d.is_new(&j("BTC-USDT", 1)));
        assert!(d.is_new(&j("ETH-USDT", 1)));
        assert!(d.is_new("not json"));
        assert_eq!(event_key(&j("BTC-USDT", 42)), Some("BTC-USDT:TRADE:42"));
    }

    #[test]
    fn start_times_become_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_299_200_123);
        let DeliverPolicy::ByStartTime { start_time } = start_policy(TailStart::Time(t)).unwrap()
        else {
            panic!("by start time")
        };
        assert_eq!(start_time.unix_timestamp(), 1_796_299_200);
    }
}
