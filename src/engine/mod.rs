//! The engine: builds the pipeline from a [`Config`], runs each stage on its own named
//! thread joined by bounded channels, and shuts it down in order.
//!
//! Shutdown: the adapter's threads stop first; dropping their senders closes the
//! dispatcher's input, which drains and exits, closing the conductor's input in turn; the
//! conductor publishes what is pending and exits; then the bus closes, so every
//! subscription ends after its queue is drained.

pub mod stage;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, unbounded};

use self::stage::{StageFailure, Supervisor};
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::adapter::binance::rest::BinanceRest;
use crate::adapter::binance::{AdapterError, BinanceAdapter, resolve_instruments};
use crate::adapter::{AdapterCounts, AdapterStats, InstrumentRegistry, SharedRegistry};
use crate::bus::http::{ControlHttp, HttpError, Probe};
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

/// Why the engine could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    ControlApi(#[from] HttpError),
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    StageFailed(StageFailure),
}

/// Builds an engine. Subscriptions taken here see every event from the first one.
pub struct EngineBuilder {
    config: Config,
    bus: Arc<MemoryDataBus>,
}

impl EngineBuilder {
    pub fn new(config: Config) -> Self {
        EngineBuilder {
            config,
            bus: Arc::new(MemoryDataBus::new()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Subscribes before the engine starts, so nothing is missed.
    pub fn subscribe(&self, filter: SubscriptionFilter, options: SubscribeOptions) -> Subscription {
        self.bus.subscribe(filter, options)
    }

    /// Resolves instruments with the exchange and starts every stage.
    pub fn start(self) -> Result<Engine, EngineError> {
        Engine::start_with(self.config, self.bus)
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
    pub resyncs: u64,
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
    sla: SlaHistogram,
    sweeper: Option<JoinHandle<()>>,
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

    fn start_with(config: Config, bus: Arc<MemoryDataBus>) -> Result<Engine, EngineError> {
        crate::log::set_level(config.log);
        let bcfg = config.adapter.binance.clone();
        let rest = Arc::new(BinanceRest::new(&bcfg));
        let (registry, skipped) = resolve_with_retry(&rest, &config.instruments)?;
        crate::info!(
            "streaming {} from {} ({})",
            registry
                .all()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", "),
            bcfg.ws_url,
            bcfg.rest_url
        );
        let table =
            DispatchTable::from_config(&config.dispatcher.routes, &registry, bcfg.trade_stream);
        let registry: SharedRegistry = Arc::new(ArcSwap::from_pointee(registry));
        let shared_table: SharedTable = Arc::new(ArcSwap::from_pointee(table.clone()));

        let supervisor = Supervisor::new();
        let store = Arc::new(MemorySnapshotStore::new());
        let dispatcher_stats = Arc::new(DispatcherStats::default());
        let conductor_stats = Arc::new(ConductorStats::new(InstrumentRegistry::MAX));
        let (raw_tx, raw_rx) = bounded(config.bus.stage_queue);
        let (staged_tx, staged_rx) = bounded(config.bus.stage_queue);
        let (snap_tx, snap_rx) = unbounded();
        let (poll_tx, poll_rx) = unbounded();
        let wait = config.threads.wait;
        let pin = config.threads.pin.clone();
        let core = |i: usize| (!pin.is_empty()).then(|| pin[i % pin.len()]);
        let spawn_err = |name: &str| {
            let name = name.to_owned();
            move |source| EngineError::Spawn { name, source }
        };

        let conductor = Conductor::new(
            config.conductor.clone(),
            shared_table.clone(),
            snap_tx,
            bus.clone() as Arc<dyn DataBus>,
            store.clone(),
            conductor_stats.clone(),
        );
        let conductor = supervisor
            .spawn("meltica-conductor".into(), core(1), move || {
                conductor.run(staged_rx, wait)
            })
            .map_err(spawn_err("meltica-conductor"))?;
        let dispatcher = Dispatcher::new(shared_table.clone(), dispatcher_stats.clone());
        let dispatcher = supervisor
            .spawn("meltica-dispatcher".into(), core(0), move || {
                dispatcher.run(raw_rx, staged_tx, wait)
            })
            .map_err(spawn_err("meltica-dispatcher"))?;
        let adapter = BinanceAdapter::start(
            bcfg,
            registry.clone(),
            rest.clone(),
            raw_tx.clone(),
            snap_rx,
            poll_rx,
            supervisor.clone(),
            pin.clone(),
        )?;
        let adapter_stats = adapter.stats();
        let adapter = Arc::new(Mutex::new(Some(adapter)));

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
            raw_tx,
            poll_tx,
            bus.clone() as Arc<dyn DataBus>,
            sla.clone(),
            control_stop.clone(),
        );
        let control_thread = supervisor
            .spawn("meltica-control".into(), None, move || plane.run(ctl_rx))
            .map_err(spawn_err("meltica-control"))?;
        let control = MemoryControlBus::new(ctl_tx, shared_table.clone());

        let sweeper = {
            let (store, stop, ttl) = (store.clone(), control_stop.clone(), engine_ttl(&config));
            supervisor
                .spawn("meltica-sweeper".into(), None, move || {
                    sweep_loop(&store, &stop, ttl)
                })
                .map_err(spawn_err("meltica-sweeper"))?
        };
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
            sla,
            sweeper: Some(sweeper),
            dispatcher: Some(dispatcher),
            conductor: Some(conductor),
            started: Instant::now(),
        };
        if let Some(addr) = engine.config.control.addr {
            let http = ControlHttp::start(
                addr,
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
        }
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
        if let Some(h) = self.dispatcher.take() {
            let _ = h.join();
        }
        if let Some(h) = self.conductor.take() {
            let _ = h.join();
        }
        self.bus.close();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn engine_ttl(config: &Config) -> Duration {
    config.snapshot_store.ttl
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
