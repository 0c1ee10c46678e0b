//! The control plane (`meltica-control`): applies Subscribe / Unsubscribe / UpdateFilters to
//! the dispatch table, sends the native topic and poller diff to the adapter, and
//! acknowledges once the exchange confirmed and the pipeline applies the new table.
//!
//! Commands are handled as they arrive and complete asynchronously, so a burst of commands
//! is batched into few native messages by the connections.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded};
use parking_lot::Mutex;

use super::SharedTable;
use super::table::{Change, DispatchTable};
use crate::adapter::binance::rest::BinanceRest;
use crate::adapter::binance::ws::NativeAck;
use crate::adapter::binance::{BinanceAdapter, resolve_at_runtime};
use crate::adapter::{Ingress, SharedRegistry};
use crate::bus::DataBus;
use crate::bus::control::ControlRequest;
use crate::schema::control::{Ack, AckStatus, ControlCommand, ControlOp};
use crate::schema::{ControlUpdate, Event, EventType, Instrument, Payload, Quality, TraceId};

/// How long a command may wait for the exchange before it is answered with an error.
const NATIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Command-to-effective times, in microseconds.
pub type SlaHistogram = Arc<Mutex<hdrhistogram::Histogram<u64>>>;

/// A new SLA histogram (1 µs … 1 h, 3 significant digits).
pub fn sla_histogram() -> SlaHistogram {
    Arc::new(Mutex::new(
        hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("valid histogram bounds"),
    ))
}

struct Pending {
    req: ControlRequest,
    natives: Vec<Receiver<NativeAck>>,
    barrier: Option<Receiver<()>>,
    errors: Vec<String>,
    deadline: Instant,
    /// For a subscribe: what to undo if the exchange refuses.
    added: Vec<Instrument>,
}

/// The control plane's state; runs on its own thread.
pub struct ControlPlane {
    pub table: DispatchTable,
    pub shared: SharedTable,
    pub registry: SharedRegistry,
    /// `None` when a host feeds the engine itself: instruments are then added by name.
    pub rest: Option<Arc<BinanceRest>>,
    pub adapter: Arc<Mutex<Option<BinanceAdapter>>>,
    pub ingress: Sender<Ingress>,
    pub pollers: Sender<Vec<(Instrument, Duration)>>,
    pub bus: Arc<dyn DataBus>,
    pub sla: SlaHistogram,
    pub stop: Arc<AtomicBool>,
    /// Native topics currently subscribed.
    pub topics: BTreeSet<String>,
    audit_seq: HashMap<Option<u32>, u64>,
    rng: fastrand::Rng,
    tracing: crate::telemetry::pipeline::Tracing,
    sla_metric: Option<opentelemetry::metrics::Histogram<f64>>,
}

