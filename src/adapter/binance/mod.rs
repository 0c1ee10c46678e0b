//! The Binance spot adapter: WebSocket connections (`meltica-ws-N`), the REST stage
//! (`meltica-rest`), and the wire types and parsing they share.

mod fast;
pub mod messages;
pub mod parse;
pub mod rest;
pub mod topics;
pub mod ws;

use crate::adapter::record::Recorder;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use self::rest::{BinanceRest, RestError};
use self::ws::{NativeAck, WsCommand, WsConnection};
use super::{AdapterStats, Ingress, InstrumentRegistry, RawBody, RawInstance, SharedRegistry};
use crate::config::BinanceConfig;
use crate::engine::stage::Supervisor;
use crate::schema::{Instrument, InstrumentInfo, split_canonical};

/// Why the adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("exchange info: {0}")]
    Rest(#[from] RestError),
    #[error("none of the configured instruments is listed by the exchange ({0})")]
    NoInstruments(String),
    #[error("{0} is not listed by the exchange")]
    NotListed(String),
    #[error("{0} is not trading (status {1})")]
    NotTrading(String, String),
    #[error("at most {} instruments per engine", InstrumentRegistry::MAX)]
    TooManyInstruments,
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
}

impl AdapterError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, AdapterError::Rest(e) if e.is_retryable())
    }
}

/// Why a snapshot is wanted; resyncs go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// The conductor lost sync (or is starting) and needs a snapshot to rebuild the book.
    Resync,
    /// A configured periodic poll.
    Scheduled,
}

/// A request to the REST stage.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub instrument: Instrument,
    pub reason: SnapshotReason,
}

/// Resolves canonical instruments against `/api/v3/exchangeInfo`. Instruments the exchange
/// does not list are returned separately, so the rest can run.
pub fn resolve_instruments(
    rest: &BinanceRest,
    names: &[String],
) -> Result<(InstrumentRegistry, Vec<String>), AdapterError> {
    let wanted: Vec<(String, String)> = names
        .iter()
        .filter_map(|n| split_canonical(n).map(|(b, q)| (n.clone(), format!("{b}{q}"))))
        .collect();
    let symbols: Vec<&str> = wanted.iter().map(|(_, s)| s.as_str()).collect();
    let (found, _) = rest.resolve_symbols(&symbols)?;
    let mut registry = InstrumentRegistry::default();
    let mut skipped = Vec::new();
    for (name, symbol) in &wanted {
        match found.iter().find(|f| &f.symbol == symbol) {
            Some(info) if info.status == "TRADING" => {
                registry.insert(instrument_info(info));
            }
            Some(info) => {
                crate::warn!(
                    "{name}: the exchange lists {symbol} as {}; skipped",
                    info.status
                );
                skipped.push(name.clone());
            }
            None => {
                crate::warn!("{name}: the exchange does not list {symbol}; skipped");
                skipped.push(name.clone());
            }
        }
    }
    if registry.is_empty() {
        return Err(AdapterError::NoInstruments(names.join(", ")));
    }
    Ok((registry, skipped))
}

fn instrument_info(info: &messages::BinanceSymbolInfo) -> InstrumentInfo {
    let (tick, step) = info.tick_and_step();
    InstrumentInfo {
        id: 0,
        name: format!("{}-{}", info.base_asset, info.quote_asset).into(),
        symbol: info.symbol.clone().into(),
        stream_prefix: info.symbol.to_ascii_lowercase().into(),
        base: info.base_asset.clone().into(),
        quote: info.quote_asset.clone().into(),
        tick_size: tick,
        step_size: step,
    }
}

/// Finds an instrument in the registry, or looks it up on the exchange and adds it.
pub fn resolve_at_runtime(
    rest: &BinanceRest,
    registry: &SharedRegistry,
    name: &str,
) -> Result<Instrument, AdapterError> {
    if let Some(i) = registry.load().by_name(name) {
        return Ok(i.clone());
    }
    let (base, quote) =
        split_canonical(name).ok_or_else(|| AdapterError::NotListed(name.to_owned()))?;
    let symbol = format!("{base}{quote}");
    let (found, _) = rest.resolve_symbols(&[symbol.as_str()])?;
    let info = found
        .iter()
        .find(|f| f.symbol == symbol)
        .ok_or_else(|| AdapterError::NotListed(name.to_owned()))?;
    if info.status != "TRADING" {
        return Err(AdapterError::NotTrading(
            name.to_owned(),
            info.status.clone(),
        ));
    }
    let current = registry.load_full();
    if current.len() >= InstrumentRegistry::MAX {
        return Err(AdapterError::TooManyInstruments);
    }
    let mut next = (*current).clone();
    let inst = next.insert(instrument_info(info));
    registry.store(Arc::new(next));
    crate::info!("added instrument {inst} at runtime");
    Ok(inst)
}

