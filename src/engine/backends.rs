//! The optional backends an engine starts beside its stages: the Redis write-through of
//! fused books (feature `redis`), and the NATS bridge and control server (feature `nats`).
//! Each runs on its own thread; the data path only ever hands them work without waiting.

use std::sync::Arc;

use crate::bus::MemoryDataBus;
#[cfg(feature = "nats")]
use crate::bus::nats::{JetStreamConfig, NatsBusConfig, NatsControlServer, NatsPublisher};
#[cfg(feature = "nats")]
use crate::bus::{ControlBus, DataBus, SubscribeOptions, SubscriptionFilter};
use crate::config::{BusBackend, Config, StoreBackend};
use crate::snapshot::SnapshotMirror;
#[cfg(feature = "redis")]
use crate::snapshot::redis::{RedisSnapshotStore, RedisWriteThrough};

use super::EngineError;

/// Books queued for Redis before older ones for the same key are superseded.
#[cfg(feature = "redis")]
const REDIS_QUEUE: usize = 4096;

/// The running backends.
#[derive(Default)]
pub(crate) struct Backends {
    #[cfg(feature = "redis")]
    redis: Option<Arc<RedisWriteThrough>>,
    #[cfg(feature = "nats")]
    nats: Option<NatsPublisher>,
    #[cfg(feature = "nats")]
    nats_control: Option<NatsControlServer>,
    /// Identifies this run of the engine in message ids (its start time in milliseconds).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    run: String,
}

/// What the backends have done so far, for reports and `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct BackendStats {
    #[cfg(feature = "redis")]
    pub redis: Option<crate::snapshot::redis::WriteThroughStats>,
    #[cfg(feature = "nats")]
    pub nats: Option<crate::bus::nats::NatsBusStats>,
    /// Events the NATS bridge's queue dropped (by its backpressure policy).
    pub nats_dropped: u64,
}

#[cfg_attr(all(feature = "redis", feature = "nats"), allow(dead_code))]
fn missing(feature: &str) -> EngineError {
    EngineError::Backend(format!(
        "backend `{feature}` needs meltica built with the `{feature}` feature (cargo build --features {feature})"
    ))
}

impl Backends {
    /// Starts the snapshot mirror and the NATS bridge. The bridge subscribes to `bus` here,
    /// before any stage runs, so it sees every event.
    pub fn start(config: &Config, bus: &MemoryDataBus) -> Result<Backends, EngineError> {
        #[allow(unused_mut, clippy::needless_update)]
        let mut b = Backends {
            run: crate::clock::wall_ms().to_string(),
            ..Backends::default()
        };
        match &config.snapshot_store.backend {
            StoreBackend::Memory => {}
            #[cfg(feature = "redis")]
            StoreBackend::Redis(r) => {
                let store = RedisSnapshotStore::new(&r.url, &r.prefix)
                    .map_err(|e| EngineError::Backend(format!("snapshot store: {e}")))?;
                store.ping().map_err(|e| {
                    EngineError::Backend(format!(
                        "snapshot store: {e}; start Redis or set snapshot_store.backend: memory"
                    ))
                })?;
                crate::info!(
                    "snapshot store: writing fused books through to redis at {}",
                    store.addr()
                );
                b.redis = Some(Arc::new(RedisWriteThrough::start(store, REDIS_QUEUE)));
            }
            #[cfg(not(feature = "redis"))]
            StoreBackend::Redis(_) => return Err(missing("redis")),
        }
        match &config.bus.backend {
            BusBackend::Memory => {}
            #[cfg(feature = "nats")]
            BusBackend::Nats(n) => {
                let sub = bus.subscribe(
                    SubscriptionFilter::all(),
                    SubscribeOptions::new("nats", n.queue, n.policy),
                );
                let publisher = NatsPublisher::start(nats_config(config, &b.run), sub)
                    .map_err(|e| EngineError::Backend(format!("data bus: {e}")))?;
                crate::info!("data bus: publishing to NATS at {}", n.url);
                b.nats = Some(publisher);
            }
            #[cfg(not(feature = "nats"))]
            BusBackend::Nats(_) => {
                let _ = bus;
                return Err(missing("nats"));
            }
        }
        Ok(b)
    }

