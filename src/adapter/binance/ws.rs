//! One WebSocket connection to Binance's combined-stream endpoint, on its own thread
//! (`meltica-ws-N`): subscribe with ids and wait for confirmation, stay under the client
//! message limit, answer pings, watch for silence, and reconnect with backoff and jitter,
//! resubscribing everything it carried.

use std::collections::{BTreeSet, HashMap};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, WebSocket};

use super::parse::{Frame, ParseError, parse_frame};
use crate::adapter::{AdapterStats, Ingress, LocalStats, RawInstance, SharedRegistry};
use crate::clock;
use crate::config::BinanceConfig;

/// How long a read waits before the loop looks at commands and timers.
const POLL: Duration = Duration::from_millis(5);
/// Streams per SUBSCRIBE message.
const TOPICS_PER_MESSAGE: usize = 200;

/// The outcome of a subscription request, once the exchange answered.
pub type NativeAck = Result<(), String>;

/// Requests to a connection thread.
#[derive(Debug)]
pub enum WsCommand {
    Subscribe(Vec<String>, Option<Sender<NativeAck>>),
    Unsubscribe(Vec<String>, Option<Sender<NativeAck>>),
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    Stopped,
    Lost(String),
}

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

pub(crate) struct WsConnection {
    pub id: usize,
    pub cfg: BinanceConfig,
    pub registry: SharedRegistry,
    pub out: Sender<Ingress>,
    pub commands: Receiver<WsCommand>,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<AdapterStats>,
    pub tls: Arc<rustls::ClientConfig>,
    pub desired: BTreeSet<String>,
    pub tracing: crate::telemetry::pipeline::Tracing,
    pub recorder: Option<crate::adapter::record::Recorder>,
}