struct Conn {
    tx: Sender<WsCommand>,
    topics: BTreeSet<String>,
    handle: JoinHandle<()>,
}

/// The running adapter: owns its connection threads and the REST stage.
pub struct BinanceAdapter {
    cfg: BinanceConfig,
    registry: SharedRegistry,
    stats: Arc<AdapterStats>,
    tls: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    out: Sender<Ingress>,
    supervisor: Supervisor,
    pin: Vec<usize>,
    tracing: crate::telemetry::pipeline::Tracing,
    conns: Vec<Conn>,
    rest_handle: Option<JoinHandle<()>>,
    fetchers: Vec<JoinHandle<()>>,
    recorder: Option<Recorder>,
}

impl BinanceAdapter {
    /// Starts the REST stage; WebSocket connections open as topics are subscribed.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: BinanceConfig,
        registry: SharedRegistry,
        rest: Arc<BinanceRest>,
        out: Sender<Ingress>,
        snapshots: Receiver<SnapshotRequest>,
        pollers: Receiver<Vec<(Instrument, Duration)>>,
        supervisor: Supervisor,
        pin: Vec<usize>,
        stats: Arc<AdapterStats>,
        tracing: crate::telemetry::pipeline::Tracing,
        recorder: Option<Recorder>,
    ) -> Result<BinanceAdapter, AdapterError> {
        let stop = Arc::new(AtomicBool::new(false));
        let concurrency = cfg.snapshot.concurrency.max(1);
        let (jobs_tx, jobs) = bounded::<SnapshotRequest>(concurrency);
        let (done_tx, done) = unbounded::<Fetched>();
        let mut fetchers = Vec::with_capacity(concurrency);
        for k in 0..concurrency {
            let fetcher = Fetcher {
                rest: rest.clone(),
                depth: cfg.snapshot.depth,
                jobs: jobs.clone(),
                done: done_tx.clone(),
                recorder: recorder.clone(),
                stop: stop.clone(),
            };
            let name = format!("meltica-fetch-{k}");
            fetchers.push(
                supervisor
                    .spawn(name.clone(), None, move || fetcher.run())
                    .map_err(|source| AdapterError::Spawn { name, source })?,
            );
        }
        let rest_stage = RestStage {
            rest,
            concurrency,
            jobs: jobs_tx,
            done,
            requests: snapshots,
            out: out.clone(),
            stop: stop.clone(),
            stats: stats.clone(),
            pollers,
        };
        let rest_handle = supervisor
            .spawn("meltica-rest".into(), None, move || rest_stage.run())
            .map_err(|source| AdapterError::Spawn {
                name: "meltica-rest".into(),
                source,
            })?;
        Ok(BinanceAdapter {
            cfg,
            registry,
            stats,
            tls: ws::tls_config(),
            stop,
            out,
            supervisor,
            pin,
            tracing,
            conns: Vec::new(),
            rest_handle: Some(rest_handle),
            fetchers,
            recorder,
        })
    }

    pub fn stats(&self) -> Arc<AdapterStats> {
        self.stats.clone()
    }

    pub fn registry(&self) -> &SharedRegistry {
        &self.registry
    }

    /// Number of WebSocket connection threads.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Subscribes native topics, opening connections as the per-connection limit requires.
    /// Each affected connection answers on `ack` once the exchange confirmed.
    pub fn subscribe(
        &mut self,
        topics: &[String],
    ) -> Result<Vec<Receiver<NativeAck>>, AdapterError> {
        let mut per_conn: HashMap<usize, Vec<String>> = HashMap::new();
        for t in topics {
            if self.conns.iter().any(|c| c.topics.contains(t)) {
                continue;
            }
            let idx = match self
                .conns
                .iter()
                .position(|c| c.topics.len() < self.cfg.max_streams_per_connection)
            {
                Some(i) => i,
                None => self.open_connection()?,
            };
            self.conns[idx].topics.insert(t.clone());
            per_conn.entry(idx).or_default().push(t.clone());
        }
        let mut acks = Vec::new();
        for (idx, list) in per_conn {
            let (tx, rx) = bounded(1);
            let _ = self.conns[idx]
                .tx
                .send(WsCommand::Subscribe(list, Some(tx)));
            acks.push(rx);
        }
        Ok(acks)
    }

    /// Unsubscribes native topics from whichever connection carries them.
    pub fn unsubscribe(&mut self, topics: &[String]) -> Vec<Receiver<NativeAck>> {
        let mut acks = Vec::new();
        for c in &mut self.conns {
            let gone: Vec<String> = topics
                .iter()
                .filter(|t| c.topics.remove(*t))
                .cloned()
                .collect();
            if !gone.is_empty() {
                let (tx, rx) = bounded(1);
                let _ = c.tx.send(WsCommand::Unsubscribe(gone, Some(tx)));
                acks.push(rx);
            }
        }
        acks
    }

    fn open_connection(&mut self) -> Result<usize, AdapterError> {
        let id = self.conns.len();
        let (tx, rx) = unbounded();
        let conn = WsConnection {
            id,
            cfg: self.cfg.clone(),
            registry: self.registry.clone(),
            out: self.out.clone(),
            commands: rx,
            stop: self.stop.clone(),
            stats: self.stats.clone(),
            tls: self.tls.clone(),
            desired: BTreeSet::new(),
            tracing: self.tracing.clone(),
            recorder: self.recorder.clone(),
        };
        let name = format!("meltica-ws-{id}");
        let core = (!self.pin.is_empty()).then(|| self.pin[(2 + id) % self.pin.len()]);
        let handle = self
            .supervisor
            .spawn(name.clone(), core, move || conn.run())
            .map_err(|source| AdapterError::Spawn { name, source })?;
        self.conns.push(Conn {
            tx,
            topics: BTreeSet::new(),
            handle,
        });
        Ok(id)
    }

    /// Stops every adapter thread and waits for them. Downstream sees its input close.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.conns.drain(..) {
            drop(c.tx);
            let _ = c.handle.join();
        }
        if let Some(h) = self.rest_handle.take() {
            let _ = h.join();
        }
        // The stage's end closed the fetchers' queue; each finishes its request first.
        for h in self.fetchers.drain(..) {
            let _ = h.join();
        }
    }
}

