//! Blocking OTLP/HTTP transport for the OpenTelemetry exporters.
//!
//! The OTLP exporters only need something that implements
//! [`opentelemetry_http::HttpClient`]. meltica runs no async runtime, so this
//! client performs the request synchronously with a `ureq` agent. The SDK's
//! batch span processor and periodic metric reader drive the (trivially ready)
//! future with `futures_executor::block_on` on their own worker threads, so
//! the blocking call only ever stalls those exporter threads, never a
//! pipeline thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response, ResponseBodyTooLarge};

/// Largest response body read back from the collector. OTLP responses are a
/// few bytes (an optional partial-success message); anything larger is
/// rejected like the built-in clients do.
const MAX_RESPONSE_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// [`HttpClient`] backed by a blocking `ureq` agent.
///
/// Cloning is cheap and clones share the connection pool and the failure
/// counter.
#[derive(Clone)]
pub struct UreqHttpClient {
    agent: ureq::Agent,
    failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for UreqHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UreqHttpClient")
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl UreqHttpClient {
    /// Creates a client whose requests (connect, send and receive together)
    /// give up after `timeout`. Non-2xx responses are returned as responses,
    /// not errors, so the exporter can classify them for retries.
    pub fn new(timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Number of requests that failed so far: transport errors (connection
    /// refused, timeout, ...) plus responses with a non-2xx status.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Sends `request` and reads the whole response body.
    pub fn send_blocking(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let result = self.send_inner(request);
        match &result {
            Ok(response) if response.status().is_success() => {}
            _ => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn send_inner(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, &body[..]);
        let response = self.agent.run(request)?;
        let (parts, mut body) = response.into_parts();
        let bytes = match body
            .with_config()
            .limit(MAX_RESPONSE_BODY_BYTES)
            .read_to_vec()
        {
            Ok(bytes) => bytes,
            Err(ureq::Error::BodyExceedsLimit(_)) => {
                return Err(Box::new(ResponseBodyTooLarge::new()));
            }
            Err(err) => return Err(Box::new(err)),
        };
        Ok(Response::from_parts(parts, Bytes::from(bytes)))
    }
}

#[async_trait]
impl HttpClient for UreqHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send_blocking(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_refused_is_an_error_not_a_panic() {
        // Bind and drop a listener to get a local port nobody listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = UreqHttpClient::new(Duration::from_secs(2));
        let request = Request::post(format!("http://127.0.0.1:{port}/v1/traces"))
            .body(Bytes::from_static(b"x"))
            .unwrap();
        assert!(client.send_blocking(request).is_err());
        assert_eq!(client.failures(), 1);
    }
}
