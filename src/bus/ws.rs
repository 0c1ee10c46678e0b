//! The WebSocket endpoint for consumers (`meltica-ws-events`) and its client.
//!
//! ```text
//! data bus ──► Subscription (one per client, its own filter, queue and policy)
//!                  │ recv_timeout, then drain what is queued
//!                  ▼
//!          meltica-ws-events-N ──► Event::write_json into a reused buffer ──► text frames,
//!                                  one flush per batch                        one event each
//! ```
//!
//! A consumer opens `ws://HOST:PORT/events` with optional query parameters:
//!
//! | parameter    | value                                              | default          |
//! | ------------ | -------------------------------------------------- | ---------------- |
//! | `type`       | comma list of event types, e.g. `TRADE,ORDERBOOK.DELTA` | every type  |
//! | `instrument` | comma list of instruments, e.g. `BTC-USDT,ETH-USDT` | every instrument |
//! | `policy`     | `drop_oldest`, `drop_newest`, `conflate`, `disconnect` | the server's default (`drop_oldest`) |
//! | `capacity`   | queue length, 1..=65536 (`conflate` keeps one event per key instead) | the server's default |
//!
//! Types and instruments are matched case-insensitively (`trade` is `TRADE`); commas may
//! be percent-encoded. Every request is checked before the upgrade, and a refused one gets
//! an HTTP error with a JSON body `{"error":"…"}`:
//!
//! - a path other than `/events` → 404;
//! - a token is configured and `Authorization: Bearer <token>` is missing or wrong → 401.
//!   The token is accepted in that header only, never as a `?token=` query parameter: URLs
//!   end up in proxy logs, shell history and `Referer` headers. Browsers, which cannot set
//!   headers on a WebSocket, can consume a loopback endpoint without a token;
//! - already [`MAX_CLIENTS`] consumers → 503;
//! - an unknown parameter, an instrument not shaped `BASE-QUOTE`, a bad policy or capacity
//!   → 400, and so is `policy=block`: with `block` the bus's publisher waits for a full
//!   queue, which would let one remote consumer stall the conductor and every other
//!   consumer with it;
//! - an unknown event type → 422;
//! - a request that is not a WebSocket upgrade → 426 (405 for a method other than GET).
//!
//! Each event is one text frame holding exactly the JSON of
//! [`Event::write_json`](crate::schema::Event::write_json). A consumer
//! never slows the engine: when it reads too slowly, its socket fills, the server stops
//! draining its subscription, and the subscription's policy drops events. The consumer is
//! then told, before the next events it gets, with a notice frame
//! `{"notice":"missed","count":N}`: N events were dropped since the previous notice (for
//! `conflate`, N counts the events replaced by newer ones for the same key).
//!
//! Close codes: 1001 when the server shuts down or the engine stops; 1008 when the bus cut a
//! `disconnect` consumer off (the reason says why) or the consumer stopped responding (no
//! frame from it, and no byte of ours accepted by its socket, for [`CLIENT_TIMEOUT`]). The
//! server pings an idle consumer every [`PING_EVERY`]; a consumer answers pings by reading.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode, header};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Bytes, Message, Utf8Bytes, WebSocket};

use crate::bus::{DataBus, SubscribeOptions, Subscription, SubscriptionFilter};
use crate::config::BackpressurePolicy;
use crate::config::validate::parse_policy;
use crate::schema::event::write_json_string;
use crate::schema::{EventType, SharedEvent, split_canonical};

/// The one path the endpoint serves.
pub const EVENTS_PATH: &str = "/events";
/// Consumers served at once; more get 503.
pub const MAX_CLIENTS: usize = 256;
/// Largest queue a consumer may ask for.
pub const MAX_CAPACITY: usize = 65_536;
/// An idle consumer is pinged this often.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// A consumer that sends nothing (not even a pong) and accepts none of our bytes for this
/// long is closed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a client has to send its whole upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the listener looks for new connections and for the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(25);
/// How long a client thread waits on its subscription before it looks at its socket and
/// the stop flag again.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How often a client thread retries a write its consumer's full socket refused.
const PENDING_POLL: Duration = Duration::from_millis(2);
/// At shutdown, how long clients get to receive their close frame.
const CLOSE_GRACE: Duration = Duration::from_millis(250);
/// Events (and bytes) written per batch before one flush.
const BATCH_MAX: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;
/// Client frames read per turn, so a chatty client cannot starve its own event stream.
const READS_PER_TURN: usize = 16;
/// Largest frame a consumer may send us (it has nothing to say but pings and close).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Connections (consumers plus requests being checked) beyond which new TCP connections are
/// closed without an answer.
const MAX_CONNECTIONS: usize = 2 * MAX_CLIENTS;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// 400: an unknown parameter, a bad policy (including `block`) or capacity.
    BadRequest,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 404: a path other than `/events`.
    NotFound,
    /// 405: a method other than GET.
    MethodNotAllowed,
    /// 422: an unknown event type.
    UnknownType,
    /// 426: not a WebSocket upgrade request.
    NotWebSocket,
    /// 503: [`MAX_CLIENTS`] consumers already, or too many connections to answer at all.
    TooManyClients,
    /// No answer: the request was incomplete, too slow, or the socket failed.
    Handshake,
}