/// The `meltica-rest` stage: depth snapshots on demand and on schedule, resyncs first,
/// under the shared request-weight budget. It keeps the queue and hands requests to
/// `concurrency` fetcher threads, so one slow snapshot does not hold the others back; a
/// 429/418 (which Binance applies to the whole IP) holds them all.
struct RestStage {
    rest: Arc<BinanceRest>,
    concurrency: usize,
    jobs: Sender<SnapshotRequest>,
    done: Receiver<Fetched>,
    requests: Receiver<SnapshotRequest>,
    out: Sender<Ingress>,
    stop: Arc<AtomicBool>,
    stats: Arc<AdapterStats>,
    /// The full poller list, replaced whenever the dispatch table changes it.
    pollers: Receiver<Vec<(Instrument, Duration)>>,
}

/// A fetcher's answer to one request.
struct Fetched {
    request: SnapshotRequest,
    result: Result<messages::BinanceDepthSnapshot, RestError>,
    ingress_ns: u64,
    received_ms: i64,
}

/// A `meltica-fetch-N` thread: fetches and parses the snapshots it is handed.
struct Fetcher {
    rest: Arc<BinanceRest>,
    depth: u32,
    jobs: Receiver<SnapshotRequest>,
    done: Sender<Fetched>,
    recorder: Option<Recorder>,
    stop: Arc<AtomicBool>,
}