impl ControlPlane {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        table: DispatchTable,
        shared: SharedTable,
        registry: SharedRegistry,
        rest: Option<Arc<BinanceRest>>,
        adapter: Arc<Mutex<Option<BinanceAdapter>>>,
        ingress: Sender<Ingress>,
        pollers: Sender<Vec<(Instrument, Duration)>>,
        bus: Arc<dyn DataBus>,
        sla: SlaHistogram,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let topics = table.topics();
        ControlPlane {
            table,
            shared,
            registry,
            rest,
            adapter,
            ingress,
            pollers,
            bus,
            sla,
            stop,
            topics,
            audit_seq: HashMap::new(),
            rng: fastrand::Rng::new(),
            tracing: crate::telemetry::pipeline::Tracing::off(),
            sla_metric: None,
        }
    }

    /// Traces every command (always sampled) and exports the SLA histogram.
    pub fn with_tracing(mut self, tracing: crate::telemetry::pipeline::Tracing) -> Self {
        self.sla_metric = tracing.is_enabled().then(|| {
            tracing
                .meter()
                .f64_histogram("meltica.control.sla")
                .with_unit("ms")
                .with_description(
                    "control command to effective (exchange confirmed, table applied)",
                )
                .build()
        });
        self.tracing = tracing;
        self
    }

    /// Runs until the stop flag is set or every command sender is gone.
    pub fn run(mut self, requests: Receiver<ControlRequest>) {
        let mut pending: Vec<Pending> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let wait = if pending.is_empty() {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(2)
            };
            match requests.recv_timeout(wait) {
                Ok(req) => {
                    if let Some(p) = self.begin(req) {
                        pending.push(p);
                    }
                    while let Ok(req) = requests.try_recv() {
                        if let Some(p) = self.begin(req) {
                            pending.push(p);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if pending.is_empty() {
                        break;
                    }
                }
            }
            let mut i = 0;
            while i < pending.len() {
                if poll(&mut pending[i]) {
                    let p = pending.swap_remove(i);
                    self.finish(p);
                } else {
                    i += 1;
                }
            }
        }
        for p in pending {
            self.reply(&p.req, AckStatus::Error, Some("engine stopped".into()));
        }
    }

    fn begin(&mut self, req: ControlRequest) -> Option<Pending> {
        let cmd = req.command.clone();
        let t = cmd.event_type;
        if t == EventType::ControlUpdate {
            self.reply(
                &req,
                AckStatus::Error,
                Some("CONTROL.UPDATE cannot be routed".into()),
            );
            return None;
        }
        let mut added = Vec::new();
        match cmd.op {
            ControlOp::Subscribe => {
                let mut insts = Vec::new();
                for name in &cmd.instruments {
                    let found = match &self.rest {
                        Some(rest) => resolve_at_runtime(rest, &self.registry, name),
                        None => add_by_name(&self.registry, name),
                    };
                    match found {
                        Ok(i) => insts.push(i),
                        Err(e) => {
                            self.reply(&req, AckStatus::Error, Some(e.to_string()));
                            return None;
                        }
                    }
                }
                for i in &insts {
                    if self.table.subscribe(t, i, &cmd.consumer) == Change::Changed {
                        added.push(i.clone());
                    }
                }
                if added.is_empty() {
                    self.reply(&req, AckStatus::Noop, None);
                    return None;
                }
            }
            ControlOp::Unsubscribe => {
                let registry = self.registry.load();
                let mut changed = false;
                for name in &cmd.instruments {
                    if let Some(i) = registry.by_name(name) {
                        changed |= self.table.unsubscribe(t, i, &cmd.consumer) == Change::Changed;
                    }
                }
                if !changed {
                    self.reply(&req, AckStatus::Noop, None);
                    return None;
                }
            }
            ControlOp::UpdateFilters => {
                if self.table.set_filters(t, cmd.filters.clone()) == Change::Unchanged {
                    self.reply(&req, AckStatus::Noop, None);
                    return None;
                }
            }
        }
        let (natives, barrier) = self.apply();
        Some(Pending {
            req,
            natives,
            barrier,
            errors: Vec::new(),
            deadline: Instant::now() + NATIVE_TIMEOUT,
            added,
        })
    }

    /// Publishes the table to the stages and sends the native diff. Returns the exchange's
    /// confirmations to wait for and the pipeline barrier.
    fn apply(&mut self) -> (Vec<Receiver<NativeAck>>, Option<Receiver<()>>) {
        self.shared.store(Arc::new(self.table.clone()));
        let _ = self.pollers.send(self.table.pollers());
        let wanted = self.table.topics();
        let add: Vec<String> = wanted.difference(&self.topics).cloned().collect();
        let remove: Vec<String> = self.topics.difference(&wanted).cloned().collect();
        self.topics = wanted;
        // Everything dispatched with the old table is published before the ack.
        let (btx, brx) = bounded(1);
        let barrier = self
            .ingress
            .send(Ingress::Barrier(btx))
            .is_ok()
            .then_some(brx);
        let mut natives = Vec::new();
        if let Some(adapter) = self.adapter.lock().as_mut() {
            if !add.is_empty() {
                match adapter.subscribe(&add) {
                    Ok(acks) => natives.extend(acks),
                    Err(e) => {
                        let (tx, rx) = bounded(1);
                        let _ = tx.send(Err(e.to_string()));
                        natives.push(rx);
                    }
                }
            }
            if !remove.is_empty() {
                natives.extend(adapter.unsubscribe(&remove));
            }
        }
        (natives, barrier)
    }

    fn finish(&mut self, mut p: Pending) {
        if p.errors.is_empty() && Instant::now() > p.deadline {
            p.errors.push(format!(
                "the exchange did not confirm within {NATIVE_TIMEOUT:?}"
            ));
        }
        if p.errors.is_empty() {
            let us = p.req.received.elapsed().as_micros() as u64;
            let _ = self.sla.lock().record(us.max(1));
            self.reply(&p.req, AckStatus::Accepted, None);
            return;
        }
        // Undo what the exchange refused, so the table never claims a stream it lacks.
        let cmd = &p.req.command;
        if cmd.op == ControlOp::Subscribe {
            for i in &p.added {
                self.table.unsubscribe(cmd.event_type, i, &cmd.consumer);
            }
            let _ = self.apply();
        }
        let reason = p.errors.join("; ");
        self.reply(&p.req, AckStatus::Error, Some(reason));
    }

    fn reply(&mut self, req: &ControlRequest, status: AckStatus, error: Option<String>) {
        let cmd = &req.command;
        let ack = Ack {
            event_type: Some(cmd.event_type.as_str().to_owned()),
            status,
            dispatch_version: self.table.version,
            elapsed_ms: req.received.elapsed().as_secs_f64() * 1e3,
            error,
        };
        match status {
            AckStatus::Error => crate::warn!(
                "control {} {} {:?} by {}: {}",
                cmd.op.as_str(),
                cmd.event_type,
                cmd.instruments,
                cmd.consumer,
                ack.error.as_deref().unwrap_or("")
            ),
            _ => crate::info!(
                "control {} {} {:?} by {}: {} (v{}, {:.1} ms)",
                cmd.op.as_str(),
                cmd.event_type,
                cmd.instruments,
                cmd.consumer,
                status.as_str(),
                ack.dispatch_version,
                ack.elapsed_ms
            ),
        }
        self.audit(cmd, &ack);
        if self.tracing.is_enabled() {
            let trace = cmd
                .trace_id
                .as_deref()
                .and_then(TraceId::parse_hex)
                .unwrap_or_else(|| self.tracing.new_trace(&mut self.rng));
            let end = std::time::SystemTime::now();
            let start = end - req.received.elapsed();
            self.tracing.span(
                &mut self.rng,
                "control.command",
                trace,
                0,
                start,
                end,
                &[
                    opentelemetry::KeyValue::new("command", cmd.op.as_str()),
                    opentelemetry::KeyValue::new("type", cmd.event_type.as_str()),
                    opentelemetry::KeyValue::new("consumer", cmd.consumer.clone()),
                    opentelemetry::KeyValue::new("status", status.as_str()),
                    opentelemetry::KeyValue::new("dispatch_version", ack.dispatch_version as i64),
                ],
            );
            if status == AckStatus::Accepted
                && let Some(h) = &self.sla_metric
            {
                h.record(
                    ack.elapsed_ms,
                    &[opentelemetry::KeyValue::new("command", cmd.op.as_str())],
                );
            }
        }
        let _ = req.reply.send(ack);
    }

    /// Publishes the `CONTROL.UPDATE` audit event.
    fn audit(&mut self, cmd: &ControlCommand, ack: &Ack) {
        let instrument = match cmd.instruments.as_slice() {
            [one] => self.registry.load().by_name(one).cloned(),
            _ => None,
        };
        let seq = self
            .audit_seq
            .entry(instrument.as_ref().map(|i| i.id()))
            .or_insert(0);
        *seq += 1;
        let mut detail = cmd.instruments.join(",");
        if let Some(e) = &ack.error {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(e);
        }
        let trace_id = cmd
            .trace_id
            .as_deref()
            .and_then(TraceId::parse_hex)
            .unwrap_or_else(|| TraceId::random(&mut self.rng));
        let event = Event {
            event_type: EventType::ControlUpdate,
            source: "meltica.control",
            ts_ms: crate::clock::wall_ms(),
            instrument,
            seq: *seq,
            payload: Payload::Control(Box::new(ControlUpdate {
                command: cmd.op.as_str().to_owned(),
                event_type: cmd.event_type.as_str().to_owned(),
                consumer: cmd.consumer.clone(),
                status: ack.status.as_str().to_owned(),
                dispatch_version: ack.dispatch_version,
                detail,
            })),
            ingress_ns: 0,
            latency_ns: (ack.elapsed_ms * 1e6) as u64,
            trace_id,
            span_id: 0,
            quality: Quality::Live,
        };
        self.bus.publish(Arc::new(event));
    }
}