    /// The snapshot mirror for the conductor, if one runs.
    pub fn mirror(&self) -> Option<Arc<dyn SnapshotMirror>> {
        #[cfg(feature = "redis")]
        if let Some(r) = &self.redis {
            return Some(r.clone() as Arc<dyn SnapshotMirror>);
        }
        None
    }

    /// Serves control commands over NATS when configured.
    #[cfg_attr(not(feature = "nats"), allow(unused_variables))]
    pub fn start_control(
        &mut self,
        config: &Config,
        control: &crate::bus::MemoryControlBus,
    ) -> Result<(), EngineError> {
        #[cfg(feature = "nats")]
        if let BusBackend::Nats(n) = &config.bus.backend
            && n.control
        {
            let server = NatsControlServer::start(
                &nats_config(config, &self.run),
                Arc::new(control.clone()) as Arc<dyn ControlBus>,
            )
            .map_err(|e| EngineError::Backend(format!("control over NATS: {e}")))?;
            crate::info!(
                "control: serving requests on NATS subject {}",
                server.subject()
            );
            self.nats_control = Some(server);
        }
        Ok(())
    }

    /// Stops taking control commands.
    pub fn stop_control(&mut self) {
        #[cfg(feature = "nats")]
        if let Some(s) = self.nats_control.take()
            && let Err(e) = s.shutdown()
        {
            crate::warn!("control over NATS: {e}");
        }
    }

    /// Flushes and stops, once the stages have stopped and the bus is closed.
    pub fn stop(&mut self) {
        #[cfg(feature = "nats")]
        if let Some(p) = self.nats.take() {
            match p.shutdown() {
                Ok(s) => crate::info!(
                    "data bus: NATS published {}, failed {}, in doubt {}",
                    s.published,
                    s.failed,
                    s.in_doubt
                ),
                Err(e) => crate::warn!("data bus: NATS: {e}"),
            }
        }
        #[cfg(feature = "redis")]
        if let Some(r) = self.redis.take() {
            match Arc::try_unwrap(r) {
                Ok(r) => {
                    let s = r.shutdown();
                    crate::info!(
                        "snapshot store: redis written {}, coalesced {}, abandoned {}",
                        s.written,
                        s.coalesced,
                        s.abandoned
                    );
                }
                Err(_) => crate::warn!("snapshot store: redis write-through still shared at stop"),
            }
        }
    }

    pub fn stats(&self) -> BackendStats {
        #[allow(unused_mut)]
        let mut s = BackendStats::default();
        #[cfg(feature = "redis")]
        {
            s.redis = self.redis.as_ref().map(|r| r.stats());
        }
        #[cfg(feature = "nats")]
        if let Some(p) = &self.nats {
            s.nats = Some(p.stats());
            s.nats_dropped = p.subscription_stats().dropped();
        }
        s
    }
}

/// The bridge's settings from the engine's config.
#[cfg(feature = "nats")]
fn nats_config(config: &Config, run: &str) -> NatsBusConfig {
    let BusBackend::Nats(n) = &config.bus.backend else {
        unreachable!("called for the nats backend only")
    };
    NatsBusConfig {
        url: n.url.clone(),
        subject_prefix: n.subject_prefix.clone(),
        jetstream: n.jetstream.as_ref().map(|j| JetStreamConfig {
            stream: j.stream.clone(),
            max_age: j.max_age,
            max_msgs: if j.max_msgs == 0 {
                -1
            } else {
                j.max_msgs as i64
            },
            duplicate_window: j.duplicate_window,
            ..JetStreamConfig::default()
        }),
        engine_id: n.engine_id.clone(),
        control_token: config.control.token.clone(),
        msg_id_run: run.to_owned(),
        ..NatsBusConfig::default()
    }
}
