//! The engine: builds the pipeline from a [`Config`], runs each stage on its own named
//! thread joined by bounded channels, and shuts it down in order.
//!
//! Shutdown: the adapter's threads stop first; dropping their senders closes the
//! dispatcher's input, which drains and exits, closing the conductor's input in turn; the
//! conductor publishes what is pending and exits; then the bus closes, so every
//! subscription ends after its queue is drained.

mod backends;
pub mod stage;

pub use backends::BackendStats;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use self::stage::{StageFailure, Supervisor};
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::adapter::binance::parse::{Frame, ParseError, parse_depth_snapshot, parse_frame};
use crate::adapter::binance::rest::BinanceRest;
use crate::adapter::binance::{AdapterError, BinanceAdapter, SnapshotRequest, resolve_instruments};
use crate::adapter::{
    AdapterCounts, AdapterStats, Ingress, InstrumentRegistry, RawBody, RawInstance, SharedRegistry,
};
use crate::bus::http::{ControlHttp, HttpError, Probe};
use crate::bus::ws::EventServer;
use crate::bus::{
    ControlBus, DataBus, MemoryControlBus, MemoryDataBus, SubscribeOptions, Subscription,
    SubscriptionFilter,
};
use crate::conductor::{Conductor, ConductorStats};
use crate::config::Config;
use crate::dispatcher::control::{ControlPlane, SlaHistogram, sla_histogram};
use crate::dispatcher::{DispatchTable, Dispatcher, DispatcherStats, SharedTable};
use crate::schema::{EventType, Instrument, Quality};
use crate::snapshot::{Key, MemorySnapshotStore, Record, SnapshotStore};
use crate::telemetry::pipeline::{
    Instruments, MetricSources, QueueProbe, Tracing, register_metrics,
};
use crate::telemetry::{Telemetry, TelemetryError, TelemetrySettings};

/// Why the engine could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    ControlApi(#[from] HttpError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    StageFailed(StageFailure),
    #[error(
        "cannot start the WebSocket endpoint on {addr}: {source} (set bus.ws_addr or MELTICA_WS_ADDR, e.g. 127.0.0.1:0)"
    )]
    EventsEndpoint {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A configured backend (Redis, NATS) could not start.
    #[error("{0}")]
    Backend(String),
}

/// Builds an engine. Subscriptions taken here see every event from the first one.
pub struct EngineBuilder {
    config: Config,
    bus: Arc<MemoryDataBus>,
    ingress: (Sender<Ingress>, Receiver<Ingress>),
    snapshots: (Sender<SnapshotRequest>, Receiver<SnapshotRequest>),
    registry: SharedRegistry,
    adapter_stats: Arc<AdapterStats>,
    /// A host feeds frames itself: no exchange connection.
    external: bool,
    recorder: Option<crate::adapter::record::Recorder>,
    deterministic: bool,
}

impl EngineBuilder {
    pub fn new(config: Config) -> Self {
        let ingress = bounded(config.bus.stage_queue);
        EngineBuilder {
            config,
            bus: Arc::new(MemoryDataBus::new()),
            ingress,
            snapshots: unbounded(),
            registry: Arc::new(ArcSwap::from_pointee(InstrumentRegistry::default())),
            adapter_stats: Arc::new(AdapterStats::default()),
            external: false,
            recorder: None,
            deterministic: false,
        }
    }