impl Fetcher {
    fn run(self) {
        for request in self.jobs.iter() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let fetched = self
                .rest
                .depth_body(request.instrument.symbol(), self.depth);
            let (ingress_ns, received_ms) = (crate::clock::mono_ns(), crate::clock::wall_ms());
            if let (Ok(body), Some(r)) = (&fetched, &self.recorder) {
                r.depth(request.instrument.name(), body);
            }
            let result = fetched.and_then(|b| self.rest.parse_depth(&b));
            let answer = Fetched {
                request,
                result,
                ingress_ns,
                received_ms,
            };
            if self.done.send(answer).is_err() {
                return;
            }
        }
    }
}

impl RestStage {
    fn run(self) {
        let mut queue: VecDeque<SnapshotRequest> = VecDeque::new();
        let mut queued: BTreeSet<u32> = BTreeSet::new();
        let mut in_flight: BTreeSet<u32> = BTreeSet::new();
        let mut pollers: Vec<(Instrument, Duration)> = Vec::new();
        let mut next_poll: Vec<Instant> = Vec::new();
        let mut not_before = Instant::now();
        let mut failures: u32 = 0;
        let mut requests = self.requests.clone();
        while !self.stop.load(Ordering::Relaxed) {
            // Everything that could start has; wake for news, for a poll, or when a
            // back-off ends.
            let now = Instant::now();
            let wait = if !queue.is_empty() && now < not_before {
                (not_before - now).min(Duration::from_millis(50))
            } else {
                Duration::from_millis(50)
            };
            crossbeam_channel::select! {
                recv(requests) -> r => match r {
                    Ok(r) => enqueue(&mut queue, &mut queued, r),
                    // The engine is stopping; finish what is queued until told to stop.
                    Err(_) => requests = crossbeam_channel::never(),
                },
                recv(self.done) -> f => {
                    // Every fetcher gone: the engine is stopping.
                    let Ok(f) = f else { return };
                    in_flight.remove(&f.request.instrument.id());
                    if !self.finish(f, &mut queue, &mut queued, &mut failures, &mut not_before) {
                        return;
                    }
                },
                default(wait) => {},
            }
            while let Ok(r) = requests.try_recv() {
                enqueue(&mut queue, &mut queued, r);
            }
            let now = Instant::now();
            while let Ok(list) = self.pollers.try_recv() {
                // Keep the schedule of pollers that stay; new ones fire one interval from now.
                next_poll = list
                    .iter()
                    .map(|(i, every)| {
                        pollers
                            .iter()
                            .position(|(p, e)| p.id() == i.id() && e == every)
                            .map_or(now + *every, |k| next_poll[k])
                    })
                    .collect();
                pollers = list;
            }
            for (i, (inst, every)) in pollers.iter().enumerate() {
                if now >= next_poll[i] {
                    next_poll[i] = now + *every;
                    enqueue(
                        &mut queue,
                        &mut queued,
                        SnapshotRequest {
                            instrument: inst.clone(),
                            reason: SnapshotReason::Scheduled,
                        },
                    );
                }
            }
            // Hand out the first requests whose instrument is not being fetched already.
            while in_flight.len() < self.concurrency && Instant::now() >= not_before {
                let Some(pos) = queue
                    .iter()
                    .position(|r| !in_flight.contains(&r.instrument.id()))
                else {
                    break;
                };
                let req = queue.remove(pos).expect("position is in range");
                let id = req.instrument.id();
                queued.remove(&id);
                in_flight.insert(id);
                if self.jobs.send(req).is_err() {
                    return;
                }
            }
        }
    }