impl Rejection {
    pub const ALL: [Rejection; 8] = [
        Rejection::BadRequest,
        Rejection::Unauthorized,
        Rejection::NotFound,
        Rejection::MethodNotAllowed,
        Rejection::UnknownType,
        Rejection::NotWebSocket,
        Rejection::TooManyClients,
        Rejection::Handshake,
    ];
    pub const COUNT: usize = 8;

    /// The HTTP status the client gets, if it gets one.
    pub const fn status(self) -> Option<u16> {
        match self {
            Rejection::BadRequest => Some(400),
            Rejection::Unauthorized => Some(401),
            Rejection::NotFound => Some(404),
            Rejection::MethodNotAllowed => Some(405),
            Rejection::UnknownType => Some(422),
            Rejection::NotWebSocket => Some(426),
            Rejection::TooManyClients => Some(503),
            Rejection::Handshake => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::Unauthorized => "unauthorized",
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::UnknownType => "unknown_type",
            Rejection::NotWebSocket => "not_websocket",
            Rejection::TooManyClients => "too_many_clients",
            Rejection::Handshake => "handshake",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The endpoint's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventServerCounts {
    /// Consumers connected right now.
    pub connected: u64,
    /// Consumers accepted since the start.
    pub accepted: u64,
    /// Connections refused, in the order of [`Rejection::ALL`]; see
    /// [`EventServerCounts::rejected_for`].
    pub rejected: [u64; Rejection::COUNT],
    /// Event frames sent, across consumers.
    pub events_sent: u64,
    /// Events consumers were told they missed (the sum of the `count`s of missed notices).
    pub missed: u64,
}

impl EventServerCounts {
    pub fn rejected_for(&self, reason: Rejection) -> u64 {
        self.rejected[reason.index()]
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

/// One connected consumer, as [`EventServer::clients`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: u64,
    pub peer: SocketAddr,
    /// The request target, e.g. `/events?type=TRADE`.
    pub target: String,
    pub policy: BackpressurePolicy,
    pub capacity: usize,
    /// Events offered to the consumer's subscription by the bus.
    pub offered: u64,
    /// Events the subscription's policy dropped.
    pub dropped: u64,
    /// Event frames sent.
    pub sent: u64,
    /// Events the consumer was told it missed.
    pub missed: u64,
}

/// The running endpoint. Dropping it shuts it down.
pub struct EventServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

struct Shared {
    bus: Arc<dyn DataBus>,
    token: Option<String>,
    capacity: usize,
    policy: BackpressurePolicy,
    stop: AtomicBool,
    connected: AtomicU64,
    accepted: AtomicU64,
    rejected: [AtomicU64; Rejection::COUNT],
    events_sent: AtomicU64,
    missed: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
}

/// A connection the listener handed to a client thread.
struct Slot {
    peer: SocketAddr,
    /// A second handle on the socket, to cut it at shutdown.
    tcp: TcpStream,
    /// Set once the consumer is subscribed.
    client: Option<Arc<ClientState>>,
}

/// What a client thread shares with [`EventServer::clients`]; updated once per turn of its
/// loop.
struct ClientState {
    target: String,
    policy: BackpressurePolicy,
    capacity: usize,
    offered: AtomicU64,
    dropped: AtomicU64,
    sent: AtomicU64,
    missed: AtomicU64,
}

impl EventServer {
    /// Binds `addr` and serves `/events` on the `meltica-ws-events` thread, one thread per
    /// consumer. `defaults` is the (capacity, policy) of a consumer that does not choose;
    /// a default policy of `block` is replaced by `drop_oldest` (see the module docs).
    /// A non-loopback address requires a token.
    pub fn start(
        addr: SocketAddr,
        token: Option<String>,
        bus: Arc<dyn DataBus>,
        defaults: (usize, BackpressurePolicy),
    ) -> io::Result<EventServer> {
        if token.as_deref() == Some("") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the event endpoint's token is empty",
            ));
        }
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the event endpoint on non-loopback address {addr} needs a token"),
            ));
        }
        let (capacity, mut policy) = defaults;
        if policy == BackpressurePolicy::Block {
            crate::warn!(
                "event endpoint: default policy block would let a remote consumer stall the engine; using drop_oldest"
            );
            policy = BackpressurePolicy::DropOldest;
        }
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        let shared = Arc::new(Shared {
            bus,
            token,
            capacity: capacity.clamp(1, MAX_CAPACITY),
            policy,
            stop: AtomicBool::new(false),
            connected: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: Default::default(),
            events_sent: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let listener = std::thread::Builder::new()
            .name("meltica-ws-events".into())
            .spawn(move || listen(listener, s))?;
        crate::info!("event endpoint on ws://{bound}{EVENTS_PATH}");
        Ok(EventServer {
            addr: bound,
            shared,
            listener: Some(listener),
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/events`.
    pub fn url(&self) -> String {
        format!("ws://{}{EVENTS_PATH}", self.addr)
    }

    pub fn counts(&self) -> EventServerCounts {
        let s = &self.shared;
        let mut rejected = [0; Rejection::COUNT];
        for r in Rejection::ALL {
            rejected[r.index()] = s.rejected[r.index()].load(Ordering::Relaxed);
        }
        EventServerCounts {
            connected: s.connected.load(Ordering::Relaxed),
            accepted: s.accepted.load(Ordering::Relaxed),
            rejected,
            events_sent: s.events_sent.load(Ordering::Relaxed),
            missed: s.missed.load(Ordering::Relaxed),
        }
    }

    /// The consumers connected right now, in connection order.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let slots = self.shared.slots.lock();
        let mut v: Vec<ClientInfo> = slots
            .iter()
            .filter_map(|(&id, slot)| {
                let c = slot.client.as_ref()?;
                Some(ClientInfo {
                    id,
                    peer: slot.peer,
                    target: c.target.clone(),
                    policy: c.policy,
                    capacity: c.capacity,
                    offered: c.offered.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    sent: c.sent.load(Ordering::Relaxed),
                    missed: c.missed.load(Ordering::Relaxed),
                })
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Stops accepting, sends every consumer a close frame (1001), cuts the connections
    /// that do not finish promptly, and joins every thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
    }
}

impl Drop for EventServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl Shared {
    fn reject(&self, reason: Rejection) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Checks an upgrade request: path, token, room, then the query.
    fn check(&self, req: &Request) -> Result<EventQuery, (Rejection, String)> {
        if req.uri().path() != EVENTS_PATH {
            return Err((
                Rejection::NotFound,
                format!("no such endpoint; consumers connect to {EVENTS_PATH}"),
            ));
        }
        if !self.authorized(req) {
            return Err((
                Rejection::Unauthorized,
                "missing or wrong bearer token (send it as `Authorization: Bearer <token>`; it is never accepted in the URL)".into(),
            ));
        }
        let q = parse_query(req.uri().query(), self.capacity, self.policy)?;
        let room = self
            .connected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_CLIENTS as u64).then_some(n + 1)
            });
        if room.is_err() {
            return Err((
                Rejection::TooManyClients,
                format!("already {MAX_CLIENTS} consumers; try again later"),
            ));
        }
        Ok(q)
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let got = value.as_bytes();
        let prefix = b"Bearer ";
        got.len() == prefix.len() + token.len()
            && got[..prefix.len()].eq_ignore_ascii_case(prefix)
            && super::constant_time_eq(&got[prefix.len()..], token.as_bytes())
    }
}

/// What a consumer asked for.
#[derive(Debug, Clone, PartialEq)]
struct EventQuery {
    filter: SubscriptionFilter,
    capacity: usize,
    policy: BackpressurePolicy,
}

/// Parses the query of `/events`, reporting every problem at once: 400 if any parameter is
/// malformed, else 422 if a type is unknown.
fn parse_query(
    query: Option<&str>,
    capacity: usize,
    policy: BackpressurePolicy,
) -> Result<EventQuery, (Rejection, String)> {
    let mut q = EventQuery {
        filter: SubscriptionFilter::all(),
        capacity,
        policy,
    };
    let mut bad: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let (mut seen_policy, mut seen_capacity) = (false, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            bad.push(format!("{}: bad percent-encoding", clip(pair)));
            continue;
        };
        match k.as_str() {
            "type" => {
                let items = list(&v);
                if items.is_empty() {
                    bad.push("type: empty list".into());
                }
                for item in items {
                    match EventType::parse(&item) {
                        Some(t) if !q.filter.types.contains(&t) => q.filter.types.push(t),
                        Some(_) => {}
                        None => unknown.push(clip(&item)),
                    }
                }
            }
            "instrument" => {
                let items = list(&v);
                if items.is_empty() {
                    bad.push("instrument: empty list".into());
                }
                for item in items {
                    if split_canonical(&item).is_none() {
                        bad.push(format!(
                            "instrument: {:?} is not BASE-QUOTE (e.g. BTC-USDT)",
                            clip(&item)
                        ));
                    } else if !q.filter.instruments.contains(&item) {
                        q.filter.instruments.push(item);
                    }
                }
            }
            "policy" if seen_policy => bad.push("policy: given twice".into()),
            "policy" => {
                seen_policy = true;
                match parse_policy(&v) {
                    Some(BackpressurePolicy::Block) => bad.push(
                        "policy: block is refused for remote consumers: a full queue would stall the engine's publisher and every other consumer; use drop_oldest, drop_newest, conflate or disconnect"
                            .into(),
                    ),
                    Some(p) => q.policy = p,
                    None => bad.push(format!(
                        "policy: {:?}: expected drop_oldest, drop_newest, conflate or disconnect",
                        clip(&v)
                    )),
                }
            }
            "capacity" if seen_capacity => bad.push("capacity: given twice".into()),
            "capacity" => {
                seen_capacity = true;
                match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_CAPACITY).contains(&n) => q.capacity = n,
                    _ => bad.push(format!(
                        "capacity: {:?}: expected a whole number from 1 to {MAX_CAPACITY}",
                        clip(&v)
                    )),
                }
            }
            "token" => bad.push(
                "token: the token is accepted only in an `Authorization: Bearer` header, never in the URL"
                    .into(),
            ),
            other => bad.push(format!(
                "unknown parameter {:?}: expected type, instrument, policy or capacity",
                clip(other)
            )),
        }
    }
    if !bad.is_empty() {
        if !unknown.is_empty() {
            bad.push(unknown_types(&unknown));
        }
        return Err((Rejection::BadRequest, bad.join("; ")));
    }
    if !unknown.is_empty() {
        return Err((Rejection::UnknownType, unknown_types(&unknown)));
    }
    Ok(q)
}

fn unknown_types(unknown: &[String]) -> String {
    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    format!(
        "type: unknown {}; known types: {}",
        unknown.join(", "),
        known.join(", ")
    )
}

/// A comma list, trimmed, upper-cased, empty items skipped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_uppercase)
        .collect()
}

/// At most 64 characters of client input, for error messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn error_body(msg: &str) -> String {
    let mut body = Vec::with_capacity(msg.len() + 16);
    body.extend_from_slice(b"{\"error\":");
    write_json_string(msg, &mut body);
    body.push(b'}');
    String::from_utf8(body).unwrap_or_default()
}

/// The HTTP answer to a refused upgrade request.
fn error_response(reason: Rejection, msg: &str) -> ErrorResponse {
    let body = error_body(msg);
    let mut resp = ErrorResponse::new(None);
    *resp.status_mut() =
        StatusCode::from_u16(reason.status().unwrap_or(400)).unwrap_or(StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if reason == Rejection::Unauthorized {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    *resp.body_mut() = Some(body);
    resp
}

/// Answers a request tungstenite refused before our check ran (not a WebSocket upgrade).
fn write_raw_error(mut tcp: &TcpStream, reason: Rejection, msg: &str) {
    let body = error_body(msg);
    let (status, extra) = match reason {
        Rejection::MethodNotAllowed => ("405 Method Not Allowed", "Allow: GET\r\n"),
        Rejection::NotWebSocket => ("426 Upgrade Required", "Upgrade: websocket\r\n"),
        _ => ("400 Bad Request", ""),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes());
    let _ = tcp.write_all(body.as_bytes());
    let _ = tcp.flush();
}

fn listen(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((tcp, peer)) => {
                next_id += 1;
                if let Some(h) = admit(&shared, next_id, tcp, peer) {
                    workers.push(h);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                crate::warn!("event endpoint: accept failed: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
        workers.retain(|h| !h.is_finished());
    }
    drop(listener);
    // Clients see the stop flag within IDLE_POLL and close with 1001; whoever has not
    // finished by then (a full socket, a request still being read) is cut.
    let deadline = Instant::now() + IDLE_POLL + CLOSE_GRACE;
    while workers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for slot in shared.slots.lock().values() {
        let _ = slot.tcp.shutdown(Shutdown::Both);
    }
    for h in workers {
        let _ = h.join();
    }
}

/// Registers a new connection and starts its thread.
fn admit(
    shared: &Arc<Shared>,
    id: u64,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<JoinHandle<()>> {
    let handle = match tcp.try_clone() {
        Ok(h) => h,
        Err(e) => {
            crate::warn!("event endpoint: {peer}: {e}");
            shared.reject(Rejection::Handshake);
            return None;
        }
    };
    {
        let mut slots = shared.slots.lock();
        if slots.len() >= MAX_CONNECTIONS {
            // Too many to even read the request: close without an answer.
            shared.reject(Rejection::TooManyClients);
            return None;
        }
        slots.insert(
            id,
            Slot {
                peer,
                tcp: handle,
                client: None,
            },
        );
    }
    let s = shared.clone();
    match std::thread::Builder::new()
        .name(format!("meltica-ws-events-{id}"))
        .spawn(move || serve(&s, id, tcp, peer))
    {
        Ok(h) => Some(h),
        Err(e) => {
            crate::warn!("event endpoint: cannot start a client thread: {e}");
            shared.slots.lock().remove(&id);
            shared.reject(Rejection::Handshake);
            None
        }
    }
}

/// Removes a connection's slot (and its place among the consumers) however its thread ends.
struct SlotGuard<'a> {
    shared: &'a Shared,
    id: u64,
    counted: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.shared.slots.lock().remove(&self.id);
        if self.counted {
            self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The socket under a consumer's WebSocket; counts the bytes its kernel buffer accepted, so
/// a consumer that reads is told from one that does not.
struct Conn {
    tcp: TcpStream,
    written: u64,
    /// While the upgrade request is read: when it must be complete, however slowly it
    /// trickles in.
    deadline: Option<Instant>,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.tcp.set_read_timeout(Some(left))?;
        }
        self.tcp.read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tcp.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

fn server_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(BATCH_BYTES * 8)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// One consumer's thread: check and upgrade, subscribe, stream, close.
fn serve(shared: &Shared, id: u64, tcp: TcpStream, peer: SocketAddr) {
    let mut guard = SlotGuard {
        shared,
        id,
        counted: false,
    };
    let prepared = tcp
        .set_nonblocking(false)
        .and_then(|()| tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
        .and_then(|()| tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
        .and_then(|()| tcp.set_nodelay(true));
    let raw = match prepared.and_then(|()| tcp.try_clone()) {
        Ok(raw) => raw,
        Err(_) => {
            shared.reject(Rejection::Handshake);
            return;
        }
    };
    let mut verdict: Option<Result<(EventQuery, String), Rejection>> = None;
    // The error type is tungstenite's callback contract (an HTTP response), not ours.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| match shared.check(req) {
        Ok(q) => {
            verdict = Some(Ok((q, req.uri().to_string())));
            Ok(resp)
        }
        Err((reason, msg)) => {
            verdict = Some(Err(reason));
            Err(error_response(reason, &msg))
        }
    };
    let conn = Conn {
        tcp,
        written: 0,
        deadline: Some(Instant::now() + HANDSHAKE_TIMEOUT),
    };
    let upgraded = tungstenite::accept_hdr_with_config(conn, callback, Some(server_ws_config()))
        .map_err(|e| match e {
            HandshakeError::Failure(e) => Some(e),
            HandshakeError::Interrupted(_) => None,
        });
    // Our check passed: the consumer holds a place among MAX_CLIENTS until this returns.
    guard.counted = matches!(verdict, Some(Ok(_)));
    let (mut ws, (query, target)) = match (upgraded, verdict) {
        (Ok(ws), Some(Ok(v))) => (ws, v),
        (Err(Some(tungstenite::Error::Http(_))), Some(Err(reason))) => {
            shared.reject(reason);
            return;
        }
        (Err(Some(tungstenite::Error::Protocol(p))), None) => {
            use tungstenite::error::ProtocolError as P;
            let (reason, msg) = match p {
                P::WrongHttpMethod => (Rejection::MethodNotAllowed, "use GET"),
                P::HttparseError(_) | P::JunkAfterRequest => {
                    (Rejection::BadRequest, "malformed HTTP request")
                }
                P::HandshakeIncomplete => {
                    shared.reject(Rejection::Handshake);
                    return;
                }
                _ => (
                    Rejection::NotWebSocket,
                    "this endpoint speaks WebSocket only: GET /events with Upgrade: websocket",
                ),
            };
            write_raw_error(&raw, reason, msg);
            shared.reject(reason);
            return;
        }
        _ => {
            shared.reject(Rejection::Handshake);
            return;
        }
    };
    ws.get_mut().deadline = None;
    if raw.set_nonblocking(true).is_err() {
        shared.reject(Rejection::Handshake);
        return;
    }
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(ClientState {
        target,
        policy: query.policy,
        capacity: query.capacity,
        offered: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        missed: AtomicU64::new(0),
    });
    let sub = shared.bus.subscribe(
        query.filter,
        SubscribeOptions::new(&format!("ws:{peer}"), query.capacity, query.policy),
    );
    if let Some(slot) = shared.slots.lock().get_mut(&id) {
        slot.client = Some(state.clone());
    }
    crate::debug!("event endpoint: {peer} subscribed to {}", state.target);
    let now = Instant::now();
    let mut session = Session {
        ws,
        sub,
        shared,
        state: &state,
        buf: Vec::with_capacity(1024),
        pending: false,
        unsent: 0,
        last_heard: now,
        last_progress: now,
        last_ping: now,
        seen_written: 0,
    };
    let end = session.run();
    crate::debug!("event endpoint: {peer} ends: {end:?}");
    session.finish(end);
    // Dropping the session drops the subscription: the bus forgets it on its next publish.
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The server is shutting down.
    Shutdown,
    /// The bus closed (the engine stopped) or cut this consumer off.
    BusClosed,
    /// The consumer closed the connection.
    ClientClosed,
    /// The socket failed.
    Gone,
    /// Nothing heard from the consumer and nothing written for CLIENT_TIMEOUT.
    Unresponsive,
}

struct Session<'a> {
    ws: WebSocket<Conn>,
    sub: Subscription,
    shared: &'a Shared,
    state: &'a ClientState,
    /// Reused for every event's JSON.
    buf: Vec<u8>,
    /// The consumer's socket refused part of what was written: stop taking events from the
    /// subscription (its policy then drops them) until it drains.
    pending: bool,
    /// Events lost between the subscription and the socket (never in practice: the write
    /// buffer is bounded well above one batch); reported in the next notice.
    unsent: u64,
    last_heard: Instant,
    last_progress: Instant,
    last_ping: Instant,
    seen_written: u64,
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

impl Session<'_> {
    fn run(&mut self) -> End {
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return End::Shutdown;
            }
            if let Some(end) = self.read_client() {
                return end;
            }
            let stats = self.sub.stats();
            self.state.offered.store(stats.offered(), Ordering::Relaxed);
            self.state.dropped.store(stats.dropped(), Ordering::Relaxed);
            let now = Instant::now();
            self.note_progress(now);
            if now.duration_since(self.last_heard.max(self.last_progress)) >= CLIENT_TIMEOUT {
                return End::Unresponsive;
            }
            if self.pending {
                if let Err(end) = self.flush() {
                    return end;
                }
                if self.pending {
                    std::thread::sleep(PENDING_POLL);
                }
                continue;
            }
            match self.sub.recv_timeout(IDLE_POLL) {
                Ok(first) => {
                    if let Err(end) = self.send_batch(first) {
                        return end;
                    }
                }
                Err(false) => {
                    if let Err(end) = self.keepalive(Instant::now()) {
                        return end;
                    }
                }
                Err(true) => return End::BusClosed,
            }
        }
    }

    /// Reads what the consumer sent, without blocking. Pings are answered by tungstenite
    /// (the pong goes out with the next flush); text is ignored.
    fn read_client(&mut self) -> Option<End> {
        let mut answered = false;
        for _ in 0..READS_PER_TURN {
            match self.ws.read() {
                Ok(Message::Close(_)) => {
                    let _ = self.ws.flush();
                    return Some(End::ClientClosed);
                }
                Ok(m) => {
                    answered |= m.is_ping();
                    self.last_heard = Instant::now();
                }
                Err(e) if would_block(&e) => break,
                Err(_) => return Some(End::Gone),
            }
        }
        if answered && !self.pending {
            return self.flush().err();
        }
        None
    }

    fn note_progress(&mut self, now: Instant) {
        let written = self.ws.get_ref().written;
        if written != self.seen_written {
            self.seen_written = written;
            self.last_progress = now;
        }
    }

    /// Pings a consumer that has been quiet for PING_EVERY.
    fn keepalive(&mut self, now: Instant) -> Result<(), End> {
        if now.duration_since(self.last_heard) < PING_EVERY
            || now.duration_since(self.last_ping) < PING_EVERY
        {
            return Ok(());
        }
        self.last_ping = now;
        match self.ws.write(Message::Ping(Bytes::new())) {
            Ok(()) => {}
            Err(e) if would_block(&e) => self.pending = true,
            Err(_) => return Err(End::Gone),
        }
        self.flush()?;
        // A ping accepted by the kernel says nothing about the consumer.
        self.seen_written = self.ws.get_ref().written;
        Ok(())
    }

    /// Writes `first` and whatever else is queued (up to one batch), then flushes once.
    fn send_batch(&mut self, first: SharedEvent) -> Result<(), End> {
        let missed = self.sub.missed().unwrap_or(0) + std::mem::take(&mut self.unsent);
        if missed > 0 {
            self.write_notice(missed)?;
        }
        let (mut sent, mut bytes) = (0u64, 0usize);
        let mut next = Some(first);
        while let Some(ev) = next {
            self.buf.clear();
            ev.write_json(&mut self.buf);
            bytes += self.buf.len();
            if self.write_buf()? {
                sent += 1;
            } else {
                self.unsent += 1;
            }
            if self.pending || sent as usize >= BATCH_MAX || bytes >= BATCH_BYTES {
                break;
            }
            // A closed subscription is seen by the next recv_timeout.
            next = self.sub.try_recv().ok();
        }
        self.flush()?;
        self.state.sent.fetch_add(sent, Ordering::Relaxed);
        self.shared.events_sent.fetch_add(sent, Ordering::Relaxed);
        Ok(())
    }

    /// Queues `{"notice":"missed","count":N}`.
    fn write_notice(&mut self, missed: u64) -> Result<(), End> {
        self.buf.clear();
        self.buf
            .extend_from_slice(b"{\"notice\":\"missed\",\"count\":");
        self.buf.extend_from_slice(missed.to_string().as_bytes());
        self.buf.push(b'}');
        if self.write_buf()? {
            self.state.missed.fetch_add(missed, Ordering::Relaxed);
            self.shared.missed.fetch_add(missed, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Queues `buf` as one text frame. `Ok(false)` if the frame was lost (write buffer
    /// full); a refused socket write leaves the frame queued and sets `pending`.
    fn write_buf(&mut self) -> Result<bool, End> {
        let Ok(text) = std::str::from_utf8(&self.buf) else {
            return Ok(false);
        };
        match self.ws.write(Message::Text(Utf8Bytes::from(text))) {
            Ok(()) => Ok(true),
            Err(e) if would_block(&e) => {
                self.pending = true;
                Ok(true)
            }
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                self.pending = true;
                Ok(false)
            }
            Err(_) => Err(End::Gone),
        }
    }

    fn flush(&mut self) -> Result<(), End> {
        match self.ws.flush() {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(e) if would_block(&e) => {
                self.pending = true;
                Ok(())
            }
            Err(_) => Err(End::Gone),
        }
    }

    /// Says goodbye with a close frame where there is someone to say it to.
    fn finish(&mut self, end: End) {
        let (code, reason) = match end {
            End::Shutdown => (CloseCode::Away, "server shutting down".to_owned()),
            End::BusClosed => match self.sub.stats().disconnect_reason() {
                Some(why) => {
                    // Tell the consumer what it lost before the reason it was cut off.
                    let missed = self.sub.missed().unwrap_or(0) + self.unsent;
                    if missed > 0 && !self.pending {
                        let _ = self.write_notice(missed);
                    }
                    (CloseCode::Policy, why)
                }
                None => (CloseCode::Away, "the engine stopped".to_owned()),
            },
            End::Unresponsive => (
                CloseCode::Policy,
                format!("no response for {} s", CLIENT_TIMEOUT.as_secs()),
            ),
            End::ClientClosed | End::Gone => return,
        };
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(close_reason(&reason)),
        };
        let _ = self.ws.close(Some(frame));
        // Drive the close handshake briefly; the socket is dropped either way.
        let deadline = Instant::now() + CLOSE_GRACE;
        while Instant::now() < deadline {
            match self.ws.flush().and_then(|()| self.ws.read().map(|_| ())) {
                Ok(()) => {}
                Err(e) if would_block(&e) => std::thread::sleep(PENDING_POLL),
                Err(_) => break,
            }
        }
    }
}

/// A close reason fits in 123 bytes.
fn close_reason(s: &str) -> &str {
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The client behind `meltica tail --url ws://HOST:PORT/events?...`: blocking, one JSON text
/// per call.
pub struct EventClient {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    /// Set once the connection closed; later calls return it again.
    closed: Option<ClientError>,
}

/// Why the client could not connect, or stopped receiving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad event endpoint URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The server refused the upgrade with an HTTP status; `body` is its JSON `{"error":…}`.
    #[error("the event endpoint refused the connection: HTTP {status} {body}")]
    Rejected { status: u16, body: String },
    /// Nothing arrived within the timeout; the connection is fine.
    #[error("no event within the timeout")]
    Timeout,
    /// The connection ended; `code` is the close code (1006 when it ended without one).
    #[error("the event endpoint closed the connection ({code}: {reason})")]
    Closed { code: u16, reason: String },
    #[error("event connection failed: {0}")]
    Io(String),
}

impl ClientError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout)
    }

    /// Worth connecting again later: the server went away, was busy, or the network failed
    /// (not: refused, cut off as too slow, or closed by this client).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io(_) => true,
            ClientError::Rejected { status, .. } => *status == 503,
            ClientError::Closed { code, .. } => !matches!(code, 1000 | 1008),
            ClientError::Url { .. } | ClientError::Timeout => false,
        }
    }
}