    /// Records every frame and REST body the adapter receives (see
    /// [`crate::adapter::record`]).
    pub fn record(mut self, recorder: crate::adapter::record::Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Replay mode: the same input gives byte-identical output. Frames must be pushed with
    /// their receive times ([`FrameSource::push_frame_received`]); event times come from
    /// them instead of the clock, trace ids from a fixed seed, and `latencyNs` is 0 (a
    /// replay's latency says nothing about the recorded run).
    pub fn deterministic(mut self) -> Self {
        self.deterministic = true;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Subscribes before the engine starts, so nothing is missed.
    pub fn subscribe(&self, filter: SubscriptionFilter, options: SubscribeOptions) -> Subscription {
        self.bus.subscribe(filter, options)
    }

    /// The host feeds the engine itself (raw Binance frames, REST snapshots, a replay)
    /// instead of connecting to the exchange. Instruments come from the config by name.
    pub fn frame_source(&mut self) -> FrameSource {
        self.external = true;
        FrameSource {
            tx: self.ingress.0.clone(),
            registry: self.registry.clone(),
            requests: self.snapshots.1.clone(),
            stats: self.adapter_stats.clone(),
        }
    }

    /// Resolves instruments with the exchange (unless a frame source feeds the engine) and
    /// starts every stage.
    pub fn start(self) -> Result<Engine, EngineError> {
        Engine::start_with(self)
    }
}

/// Why a pushed frame was not ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("the engine has stopped")]
    Closed,
}

/// A host's way into the pipeline: frames go through the real Binance parser, then the
/// dispatcher, conductor and bus like frames read off a socket. Cheap to clone.
#[derive(Clone)]
pub struct FrameSource {
    tx: Sender<Ingress>,
    registry: SharedRegistry,
    requests: Receiver<SnapshotRequest>,
    stats: Arc<AdapterStats>,
}

impl FrameSource {
    /// Ingests one WebSocket text frame (combined-stream or raw). Replies to requests
    /// (`{"result":…,"id":…}`) and shutdown notices are accepted and ignored. Blocks while
    /// the pipeline is full.
    pub fn push_frame(&self, text: &str) -> Result<(), FrameError> {
        self.push(text, crate::clock::mono_ns(), crate::clock::wall_ms)
    }

    /// Like [`FrameSource::push_frame`], for a replay in deterministic mode: `received_ns`
    /// is the recorded receive time (nanoseconds since the epoch).
    pub fn push_frame_received(&self, text: &str, received_ns: u64) -> Result<(), FrameError> {
        self.push(text, received_ns, || (received_ns / 1_000_000) as i64)
    }

    /// `received_ms` is read only for a frame that carries no event time of its own.
    fn push(
        &self,
        text: &str,
        ingress_ns: u64,
        received_ms: impl FnOnce() -> i64,
    ) -> Result<(), FrameError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.frames.fetch_add(1, Relaxed);
        match parse_frame(text, &self.registry.load(), ingress_ns) {
            Ok(Frame::Instance(mut raw)) => {
                self.stats.instances.fetch_add(1, Relaxed);
                raw.stamp_received(received_ms);
                self.tx
                    .send(Ingress::Raw(raw))
                    .map_err(|_| FrameError::Closed)
            }
            Ok(Frame::Response(_) | Frame::ServerShutdown) => Ok(()),
            Err(e) => {
                match e {
                    ParseError::Malformed => &self.stats.malformed,
                    ParseError::UnknownType => &self.stats.unknown_type,
                    ParseError::UnknownSymbol => &self.stats.unknown_symbol,
                }
                .fetch_add(1, Relaxed);
                Err(e.into())
            }
        }
    }

    /// Ingests a `GET /api/v3/depth` response body for `instrument` (`BTC-USDT`).
    pub fn push_depth_snapshot(&self, instrument: &str, body: &str) -> Result<(), FrameError> {
        self.push_snapshot(
            instrument,
            body,
            crate::clock::mono_ns(),
            crate::clock::wall_ms(),
        )
    }

    /// Like [`FrameSource::push_depth_snapshot`], with the recorded receive time
    /// (nanoseconds since the epoch) for a deterministic replay.
    pub fn push_depth_snapshot_received(
        &self,
        instrument: &str,
        body: &str,
        received_ns: u64,
    ) -> Result<(), FrameError> {
        self.push_snapshot(
            instrument,
            body,
            received_ns,
            (received_ns / 1_000_000) as i64,
        )
    }

    fn push_snapshot(
        &self,
        instrument: &str,
        body: &str,
        ingress_ns: u64,
        received_ms: i64,
    ) -> Result<(), FrameError> {
        let inst = self
            .registry
            .load()
            .by_name(instrument)
            .cloned()
            .ok_or(FrameError::Parse(ParseError::UnknownSymbol))?;
        let snap = parse_depth_snapshot(body)?;
        self.stats
            .snapshots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let raw = RawInstance {
            instrument: inst,
            ingress_ns,
            body: RawBody::DepthSnapshot(snap, received_ms),
            trace: None,
        };
        self.tx
            .send(Ingress::Raw(raw))
            .map_err(|_| FrameError::Closed)
    }

