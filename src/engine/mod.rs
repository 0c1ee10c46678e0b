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
use crate::adapter::binance::rest::BinanceRest;
use crate::adapter::binance::{AdapterError, BinanceAdapter, resolve_instruments};
use crate::adapter::{AdapterCounts, AdapterStats, InstrumentRegistry};
use crate::bus::{DataBus, MemoryDataBus, SubscribeOptions, Subscription, SubscriptionFilter};
use crate::conductor::{Conductor, ConductorStats};
use crate::config::Config;
use crate::dispatcher::{DispatchTable, Dispatcher, DispatcherStats};
use crate::schema::{EventType, Instrument, Quality};
use crate::snapshot::{Key, MemorySnapshotStore, Record, SnapshotStore};

/// Why the engine could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Adapter(#[from] AdapterError),
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

/// A running engine. Dropping it shuts it down.
pub struct Engine {
    config: Config,
    registry: Arc<InstrumentRegistry>,
    skipped: Vec<String>,
    bus: Arc<MemoryDataBus>,
    store: Arc<MemorySnapshotStore>,
    supervisor: Supervisor,
    adapter: Option<BinanceAdapter>,
    adapter_stats: Arc<AdapterStats>,
    dispatcher_stats: Arc<DispatcherStats>,
    conductor_stats: Arc<ConductorStats>,
    dispatcher: Option<JoinHandle<()>>,
    conductor: Option<JoinHandle<()>>,
    started: Instant,
    dispatch_version: u64,
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
        let registry = Arc::new(registry);
        let instruments: Vec<Instrument> = registry.all().to_vec();
        crate::info!(
            "streaming {} from {} ({})",
            instruments
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", "),
            bcfg.ws_url,
            bcfg.rest_url
        );

        let table =
            DispatchTable::from_config(&config.dispatcher.routes, &registry, bcfg.trade_stream);
        let topics = table.all_topics();
        let pollers = table.all_pollers();
        let books: Vec<(bool, bool)> = instruments
            .iter()
            .map(|i| (table.needs_book(i.id()), table.fuses(i.id())))
            .collect();
        let dispatch_version = table.version;

        let supervisor = Supervisor::new();
        let store = Arc::new(MemorySnapshotStore::new());
        let dispatcher_stats = Arc::new(DispatcherStats::default());
        let conductor_stats = Arc::new(ConductorStats::new(instruments.len()));
        let (raw_tx, raw_rx) = bounded(config.bus.stage_queue);
        let (staged_tx, staged_rx) = bounded(config.bus.stage_queue);
        let (snap_tx, snap_rx) = unbounded();
        let wait = config.threads.wait;
        let pin = config.threads.pin.clone();
        let core = |i: usize| (!pin.is_empty()).then(|| pin[i % pin.len()]);

        let conductor = Conductor::new(
            config.conductor.clone(),
            &instruments,
            &books,
            snap_tx,
            bus.clone() as Arc<dyn DataBus>,
            &store,
            conductor_stats.clone(),
        );
        let conductor = supervisor
            .spawn("meltica-conductor".into(), core(1), move || {
                conductor.run(staged_rx, wait)
            })
            .map_err(|source| EngineError::Spawn {
                name: "meltica-conductor".into(),
                source,
            })?;
        let dispatcher = Dispatcher::new(table, instruments.len(), dispatcher_stats.clone());
        let dispatcher = supervisor
            .spawn("meltica-dispatcher".into(), core(0), move || {
                dispatcher.run(raw_rx, staged_tx, wait)
            })
            .map_err(|source| EngineError::Spawn {
                name: "meltica-dispatcher".into(),
                source,
            })?;
        let mut adapter = BinanceAdapter::start(
            bcfg,
            registry.clone(),
            rest,
            raw_tx,
            snap_rx,
            pollers,
            supervisor.clone(),
            pin.clone(),
        )?;
        let adapter_stats = adapter.stats();
        // Acks are not awaited here: the first frames arrive once the exchange confirms.
        let _acks = adapter.subscribe(&topics)?;
        crate::info!(
            "subscribed {} streams over {} connection(s)",
            topics.len(),
            adapter.connection_count()
        );

        Ok(Engine {
            config,
            registry,
            skipped,
            bus,
            store,
            supervisor,
            adapter: Some(adapter),
            adapter_stats,
            dispatcher_stats,
            conductor_stats,
            dispatcher: Some(dispatcher),
            conductor: Some(conductor),
            started: Instant::now(),
            dispatch_version,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Instruments being streamed, in id order.
    pub fn instruments(&self) -> &[Instrument] {
        self.registry.all()
    }

    /// Configured instruments the exchange does not list.
    pub fn skipped_instruments(&self) -> &[String] {
        &self.skipped
    }

    pub fn dispatch_version(&self) -> u64 {
        self.dispatch_version
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
        if let Some(a) = self.adapter.take() {
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
