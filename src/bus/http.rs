//! The HTTP facade of the control bus (`meltica-control-http`, tiny_http): the routes,
//! status codes and token rule of the public contract.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server};

use super::control::ControlBus;
use crate::schema::control::{Ack, ControlOp, MAX_BODY, parse_command};

/// How long a request waits for its ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers `GET /healthz` (status code, JSON body) and `GET /metrics` (text).
pub type Probe = Arc<dyn Fn() -> (u16, String) + Send + Sync>;

/// Why the control API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "cannot bind the control API to {addr}: {reason} (set control.addr or MELTICA_CONTROL_ADDR, e.g. 127.0.0.1:0)"
    )]
    Bind { addr: SocketAddr, reason: String },
    #[error(
        "the control API on non-loopback address {0} needs a token (control.token or MELTICA_CONTROL_TOKEN)"
    )]
    TokenRequired(SocketAddr),
}

/// The running HTTP facade.
pub struct ControlHttp {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

struct Ctx {
    bus: Arc<dyn ControlBus>,
    token: Option<String>,
    health: Probe,
    metrics: Probe,
}

impl ControlHttp {
    /// Binds and serves on its own thread.
    pub fn start(
        addr: SocketAddr,
        token: Option<String>,
        bus: Arc<dyn ControlBus>,
        health: Probe,
        metrics: Probe,
    ) -> Result<ControlHttp, HttpError> {
        let listener = Self::bind(addr, token.is_some())?;
        Self::serve(listener, token, bus, health, metrics)
    }

    /// Takes the address (checking the token rule first), so a taken port is reported
    /// before anything else starts.
    pub fn bind(addr: SocketAddr, has_token: bool) -> Result<std::net::TcpListener, HttpError> {
        if !addr.ip().is_loopback() && !has_token {
            return Err(HttpError::TokenRequired(addr));
        }
        std::net::TcpListener::bind(addr).map_err(|e| HttpError::Bind {
            addr,
            reason: e.to_string(),
        })
    }

    /// Serves on a bound listener, on its own thread.
    pub fn serve(
        listener: std::net::TcpListener,
        token: Option<String>,
        bus: Arc<dyn ControlBus>,
        health: Probe,
        metrics: Probe,
    ) -> Result<ControlHttp, HttpError> {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let server = Server::from_listener(listener, None).map_err(|e| HttpError::Bind {
            addr,
            reason: e.to_string(),
        })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            bus,
            token,
            health,
            metrics,
        });
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("meltica-control-http".into())
            .spawn(move || serve(server, ctx, s))
            .map_err(|e| HttpError::Bind {
                addr,
                reason: e.to_string(),
            })?;
        crate::info!("control API on http://{bound}");
        Ok(ControlHttp {
            addr: bound,
            stop,
            handle: Some(handle),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ControlHttp {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn serve(server: Server, ctx: Arc<Ctx>, stop: Arc<AtomicBool>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let req = match server.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                crate::warn!("control API: {e}");
                continue;
            }
        };
        // Commands wait for the exchange; each gets its own short-lived thread so one slow
        // command does not hold up the others.
        let ctx = ctx.clone();
        match std::thread::Builder::new()
            .name("meltica-control-req".into())
            .spawn(move || handle(req, &ctx))
        {
            Ok(h) => workers.push(h),
            Err(e) => crate::warn!("control API: cannot spawn a request thread: {e}"),
        }
        workers.retain(|h| !h.is_finished());
    }
    for h in workers {
        let _ = h.join();
    }
}

fn json(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("static header"),
        )
}

fn error(status: u16, reason: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"error\":");
    crate::schema::event::write_json_string(reason, &mut body);
    body.push(b'}');
    json(status, String::from_utf8(body).unwrap_or_default())
}

fn authorized(req: &Request, token: &Option<String>) -> bool {
    let Some(token) = token else { return true };
    let expected = format!("Bearer {token}");
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .is_some_and(|h| super::constant_time_eq(h.value.as_str().as_bytes(), expected.as_bytes()))
}

fn handle(mut req: Request, ctx: &Ctx) {
    let path = req.url().split('?').next().unwrap_or("").to_owned();
    let method = req.method().clone();
    let resp = match path.as_str() {
        "/healthz" => match method {
            Method::Get => {
                let (code, body) = (ctx.health)();
                json(code, body)
            }
            _ => error(405, "use GET").with_header(allow("GET")),
        },
        "/metrics" => match method {
            Method::Get => {
                let (code, body) = (ctx.metrics)();
                Response::from_data(body.into_bytes())
                    .with_status_code(code)
                    .with_header(
                        Header::from_bytes(&b"Content-Type"[..], &b"text/plain; version=0.0.4"[..])
                            .expect("static header"),
                    )
            }
            _ => error(405, "use GET").with_header(allow("GET")),
        },
        "/control/routes" => {
            if !authorized(&req, &ctx.token) {
                error(401, "missing or wrong bearer token")
            } else if method != Method::Get {
                error(405, "use GET").with_header(allow("GET"))
            } else {
                json(200, ctx.bus.routes_json())
            }
        }
        "/control/subscribe" | "/control/unsubscribe" | "/control/filters" => {
            let op = match path.as_str() {
                "/control/subscribe" => ControlOp::Subscribe,
                "/control/unsubscribe" => ControlOp::Unsubscribe,
                _ => ControlOp::UpdateFilters,
            };
            if !authorized(&req, &ctx.token) {
                error(401, "missing or wrong bearer token")
            } else if method != Method::Post {
                error(405, "use POST").with_header(allow("POST"))
            } else {
                command(&mut req, op, ctx)
            }
        }
        _ => error(404, "no such endpoint"),
    };
    let _ = req.respond(resp);
}

fn allow(methods: &str) -> Header {
    Header::from_bytes(&b"Allow"[..], methods.as_bytes()).expect("static header")
}

fn command(req: &mut Request, op: ControlOp, ctx: &Ctx) -> Response<std::io::Cursor<Vec<u8>>> {
    if req.body_length().is_some_and(|n| n > MAX_BODY) {
        return error(413, "body over 64 KiB");
    }
    let mut body = Vec::new();
    if let Err(e) = req
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        return error(400, &format!("cannot read body: {e}"));
    }
    if body.len() > MAX_BODY {
        return error(413, "body over 64 KiB");
    }
    match parse_command(op, &body) {
        Ok(cmd) => {
            let ack: Ack = ctx.bus.execute(cmd, ACK_TIMEOUT);
            json(202, ack.to_json())
        }
        Err(e) => error(e.http_status(), &e.to_string()),
    }
}