    /// Snapshot requests from the conductor (a book needs a snapshot to get in sync).
    pub fn snapshot_requests(&self) -> &Receiver<SnapshotRequest> {
        &self.requests
    }
}

/// Counters across the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineCounts {
    pub adapter: AdapterCounts,
    pub ingested: [u64; EventType::COUNT],
    pub filtered: [u64; EventType::COUNT],
    pub rejected: [u64; EventType::COUNT],
    pub published: [u64; EventType::COUNT],
    /// Not published, with a reason (today: duplicate or replayed diffs).
    pub dropped: [u64; EventType::COUNT],
    /// Fused states replaced within a throttle window.
    pub coalesced: u64,
    pub resyncs: u64,
}

impl EngineCounts {
    /// Types that enter from the exchange (the conservation law applies to them).
    pub const INGESTED_TYPES: [EventType; 5] = [
        EventType::Ticker,
        EventType::Trade,
        EventType::OrderbookTop,
        EventType::OrderbookSnapshot,
        EventType::OrderbookDelta,
    ];

    /// `ingested − published − filtered − dropped − rejected` for a type: events in flight
    /// while running, and exactly zero once the engine has drained.
    pub fn unaccounted(&self, t: EventType) -> i64 {
        let i = t.index();
        self.ingested[i] as i64
            - self.published[i] as i64
            - self.filtered[i] as i64
            - self.dropped[i] as i64
            - self.rejected[i] as i64
    }
}

/// Control-command latency summary, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlaSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Share of commands effective within 2 s.
    pub within_2s: f64,
}

/// A running engine. Dropping it shuts it down.
pub struct Engine {
    config: Config,
    registry: SharedRegistry,
    skipped: Vec<String>,
    bus: Arc<MemoryDataBus>,
    store: Arc<MemorySnapshotStore>,
    supervisor: Supervisor,
    adapter: Arc<Mutex<Option<BinanceAdapter>>>,
    adapter_stats: Arc<AdapterStats>,
    dispatcher_stats: Arc<DispatcherStats>,
    conductor_stats: Arc<ConductorStats>,
    table: SharedTable,
    control: MemoryControlBus,
    control_stop: Arc<AtomicBool>,
    control_thread: Option<JoinHandle<()>>,
    http: Option<ControlHttp>,
    events_ws: Option<EventServer>,
    backends: backends::Backends,
    sla: SlaHistogram,
    sweeper: Option<JoinHandle<()>>,
    /// Sends the stop marker to the dispatcher at shutdown.
    ingress: Sender<Ingress>,
    telemetry: Telemetry,
    _instruments: Option<Instruments>,
    dispatcher: Option<JoinHandle<()>>,
    conductor: Option<JoinHandle<()>>,
    started: Instant,
}

impl Engine {
    pub fn builder(config: Config) -> EngineBuilder {
        EngineBuilder::new(config)
    }

    /// Starts an engine with a fresh bus.
    pub fn start(config: Config) -> Result<Engine, EngineError> {
        EngineBuilder::new(config).start()
    }