    /// Publishes a fetched snapshot, or queues its request again after a failure. `false`
    /// once the pipeline is gone.
    fn finish(
        &self,
        f: Fetched,
        queue: &mut VecDeque<SnapshotRequest>,
        queued: &mut BTreeSet<u32>,
        failures: &mut u32,
        not_before: &mut Instant,
    ) -> bool {
        let req = f.request;
        match f.result {
            Ok(snap) => {
                *failures = 0;
                self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rest_weight_used
                    .store(u64::from(self.rest.weight_used()), Ordering::Relaxed);
                let raw = RawInstance {
                    instrument: req.instrument,
                    ingress_ns: f.ingress_ns,
                    body: RawBody::DepthSnapshot(snap, f.received_ms),
                    trace: None,
                };
                self.out.send(Ingress::Raw(raw)).is_ok()
            }
            Err(RestError::BudgetExhausted { wait }) => {
                // Nothing was sent: the request waits for the next weight window. Not a
                // failure, and said once per window rather than once per book.
                let until = Instant::now() + wait;
                requeue(queue, queued, req);
                if until > *not_before {
                    crate::info!(
                        "snapshots wait {wait:.1?} for the request-weight budget ({} queued)",
                        queue.len()
                    );
                    *not_before = until;
                }
                true
            }
            Err(e) => {
                self.stats.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                // Fetches that fail together (one outage) lengthen the back-off once.
                if Instant::now() >= *not_before {
                    *failures = failures.saturating_add(1);
                }
                let delay = e.retry_after().unwrap_or_else(|| {
                    Duration::from_millis((200u64 << (*failures).min(8)).min(30_000))
                });
                crate::warn!(
                    "snapshot of {} failed: {e}; retrying in {delay:.1?}",
                    req.instrument
                );
                *not_before = (*not_before).max(Instant::now() + delay);
                if e.is_retryable() || req.reason == SnapshotReason::Resync {
                    requeue(queue, queued, req);
                }
                true
            }
        }
    }
}

/// Puts a request that did not succeed back at the front of the queue, keeping its place
/// ahead of later ones.
fn requeue(
    queue: &mut VecDeque<SnapshotRequest>,
    queued: &mut BTreeSet<u32>,
    req: SnapshotRequest,
) {
    if queued.contains(&req.instrument.id()) {
        // Already asked for again: that request stands for this one, as a resync if this
        // was one.
        enqueue(queue, queued, req);
    } else {
        queued.insert(req.instrument.id());
        queue.push_front(req);
    }
}

/// Queues a snapshot request: resyncs ahead of scheduled polls, and first come, first
/// served among themselves (a book that lost sync earlier is not served last).
fn enqueue(queue: &mut VecDeque<SnapshotRequest>, queued: &mut BTreeSet<u32>, r: SnapshotRequest) {
    let id = r.instrument.id();
    let after_resyncs = |q: &VecDeque<SnapshotRequest>| {
        q.iter()
            .position(|x| x.reason != SnapshotReason::Resync)
            .unwrap_or(q.len())
    };
    if queued.contains(&id) {
        // Already waiting; a resync overtakes a scheduled poll of the same instrument.
        if r.reason == SnapshotReason::Resync
            && let Some(pos) = queue.iter().position(|q| q.instrument.id() == id)
            && queue[pos].reason != SnapshotReason::Resync
        {
            let mut q = queue.remove(pos).expect("position is in range");
            q.reason = SnapshotReason::Resync;
            let at = after_resyncs(queue);
            queue.insert(at, q);
        }
        return;
    }
    queued.insert(id);
    match r.reason {
        SnapshotReason::Resync => {
            let at = after_resyncs(queue);
            queue.insert(at, r);
        }
        SnapshotReason::Scheduled => queue.push_back(r),
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use crate::schema::{Instrument, InstrumentInfo};

    fn req(id: u32, reason: SnapshotReason) -> SnapshotRequest {
        let mut info = InstrumentInfo::named(&format!("I{id}-USDT")).expect("a canonical name");
        info.id = id;
        SnapshotRequest {
            instrument: Instrument::new(info),
            reason,
        }
    }

    #[test]
    fn resyncs_go_first_in_arrival_order() {
        let (mut q, mut queued) = (VecDeque::new(), BTreeSet::new());
        enqueue(&mut q, &mut queued, req(1, SnapshotReason::Scheduled));
        enqueue(&mut q, &mut queued, req(2, SnapshotReason::Resync));
        enqueue(&mut q, &mut queued, req(3, SnapshotReason::Resync));
        enqueue(&mut q, &mut queued, req(1, SnapshotReason::Resync));
        enqueue(&mut q, &mut queued, req(3, SnapshotReason::Resync));
        let order: Vec<(u32, SnapshotReason)> =
            q.iter().map(|r| (r.instrument.id(), r.reason)).collect();
        assert_eq!(
            order,
            vec![
                (2, SnapshotReason::Resync),
                (3, SnapshotReason::Resync),
                (1, SnapshotReason::Resync),
            ]
        );
    }
}
