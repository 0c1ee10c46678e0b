//! Listener, HTTP/1.1 request parsing and per-connection dispatch (WebSocket or REST).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{Shared, rest, ws};

/// Idle keep-alive REST connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_HEAD: usize = 16 * 1024;

/// A parsed HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// Raw query string without the `?` (still percent-encoded).
    pub query: String,
    pub http11: bool,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.http11 {
            !self.header_has_token("connection", "close")
        } else {
            self.header_has_token("connection", "keep-alive")
        }
    }

    /// Decoded query parameters in order.
    pub fn params(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Decodes `%XX` escapes and `+` (as space); invalid escapes are kept literally.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let version = parts.next()?;
    if method.is_empty() || !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        http11: version != "HTTP/1.0",
        headers,
    })
}

pub(crate) enum Head {
    Request(Request),
    /// Peer closed before sending a request.
    Closed,
    /// Unparseable or oversized head.
    Bad,
}

/// Reads one request head (and skips any body). `buf` keeps bytes received past it.
pub(crate) fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::Bad);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let req = parse_head(&buf[..end]);
    buf.drain(..end + 4);
    let Some(req) = req else {
        return Ok(Head::Bad);
    };
    // Requests here carry no meaningful body; consume it to keep the stream in sync.
    let mut body = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let have = body.min(buf.len());
    buf.drain(..have);
    body -= have;
    while body > 0 {
        let n = stream.read(&mut chunk[..body.min(4096)])?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        body -= n;
    }
    Ok(Head::Request(req))
}

/// Status line and headers of a response whose body is `body_len` bytes long.
fn response_head(
    status: u16,
    extra_headers: &[(&str, String)],
    body_len: usize,
    keep_alive: bool,
) -> String {
    let reason = match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        418 => "I'm a teapot",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {body_len}\r\nConnection: {}\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in extra_headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Writes a complete HTTP response.
pub(crate) fn write_response(
    stream: &mut TcpStream,
    status: u16,
    extra_headers: &[(&str, String)],
    body: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = response_head(status, extra_headers, body.len(), keep_alive).into_bytes();
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out)?;
    stream.flush()
}

/// Writes a head announcing all of `body` but only its first `cut` bytes; the caller then
/// closes the connection.
pub(crate) fn write_truncated_response(
    stream: &mut TcpStream,
    status: u16,
    extra_headers: &[(&str, String)],
    body: &str,
    cut: usize,
) -> io::Result<()> {
    let mut out = response_head(status, extra_headers, body.len(), false).into_bytes();
    out.extend_from_slice(&body.as_bytes()[..cut.min(body.len())]);
    stream.write_all(&out)?;
    stream.flush()
}

pub(crate) fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // Typically EMFILE or an aborted handshake: back off briefly.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let Ok(ctl) = shared.hub.register(&stream) else {
            continue;
        };
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("meltica-sim-conn".into())
            .spawn({
                let ctl = Arc::clone(&ctl);
                move || {
                    serve_connection(&s, stream, &ctl);
                    ctl.kill();
                    s.hub.unregister(&ctl);
                }
            });
        let mut threads = shared.conn_threads.lock();
        threads.retain(|h| !h.is_finished());
        match spawned {
            Ok(h) => threads.push(h),
            Err(_) => {
                ctl.kill();
                shared.hub.unregister(&ctl);
            }
        }
    }
}

fn serve_connection(shared: &Arc<Shared>, mut stream: TcpStream, ctl: &Arc<super::hub::ConnCtl>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let mut buf = Vec::new();
    let mut rng = fastrand::Rng::with_seed(
        shared.cfg.seed ^ 0x7265_7374 ^ ctl.id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    loop {
        if shared.stopping() || ctl.killed() {
            return;
        }
        let req = match read_request(&mut stream, &mut buf) {
            Ok(Head::Request(r)) => r,
            Ok(Head::Bad) => {
                let body = r#"{"code":-1,"msg":"Malformed request."}"#;
                let _ = write_response(&mut stream, 400, &[], body, false);
                return;
            }
            Ok(Head::Closed) | Err(_) => return,
        };
        if req.is_websocket_upgrade() {
            ws::serve(shared, stream, ctl, &req, std::mem::take(&mut buf));
            return;
        }
        let keep = req.keep_alive();
        if rest::handle(shared, &mut stream, &req, keep, &mut rng).is_err() || !keep {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        let r = parse_head(
            b"GET /api/v3/depth?symbol=BTCUSDT&limit=5 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, keep-alive\r\nUpgrade: WebSocket",
        )
        .unwrap();
        assert_eq!(r.path, "/api/v3/depth");
        assert_eq!(r.param("symbol").as_deref(), Some("BTCUSDT"));
        assert_eq!(r.param("limit").as_deref(), Some("5"));
        assert!(r.is_websocket_upgrade());
        assert!(r.keep_alive());
        assert!(parse_head(b"garbage").is_none());
        let r = parse_head(b"GET / HTTP/1.0\r\n").unwrap();
        assert!(!r.keep_alive());
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(
            percent_decode("%5B%22BTCUSDT%22,%22ETHUSDT%22%5D"),
            r#"["BTCUSDT","ETHUSDT"]"#
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