    fn start_with(builder: EngineBuilder) -> Result<Engine, EngineError> {
        let EngineBuilder {
            config,
            bus,
            ingress: (raw_tx, raw_rx),
            snapshots: (snap_tx, snap_rx),
            registry,
            adapter_stats,
            external,
            recorder,
            deterministic,
        } = builder;
        crate::log::set_level(config.log);
        let t = &config.telemetry;
        let telemetry = Telemetry::init(&TelemetrySettings {
            endpoint: t.endpoint.clone(),
            service_name: t.service_name.clone(),
            disabled: t.disabled,
            batch_delay: t.batch_delay,
            metric_interval: t.metric_interval,
        })?;
        let tracing = Tracing::new(telemetry.clone(), t.sampling);
        if telemetry.is_enabled() {
            crate::info!(
                "telemetry: OTLP/HTTP to {} (sampling {})",
                t.endpoint.as_deref().unwrap_or(""),
                t.sampling
            );
        }
        // The control port first: a taken port is reported before the exchange is asked.
        let control_listener = match config.control.addr {
            Some(addr) => Some(ControlHttp::bind(addr, config.control.token.is_some())?),
            None => None,
        };
        let events_ws = match config.bus.ws_addr {
            Some(addr) => Some(
                EventServer::start(
                    addr,
                    config.control.token.clone(),
                    bus.clone() as Arc<dyn DataBus>,
                    (config.bus.subscriber_queue, config.bus.policy),
                )
                .map_err(|e| EngineError::EventsEndpoint { addr, source: e })?,
            ),
            None => None,
        };
        let bcfg = config.adapter.binance.clone();
        let rest = (!external).then(|| Arc::new(BinanceRest::new(&bcfg)));
        let mine = config.shard_instruments();
        if config.shard.count > 1 {
            crate::info!(
                "shard {} of {}: {} of {} instruments",
                config.shard.index,
                config.shard.count,
                mine.len(),
                config.instruments.len()
            );
        }
        let (resolved, skipped) = match &rest {
            Some(rest) => resolve_with_retry(rest, &mine)?,
            None => (local_registry(&mine), Vec::new()),
        };
        crate::info!(
            "streaming {} from {}",
            resolved
                .all()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", "),
            if external {
                "a host frame source".to_owned()
            } else {
                format!("{} ({})", bcfg.ws_url, bcfg.rest_url)
            }
        );
        let table =
            DispatchTable::from_config(&config.dispatcher.routes, &resolved, bcfg.trade_stream);
        registry.store(Arc::new(resolved));
        let shared_table: SharedTable = Arc::new(ArcSwap::from_pointee(table.clone()));

        let supervisor = Supervisor::new();
        let store = Arc::new(MemorySnapshotStore::new());
        let dispatcher_stats = Arc::new(DispatcherStats::default());
        let conductor_stats = Arc::new(ConductorStats::new(InstrumentRegistry::MAX));
        let (staged_tx, staged_rx) = bounded(config.bus.stage_queue);
        let queue_probes: Vec<QueueProbe> = vec![
            ("ingress", {
                let rx = raw_rx.clone();
                Box::new(move || rx.len() as u64)
            }),
            ("conductor", {
                let rx = staged_rx.clone();
                Box::new(move || rx.len() as u64)
            }),
        ];
        let (poll_tx, poll_rx) = unbounded();
        let wait = config.threads.wait;
        let pin = config.threads.pin.clone();
        let core = |i: usize| (!pin.is_empty()).then(|| pin[i % pin.len()]);
        let spawn_err = |name: &str| {
            let name = name.to_owned();
            move |source| EngineError::Spawn { name, source }
        };

        let mut backends = backends::Backends::start(&config, &bus)?;
        let mut conductor = Conductor::new(
            config.conductor.clone(),
            shared_table.clone(),
            snap_tx,
            bus.clone() as Arc<dyn DataBus>,
            store.clone(),
            conductor_stats.clone(),
        )
        .with_tracing(tracing.clone());
        if let Some(m) = backends.mirror() {
            conductor = conductor.with_mirror(m);
        }
        if deterministic {
            conductor = conductor.deterministic();
        }
        let conductor = supervisor
            .spawn("meltica-conductor".into(), core(1), move || {
                conductor.run(staged_rx, wait)
            })
            .map_err(spawn_err("meltica-conductor"))?;
        let mut dispatcher = Dispatcher::new(shared_table.clone(), dispatcher_stats.clone())
            .with_tracing(tracing.clone());
        if deterministic {
            dispatcher = dispatcher.deterministic();
        }
        let dispatcher = supervisor
            .spawn("meltica-dispatcher".into(), core(0), move || {
                dispatcher.run(raw_rx, staged_tx, wait)
            })
            .map_err(spawn_err("meltica-dispatcher"))?;
        let adapter = match &rest {
            Some(rest) => Some(BinanceAdapter::start(
                bcfg,
                registry.clone(),
                rest.clone(),
                raw_tx.clone(),
                snap_rx,
                poll_rx,
                supervisor.clone(),
                pin.clone(),
                adapter_stats.clone(),
                tracing.clone(),
                recorder,
            )?),
            None => None,
        };
        let adapter = Arc::new(Mutex::new(adapter));

