//! How the pipeline uses telemetry: a per-stage sampler and span recorder (spans of one
//! sampled event are linked parent to child across threads through the ids the event
//! carries), and the engine's metrics, read from the stages' own counters by observable
//! instruments at export time, so nothing is exported per event.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

use super::{SpanRecord, Telemetry, new_span_id, new_trace_id};
use crate::adapter::{AdapterStats, SharedRegistry};
use crate::conductor::ConductorStats;
use crate::dispatcher::{DispatcherStats, SharedTable};
use crate::schema::{EventType, TraceId};

/// A stage's view of tracing: whether to sample, and how to record a span.
#[derive(Clone)]
pub struct Tracing {
    telemetry: Telemetry,
    ratio: f64,
    stage_latency: Option<Histogram<f64>>,
}

impl Tracing {
    /// Sampling `ratio` of events (0 when telemetry is off).
    pub fn new(telemetry: Telemetry, ratio: f64) -> Self {
        let enabled = telemetry.is_enabled();
        let stage_latency = enabled.then(|| {
            telemetry
                .meter()
                .f64_histogram("meltica.stage.latency")
                .with_unit("us")
                .with_description("time spent in each stage by sampled events")
                .build()
        });
        Tracing {
            ratio: if enabled { ratio.clamp(0.0, 1.0) } else { 0.0 },
            telemetry,
            stage_latency,
        }
    }

