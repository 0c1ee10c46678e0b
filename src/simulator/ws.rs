//! WebSocket side: handshake, the per-connection event loop and the JSON control protocol
//! (`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`).

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, WebSocket};

use super::Shared;
use super::faults::{FrameRates, bump, roll};
use super::hub::ConnCtl;
use super::server::{Request, write_response};

/// Binance's cap on streams per connection.
const MAX_STREAMS: usize = 1024;
/// Longest wait for queued frames before polling the socket again.
const IDLE_POLL: Duration = Duration::from_millis(2);
/// Under load, the socket is still polled at least this often.
const BUSY_POLL: Duration = Duration::from_millis(1);
/// Frames written per batch before the socket is flushed.
const BATCH: u64 = 4096;
/// Bytes buffered for a peer that does not read before it counts as too slow.
const MAX_WRITE_BUFFER: usize = 32 << 20;
/// How often connection faults (disconnects, stalls, shutdowns, age) are considered.
const FAULT_TICK: Duration = Duration::from_millis(10);
/// A frame held back for reordering goes out alone if no other frame follows this soon.
const MAX_HOLD: Duration = Duration::from_millis(50);
/// Longest wait for the close frame of a planned disconnect to leave.
const CLOSE_FLUSH: Duration = Duration::from_millis(200);

/// Completes the upgrade and runs the connection until it ends.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    ctl: &Arc<ConnCtl>,
    req: &Request,
    leftover: Vec<u8>,
) {
    let split = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
    let (combined, names) = if req.path == "/stream" {
        (true, req.param("streams").map_or(Vec::new(), |s| split(&s)))
    } else if req.path == "/ws" {
        (false, Vec::new())
    } else if let Some(rest) = req.path.strip_prefix("/ws/") {
        (false, split(&super::server::percent_decode(rest)))
    } else {
        let body = r#"{"code":-1,"msg":"Not found."}"#;
        let _ = write_response(&mut stream, 404, &[], body, false);
        return;
    };
    let mut slots = Vec::new();
    for n in names.iter().filter(|n| !n.is_empty()) {
        match shared.hub.resolve(n) {
            Some(s) if !slots.contains(&s) => slots.push(s),
            Some(_) => {}
            None => {
                let body = format!(
                    "{{\"code\":-1121,\"msg\":{}}}",
                    serde_json::to_string(&format!("Invalid stream name {n}.")).unwrap_or_default()
                );
                let _ = write_response(&mut stream, 400, &[], &body, false);
                return;
            }
        }
    }
    if slots.len() > MAX_STREAMS {
        let body = r#"{"code":-1,"msg":"Too many streams."}"#;
        let _ = write_response(&mut stream, 400, &[], body, false);
        return;
    }
    let key = req.header("sec-websocket-key").unwrap_or("");
    if req.method != "GET" || key.is_empty() || req.header("sec-websocket-version") != Some("13") {
        let body = r#"{"code":-1,"msg":"Bad WebSocket handshake."}"#;
        let _ = write_response(
            &mut stream,
            400,
            &[("Sec-WebSocket-Version", "13".into())],
            body,
            false,
        );
        return;
    }
    // Registered before the 101 goes out, so a client that sees the upgrade also sees
    // the connection and its URL streams counted.
    shared.hub.mark_ws(ctl);
    ctl.combined.store(combined, Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::bounded(shared.cfg.send_queue.max(1));
    for &s in &slots {
        shared.hub.subscribe(ctl, &tx, s);
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if io::Write::write_all(&mut stream, head.as_bytes()).is_err()
        || stream.set_read_timeout(None).is_err()
        || stream.set_nonblocking(true).is_err()
    {
        return;
    }
    let config = WebSocketConfig::default().max_write_buffer_size(MAX_WRITE_BUFFER);
    let ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(config));
    let now = Instant::now();
    let seed = shared.cfg.seed ^ 0x7773 ^ ctl.id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut conn = Conn {
        shared,
        ctl,
        tx,
        rx,
        ws,
        subs: slots,
        rng: fastrand::Rng::with_seed(seed),
        opened: now,
        last_fault_check: now,
        held: None,
        stalled: false,
        stall_until: None,
        closing_at: None,
    };
    conn.run();
}

struct Conn<'a> {
    shared: &'a Arc<Shared>,
    ctl: &'a Arc<ConnCtl>,
    tx: Sender<Utf8Bytes>,
    rx: Receiver<Utf8Bytes>,
    ws: WebSocket<TcpStream>,
    /// Subscribed slots in subscription order.
    subs: Vec<usize>,
    rng: fastrand::Rng,
    opened: Instant,
    last_fault_check: Instant,
    /// A data frame held back to be sent after the next one (reorder fault).
    held: Option<(Utf8Bytes, Instant)>,
    /// Data frames are dropped (stall fault) ...
    stalled: bool,
    /// ... until then (`None` = for good).
    stall_until: Option<Instant>,
    /// `serverShutdown` was sent; the connection closes at this time.
    closing_at: Option<Instant>,
}