        // The control plane subscribes the config's topics like any other change.
        let topics: Vec<String> = table.topics().into_iter().collect();
        let _ = poll_tx.send(table.pollers());
        if let Some(a) = adapter.lock().as_mut() {
            // Acks are not awaited: the first frames arrive once the exchange confirms.
            let _acks = a.subscribe(&topics)?;
            crate::info!(
                "subscribing {} streams over {} connection(s)",
                topics.len(),
                a.connection_count()
            );
        }
        let sla = sla_histogram();
        let control_stop = Arc::new(AtomicBool::new(false));
        let (ctl_tx, ctl_rx) = unbounded();
        let plane = ControlPlane::new(
            table,
            shared_table.clone(),
            registry.clone(),
            rest,
            adapter.clone(),
            raw_tx.clone(),
            poll_tx,
            bus.clone() as Arc<dyn DataBus>,
            sla.clone(),
            control_stop.clone(),
        )
        .with_tracing(tracing.clone());
        let control_thread = supervisor
            .spawn("meltica-control".into(), None, move || plane.run(ctl_rx))
            .map_err(spawn_err("meltica-control"))?;
        let control = MemoryControlBus::new(ctl_tx, shared_table.clone());
        backends.start_control(&config, &control)?;

        let sweeper = {
            let (store, stop, ttl) = (
                store.clone(),
                control_stop.clone(),
                config.snapshot_store.ttl,
            );
            supervisor
                .spawn("meltica-sweeper".into(), None, move || {
                    sweep_loop(&store, &stop, ttl)
                })
                .map_err(spawn_err("meltica-sweeper"))?
        };
        let instruments = telemetry.is_enabled().then(|| {
            register_metrics(
                &telemetry.meter(),
                MetricSources {
                    dispatcher: dispatcher_stats.clone(),
                    conductor: conductor_stats.clone(),
                    adapter: adapter_stats.clone(),
                    registry: registry.clone(),
                    table: shared_table.clone(),
                    queues: queue_probes,
                },
            )
        });
        let mut engine = Engine {
            config,
            registry,
            skipped,
            bus,
            store,
            supervisor,
            adapter,
            adapter_stats,
            dispatcher_stats,
            conductor_stats,
            table: shared_table,
            control,
            control_stop,
            control_thread: Some(control_thread),
            http: None,
            events_ws,
            backends,
            sla,
            sweeper: Some(sweeper),
            ingress: raw_tx,
            _instruments: instruments,
            telemetry,
            dispatcher: Some(dispatcher),
            conductor: Some(conductor),
            started: Instant::now(),
        };
        if let Some(listener) = control_listener {
            let http = ControlHttp::serve(
                listener,
                engine.config.control.token.clone(),
                Arc::new(engine.control.clone()) as Arc<dyn ControlBus>,
                engine.health_probe(),
                engine.metrics_probe(),
            )?;
            engine.http = Some(http);
        }
        Ok(engine)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Instruments known to the engine, in id order (config ones first, then the ones
    /// subscribed at runtime).
    pub fn instruments(&self) -> Vec<Instrument> {
        self.registry.load().all().to_vec()
    }

    /// Configured instruments the exchange does not list.
    pub fn skipped_instruments(&self) -> &[String] {
        &self.skipped
    }

    pub fn dispatch_version(&self) -> u64 {
        self.table.load().version
    }

    /// The in-process control handle: subscribe, unsubscribe, update filters.
    pub fn control(&self) -> MemoryControlBus {
        self.control.clone()
    }

    /// Where the HTTP control API listens, if enabled.
    pub fn control_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.addr())
    }

    /// Command-to-effective times of accepted control commands.
    pub fn control_sla(&self) -> SlaSummary {
        sla_summary(&self.sla)
    }

    fn health_probe(&self) -> Probe {
        let registry = self.registry.clone();
        let stats = self.conductor_stats.clone();
        let adapter = self.adapter_stats.clone();
        let supervisor = self.supervisor.clone();
        let table = self.table.clone();
        Arc::new(move || {
            let failed = supervisor.failure();
            let connected = adapter.connections.load(Ordering::Relaxed) > 0;
            let status = match (&failed, connected) {
                (Some(_), _) => "failed",
                (None, false) => "starting",
                (None, true) => "ok",
            };
            let mut body = format!(
                "{{\"status\":\"{status}\",\"dispatchVersion\":{},\"books\":{{",
                table.load().version
            );
            let t = table.load();
            let reg = registry.load();
            let mut first = true;
            for i in reg.all().iter().filter(|i| t.needs_book(i.id())) {
                if !first {
                    body.push(',');
                }
                first = false;
                body.push_str(&format!(
                    "\"{}\":\"{}\"",
                    i.name(),
                    stats.status(i.id()).as_str()
                ));
            }
            body.push_str("}}");
            (if status == "ok" { 200 } else { 503 }, body)
        })
    }

    fn metrics_probe(&self) -> Probe {
        let d = self.dispatcher_stats.clone();
        let c = self.conductor_stats.clone();
        let a = self.adapter_stats.clone();
        let sla = self.sla.clone();
        Arc::new(move || {
            use std::fmt::Write as _;
            let mut o = String::new();
            for (name, arr) in [
                ("meltica_events_ingested_total", &d.ingested),
                ("meltica_events_filtered_total", &d.filtered),
                ("meltica_events_rejected_total", &d.rejected),
            ] {
                let _ = writeln!(o, "# TYPE {name} counter");
                for t in EventType::ALL {
                    let _ = writeln!(
                        o,
                        "{name}{{type=\"{t}\"}} {}",
                        arr[t.index()].load(Ordering::Relaxed)
                    );
                }
            }
            let _ = writeln!(o, "# TYPE meltica_events_published_total counter");
            for t in EventType::ALL {
                let _ = writeln!(
                    o,
                    "meltica_events_published_total{{type=\"{t}\"}} {}",
                    c.published_of(t)
                );
            }
            let counts = a.counts();
            let _ = writeln!(
                o,
                "# TYPE meltica_ws_reconnects_total counter\nmeltica_ws_reconnects_total {}",
                counts.reconnects
            );
            let _ = writeln!(
                o,
                "# TYPE meltica_frames_malformed_total counter\nmeltica_frames_malformed_total {}",
                counts.malformed
            );
            let resyncs: u64 = c.resyncs.iter().map(|r| r.load(Ordering::Relaxed)).sum();
            let _ = writeln!(
                o,
                "# TYPE meltica_book_resyncs_total counter\nmeltica_book_resyncs_total {resyncs}"
            );
            let s = sla_summary(&sla);
            let _ = writeln!(o, "# TYPE meltica_control_sla_seconds summary");
            for (q, v) in [
                ("0.5", s.p50_ms),
                ("0.95", s.p95_ms),
                ("0.99", s.p99_ms),
                ("1", s.max_ms),
            ] {
                let _ = writeln!(
                    o,
                    "meltica_control_sla_seconds{{quantile=\"{q}\"}} {}",
                    v / 1e3
                );
            }
            let _ = writeln!(o, "meltica_control_sla_seconds_count {}", s.count);
            (200, o)
        })
    }

    /// Where the WebSocket endpoint for consumers listens, when it is on.
    pub fn events_addr(&self) -> Option<std::net::SocketAddr> {
        self.events_ws.as_ref().map(|s| s.addr())
    }

    /// What the Redis and NATS backends have done so far.
    pub fn backend_stats(&self) -> BackendStats {
        self.backends.stats()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Subscribes to published events from now on.
    pub fn subscribe(&self, filter: SubscriptionFilter, options: SubscribeOptions) -> Subscription {
        self.bus.subscribe(filter, options)
    }

    pub fn bus(&self) -> Arc<MemoryDataBus> {
        self.bus.clone()
    }

    /// The snapshot store holding the latest fused book per instrument.
    pub fn snapshots(&self) -> Arc<MemorySnapshotStore> {
        self.store.clone()
    }

    /// The latest fused book of an instrument (lock-free read).
    pub fn latest_book(&self, instrument: &str) -> Option<Arc<Record>> {
        self.store.get(&Key::fused(instrument)).ok().flatten()
    }

    /// Book status of an instrument.
    pub fn book_status(&self, instrument: &Instrument) -> Quality {
        self.conductor_stats.status(instrument.id())
    }

    pub fn conductor_stats(&self) -> &ConductorStats {
        &self.conductor_stats
    }

    /// A snapshot of every counter.
    pub fn counts(&self) -> EngineCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let d = &self.dispatcher_stats;
        let mut c = EngineCounts {
            adapter: self.adapter_stats.counts(),
            ..Default::default()
        };
        for t in EventType::ALL {
            let i = t.index();
            c.ingested[i] = d.ingested[i].load(Relaxed);
            c.filtered[i] = d.filtered[i].load(Relaxed);
            c.rejected[i] = d.rejected[i].load(Relaxed);
            c.published[i] = self.conductor_stats.published_of(t);
            c.dropped[i] = self.conductor_stats.dropped_duplicate[i].load(Relaxed);
        }
        c.coalesced = self
            .conductor_stats
            .coalesced
            .iter()
            .map(|r| r.load(Relaxed))
            .sum();
        c.resyncs = self
            .conductor_stats
            .resyncs
            .iter()
            .map(|r| r.load(Relaxed))
            .sum();
        c
    }

    /// The first stage failure, if a stage panicked.
    pub fn failure(&self) -> Option<StageFailure> {
        self.supervisor.failure()
    }

    /// Ready when a stage panics.
    pub fn failure_signal(&self) -> Receiver<()> {
        self.supervisor.failure_signal()
    }

    /// Stops sources, drains the pipeline, joins every thread in order, closes the bus.
    pub fn shutdown(mut self) -> Result<EngineCounts, EngineError> {
        self.stop();
        let counts = self.counts();
        match self.supervisor.failure() {
            Some(f) => Err(EngineError::StageFailed(f)),
            None => Ok(counts),
        }
    }

    fn stop(&mut self) {
        if let Some(h) = self.http.take() {
            h.shutdown();
        }
        self.backends.stop_control();
        self.control_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.control_thread.take() {
            let _ = h.join();
        }
        if let Some(h) = self.sweeper.take() {
            let _ = h.join();
        }
        let adapter = self.adapter.lock().take();
        if let Some(a) = adapter {
            a.shutdown();
        }
        // Sources are stopped; a host's frame source may still hold a sender, so tell the
        // dispatcher to finish what is queued and exit.
        let _ = self.ingress.send(Ingress::Stop);
        if let Some(h) = self.dispatcher.take() {
            let _ = h.join();
        }
        if let Some(h) = self.conductor.take() {
            let _ = h.join();
        }
        self.bus.close();
        if let Some(s) = self.events_ws.take() {
            s.shutdown();
        }
        self.backends.stop();
        // Last: everything recorded is flushed to the collector.
        self._instruments.take();
        self.telemetry.shutdown();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes snapshot records not written within the TTL, a few times per TTL.
fn sweep_loop(store: &MemorySnapshotStore, stop: &AtomicBool, ttl: Duration) {
    let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() >= next {
            next = Instant::now() + every;
            let n = store.sweep(crate::clock::wall_ms(), ttl.as_millis() as i64);
            if n > 0 {
                crate::debug!("swept {n} expired snapshot records");
            }
        }
    }
}

fn sla_summary(h: &SlaHistogram) -> SlaSummary {
    let h = h.lock();
    if h.is_empty() {
        return SlaSummary::default();
    }
    let ms = |us: u64| us as f64 / 1e3;
    SlaSummary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        within_2s: h.count_between(0, 2_000_000) as f64 / h.len() as f64,
    }
}

/// Instruments from their canonical names alone (no exchange to ask).
fn local_registry(names: &[String]) -> InstrumentRegistry {
    let mut r = InstrumentRegistry::default();
    for info in names
        .iter()
        .filter_map(|n| crate::schema::InstrumentInfo::named(n))
    {
        r.insert(info);
    }
    r
}

fn resolve_with_retry(
    rest: &BinanceRest,
    names: &[String],
) -> Result<(InstrumentRegistry, Vec<String>), EngineError> {
    let mut attempt = 0;
    loop {
        match resolve_instruments(rest, names) {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() && attempt < 3 => {
                attempt += 1;
                let delay = Duration::from_millis(250 << attempt);
                crate::warn!("{e}; retrying in {delay:?}");
                std::thread::sleep(delay);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