/// Adds an instrument known only by its canonical name (no exchange to ask).
fn add_by_name(
    registry: &SharedRegistry,
    name: &str,
) -> Result<Instrument, crate::adapter::binance::AdapterError> {
    if let Some(i) = registry.load().by_name(name) {
        return Ok(i.clone());
    }
    let info = crate::schema::InstrumentInfo::named(name)
        .ok_or_else(|| crate::adapter::binance::AdapterError::NotListed(name.to_owned()))?;
    let mut next = (**registry.load()).clone();
    let inst = next.insert(info);
    registry.store(Arc::new(next));
    Ok(inst)
}

/// Collects what has arrived; true when the command is complete (or failed, or timed out).
fn poll(p: &mut Pending) -> bool {
    let mut i = 0;
    while i < p.natives.len() {
        match p.natives[i].try_recv() {
            Ok(Ok(())) => {
                p.natives.swap_remove(i);
            }
            Ok(Err(e)) => {
                p.errors.push(format!("exchange refused: {e}"));
                p.natives.swap_remove(i);
            }
            Err(TryRecvError::Empty) => i += 1,
            Err(TryRecvError::Disconnected) => {
                p.errors
                    .push("connection closed before the exchange confirmed".into());
                p.natives.swap_remove(i);
            }
        }
    }
    if let Some(b) = &p.barrier {
        match b.try_recv() {
            Ok(()) | Err(TryRecvError::Disconnected) => p.barrier = None,
            Err(TryRecvError::Empty) => {}
        }
    }
    (p.natives.is_empty() && p.barrier.is_none()) || Instant::now() > p.deadline
}
