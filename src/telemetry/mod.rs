//! Telemetry for meltica: pipeline spans and engine metrics exported over
//! OTLP/HTTP (protobuf).
//!
//! meltica decides itself which events are traced and carries trace/span ids
//! inside its events, so spans are not created through a tracer: each pipeline
//! stage hands an already-finished span to [`Telemetry::record_span`] with the
//! exact ids and timestamps, and it is queued for the batch span processor
//! unchanged (no sampler runs; every recorded span is exported).
//!
//! Threads: an enabled [`Telemetry`] owns two OS threads, started by
//! [`Telemetry::init`]: the span batch exporter
//! (`OpenTelemetry.Traces.BatchProcessor`) and the periodic metric reader
//! (`OpenTelemetry.Metrics.PeriodicReader`). Both perform blocking HTTP
//! requests through [`UreqHttpClient`]; no async runtime is involved. A
//! disabled or endpoint-less [`Telemetry`] starts no thread at all.
//!
//! Hot path: [`Telemetry::record_span`] copies the attributes and does one
//! non-blocking `try_send` into a bounded queue (2048 spans by default,
//! `OTEL_BSP_MAX_QUEUE_SIZE` overrides it); when the queue is full the span is
//! dropped rather than blocking the caller.

mod otlp;
pub mod pipeline;

pub use otlp::UreqHttpClient;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{Meter, MeterProvider as _, NoopMeterProvider};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanExporter as _, SpanLinks,
    SpanProcessor as _,
};

/// Name of the instrumentation scope attached to meltica's spans and meters.
const SCOPE_NAME: &str = "meltica";

/// Timeout of one OTLP HTTP request (connect + send + receive).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Configuration of the telemetry exporters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`. Spans are posted to
    /// `{base}/v1/traces` and metrics to `{base}/v1/metrics`. `None` disables
    /// telemetry.
    pub endpoint: Option<String>,
    /// Value of the `service.name` resource attribute.
    pub service_name: String,
    /// Disables telemetry entirely (`OTEL_SDK_DISABLED=true` semantics); see
    /// [`sdk_disabled_from_env`].
    pub disabled: bool,
    /// Longest time a recorded span waits in the queue before being exported.
    pub batch_delay: Duration,
    /// Interval between metric collections/exports.
    pub metric_interval: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: SCOPE_NAME.to_owned(),
            disabled: false,
            batch_delay: Duration::from_secs(1),
            metric_interval: Duration::from_secs(10),
        }
    }
}

/// Returns true when `OTEL_SDK_DISABLED` is set to `true` (case-insensitive),
/// as the OpenTelemetry specification defines it. Any other value, or no
/// value, means enabled.
pub fn sdk_disabled_from_env() -> bool {
    std::env::var("OTEL_SDK_DISABLED")
        .map(|v| v.trim().eq_ignore_ascii_case("true"))
        .unwrap_or(false)
}

/// Errors from [`Telemetry::init`] and [`Telemetry::try_shutdown`].
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        endpoint: String,
        reason: &'static str,
    },
    /// A setting has a value the exporters cannot work with.
    #[error("invalid telemetry setting {name}: {reason}")]
    InvalidSetting {
        name: &'static str,
        reason: &'static str,
    },
    /// The OTLP exporter for `signal` ("traces" or "metrics") could not be built.
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        signal: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Flushing or stopping the exporters failed (e.g. the final export
    /// timed out). Telemetry is stopped regardless.
    #[error("telemetry shutdown failed: {0}")]
    Shutdown(String),
}

/// A finished span handed to [`Telemetry::record_span`].
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord<'a> {
    pub name: &'static str,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    pub start: SystemTime,
    /// Clamped to `start` if earlier.
    pub end: SystemTime,
    pub attributes: &'a [KeyValue],
}

