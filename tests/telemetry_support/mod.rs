//! Test helpers: an in-process OTLP/HTTP receiver and thread inspection.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;

/// Everything the receiver got.
#[derive(Default)]
pub struct Received {
    pub traces: Vec<ExportTraceServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// Content-Type headers of the accepted requests.
    pub content_types: Vec<String>,
    /// Requests that could not be handled (wrong path/method, bad body).
    pub errors: Vec<String>,
}

/// OTLP/HTTP protobuf receiver on 127.0.0.1 serving `/v1/traces` and
/// `/v1/metrics`.
pub struct OtlpReceiver {
    pub base_url: String,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    pub fn start() -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind receiver");
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match server.recv_timeout(Duration::from_millis(20)) {
                        Ok(Some(request)) => handle_request(request, &received),
                        Ok(None) => {}
                        Err(err) => received.lock().errors.push(format!("recv: {err}")),
                    }
                }
            })
        };
        Self {
            base_url: format!("http://127.0.0.1:{port}"),
            received,
            stop,
            handle: Some(handle),
        }
    }

    /// Runs `f` on what was received so far.
    pub fn with<R>(&self, f: impl FnOnce(&Received) -> R) -> R {
        f(&self.received.lock())
    }

    /// Polls `cond` until it holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&Received) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with(&cond) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server thread and returns everything received.
    pub fn stop(mut self) -> Received {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.join().expect("receiver thread panicked");
        }
        std::mem::take(&mut *self.received.lock())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn handle_request(mut request: tiny_http::Request, received: &Mutex<Received>) {
    let method = request.method().clone();
    let url = request.url().to_owned();
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_owned())
        .unwrap_or_default();
    let mut body = Vec::new();
    if let Err(err) = request.as_reader().read_to_end(&mut body) {
        received.lock().errors.push(format!("read body: {err}"));
        let _ = request.respond(tiny_http::Response::empty(400));
        return;
    }
    let status = {
        let mut r = received.lock();
        let outcome = match (method, url.as_str()) {
            (tiny_http::Method::Post, "/v1/traces") => ExportTraceServiceRequest::decode(&body[..])
                .map(|req| r.traces.push(req))
                .map_err(|e| e.to_string()),
            (tiny_http::Method::Post, "/v1/metrics") => {
                ExportMetricsServiceRequest::decode(&body[..])
                    .map(|req| r.metrics.push(req))
                    .map_err(|e| e.to_string())
            }
            (m, u) => Err(format!("unexpected {m} {u}")),
        };
        match outcome {
            Ok(()) => {
                r.content_types.push(content_type);
                200
            }
            Err(err) => {
                r.errors.push(format!("{url}: {err}"));
                400
            }
        }
    };
    // An empty body is a valid (all defaults) Export*ServiceResponse.
    let response = tiny_http::Response::empty(status).with_header(
        tiny_http::Header::from_bytes("Content-Type", "application/x-protobuf")
            .expect("static header"),
    );
    let _ = request.respond(response);
}

/// `Threads:` of /proc/self/status.
pub fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: line")
}

/// Names (as the kernel keeps them, at most 15 bytes) of this process's threads.
pub fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task") {
        let Ok(entry) = entry else { continue };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            names.push(comm.trim_end().to_owned());
        }
    }
    names
}

/// Number of live threads started by the OpenTelemetry SDK
/// (`OpenTelemetry.Traces.BatchProcessor`, `OpenTelemetry.Metrics.PeriodicReader`).
pub fn otel_thread_count() -> usize {
    thread_names()
        .iter()
        .filter(|n| n.starts_with("OpenTelemetry"))
        .count()
}