    pub fn off() -> Self {
        Tracing {
            telemetry: Telemetry::noop(),
            ratio: 0.0,
            stage_latency: None,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.telemetry.is_enabled()
    }

    /// The per-event sampling decision: one branch when tracing is off.
    #[inline]
    pub fn sample(&self, rng: &mut fastrand::Rng) -> bool {
        self.ratio > 0.0 && (self.ratio >= 1.0 || rng.f64() < self.ratio)
    }

    /// A new trace id.
    pub fn new_trace(&self, rng: &mut fastrand::Rng) -> TraceId {
        TraceId(new_trace_id(rng))
    }

    /// Records a finished span; returns its id (to be the next stage's parent).
    #[allow(clippy::too_many_arguments)]
    pub fn span(
        &self,
        rng: &mut fastrand::Rng,
        name: &'static str,
        trace: TraceId,
        parent: u64,
        start: SystemTime,
        end: SystemTime,
        attributes: &[KeyValue],
    ) -> u64 {
        let id = new_span_id(rng);
        self.telemetry.record_span(SpanRecord {
            name,
            trace_id: trace.0,
            span_id: id,
            parent_span_id: (parent != 0).then(|| parent.to_be_bytes()),
            start,
            end,
            attributes,
        });
        if let Some(h) = &self.stage_latency {
            let us = end
                .duration_since(start)
                .map_or(0.0, |d| d.as_secs_f64() * 1e6);
            h.record(us, &[KeyValue::new("stage", name)]);
        }
        u64::from_be_bytes(id)
    }

    pub fn meter(&self) -> Meter {
        self.telemetry.meter()
    }
}

/// Reads the current length of one queue.
pub type QueueProbe = (&'static str, Box<dyn Fn() -> u64 + Send + Sync>);

type Counter = (&'static str, &'static str, fn(&MetricSources) -> u64);

/// What the metric callbacks read.
pub struct MetricSources {
    pub dispatcher: Arc<DispatcherStats>,
    pub conductor: Arc<ConductorStats>,
    pub adapter: Arc<AdapterStats>,
    pub registry: SharedRegistry,
    pub table: SharedTable,
    /// Queue depth probes: (queue name, current length).
    pub queues: Vec<QueueProbe>,
}

/// Instruments kept alive for the engine's lifetime.
pub struct Instruments {
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// Registers the engine's metrics. Every value is read from counters the stages already
/// keep; the callbacks run on the SDK's metric reader thread at each export.
pub fn register_metrics(meter: &Meter, src: MetricSources) -> Instruments {
    let src = Arc::new(src);
    let mut keep: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    type Per = fn(&MetricSources, EventType) -> u64;
    let per_type: [(&'static str, &'static str, Per); 5] = [
        (
            "meltica.events.ingested",
            "events the dispatcher took in",
            |s, t| s.dispatcher.ingested[t.index()].load(Ordering::Relaxed),
        ),
        (
            "meltica.events.filtered",
            "events filtered by routes (or consumed by the books only)",
            |s, t| s.dispatcher.filtered[t.index()].load(Ordering::Relaxed),
        ),
        (
            "meltica.events.rejected",
            "events of a type without a route",
            |s, t| s.dispatcher.rejected[t.index()].load(Ordering::Relaxed),
        ),
        (
            "meltica.events.published",
            "events published on the data bus",
            |s, t| s.conductor.published_of(t),
        ),
        (
            "meltica.events.dropped",
            "events not published, by reason",
            |s, t| s.conductor.dropped_duplicate[t.index()].load(Ordering::Relaxed),
        ),
    ];
    for (name, desc, f) in per_type {
        let s = src.clone();
        keep.push(Box::new(
            meter
                .u64_observable_counter(name)
                .with_description(desc)
                .with_callback(move |o| {
                    for t in EventType::ALL {
                        let mut attrs = vec![KeyValue::new("type", t.as_str())];
                        if name == "meltica.events.dropped" {
                            attrs.push(KeyValue::new("reason", "duplicate"));
                        }
                        o.observe(f(&s, t), &attrs);
                    }
                })
                .build(),
        ));
    }
    let s = src.clone();
    keep.push(Box::new(
        meter
            .i64_observable_gauge("meltica.events.unaccounted")
            .with_description(
                "ingested − published − filtered − dropped − rejected (in flight; 0 once drained)",
            )
            .with_callback(move |o| {
                for t in crate::engine::EngineCounts::INGESTED_TYPES {
                    let i = t.index();
                    let d = &s.dispatcher;
                    let v = d.ingested[i].load(Ordering::Relaxed) as i64
                        - d.filtered[i].load(Ordering::Relaxed) as i64
                        - d.rejected[i].load(Ordering::Relaxed) as i64
                        - s.conductor.published_of(t) as i64
                        - s.conductor.dropped_duplicate[i].load(Ordering::Relaxed) as i64;
                    o.observe(v, &[KeyValue::new("type", t.as_str())]);
                }
            })
            .build(),
    ));
    let s = src.clone();
    keep.push(Box::new(
        meter
            .u64_observable_counter("meltica.events.coalesced")
            .with_description("fused book states replaced within a throttle window")
            .with_callback(move |o| {
                let v: u64 = s
                    .conductor
                    .coalesced
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum();
                o.observe(
                    v,
                    &[KeyValue::new("type", EventType::AnalyticsFused.as_str())],
                );
            })
            .build(),
    ));
    let s = src.clone();
    keep.push(Box::new(
        meter
            .u64_observable_gauge("meltica.queue.depth")
            .with_description("events waiting in each channel between stages")
            .with_callback(move |o| {
                for (name, len) in &s.queues {
                    o.observe(len(), &[KeyValue::new("queue", *name)]);
                }
            })
            .build(),
    ));
    let s = src.clone();
    keep.push(Box::new(
        meter
            .u64_observable_counter("meltica.book.resyncs")
            .with_description("times a book lost sync and was rebuilt")
            .with_callback(move |o| {
                for i in s.registry.load().all() {
                    let v = s.conductor.resyncs[i.id() as usize].load(Ordering::Relaxed);
                    o.observe(v, &[KeyValue::new("instrument", i.name().to_owned())]);
                }
            })
            .build(),
    ));
    let s = src.clone();
    keep.push(Box::new(
        meter
            .u64_observable_gauge("meltica.book.status")
            .with_description("book status per instrument: 0 syncing, 1 live, 2 stale")
            .with_callback(move |o| {
                let table = s.table.load();
                for i in s
                    .registry
                    .load()
                    .all()
                    .iter()
                    .filter(|i| table.needs_book(i.id()))
                {
                    let v = s.conductor.status[i.id() as usize].load(Ordering::Relaxed);
                    o.observe(
                        u64::from(v),
                        &[KeyValue::new("instrument", i.name().to_owned())],
                    );
                }
            })
            .build(),
    ));
    let counters: [Counter; 6] = [
        (
            "meltica.snapshot.cas_conflicts",
            "snapshot store CAS conflicts retried",
            |s| s.conductor.cas_conflicts.load(Ordering::Relaxed),
        ),
        (
            "meltica.ws.reconnects",
            "WebSocket reconnect attempts",
            |s| s.adapter.reconnects.load(Ordering::Relaxed),
        ),
        (
            "meltica.frames.received",
            "WebSocket frames received",
            |s| s.adapter.frames.load(Ordering::Relaxed),
        ),
        (
            "meltica.frames.malformed",
            "frames that could not be parsed",
            |s| s.adapter.malformed.load(Ordering::Relaxed),
        ),
        (
            "meltica.frames.unknown",
            "frames of an unknown type or symbol",
            |s| {
                s.adapter.unknown_type.load(Ordering::Relaxed)
                    + s.adapter.unknown_symbol.load(Ordering::Relaxed)
            },
        ),
        (
            "meltica.rest.snapshots",
            "REST depth snapshots fetched",
            |s| s.adapter.snapshots.load(Ordering::Relaxed),
        ),
    ];
    for (name, desc, f) in counters {
        let s = src.clone();
        keep.push(Box::new(
            meter
                .u64_observable_counter(name)
                .with_description(desc)
                .with_callback(move |o| o.observe(f(&s), &[]))
                .build(),
        ));
    }
    let s = src.clone();
    keep.push(Box::new(
        meter
            .u64_observable_gauge("meltica.rest.weight_used")
            .with_description("REST request weight used in the current minute")
            .with_callback(move |o| {
                o.observe(s.adapter.rest_weight_used.load(Ordering::Relaxed), &[])
            })
            .build(),
    ));
    let s = src;
    keep.push(Box::new(
        meter
            .u64_observable_gauge("meltica.ws.connections")
            .with_description("open WebSocket connections")
            .with_callback(move |o| o.observe(s.adapter.connections.load(Ordering::Relaxed), &[]))
            .build(),
    ));
    Instruments { _keep: keep }
}