/// How long connecting and the upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl EventClient {
    /// Connects to `ws://` or `wss://HOST:PORT/events?...`, sending the token as
    /// `Authorization: Bearer <token>`.
    pub fn connect(url: &str, token: Option<&str>) -> Result<EventClient, ClientError> {
        use tungstenite::client::IntoClientRequest;
        let bad_url = |reason: String| ClientError::Url {
            url: url.to_owned(),
            reason,
        };
        let mut req = url
            .into_client_request()
            .map_err(|e| bad_url(e.to_string()))?;
        if let Some(t) = token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| bad_url("the token is not a valid header value".into()))?;
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        let tls = match req.uri().scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad_url("expected ws:// or wss://".into())),
        };
        let host = req
            .uri()
            .host()
            .ok_or_else(|| bad_url("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = req.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
        let connect_err = |reason: String| ClientError::Connect {
            url: url.to_owned(),
            reason,
        };
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| connect_err(e.to_string()))?
            .collect();
        let mut last = String::from("no address");
        let mut tcp = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let tcp = tcp.ok_or_else(|| connect_err(last))?;
        tcp.set_nodelay(true)
            .and_then(|()| tcp.set_read_timeout(Some(CONNECT_TIMEOUT)))
            .and_then(|()| tcp.set_write_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| connect_err(e.to_string()))?;
        let connector = if tls {
            tungstenite::Connector::Rustls(crate::adapter::binance::ws::tls_config())
        } else {
            tungstenite::Connector::Plain
        };
        match tungstenite::client_tls_with_config(req, tcp, None, Some(connector)) {
            Ok((ws, _)) => Ok(EventClient { ws, closed: None }),
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(ClientError::Rejected {
                    status: resp.status().as_u16(),
                    body,
                })
            }
            Err(HandshakeError::Failure(e)) => Err(connect_err(e.to_string())),
            Err(HandshakeError::Interrupted(_)) => {
                Err(connect_err("timed out during the upgrade".into()))
            }
        }
    }

    fn tcp(&self) -> Option<&TcpStream> {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => Some(s),
            MaybeTlsStream::Rustls(s) => Some(s.get_ref()),
            _ => None,
        }
    }

    /// Waits up to `timeout` for the next text frame: an event's JSON, or a notice such as
    /// `{"notice":"missed","count":N}` (see [`missed_notice`]). Answers pings while it
    /// waits, so call it regularly: a consumer that stops reading is eventually closed.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<String, ClientError> {
        if let Some(e) = &self.closed {
            return Err(e.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            if let Some(tcp) = self.tcp() {
                let _ = tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            }
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(t.as_str().to_owned()),
                Ok(Message::Close(frame)) => {
                    let e = match frame {
                        Some(f) => ClientError::Closed {
                            code: f.code.into(),
                            reason: f.reason.as_str().to_owned(),
                        },
                        None => ClientError::Closed {
                            code: 1005,
                            reason: String::new(),
                        },
                    };
                    // Sends our half of the close handshake.
                    let _ = self.ws.flush();
                    self.closed = Some(e.clone());
                    return Err(e);
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return Err(ClientError::Timeout),
                Err(e) => {
                    let e = match e {
                        tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed
                        | tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        ) => ClientError::Closed {
                            code: 1006,
                            reason: "closed without a close frame".into(),
                        },
                        other => ClientError::Io(other.to_string()),
                    };
                    self.closed = Some(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// Closes the connection politely (close frame, then a short wait for the server's).
    pub fn close(mut self) {
        self.close_now(Duration::from_millis(500));
    }

    fn close_now(&mut self, wait: Duration) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(ClientError::Closed {
            code: 1000,
            reason: "closed by the client".into(),
        });
        if self.ws.close(None).is_err() {
            return;
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(tcp) = self.tcp() {
                let _ = tcp.set_read_timeout(Some(Duration::from_millis(50)));
            }
            match self.ws.read() {
                Ok(_) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => break,
            }
        }
    }
}

impl Drop for EventClient {
    fn drop(&mut self) {
        self.close_now(Duration::ZERO);
        let _ = self.ws.flush();
    }
}

/// The `count` of a `{"notice":"missed","count":N}` frame; `None` for anything else.
pub fn missed_notice(text: &str) -> Option<u64> {
    text.strip_prefix("{\"notice\":\"missed\",\"count\":")?
        .strip_suffix('}')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<EventQuery, (Rejection, String)> {
        parse_query(Some(q), 1024, BackpressurePolicy::DropOldest)
    }

    #[test]
    fn no_query_means_everything_with_the_defaults() {
        let q = parse_query(None, 1024, BackpressurePolicy::DropOldest).unwrap();
        assert_eq!(q.filter, SubscriptionFilter::all());
        assert_eq!(
            (q.capacity, q.policy),
            (1024, BackpressurePolicy::DropOldest)
        );
        assert_eq!(parse("").unwrap(), q);
    }

    #[test]
    fn query_cases() {
        /// (query, types, instruments, capacity, policy)
        type Case = (
            &'static str,
            &'static [EventType],
            &'static [&'static str],
            usize,
            BackpressurePolicy,
        );
        let ok: &[Case] = &[
            (
                "type=TRADE",
                &[EventType::Trade],
                &[],
                1024,
                BackpressurePolicy::DropOldest,
            ),
            (
                "type=TRADE,ORDERBOOK.DELTA",
                &[EventType::Trade, EventType::OrderbookDelta],
                &[],
                1024,
                BackpressurePolicy::DropOldest,
            ),
            (
                "type=trade%2Corderbook.delta&type=TRADE",
                &[EventType::Trade, EventType::OrderbookDelta],
                &[],
                1024,
                BackpressurePolicy::DropOldest,
            ),
            (
                "instrument=BTC-USDT,eth-usdt",
                &[],
                &["BTC-USDT", "ETH-USDT"],
                1024,
                BackpressurePolicy::DropOldest,
            ),
            (
                "policy=conflate",
                &[],
                &[],
                1024,
                BackpressurePolicy::Conflate,
            ),
            (
                "policy=disconnect&capacity=16",
                &[],
                &[],
                16,
                BackpressurePolicy::Disconnect,
            ),
            (
                "policy=drop_newest&capacity=65536",
                &[],
                &[],
                65_536,
                BackpressurePolicy::DropNewest,
            ),
            (
                "type=TICKER,&",
                &[EventType::Ticker],
                &[],
                1024,
                BackpressurePolicy::DropOldest,
            ),
        ];
        for (q, types, instruments, capacity, policy) in ok {
            let got = parse(q).unwrap_or_else(|e| panic!("{q}: {e:?}"));
            assert_eq!(got.filter.types, types.to_vec(), "{q}");
            assert_eq!(got.filter.instruments, instruments.to_vec(), "{q}");
            assert_eq!((got.capacity, got.policy), (*capacity, *policy), "{q}");
        }
        let refused: &[(&str, Rejection, &str)] = &[
            ("type=FOO", Rejection::UnknownType, "unknown FOO"),
            ("type=TRADE,FOO,BAR", Rejection::UnknownType, "FOO, BAR"),
            ("type=", Rejection::BadRequest, "empty"),
            ("policy=block", Rejection::BadRequest, "stall"),
            ("policy=fast", Rejection::BadRequest, "expected drop_oldest"),
            (
                "policy=conflate&policy=conflate",
                Rejection::BadRequest,
                "twice",
            ),
            ("capacity=0", Rejection::BadRequest, "1 to 65536"),
            ("capacity=65537", Rejection::BadRequest, "1 to 65536"),
            ("capacity=-1", Rejection::BadRequest, "1 to 65536"),
            ("capacity=ten", Rejection::BadRequest, "1 to 65536"),
            ("instrument=BTCUSDT", Rejection::BadRequest, "BASE-QUOTE"),
            (
                "instrument=BTC-US%20DT",
                Rejection::BadRequest,
                "BASE-QUOTE",
            ),
            ("types=TRADE", Rejection::BadRequest, "unknown parameter"),
            ("token=secret", Rejection::BadRequest, "Authorization"),
            ("type=%ZZ", Rejection::BadRequest, "percent"),
            ("type=%E2%82", Rejection::BadRequest, "percent"),
            ("type=%4", Rejection::BadRequest, "percent"),
            // A malformed parameter wins over an unknown type, and both are reported.
            ("type=FOO&capacity=0", Rejection::BadRequest, "unknown FOO"),
        ];
        for (q, reason, needle) in refused {
            let (got, msg) = parse(q).expect_err(q);
            assert_eq!(got, *reason, "{q}: {msg}");
            assert!(msg.contains(needle), "{q}: {msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn long_input_is_clipped_in_messages() {
        let long = "X".repeat(10_000);
        let (_, msg) = parse(&format!("type={long}")).unwrap_err();
        assert!(msg.len() < 400, "{}", msg.len());
    }

    #[test]
    fn error_bodies_are_json() {
        let body = error_body("quote \" and \\ and \n");
        let v: Vec<u8> = body.into_bytes();
        assert!(v.starts_with(b"{\"error\":\"quote \\\" and \\\\ and \\n\"}"));
    }

    #[test]
    fn close_reasons_fit_in_a_frame() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let r = close_reason(&long);
        assert!(r.len() <= 123 && long.starts_with(r));
    }

    #[test]
    fn missed_notices_are_recognised() {
        assert_eq!(
            missed_notice("{\"notice\":\"missed\",\"count\":42}"),
            Some(42)
        );
        assert_eq!(missed_notice("{\"type\":\"TRADE\"}"), None);
        assert_eq!(missed_notice("{\"notice\":\"missed\",\"count\":x}"), None);
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        assert!(crate::bus::constant_time_eq(b"abc", b"abc"));
        assert!(!crate::bus::constant_time_eq(b"abc", b"abd"));
        assert!(!crate::bus::constant_time_eq(b"abc", b"abcd"));
    }
}