impl WsConnection {
    pub fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut sessions: u64 = 0;
        let mut waiters: Vec<Waiter> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            // Offline, the exchange holds nothing: unsubscribes are effective at once.
            if self.drain_commands(&mut waiters).is_err() {
                break;
            }
            settle(
                &mut waiters,
                &self.desired,
                &BTreeSet::new(),
                &HashMap::new(),
            );
            match self.connect() {
                Ok(ws) => {
                    if attempt > 0 {
                        crate::info!(
                            "connection {} re-established; resubscribing {} streams",
                            self.id,
                            self.desired.len()
                        );
                    }
                    attempt = 0;
                    sessions += 1;
                    if sessions > 1 && !self.reset_books() {
                        break;
                    }
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let end = self.session(ws, &mut waiters);
                    self.stats.connections.fetch_sub(1, Ordering::Relaxed);
                    match end {
                        SessionEnd::Stopped => break,
                        SessionEnd::Lost(why) => crate::warn!("connection {} lost: {why}", self.id),
                    }
                }
                Err(e) => crate::warn!("connection {} to {} failed: {e}", self.id, self.cfg.ws_url),
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            let delay = backoff(&self.cfg, attempt);
            attempt = attempt.saturating_add(1);
            crate::info!("connection {} reconnecting in {delay:?}", self.id);
            let until = Instant::now() + delay;
            while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
            }
        }
        for w in waiters {
            let _ = w.ack.send(Err("engine stopped".into()));
        }
    }

    /// Takes queued commands into the desired set. `Err` when the adapter is gone.
    fn drain_commands(&mut self, waiters: &mut Vec<Waiter>) -> Result<(), ()> {
        loop {
            match self.commands.try_recv() {
                Ok(WsCommand::Subscribe(topics, ack)) => {
                    self.desired.extend(topics.iter().cloned());
                    if let Some(ack) = ack {
                        waiters.push(Waiter { topics, ack });
                    }
                }
                Ok(WsCommand::Unsubscribe(topics, ack)) => {
                    for t in &topics {
                        self.desired.remove(t);
                    }
                    if let Some(ack) = ack {
                        waiters.push(Waiter { topics, ack });
                    }
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(()),
            }
        }
    }

    /// Tells downstream that every book fed by this connection missed diffs.
    /// Returns false when downstream is gone.
    fn reset_books(&self) -> bool {
        for t in &self.desired {
            let Some((prefix, rest)) = t.split_once('@') else {
                continue;
            };
            if !rest.starts_with("depth") {
                continue;
            }
            if let Some(i) = self.registry.load().by_stream_prefix(prefix) {
                let raw = RawInstance {
                    instrument: i.clone(),
                    ingress_ns: clock::mono_ns(),
                    body: crate::adapter::RawBody::StreamReset,
                    trace: None,
                };
                if self.out.send(Ingress::Raw(raw)).is_err() {
                    return false;
                }
            }
        }
        true
    }

    fn connect(&self) -> Result<Ws, String> {
        let request = self
            .cfg
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("bad URL: {e}"))?;
        let host = request.uri().host().ok_or("URL has no host")?.to_owned();
        let tls = request.uri().scheme_str() == Some("wss");
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(if tls { 443 } else { 80 });
        let addrs = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let mut last = String::from("no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.cfg.handshake_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let stream = stream.ok_or_else(|| format!("cannot connect to {host}:{port}: {last}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(self.cfg.handshake_timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.cfg.handshake_timeout)))
            .map_err(|e| e.to_string())?;
        let connector = if tls {
            Connector::Rustls(self.tls.clone())
        } else {
            Connector::Plain
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let (ws, _resp) =
            tungstenite::client_tls_with_config(request, stream, Some(config), Some(connector))
                .map_err(|e| format!("handshake failed: {e}"))?;
        tcp(&ws)
            .set_read_timeout(Some(POLL))
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }

    fn session(&mut self, mut ws: Ws, waiters: &mut Vec<Waiter>) -> SessionEnd {
        let mut started = Instant::now();
        let mut handover_due = false;
        let mut next_id: u64 = 1;
        // What the exchange has confirmed, and what it will have once in-flight requests
        // are answered. Each send carries the whole difference to `desired`, so a burst of
        // commands (even ones that cancel out) costs few client messages.
        let mut confirmed: BTreeSet<String> = BTreeSet::new();
        let mut at_exchange: BTreeSet<String> = BTreeSet::new();
        let mut inflight: HashMap<u64, Inflight> = HashMap::new();
        let min_gap = self.min_gap();
        let mut registry = self.registry.load_full();
        let mut rng = fastrand::Rng::new();
        let mut last_sent: Option<Instant> = None;
        let mut last_data = Instant::now();
        let mut last_market = Instant::now();
        let mut local = LocalStats::default();
        let mut batch = 0u32;
        loop {
            let mut idle = false;
            match ws.read() {
                Ok(Message::Text(text)) => {
                    last_data = Instant::now();
                    last_market = last_data;
                    match self.decode(text.as_str(), &mut registry, &mut local, &mut rng) {
                        Decoded::Instance(raw) => {
                            if self.out.send(Ingress::Raw(raw)).is_err() {
                                local.flush(&self.stats);
                                return SessionEnd::Stopped;
                            }
                        }
                        Decoded::Response(r) => {
                            if let Some(inf) = inflight.remove(&r.id) {
                                match r.error {
                                    None => {
                                        for t in inf.topics {
                                            if inf.subscribe {
                                                confirmed.insert(t);
                                            } else {
                                                confirmed.remove(&t);
                                            }
                                        }
                                    }
                                    Some(e) => {
                                        crate::warn!(
                                            "connection {}: request {} refused: {e}",
                                            self.id,
                                            r.id
                                        );
                                        // Give up the change: the exchange keeps what it had.
                                        for t in &inf.topics {
                                            if confirmed.contains(t) {
                                                self.desired.insert(t.clone());
                                                at_exchange.insert(t.clone());
                                            } else {
                                                self.desired.remove(t);
                                                at_exchange.remove(t);
                                            }
                                        }
                                        waiters.retain(|w| {
                                            let hit =
                                                w.topics.iter().any(|t| inf.topics.contains(t));
                                            if hit {
                                                let _ = w.ack.send(Err(e.clone()));
                                            }
                                            !hit
                                        });
                                    }
                                }
                                settle(waiters, &self.desired, &confirmed, &inflight);
                            }
                        }
                        Decoded::Shutdown => {
                            crate::info!(
                                "connection {}: the server announced a shutdown; handing over",
                                self.id
                            );
                            handover_due = true;
                        }
                        Decoded::Skipped => {}
                    }
                }
                Ok(Message::Binary(_)) => {
                    last_data = Instant::now();
                    local.frames += 1;
                    local.malformed += 1;
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    last_data = Instant::now();
                }
                Ok(Message::Close(frame)) => {
                    local.flush(&self.stats);
                    let why = frame.map_or("close frame".to_string(), |f| {
                        format!("closed by server: {} {}", f.code, f.reason)
                    });
                    let _ = ws.flush();
                    return SessionEnd::Lost(why);
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    idle = true;
                }
                Err(e) => {
                    local.flush(&self.stats);
                    return SessionEnd::Lost(e.to_string());
                }
            }
            batch += 1;
            if !idle && batch < 256 {
                continue;
            }
            batch = 0;
            local.flush(&self.stats);
            if self.stop.load(Ordering::Relaxed) || self.drain_commands(waiters).is_err() {
                let _ = ws.close(None);
                let _ = ws.flush();
                return SessionEnd::Stopped;
            }
            settle(waiters, &self.desired, &confirmed, &inflight);
            if last_sent.is_none_or(|t| t.elapsed() >= min_gap) {
                let add: Vec<String> = self
                    .desired
                    .difference(&at_exchange)
                    .take(TOPICS_PER_MESSAGE)
                    .cloned()
                    .collect();
                let (subscribe, topics) = if add.is_empty() {
                    let gone: Vec<String> = at_exchange
                        .difference(&self.desired)
                        .take(TOPICS_PER_MESSAGE)
                        .cloned()
                        .collect();
                    (false, gone)
                } else {
                    (true, add)
                };
                if !topics.is_empty() {
                    let method = if subscribe {
                        "SUBSCRIBE"
                    } else {
                        "UNSUBSCRIBE"
                    };
                    if let Err(e) = ws.send(Message::text(request(method, &topics, next_id))) {
                        return SessionEnd::Lost(format!("send failed: {e}"));
                    }
                    for t in &topics {
                        if subscribe {
                            at_exchange.insert(t.clone());
                        } else {
                            at_exchange.remove(t);
                        }
                    }
                    inflight.insert(next_id, Inflight { subscribe, topics });
                    next_id += 1;
                    last_sent = Some(Instant::now());
                }
            }
            // Push out queued pongs.
            if let Err(e) = ws.flush()
                && !is_would_block(&e)
            {
                return SessionEnd::Lost(format!("flush failed: {e}"));
            }
            if last_data.elapsed() > self.cfg.no_data_timeout {
                return SessionEnd::Lost(format!("no data for {:?}", self.cfg.no_data_timeout));
            }
            if !confirmed.is_empty() && last_market.elapsed() > self.cfg.stream_timeout {
                let _ = ws.close(None);
                let _ = ws.flush();
                return SessionEnd::Lost(format!(
                    "no market data for {:?} though the connection is alive",
                    self.cfg.stream_timeout
                ));
            }
            if started.elapsed() > self.cfg.max_connection_age && !handover_due {
                crate::info!(
                    "connection {}: {:?} old; handing over before the 24 h cut",
                    self.id,
                    self.cfg.max_connection_age
                );
                handover_due = true;
            }
            if handover_due {
                handover_due = false;
                // The new connection carries what the old one has or will have.
                let topics = at_exchange.clone();
                local.flush(&self.stats);
                match self.handover(&mut ws, &topics, &mut registry, &mut rng) {
                    Ok(Handover::Done(new)) => {
                        ws = *new;
                        started = Instant::now();
                        last_data = Instant::now();
                        last_market = last_data;
                        last_sent = Some(Instant::now());
                        next_id = HANDOVER_IDS_END;
                        confirmed = topics.clone();
                        at_exchange = topics;
                        inflight.clear();
                        settle(waiters, &self.desired, &confirmed, &inflight);
                    }
                    Ok(Handover::Stopped) => return SessionEnd::Stopped,
                    Err(e) => {
                        // Stay on the old connection; if it is cut, the reconnect path
                        // resyncs its books.
                        crate::warn!("connection {}: hand-over failed: {e}", self.id);
                        started = Instant::now();
                    }
                }
            }
        }
    }

    /// The least time between two client messages: one message of Binance's per-second
    /// budget is left for pongs, which it counts too.
    fn min_gap(&self) -> Duration {
        Duration::from_secs(1) / self.cfg.messages_per_second.saturating_sub(1).max(1)
    }

    /// Decodes one text frame, counting it, and starts its trace when sampled.
    fn decode(
        &self,
        text: &str,
        registry: &mut Arc<crate::adapter::InstrumentRegistry>,
        local: &mut LocalStats,
        rng: &mut fastrand::Rng,
    ) -> Decoded {
        local.frames += 1;
        if let Some(r) = &self.recorder {
            r.ws(self.id, text);
        }
        let ingress = clock::mono_ns();
        let sampled_at = self.tracing.sample(rng).then(std::time::SystemTime::now);
        let mut parsed = parse_frame(text, registry, ingress);
        if parsed == Err(ParseError::UnknownSymbol) {
            // Instruments are added at runtime; look again in the newest registry.
            *registry = self.registry.load_full();
            parsed = parse_frame(text, registry, ingress);
        }
        match parsed {
            Ok(Frame::Instance(mut raw)) => {
                local.instances += 1;
                raw.stamp_received(clock::wall_ms);
                if let Some(start) = sampled_at {
                    let trace = self.tracing.new_trace(rng);
                    let span = self.tracing.span(
                        rng,
                        "adapter.receive",
                        trace,
                        0,
                        start,
                        std::time::SystemTime::now(),
                        &[
                            opentelemetry::KeyValue::new(
                                "instrument",
                                raw.instrument.name().to_owned(),
                            ),
                            opentelemetry::KeyValue::new("connection", self.id as i64),
                        ],
                    );
                    raw.trace = Some(crate::adapter::SpanCtx {
                        trace_id: trace,
                        span_id: span,
                    });
                }
                Decoded::Instance(raw)
            }
            Ok(Frame::Response(r)) => Decoded::Response(r),
            Ok(Frame::ServerShutdown) => Decoded::Shutdown,
            Err(e) => {
                match e {
                    ParseError::Malformed => local.malformed += 1,
                    ParseError::UnknownType => local.unknown_type += 1,
                    ParseError::UnknownSymbol => local.unknown_symbol += 1,
                }
                crate::debug!("connection {}: {e}: {:.200}", self.id, text);
                Decoded::Skipped
            }
        }
    }

    /// Moves `topics` from `old` to a new connection without losing or repeating a message:
    ///
    /// 1. open the new connection and subscribe everything there, while the old one keeps
    ///    delivering (the new one's messages are held back);
    /// 2. once the new one confirmed, unsubscribe on the old one: its answer is a fence,
    ///    since nothing for those streams follows it on that connection;
    /// 3. read the old one up to the fence, then release what the new one held back,
    ///    dropping each message the old one already delivered (by update id, trade id or
    ///    event time, per stream), and close the old connection.
    ///
    /// On failure the old connection is left as it was.
    fn handover(
        &mut self,
        old: &mut Ws,
        topics: &BTreeSet<String>,
        registry: &mut Arc<crate::adapter::InstrumentRegistry>,
        rng: &mut fastrand::Rng,
    ) -> Result<Handover, String> {
        let deadline = Instant::now() + HANDOVER_TIMEOUT;
        let mut new = self.connect()?;
        let min_gap = self.min_gap();
        let topics: Vec<String> = topics.iter().cloned().collect();
        let chunks: Vec<&[String]> = topics.chunks(TOPICS_PER_MESSAGE).collect();
        let mut local = LocalStats::default();
        let mut tracks: HashMap<u64, u64> = HashMap::new();
        let mut held: Vec<RawInstance> = Vec::new();
        let mut subscribed = 0usize; // chunks sent on the new connection
        let mut confirmed_new = 0usize;
        let mut unsubscribed = 0usize; // chunks sent on the old connection
        let mut fenced = 0usize;
        let mut old_open = true;
        let (mut new_sent, mut old_sent): (Option<Instant>, Option<Instant>) = (None, None);
        let mut duplicates = 0u64;
        while old_open && fenced < chunks.len().max(1) {
            if Instant::now() > deadline {
                if confirmed_new < chunks.len() {
                    let _ = new.close(None);
                    let _ = new.flush();
                    return Err(format!(
                        "the new connection confirmed {confirmed_new} of {} requests in time",
                        chunks.len()
                    ));
                }
                crate::warn!(
                    "connection {}: the old connection was not drained in time",
                    self.id
                );
                break;
            }
            if self.stop.load(Ordering::Relaxed) {
                let _ = new.close(None);
                return Ok(Handover::Stopped);
            }
            // Requests, paced per connection.
            if subscribed < chunks.len() && new_sent.is_none_or(|t| t.elapsed() >= min_gap) {
                let id = HANDOVER_IDS + subscribed as u64;
                new.send(Message::text(request("SUBSCRIBE", chunks[subscribed], id)))
                    .map_err(|e| format!("subscribe on the new connection: {e}"))?;
                subscribed += 1;
                new_sent = Some(Instant::now());
            }
            if confirmed_new == chunks.len()
                && unsubscribed < chunks.len()
                && old_sent.is_none_or(|t| t.elapsed() >= min_gap)
            {
                let id = HANDOVER_IDS + unsubscribed as u64;
                if old
                    .send(Message::text(request(
                        "UNSUBSCRIBE",
                        chunks[unsubscribed],
                        id,
                    )))
                    .is_err()
                {
                    old_open = false;
                }
                unsubscribed += 1;
                old_sent = Some(Instant::now());
            }
            if chunks.is_empty() && confirmed_new == 0 {
                break;
            }
            // The old connection: delivered as usual, remembering each stream's position.
            match old.read() {
                Ok(Message::Text(text)) => {
                    match self.decode(text.as_str(), registry, &mut local, rng) {
                        Decoded::Instance(raw) => {
                            if let Some((key, _, last, _)) = position(&raw) {
                                let t = tracks.entry(key).or_insert(0);
                                *t = (*t).max(last);
                            }
                            if self.out.send(Ingress::Raw(raw)).is_err() {
                                return Ok(Handover::Stopped);
                            }
                        }
                        Decoded::Response(r) if r.id >= HANDOVER_IDS && r.id < HANDOVER_IDS_END => {
                            fenced += 1;
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(_)) => old_open = false,
                Ok(_) => {}
                Err(e) if is_would_block(&e) => {}
                Err(_) => old_open = false,
            }
            // The new connection: held back until the old one is drained.
            match new.read() {
                Ok(Message::Text(text)) => {
                    match self.decode(text.as_str(), registry, &mut local, rng) {
                        Decoded::Instance(raw) => held.push(raw),
                        Decoded::Response(r) if r.id >= HANDOVER_IDS && r.id < HANDOVER_IDS_END => {
                            if let Some(e) = r.error {
                                let _ = new.close(None);
                                return Err(format!("the new connection refused: {e}"));
                            }
                            confirmed_new += 1;
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(_)) => return Err("the new connection closed".into()),
                Ok(_) => {}
                Err(e) if is_would_block(&e) => {}
                Err(e) => return Err(format!("the new connection failed: {e}")),
            }
            let _ = old.flush();
            let _ = new.flush();
        }
        let _ = old.close(None);
        let _ = old.flush();
        for raw in held {
            if let Some((key, _, last, _)) = position(&raw) {
                let t = tracks.entry(key).or_insert(0);
                if last <= *t {
                    duplicates += 1;
                    local.instances -= 1;
                    continue;
                }
                *t = last;
            }
            if self.out.send(Ingress::Raw(raw)).is_err() {
                return Ok(Handover::Stopped);
            }
        }
        local.flush(&self.stats);
        self.stats.handovers.fetch_add(1, Ordering::Relaxed);
        self.stats
            .overlap_duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        crate::info!(
            "connection {}: handed over {} streams ({duplicates} overlapping messages dropped)",
            self.id,
            topics.len()
        );
        Ok(Handover::Done(Box::new(new)))
    }
}

/// What a text frame turned into.
enum Decoded {
    Instance(RawInstance),
    Response(super::parse::Response),
    Shutdown,
    Skipped,
}

/// How a hand-over ended.
enum Handover {
    Done(Box<Ws>),
    Stopped,
}

/// Request ids used by hand-overs; ordinary requests on the new connection start above.
const HANDOVER_IDS: u64 = 1 << 40;
const HANDOVER_IDS_END: u64 = HANDOVER_IDS + (1 << 20);
/// A hand-over that has not finished by then is abandoned (or, once the new connection is
/// ready, completed without waiting any longer for the old one).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a message sits in its stream: (stream key, first and last position, whether
/// positions are consecutive). Diffs by update id, trades by trade id, aggregate trades by
/// aggregate id, book tickers by update id, tickers by event time.
fn position(raw: &RawInstance) -> Option<(u64, u64, u64, bool)> {
    use crate::adapter::RawBody;
    let id = u64::from(raw.instrument.id()) << 3;
    Some(match &raw.body {
        RawBody::DepthUpdate(d) => (id, d.first_update_id, d.final_update_id, true),
        RawBody::Trade(t) => (id | 1, t.trade_id, t.trade_id, true),
        RawBody::AggTrade(t) => (id | 2, t.agg_id, t.agg_id, true),
        RawBody::BookTicker(t) => (id | 3, t.update_id, t.update_id, false),
        RawBody::Ticker(t) => (id | 4, t.event_time as u64, t.event_time as u64, false),
        _ => return None,
    })
}

/// A command waiting for the exchange.
struct Waiter {
    topics: Vec<String>,
    ack: Sender<NativeAck>,
}

/// A request sent and not yet answered.
struct Inflight {
    subscribe: bool,
    topics: Vec<String>,
}

/// Answers every waiter whose topics are, at the exchange, what is desired.
fn settle(
    waiters: &mut Vec<Waiter>,
    desired: &BTreeSet<String>,
    confirmed: &BTreeSet<String>,
    inflight: &HashMap<u64, Inflight>,
) {
    waiters.retain(|w| {
        let done = w.topics.iter().all(|t| {
            desired.contains(t) == confirmed.contains(t)
                && !inflight.values().any(|i| i.topics.contains(t))
        });
        if done {
            let _ = w.ack.send(Ok(()));
        }
        !done
    });
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

fn tcp(ws: &Ws) -> &TcpStream {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => s.get_ref(),
        _ => unreachable!("only plain and rustls streams are built"),
    }
}

/// `{"method":"SUBSCRIBE","params":[…],"id":N}`.
pub fn request(method: &str, topics: &[String], id: u64) -> String {
    serde_json::json!({"method": method, "params": topics, "id": id}).to_string()
}

/// Exponential backoff with jitter: a delay in [cap/2, cap], cap = min(max, initial·2^attempt).
pub fn backoff(cfg: &BinanceConfig, attempt: u32) -> Duration {
    let initial = cfg.reconnect.initial.as_millis() as u64;
    let cap = initial
        .saturating_mul(1u64 << attempt.min(20))
        .min(cfg.reconnect.max.as_millis() as u64)
        .max(1);
    Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2))
}

/// The TLS client configuration for wss:// (ring provider, webpki roots).
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn backoff_grows_and_caps() {
        let cfg = Config::default().adapter.binance;
        for attempt in 0..30 {
            let d = backoff(&cfg, attempt);
            let cap = (250u64 << attempt.min(20)).min(30_000);
            assert!(
                d.as_millis() as u64 >= cap / 2 && d.as_millis() as u64 <= cap,
                "{attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn subscribe_request_shape() {
        let r = request("SUBSCRIBE", &["btcusdt@trade".into()], 7);
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":7})
        );
    }
}
