//! WebSocket side: handshake, the per-connection event loop and the JSON control protocol
//! (`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`).

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, WebSocket};

use super::Shared;
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
    let mut conn = Conn {
        shared,
        ctl,
        tx,
        rx,
        ws,
        subs: slots,
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
                    if !self.write(Message::Text(frame)) {
                        return;
                    }
                    sent += 1;
                    while sent < BATCH {
                        let Ok(frame) = self.rx.try_recv() else { break };
                        if !self.write(Message::Text(frame)) {
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

/// `{"result":<json>,"id":<id>}`
fn result_reply(result_json: &str, id: &Value) -> String {
    format!("{{\"result\":{result_json},\"id\":{id}}}")
}

/// `{"error":{"code":N,"msg":"..."},"id":<id>}`
fn error_reply(code: i32, msg: &str, id: &Value) -> String {
    let msg = serde_json::to_string(msg).unwrap_or_else(|_| "\"\"".into());
    format!("{{\"error\":{{\"code\":{code},\"msg\":{msg}}},\"id\":{id}}}")
}