/// Returns a random, non-zero span id.
pub fn new_span_id(rng: &mut fastrand::Rng) -> [u8; 8] {
    loop {
        let id = rng.u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// Returns a random, non-zero trace id.
pub fn new_trace_id(rng: &mut fastrand::Rng) -> [u8; 16] {
    loop {
        let id = rng.u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// Handle to meltica's telemetry exporters. Cheap to clone; all clones share
/// the same exporters. Dropping the last clone shuts the exporters down.
#[derive(Clone)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    spans: BatchSpanProcessor,
    meter_provider: SdkMeterProvider,
    meter: Meter,
    scope: InstrumentationScope,
    http: UreqHttpClient,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the exporters described by `s`.
    ///
    /// With `s.disabled` set or no endpoint, returns a no-op [`Telemetry`]
    /// that starts no thread. Otherwise starts the span batch thread and the
    /// metric reader thread. Does not contact the collector: an unreachable
    /// collector only shows up as failed exports (see
    /// [`Telemetry::export_failures`]).
    pub fn init(s: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
        if s.disabled {
            return Ok(Self::noop());
        }
        let Some(endpoint) = s.endpoint.as_deref() else {
            return Ok(Self::noop());
        };
        let base = validate_endpoint(endpoint)?;
        if s.batch_delay.is_zero() {
            return Err(TelemetryError::InvalidSetting {
                name: "batch_delay",
                reason: "must be greater than zero",
            });
        }
        if s.metric_interval.is_zero() {
            return Err(TelemetryError::InvalidSetting {
                name: "metric_interval",
                reason: "must be greater than zero",
            });
        }

        let resource = Resource::builder()
            .with_service_name(s.service_name.clone())
            .build();
        let http = UreqHttpClient::new(HTTP_TIMEOUT);
        let shared: Arc<dyn opentelemetry_http::HttpClient> = Arc::new(http.clone());

        // Both exporters are built before any thread is started, so a build
        // error leaves nothing running. Endpoint, protocol and timeout are set
        // explicitly, so the OTEL_EXPORTER_OTLP_{ENDPOINT,PROTOCOL,TIMEOUT}
        // variables do not apply (OTEL_EXPORTER_OTLP_HEADERS still does).
        let mut span_exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_shared_http_client(Arc::clone(&shared))
            .with_endpoint(format!("{base}/v1/traces"))
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                signal: "traces",
                source,
            })?;
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_shared_http_client(shared)
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                signal: "metrics",
                source,
            })?;

        // Spans bypass the tracer provider (see module docs), so the exporter
        // gets the resource directly.
        span_exporter.set_resource(&resource);
        let batch_config = BatchConfigBuilder::default()
            .with_scheduled_delay(s.batch_delay)
            .build();
        let spans = BatchSpanProcessor::builder(span_exporter)
            .with_batch_config(batch_config)
            .build();

        let reader = PeriodicReader::builder(metric_exporter)
            .with_interval(s.metric_interval)
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();

        let scope = scope();
        let meter = meter_provider.meter_with_scope(scope.clone());
        Ok(Telemetry {
            inner: Some(Arc::new(Inner {
                spans,
                meter_provider,
                meter,
                scope,
                http,
                shut_down: AtomicBool::new(false),
            })),
        })
    }

    /// A [`Telemetry`] that records nothing and starts no thread.
    pub fn noop() -> Telemetry {
        Telemetry { inner: None }
    }

    /// True when spans and metrics are exported.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues an already-finished span for export with exactly the given
    /// trace id, span id, parent span id and times. A span with an all-zero
    /// trace id or span id is invalid and dropped, as is any span recorded
    /// after [`Telemetry::shutdown`]. Never blocks: when the export queue is
    /// full the span is dropped.
    pub fn record_span(&self, span: SpanRecord<'_>) {
        let Some(inner) = &self.inner else {
            return;
        };
        if inner.shut_down.load(Ordering::Relaxed) {
            return;
        }
        let trace_id = TraceId::from_bytes(span.trace_id);
        let span_id = SpanId::from_bytes(span.span_id);
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return;
        }
        let data = SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: span
                .parent_span_id
                .map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(span.name),
            start_time: span.start,
            end_time: span.end.max(span.start),
            attributes: span.attributes.to_vec(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: inner.scope.clone(),
        };
        inner.spans.on_end(data);
    }

    /// The meter for registering instruments (counters, histograms,
    /// observable counters/gauges with callbacks). Observable callbacks run on
    /// the metric reader thread at each collection. Returns a no-op meter when
    /// telemetry is disabled.
    pub fn meter(&self) -> Meter {
        match &self.inner {
            Some(inner) => inner.meter.clone(),
            None => noop_meter().clone(),
        }
    }

    /// Number of OTLP HTTP requests that failed so far (transport errors and
    /// non-2xx responses, counting each retry). Always 0 when disabled.
    pub fn export_failures(&self) -> u64 {
        self.inner.as_ref().map_or(0, |inner| inner.http.failures())
    }

    /// Exports the queued spans and a final metric collection, then stops
    /// the exporter threads. Idempotent; errors are ignored (use
    /// [`Telemetry::try_shutdown`] to see them).
    pub fn shutdown(&self) {
        let _ = self.try_shutdown();
    }

    /// Like [`Telemetry::shutdown`], but reports whether the final exports
    /// succeeded. Only the first call does any work; later calls return
    /// `Ok(())`. Waits at most about 5 s per signal for the final export.
    pub fn try_shutdown(&self) -> Result<(), TelemetryError> {
        match &self.inner {
            Some(inner) => inner.shutdown(),
            None => Ok(()),
        }
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), TelemetryError> {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Both are attempted even if the first fails.
        let spans = self.spans.shutdown();
        let metrics = self.meter_provider.shutdown();
        let mut errors = Vec::new();
        if let Err(err) = spans {
            errors.push(format!("spans: {err}"));
        }
        if let Err(err) = metrics {
            errors.push(format!("metrics: {err}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TelemetryError::Shutdown(errors.join("; ")))
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

fn noop_meter() -> &'static Meter {
    static NOOP: OnceLock<Meter> = OnceLock::new();
    NOOP.get_or_init(|| NoopMeterProvider::new().meter_with_scope(scope()))
}

/// Checks that `endpoint` is an `http://` or `https://` URL with a host and
/// returns it without trailing slashes.
fn validate_endpoint(endpoint: &str) -> Result<&str, TelemetryError> {
    let invalid = |reason| TelemetryError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let trimmed = endpoint.trim();
    if trimmed != endpoint {
        return Err(invalid("contains leading or trailing whitespace"));
    }
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| invalid("must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err(invalid("has no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("must not contain a query or fragment"));
    }
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("contains whitespace or control characters"));
    }
    Ok(endpoint.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_validation() {
        assert_eq!(
            validate_endpoint("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318"
        );
        assert_eq!(
            validate_endpoint("https://collector:4318/").unwrap(),
            "https://collector:4318"
        );
        assert_eq!(
            validate_endpoint("http://collector/otlp//").unwrap(),
            "http://collector/otlp"
        );
        for bad in [
            "",
            "127.0.0.1:4318",
            "ftp://host",
            "http://",
            "http://:4318",
            "http:///v1",
            "http://host?x=1",
            " http://host",
            "http://ho st",
        ] {
            assert!(
                matches!(
                    validate_endpoint(bad),
                    Err(TelemetryError::InvalidEndpoint { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn init_rejects_bad_settings() {
        let mut s = TelemetrySettings {
            endpoint: Some("localhost:4318".into()),
            ..TelemetrySettings::default()
        };
        assert!(matches!(
            Telemetry::init(&s),
            Err(TelemetryError::InvalidEndpoint { .. })
        ));
        s.endpoint = Some("http://127.0.0.1:4318".into());
        s.batch_delay = Duration::ZERO;
        assert!(matches!(
            Telemetry::init(&s),
            Err(TelemetryError::InvalidSetting { .. })
        ));
    }

    #[test]
    fn ids_are_non_zero() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            assert_ne!(new_span_id(&mut rng), [0; 8]);
            assert_ne!(new_trace_id(&mut rng), [0; 16]);
        }
    }
}