/// What the connection does after a fault check.
enum Next {
    Continue,
    End,
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

impl Conn<'_> {
    fn run(&mut self) {
        let ping_every = self.shared.cfg.ping_interval.max(Duration::from_millis(1));
        let pong_timeout = self.shared.cfg.pong_timeout;
        let mut next_ping = Instant::now() + ping_every;
        let mut unanswered_since: Option<Instant> = None;
        let mut last_poll = Instant::now();
        let mut pending = false;
        let mut recent: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
        loop {
            if self.ctl.killed() || self.shared.stopping() {
                return;
            }
            // Queued market frames: wait briefly, then drain a batch without sleeping. While
            // the socket is backed up, frames stay in the bounded channel, so a peer that does
            // not read overflows it and gets disconnected by the publisher.
            let mut sent = 0u64;
            let received = if pending {
                std::thread::sleep(BUSY_POLL);
                Err(RecvTimeoutError::Timeout)
            } else {
                self.rx.recv_timeout(IDLE_POLL)
            };
            match received {
                Ok(frame) => {
                    let rates = self.shared.faults.frame_rates();
                    if !self.send_data(frame, &rates) {
                        return;
                    }
                    sent += 1;
                    while sent < BATCH {
                        let Ok(frame) = self.rx.try_recv() else { break };
                        if !self.send_data(frame, &rates) {
                            return;
                        }
                        sent += 1;
                    }
                    self.shared.frames_sent.fetch_add(sent, Ordering::Relaxed);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }

            let now = Instant::now();
            if let Some((_, since)) = &self.held
                && now - *since >= MAX_HOLD
                && let Some((frame, _)) = self.held.take()
                && !self.write(Message::Text(frame))
            {
                return;
            }
            if now - self.last_fault_check >= FAULT_TICK
                && matches!(self.check_faults(now), Next::End)
            {
                return;
            }
            if sent == 0 || self.rx.is_empty() || now - last_poll >= BUSY_POLL {
                last_poll = now;
                loop {
                    let msg = self.ws.read();
                    if matches!(
                        msg,
                        Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))
                    ) && !self.count_client_message(&mut recent)
                    {
                        return;
                    }
                    match msg {
                        Ok(Message::Text(t)) => {
                            let reply = self.handle_request(t.as_str());
                            if !self.write(Message::text(reply)) {
                                return;
                            }
                        }
                        Ok(Message::Pong(_)) => unanswered_since = None,
                        Ok(Message::Close(_)) => {
                            // tungstenite queued the close reply.
                            let _ = self.ws.flush();
                            return;
                        }
                        // Pings are answered by tungstenite on the next flush.
                        Ok(_) => {}
                        Err(e) if would_block(&e) => break,
                        Err(_) => return,
                    }
                }
            }

            if now >= next_ping {
                next_ping = now + ping_every;
                unanswered_since.get_or_insert(now);
                if !self.write(Message::Ping(Default::default())) {
                    return;
                }
            }
            if unanswered_since.is_some_and(|t| now - t >= pong_timeout) {
                return;
            }
            match self.ws.flush() {
                Ok(()) => pending = false,
                Err(e) if would_block(&e) => pending = true,
                Err(_) => return,
            }
        }
    }

    /// Sends one market frame, applying the frame faults in effect; `false` when the
    /// connection is dead.
    fn send_data(&mut self, frame: Utf8Bytes, rates: &FrameRates) -> bool {
        if self.stalled {
            return true;
        }
        if let Some((held, _)) = self.held.take() {
            // The held frame goes out right after its successor.
            bump(&self.shared.faults.count.reorders);
            return self.write_data(frame, rates) && self.write_data(held, rates);
        }
        if !rates.any() {
            return self.write(Message::Text(frame));
        }
        if roll(&mut self.rng, rates.reorder) {
            self.held = Some((frame, Instant::now()));
            return true;
        }
        self.write_data(frame, rates)
    }

    /// Writes a market frame, maybe twice, followed by any injected junk frames.
    fn write_data(&mut self, frame: Utf8Bytes, rates: &FrameRates) -> bool {
        if !rates.any() {
            return self.write(Message::Text(frame));
        }
        let count = &self.shared.faults.count;
        let duplicate = roll(&mut self.rng, rates.duplicate);
        let malformed = roll(&mut self.rng, rates.malformed);
        let truncated = roll(&mut self.rng, rates.truncated);
        let unknown = roll(&mut self.rng, rates.unknown);
        let text = frame.as_str();
        let junk = [
            malformed.then(|| {
                bump(&count.malformed);
                malformed_copy(text)
            }),
            truncated.then(|| {
                bump(&count.truncated);
                truncated_copy(text)
            }),
            unknown.then(|| {
                bump(&count.unknown);
                unknown_event(text)
            }),
        ];
        if duplicate {
            bump(&count.duplicates);
            if !self.write(Message::Text(frame.clone())) {
                return false;
            }
        }
        if !self.write(Message::Text(frame)) {
            return false;
        }
        junk.into_iter()
            .flatten()
            .all(|j| self.write(Message::text(j)))
    }

    /// Ends a stall that ran its time, starts connection faults, and carries out planned
    /// disconnects.
    fn check_faults(&mut self, now: Instant) -> Next {
        let dt = (now - self.last_fault_check).as_secs_f64();
        self.last_fault_check = now;
        let faults = &self.shared.faults;
        if let Some(at) = self.closing_at {
            if now >= at {
                self.close_gracefully();
                return Next::End;
            }
            return Next::Continue;
        }
        if self.stall_until.is_some_and(|t| now >= t) {
            self.stalled = false;
            self.stall_until = None;
        }
        if faults
            .max_connection_age()
            .is_some_and(|age| now - self.opened >= age)
        {
            bump(&faults.count.aged);
            return self.begin_shutdown(now);
        }
        if self.stalled {
            return Next::Continue;
        }
        let r = faults.lifecycle_rates();
        let total = r.disconnect + r.half_open + r.stall + r.planned;
        if total <= 0.0 || !roll(&mut self.rng, 1.0 - (-total * dt).exp()) {
            return Next::Continue;
        }
        // One event happened; which kind, in proportion to the rates.
        let mut pick = self.rng.f64() * total;
        pick -= r.disconnect;
        if pick < 0.0 {
            bump(&faults.count.disconnects);
            self.ctl.kill();
            return Next::End;
        }
        pick -= r.half_open;
        if pick < 0.0 {
            bump(&faults.count.half_open);
            let until = faults.half_open_for().map(|d| now + d);
            self.half_open(until);
            return Next::End;
        }
        pick -= r.stall;
        if pick < 0.0 {
            bump(&faults.count.stalls);
            self.stalled = true;
            self.stall_until = faults.stall_for().map(|d| now + d);
            self.held = None;
            return Next::Continue;
        }
        bump(&faults.count.planned);
        self.begin_shutdown(now)
    }

    /// Sends Binance's `serverShutdown` notice; the connection keeps streaming for the
    /// grace period, then closes.
    fn begin_shutdown(&mut self, now: Instant) -> Next {
        let notice = format!("{{\"e\":\"serverShutdown\",\"E\":{}}}", super::now_ms());
        if !self.write(Message::text(notice)) {
            return Next::End;
        }
        self.closing_at = Some(now + self.shared.faults.shutdown_grace());
        Next::Continue
    }

    /// Sends a close frame (1001, going away) and gives it a moment to leave.
    fn close_gracefully(&mut self) {
        if let Some((frame, _)) = self.held.take() {
            let _ = self.write(Message::Text(frame));
        }
        let _ = self.ws.close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "server shutdown".into(),
        }));
        let deadline = Instant::now() + CLOSE_FLUSH;
        while Instant::now() < deadline {
            match self.ws.flush() {
                Err(e) if would_block(&e) => std::thread::sleep(BUSY_POLL),
                _ => return,
            }
        }
    }

    /// Plays dead: no frames, no pings, no pongs, nothing read, but the socket stays open
    /// until `until`, the client closes it, or the simulator stops.
    fn half_open(&mut self, until: Option<Instant>) {
        for &s in &self.subs {
            self.shared.hub.unsubscribe(self.ctl, s);
        }
        while self.rx.try_recv().is_ok() {}
        let mut sink = [0u8; 4096];
        loop {
            if self.ctl.killed()
                || self.shared.stopping()
                || until.is_some_and(|t| Instant::now() >= t)
            {
                return;
            }
            // Bytes are discarded unparsed, only to notice the client hanging up.
            match io::Read::read(self.ws.get_mut(), &mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    }

    /// Counts one client message in a sliding one-second window; `false` (disconnect, as
    /// Binance does) when the connection exceeded the limit.
    fn count_client_message(&self, recent: &mut std::collections::VecDeque<Instant>) -> bool {
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        recent.push_back(now);
        let n = recent.len();
        self.shared
            .client
            .max_per_second
            .fetch_max(n as u32, Ordering::Relaxed);
        if self
            .shared
            .cfg
            .client_message_limit
            .is_some_and(|limit| n > limit as usize)
        {
            self.shared
                .client
                .violations
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a message; `false` when the connection is dead or hopelessly behind.
    fn write(&mut self, msg: Message) -> bool {
        match self.ws.write(msg) {
            Ok(()) => true,
            // The frame stays buffered and goes out with a later flush.
            Err(e) if would_block(&e) => true,
            Err(_) => false,
        }
    }

    /// Answers one client JSON request.
    fn handle_request(&mut self, text: &str) -> String {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return error_reply(3, &format!("Invalid JSON: {e}"), &Value::Null),
        };
        let Some(obj) = v.as_object() else {
            return error_reply(2, "Invalid request: expected a JSON object", &Value::Null);
        };
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        if !(id.is_null() || id.is_u64() || id.is_string()) {
            return error_reply(
                2,
                "Invalid request: request ID must be an unsigned integer",
                &Value::Null,
            );
        }
        let Some(method) = obj.get("method").and_then(Value::as_str) else {
            return error_reply(2, "Invalid request: missing field `method`", &id);
        };
        let params = obj.get("params");
        match method {
            "SUBSCRIBE" | "UNSUBSCRIBE" => {
                let Some(list) = params.and_then(Value::as_array) else {
                    return error_reply(2, "Invalid request: missing field `params`", &id);
                };
                self.shared
                    .client
                    .requests
                    .lock()
                    .push(super::ClientRequest {
                        at: Instant::now(),
                        connection: self.ctl.id,
                        method: method.to_owned(),
                        params: list
                            .iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect(),
                    });
                let mut slots = Vec::with_capacity(list.len());
                for p in list {
                    let Some(name) = p.as_str() else {
                        return error_reply(1, "Invalid value type: expected String", &id);
                    };
                    match self.shared.hub.resolve(name) {
                        Some(s) => slots.push(s),
                        None => return error_reply(2, "Invalid request: unknown stream", &id),
                    }
                }
                if method == "SUBSCRIBE" {
                    let fresh = slots.iter().filter(|s| !self.subs.contains(s)).count();
                    if self.subs.len() + fresh > MAX_STREAMS {
                        return error_reply(2, "Invalid request: too many streams", &id);
                    }
                    for s in slots {
                        if !self.subs.contains(&s) {
                            self.shared.hub.subscribe(self.ctl, &self.tx, s);
                            self.subs.push(s);
                        }
                    }
                } else {
                    for s in slots {
                        if let Some(i) = self.subs.iter().position(|&x| x == s) {
                            self.shared.hub.unsubscribe(self.ctl, s);
                            self.subs.remove(i);
                        }
                    }
                }
                result_reply("null", &id)
            }
            "LIST_SUBSCRIPTIONS" => {
                let names: Vec<&str> = self.subs.iter().map(|&s| self.shared.hub.name(s)).collect();
                result_reply(&serde_json::to_string(&names).unwrap_or_default(), &id)
            }
            "SET_PROPERTY" => match params.and_then(Value::as_array).map(Vec::as_slice) {
                Some([Value::String(p), Value::Bool(on)]) if p == "combined" => {
                    self.ctl.combined.store(*on, Ordering::Relaxed);
                    result_reply("null", &id)
                }
                _ => error_reply(2, "Invalid request: invalid property", &id),
            },
            "GET_PROPERTY" => match params.and_then(Value::as_array).map(Vec::as_slice) {
                Some([Value::String(p)]) if p == "combined" => {
                    let on = self.ctl.combined.load(Ordering::Relaxed);
                    result_reply(if on { "true" } else { "false" }, &id)
                }
                _ => error_reply(2, "Invalid request: invalid property", &id),
            },
            other => error_reply(
                2,
                &format!(
                    "Invalid request: unknown variant `{other}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
                ),
                &id,
            ),
        }
    }
}

/// A copy of `frame` that is not JSON: the quote opening its first string value is gone.
fn malformed_copy(frame: &str) -> String {
    match frame.find(":\"") {
        Some(i) => format!("{}{}", &frame[..=i], &frame[i + 2..]),
        None => format!("{frame}}}"),
    }
}

/// The first half of `frame`.
fn truncated_copy(frame: &str) -> String {
    let mut cut = frame.len() / 2;
    while !frame.is_char_boundary(cut) {
        cut -= 1;
    }
    frame[..cut].to_owned()
}

/// A well-formed event of a type Binance does not send, shaped like `frame` (combined or
/// raw) and for the same symbol.
fn unknown_event(frame: &str) -> String {
    let ms = super::now_ms();
    if let Some(rest) = frame.strip_prefix("{\"stream\":\"") {
        let sym = rest.split(['@', '"']).next().unwrap_or_default();
        let upper = sym.to_ascii_uppercase();
        format!(
            "{{\"stream\":\"{sym}@foo\",\"data\":{{\"e\":\"mystery\",\"E\":{ms},\"s\":\"{upper}\"}}}}"
        )
    } else {
        let sym = frame
            .split_once("\"s\":\"")
            .and_then(|(_, r)| r.split('"').next())
            .unwrap_or_default();
        format!("{{\"e\":\"mystery\",\"E\":{ms},\"s\":\"{sym}\"}}")
    }
}

/// `{"result":<json>,"id":<id>}`
fn result_reply(result_json: &str, id: &Value) -> String {
    format!("{{\"result\":{result_json},\"id\":{id}}}")
}

/// `{"error":{"code":N,"msg":"..."},"id":<id>}`
fn error_reply(code: i32, msg: &str, id: &Value) -> String {
    let msg = serde_json::to_string(msg).unwrap_or_else(|_| "\"\"".into());
    format!("{{\"error\":{{\"code\":{code},\"msg\":{msg}}},\"id\":{id}}}")
}
