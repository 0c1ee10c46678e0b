//! The Redis snapshot store (cargo feature `redis`) and the write-through that feeds it.
//!
//! Each record is one hash, `<prefix>:snap:<market>:<type>:<instrument>`, with the fields
//! `version`, `updated_ms` and `book`. `book` holds the contract JSON of `ANALYTICS.FUSED`:
//!
//! ```text
//! {"lastUpdateId":160,"status":"live","bids":[["50000.01","1.5"]],"asks":[["50000.02","0.3"]]}
//! ```
//!
//! Every write is one Lua script, so the version check, the version bump and the write are
//! atomic on the server; `updated_ms` is the server's clock (`TIME`), so records written by
//! several engines age on one clock.
//!
//! The engine keeps [`MemorySnapshotStore`](crate::snapshot::MemorySnapshotStore) as the
//! hot-path copy and hands each fused book to [`RedisWriteThrough::offer`], which never
//! blocks; a thread of its own writes the latest book per key to Redis. Late-joining
//! consumers read every stored book with [`RedisSnapshotStore::latest`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;
use redis::{Connection, ErrorKind, RedisError, Script, Value};

use crate::schema::{EventType, FusedBook, Level, Quality};
use crate::snapshot::{Key, Record, SnapshotStore, StoreError};

/// Key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "meltica";
/// Where Redis is expected when no URL is configured.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";
/// Connect, read and write timeout of every connection.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`RedisWriteThrough::shutdown`] keeps trying to flush pending books.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept for reuse; callers beyond this open and close their own.
const POOL_IDLE_MAX: usize = 16;
/// `COUNT` hint for `SCAN`.
const SCAN_COUNT: usize = 256;

/// `KEYS[1]` record, `ARGV[1]` expected version, `ARGV[2]` book JSON. Returns the new
/// version, or on conflict `{version, updated_ms, book}` as stored now (nils if absent).
const CAS_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local cur = redis.call('HMGET', KEYS[1], 'version', 'updated_ms', 'book')
local v = 0
if cur[1] then
  v = tonumber(cur[1])
  if not v then return redis.error_reply('CORRUPT version field is not a number') end
end
if v ~= tonumber(ARGV[1]) then
  return {cur[1], cur[2], cur[3]}
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'version', string.format('%d', v + 1),
  'updated_ms', string.format('%d', ms), 'book', ARGV[2])
return v + 1
";

/// `KEYS[1]` record, `ARGV[1]` book JSON. Returns the new version.
const PUT_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local cur = redis.call('HGET', KEYS[1], 'version')
local v = 0
if cur then
  v = tonumber(cur)
  if not v then return redis.error_reply('CORRUPT version field is not a number') end
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'version', string.format('%d', v + 1),
  'updated_ms', string.format('%d', ms), 'book', ARGV[1])
return v + 1
";

/// `KEYS` candidate records, `ARGV[1]` ttl in ms. Deletes those whose `updated_ms`, read
/// inside the script, is at least ttl old. A write that lands first refreshes `updated_ms`
/// and keeps its record; one that lands after starts again from version 1. Values that are
/// not records are left alone. Returns how many were removed.
const SWEEP_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local removed = 0
for _, k in ipairs(KEYS) do
  local ms = redis.pcall('HGET', k, 'updated_ms')
  if type(ms) == 'string' then
    ms = tonumber(ms)
    if ms and now - ms >= ttl then
      redis.call('DEL', k)
      removed = removed + 1
    end
  end
end
return removed
";

/// Why a Redis call failed, before it becomes a [`StoreError`].
#[derive(Debug)]
struct Failure {
    /// The server could not be reached or the connection broke: every key fails alike.
    connection: bool,
    message: String,
}

impl Failure {
    fn connection(message: String) -> Self {
        Failure {
            connection: true,
            message,
        }
    }

    fn record(message: String) -> Self {
        Failure {
            connection: false,
            message,
        }
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        StoreError::Unavailable(f.message)
    }
}

/// Snapshot store on a Redis server, one hash per record.
///
/// Calls take a connection from a small pool (or open one) and give it back, so concurrent
/// callers each have their own. A connection that saw an IO error is dropped; after a
/// dropped connection every idle one is dropped too (the server may have restarted) and
/// `get`, `put`, `sweep_expired`, `latest` and `clear_prefix` retry once on a new one (a
/// `put` whose first attempt did land then bumps the version twice, which an unconditional
/// write allows). `compare_and_swap` is not retried: its first attempt may have been
/// applied, and applying it twice would break the caller's version arithmetic.
pub struct RedisSnapshotStore {
    client: redis::Client,
    /// `host:port` for messages; never the URL, which may carry a password.
    addr: String,
    prefix: String,
    timeout: Duration,
    client_name: String,
    idle: Mutex<Vec<Connection>>,
    cas: Script,
    put: Script,
    sweep: Script,
}

impl fmt::Debug for RedisSnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSnapshotStore")
            .field("addr", &self.addr)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisSnapshotStore {
    /// A store on the server at `url` (`redis://host:port/db`) with keys under `prefix`.
    /// Checks the URL only; the first call connects (see [`RedisSnapshotStore::ping`]).
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid redis url: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(RedisSnapshotStore {
            client,
            addr,
            prefix: prefix.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            client_name: DEFAULT_PREFIX.to_owned(),
            idle: Mutex::new(Vec::new()),
            cas: Script::new(CAS_LUA),
            put: Script::new(PUT_LUA),
            sweep: Script::new(SWEEP_LUA),
        })
    }

    /// Connect, read and write timeout of each connection (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Name each connection gives itself (`CLIENT SETNAME`, default `meltica`); no spaces.
    pub fn with_client_name(mut self, name: &str) -> Self {
        self.client_name = name.to_owned();
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Redis key of a record: `<prefix>:snap:<market>:<type>:<instrument>`.
    pub fn record_key(&self, key: &Key) -> String {
        format!(
            "{}:snap:{}:{}:{}",
            self.prefix,
            key.market,
            key.event_type.as_str(),
            key.instrument
        )
    }

    /// Round trip to the server.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.with_conn("PING", true, |c| redis::cmd("PING").exec(c))?;
        Ok(())
    }

    /// Every record stored for `market`, sorted by key. Late-joining consumers read the
    /// latest books this way. A record that cannot be decoded fails the call, naming it.
    pub fn latest(&self, market: &str) -> Result<Vec<(Key, Record)>, StoreError> {
        let head = format!("{}:snap:{}:", self.prefix, market);
        let pattern = format!("{}*", glob_escape(&head));
        let raw = self.with_conn("latest", true, |c| {
            let mut found: Vec<(Vec<u8>, Value)> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, names) = scan(c, cursor, &pattern)?;
                if !names.is_empty() {
                    let mut p = redis::pipe();
                    p.ignore_errors();
                    for n in &names {
                        p.cmd("HMGET")
                            .arg(n)
                            .arg("version")
                            .arg("updated_ms")
                            .arg("book");
                    }
                    let values: Vec<Value> = p.query(c)?;
                    found.extend(names.into_iter().zip(values));
                }
                if next == 0 {
                    return Ok(found);
                }
                cursor = next;
            }
        })?;
        let mut out = Vec::with_capacity(raw.len());
        for (name_bytes, value) in raw {
            let name = String::from_utf8_lossy(&name_bytes).into_owned();
            let Some(rest) = name.strip_prefix(&head) else {
                continue;
            };
            let (event_type, instrument) = rest
                .split_once(':')
                .and_then(|(t, i)| Some((EventType::parse(t)?, i)))
                .ok_or_else(|| corrupt(&name, "key does not name a known event type"))?;
            let fields = match value {
                Value::Array(fields) => fields,
                Value::ServerError(e) => return Err(corrupt(&name, &e.to_string()).into()),
                _ => return Err(corrupt(&name, "unexpected HMGET reply").into()),
            };
            // A record swept between SCAN and HMGET reads as all nil.
            if let Some(record) = decode_record(&name, &fields)? {
                let key = Key {
                    market: market.into(),
                    instrument: instrument.into(),
                    event_type,
                };
                out.push((key, record));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Deletes every key under `<prefix>:`; returns how many. For tests and tooling.
    pub fn clear_prefix(&self) -> Result<usize, StoreError> {
        let pattern = format!("{}:*", glob_escape(&self.prefix));
        let removed = self.with_conn("clear_prefix", true, |c| {
            let mut removed = 0usize;
            let mut cursor = 0u64;
            loop {
                let (next, names) = scan(c, cursor, &pattern)?;
                if !names.is_empty() {
                    let n: usize = redis::cmd("DEL").arg(&names).query(c)?;
                    removed += n;
                }
                if next == 0 {
                    return Ok(removed);
                }
                cursor = next;
            }
        })?;
        Ok(removed)
    }

    fn try_put(&self, key: &Key, book: &FusedBook) -> Result<u64, Failure> {
        let name = self.record_key(key);
        let json = encode_book(book);
        let v = self.with_conn(&name, true, |c| {
            self.put.key(&name).arg(&json).invoke::<Value>(c)
        })?;
        int_of(&v)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| corrupt(&name, "put returned no version"))
    }

    /// Runs `op` on a pooled connection. `what` names the key or call in messages;
    /// `retry` allows one more attempt on a fresh connection when a pooled one was dead.
    fn with_conn<T>(
        &self,
        what: &str,
        retry: bool,
        mut op: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failure> {
        let pooled = self.idle.lock().pop();
        let from_pool = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.open()?,
        };
        match op(&mut conn) {
            Ok(v) => {
                self.give_back(conn);
                Ok(v)
            }
            Err(e) if keeps_connection(&e) => {
                self.give_back(conn);
                Err(Failure::record(format!("redis {what}: {e}")))
            }
            Err(e) => {
                drop(conn);
                let dead = e.is_connection_dropped() && !e.is_timeout();
                if dead {
                    self.idle.lock().clear();
                }
                if !(dead && from_pool && retry) {
                    return Err(Failure::connection(format!(
                        "redis at {} failed on {what}: {e}",
                        self.addr
                    )));
                }
                let mut conn = self.open()?;
                match op(&mut conn) {
                    Ok(v) => {
                        self.give_back(conn);
                        Ok(v)
                    }
                    Err(e) if keeps_connection(&e) => {
                        self.give_back(conn);
                        Err(Failure::record(format!("redis {what}: {e}")))
                    }
                    Err(e) => Err(Failure::connection(format!(
                        "redis at {} failed on {what}: {e}",
                        self.addr
                    ))),
                }
            }
        }
    }

    fn open(&self) -> Result<Connection, Failure> {
        let unreachable =
            |e: RedisError| Failure::connection(format!("redis at {} unreachable: {e}", self.addr));
        let mut conn = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(unreachable)?;
        conn.set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        conn.set_write_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.client_name)
            .exec(&mut conn)
            .map_err(unreachable)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < POOL_IDLE_MAX {
            idle.push(conn);
        }
    }
}

impl SnapshotStore for RedisSnapshotStore {
    fn get(&self, key: &Key) -> Result<Option<Arc<Record>>, StoreError> {
        let name = self.record_key(key);
        let v = self.with_conn(&name, true, |c| {
            redis::cmd("HMGET")
                .arg(&name)
                .arg("version")
                .arg("updated_ms")
                .arg("book")
                .query::<Value>(c)
        })?;
        match v {
            Value::Array(fields) => Ok(decode_record(&name, &fields)?.map(Arc::new)),
            _ => Err(corrupt(&name, "unexpected HMGET reply").into()),
        }
    }

    fn put(&self, key: &Key, book: Arc<FusedBook>) -> Result<u64, StoreError> {
        Ok(self.try_put(key, &book)?)
    }

    fn compare_and_swap(
        &self,
        key: &Key,
        expected_version: u64,
        book: Arc<FusedBook>,
    ) -> Result<u64, StoreError> {
        let name = self.record_key(key);
        let json = encode_book(&book);
        let v = self.with_conn(&name, false, |c| {
            self.cas
                .key(&name)
                .arg(expected_version)
                .arg(&json)
                .invoke::<Value>(c)
        })?;
        match v {
            Value::Array(fields) => Err(StoreError::Conflict {
                expected: expected_version,
                current: decode_record(&name, &fields)?.map(Arc::new),
            }),
            other => Ok(int_of(&other)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| corrupt(&name, "compare-and-swap returned no version"))?),
        }
    }

    fn sweep_expired(&self, ttl: Duration) -> Result<usize, StoreError> {
        let pattern = format!("{}:snap:*", glob_escape(&self.prefix));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let removed = self.with_conn("sweep_expired", true, |c| {
            let mut removed = 0usize;
            let mut cursor = 0u64;
            loop {
                let (next, names) = scan(c, cursor, &pattern)?;
                if !names.is_empty() {
                    let mut inv = self.sweep.prepare_invoke();
                    for n in &names {
                        inv.key(n);
                    }
                    let n: usize = inv.arg(ttl_ms).invoke(c)?;
                    removed += n;
                }
                if next == 0 {
                    return Ok(removed);
                }
                cursor = next;
            }
        })?;
        Ok(removed)
    }
}

/// One `SCAN` step: the next cursor and the key names found.
fn scan(c: &mut Connection, cursor: u64, pattern: &str) -> redis::RedisResult<(u64, Vec<Vec<u8>>)> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT)
        .query(c)
}

/// An error reply leaves the connection in step with the server; anything else (IO,
/// timeout, a reply that could not be parsed) may not.
fn keeps_connection(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
    )
}

/// Escapes the `SCAN MATCH` glob characters.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn corrupt(name: &str, why: &str) -> Failure {
    Failure::record(format!(
        "corrupt snapshot record at redis key {name}: {why}"
    ))
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Decodes `[version, updated_ms, book]`; all nil means no record.
fn decode_record(name: &str, fields: &[Value]) -> Result<Option<Record>, Failure> {
    let [version, updated_ms, book] = fields else {
        return Err(corrupt(name, "expected three fields"));
    };
    if fields.iter().all(|f| matches!(f, Value::Nil)) {
        return Ok(None);
    }
    let version = int_of(version)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| corrupt(name, "version is missing or not a number"))?;
    let updated_ms =
        int_of(updated_ms).ok_or_else(|| corrupt(name, "updated_ms is missing or not a number"))?;
    let book = match book {
        Value::BulkString(b) => decode_book(b).map_err(|e| corrupt(name, &e))?,
        _ => return Err(corrupt(name, "book is missing")),
    };
    Ok(Some(Record {
        version,
        updated_ms,
        book: Arc::new(book),
    }))
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BookOut<'a> {
    last_update_id: u64,
    status: &'static str,
    bids: &'a [Level],
    asks: &'a [Level],
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BookIn<'a> {
    last_update_id: u64,
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    bids: Vec<Level>,
    asks: Vec<Level>,
}

/// The `ANALYTICS.FUSED` payload JSON of `book`, decimals as strings.
fn encode_book(book: &FusedBook) -> Vec<u8> {
    let out = BookOut {
        last_update_id: book.last_update_id,
        status: book.status.as_str(),
        bids: &book.bids,
        asks: &book.asks,
    };
    // Integers, fixed strings and decimal strings always serialise.
    serde_json::to_vec(&out).unwrap_or_default()
}

fn decode_book(json: &[u8]) -> Result<FusedBook, String> {
    let b: BookIn<'_> = serde_json::from_slice(json).map_err(|e| format!("book JSON: {e}"))?;
    let status = match &*b.status {
        "live" => Quality::Live,
        "syncing" => Quality::Syncing,
        "stale" => Quality::Stale,
        other => return Err(format!("book status {other:?} is not live/syncing/stale")),
    };
    Ok(FusedBook {
        last_update_id: b.last_update_id,
        status,
        bids: b.bids,
        asks: b.asks,
    })
}

/// Counters of a [`RedisWriteThrough`]. Every offered book ends as exactly one of
/// `written`, `coalesced` or `abandoned`; until shutdown some may still be in flight:
/// `offered == written + coalesced + abandoned + in flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteThroughStats {
    /// Books passed to [`RedisWriteThrough::offer`].
    pub offered: u64,
    /// Books stored in Redis.
    pub written: u64,
    /// Books replaced by a newer book for the same key before they were written: in the
    /// same batch, in the overflow while the queue was full, or while waiting for a retry.
    pub coalesced: u64,
    /// Books left unwritten when the shutdown flush ran out of time.
    pub abandoned: u64,
    /// Failed write attempts; each failed book is retried unless a newer one replaces it.
    pub failed: u64,
    /// Offers that found the queue full and went to the overflow (latest per key) instead.
    pub overflowed: u64,
}

#[derive(Default)]
struct Counters {
    /// Also the sequence number of each offer: the highest sequence per key wins.
    offered: AtomicU64,
    written: AtomicU64,
    coalesced: AtomicU64,
    abandoned: AtomicU64,
    failed: AtomicU64,
    overflowed: AtomicU64,
    /// Shutdown flush budget in ms, set before the queue is closed.
    flush_ms: AtomicU64,
}

struct Offer {
    seq: u64,
    key: Key,
    book: Arc<FusedBook>,
}

/// Latest book per key offered while the queue was full.
type Overflow = Mutex<HashMap<Key, (u64, Arc<FusedBook>)>>;

/// Writes fused books to Redis from a thread of its own, latest per key.
///
/// [`offer`](RedisWriteThrough::offer) never waits on Redis: it queues the book on a
/// bounded channel, or when the channel is full parks it in an overflow that keeps the latest
/// book per key (a map behind a lock held only for one insert, or by the writer for one
/// swap), so a full queue delays a book but never loses the last one of a key. The thread drains both in batches, keeps the newest book per key, and
/// `put`s each. A failed write stays pending and is retried with backoff (50 ms doubling to
/// 2 s) unless a newer book for its key replaces it, so after Redis comes back every key
/// ends with its latest book.
pub struct RedisWriteThrough {
    tx: Option<Sender<Offer>>,
    overflow: Arc<Overflow>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The thread looks at the overflow at least this often, even when the queue is quiet.
const IDLE_TICK: Duration = Duration::from_millis(100);

impl RedisWriteThrough {
    /// Starts the writer thread with a queue of `capacity` books (at least 1).
    pub fn start(store: RedisSnapshotStore, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let overflow: Arc<Overflow> = Arc::default();
        let counters = Arc::new(Counters::default());
        counters
            .flush_ms
            .store(duration_ms(DEFAULT_FLUSH_TIMEOUT), Ordering::Relaxed);
        let writer = Writer {
            store,
            rx,
            overflow: overflow.clone(),
            counters: counters.clone(),
            batch_max: capacity,
            pending: HashMap::new(),
            written_seq: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("meltica-redis".into())
            .spawn(move || writer.run())
            .expect("spawn the redis write-through thread");
        RedisWriteThrough {
            tx: Some(tx),
            overflow,
            counters,
            thread: Some(thread),
        }
    }

    /// Queues `book` as the latest for `key`. Never waits on Redis or on the writer.
    pub fn offer(&self, key: Key, book: Arc<FusedBook>) {
        let seq = self.counters.offered.fetch_add(1, Ordering::Relaxed);
        let Some(tx) = &self.tx else { return };
        let offer = Offer { seq, key, book };
        let offer = match tx.try_send(offer) {
            Ok(()) => return,
            Err(TrySendError::Full(o) | TrySendError::Disconnected(o)) => o,
        };
        self.counters.overflowed.fetch_add(1, Ordering::Relaxed);
        let replaced = {
            let mut overflow = self.overflow.lock();
            match overflow.entry(offer.key) {
                Entry::Vacant(e) => {
                    e.insert((offer.seq, offer.book));
                    false
                }
                Entry::Occupied(mut e) => {
                    if offer.seq > e.get().0 {
                        e.insert((offer.seq, offer.book));
                    }
                    true
                }
            }
        };
        if replaced {
            self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> WriteThroughStats {
        let c = &self.counters;
        WriteThroughStats {
            offered: c.offered.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            overflowed: c.overflowed.load(Ordering::Relaxed),
        }
    }

    /// Flushes what is pending (for at most 5 s), stops the thread and returns the final
    /// counters.
    pub fn shutdown(self) -> WriteThroughStats {
        self.shutdown_within(DEFAULT_FLUSH_TIMEOUT)
    }

    /// [`shutdown`](RedisWriteThrough::shutdown) with its own flush budget; books still
    /// unwritten after it count as `abandoned`.
    pub fn shutdown_within(mut self, flush: Duration) -> WriteThroughStats {
        if let Err(panic) = self.stop(flush) {
            std::panic::resume_unwind(panic);
        }
        self.stats()
    }

    fn stop(&mut self, flush: Duration) -> std::thread::Result<()> {
        self.counters
            .flush_ms
            .store(duration_ms(flush), Ordering::Relaxed);
        // Closing the queue tells the writer to flush and exit.
        self.tx = None;
        match self.thread.take() {
            Some(t) => t.join(),
            None => Ok(()),
        }
    }
}

impl Drop for RedisWriteThrough {
    fn drop(&mut self) {
        // A panic in the writer already printed its message; shutdown() is where it is
        // raised again.
        let _ = self.stop(DEFAULT_FLUSH_TIMEOUT);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Writer {
    store: RedisSnapshotStore,
    rx: Receiver<Offer>,
    overflow: Arc<Overflow>,
    counters: Arc<Counters>,
    batch_max: usize,
    /// Newest unwritten book per key, with its offer sequence.
    pending: HashMap<Key, (u64, Arc<FusedBook>)>,
    /// Sequence of the book last written per key: an older book arriving later is dropped.
    written_seq: HashMap<Key, u64>,
}

impl Writer {
    fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut retry_at = Instant::now();
        let mut deadline: Option<Instant> = None;
        loop {
            let mut coalesced = 0u64;
            if deadline.is_none() {
                let wait = if self.pending.is_empty() {
                    IDLE_TICK
                } else {
                    retry_at.saturating_duration_since(Instant::now())
                };
                let closed = self.receive(wait, &mut coalesced);
                if closed {
                    let flush =
                        Duration::from_millis(self.counters.flush_ms.load(Ordering::Relaxed));
                    deadline = Some(Instant::now() + flush);
                }
            }
            // After the queue: a book parked there while the queue was full is older than
            // anything the same producer queued after it, and the sequence decides anyway.
            let parked = std::mem::take(&mut *self.overflow.lock());
            for (key, (seq, book)) in parked {
                self.merge(key, seq, book, &mut coalesced);
            }
            self.counters
                .coalesced
                .fetch_add(coalesced, Ordering::Relaxed);

            let now = Instant::now();
            if !self.pending.is_empty() && now >= retry_at {
                if self.write_pending() {
                    backoff = BACKOFF_MIN;
                    retry_at = now;
                } else {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }

            if let Some(deadline) = deadline {
                let now = Instant::now();
                if self.pending.is_empty() || now >= deadline {
                    self.counters
                        .abandoned
                        .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(retry_at.min(deadline).saturating_duration_since(now));
            }
        }
    }

    /// Waits up to `wait` for the first offer, then drains up to a batch. Returns true once
    /// the queue is closed and empty.
    fn receive(&mut self, wait: Duration, coalesced: &mut u64) -> bool {
        match self.rx.recv_timeout(wait) {
            Ok(o) => self.merge(o.key, o.seq, o.book, coalesced),
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => return true,
        }
        for _ in 1..self.batch_max {
            match self.rx.try_recv() {
                Ok(o) => self.merge(o.key, o.seq, o.book, coalesced),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Keeps the newer of `book` and what is pending for `key`; the other is coalesced.
    fn merge(&mut self, key: Key, seq: u64, book: Arc<FusedBook>, coalesced: &mut u64) {
        if self.written_seq.get(&key).is_some_and(|&w| w > seq) {
            *coalesced += 1;
            return;
        }
        match self.pending.entry(key) {
            Entry::Vacant(e) => {
                e.insert((seq, book));
            }
            Entry::Occupied(mut e) => {
                *coalesced += 1;
                if seq > e.get().0 {
                    e.insert((seq, book));
                }
            }
        }
    }

    /// Writes every pending book. Returns false if any write failed; after a connection
    /// failure the rest wait for the retry instead of each timing out in turn.
    fn write_pending(&mut self) -> bool {
        let (mut written, mut failed) = (0u64, 0u64);
        let mut down = false;
        let store = &self.store;
        let written_seq = &mut self.written_seq;
        self.pending.retain(|key, (seq, book)| {
            if down {
                return true;
            }
            match store.try_put(key, book) {
                Ok(_) => {
                    written += 1;
                    written_seq.insert(key.clone(), *seq);
                    false
                }
                Err(f) => {
                    failed += 1;
                    down = f.connection;
                    true
                }
            }
        });
        self.counters.written.fetch_add(written, Ordering::Relaxed);
        self.counters.failed.fetch_add(failed, Ordering::Relaxed);
        failed == 0
    }
}

impl crate::snapshot::SnapshotMirror for RedisWriteThrough {
    fn offer(&self, key: Key, book: Arc<FusedBook>) {
        RedisWriteThrough::offer(self, key, book);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Decimal;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn book_json_is_the_fused_payload() {
        let book = FusedBook {
            last_update_id: 160,
            status: Quality::Live,
            bids: vec![(d("50000.01"), d("1.5")), (d("50000"), d("0.00000001"))],
            asks: vec![(d("50000.02"), d("0.3"))],
        };
        let json = encode_book(&book);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"lastUpdateId":160,"status":"live","bids":[["50000.01","1.5"],["50000","0.00000001"]],"asks":[["50000.02","0.3"]]}"#
        );
        assert_eq!(decode_book(&json).unwrap(), book);
    }

    #[test]
    fn book_json_round_trips_every_status() {
        for status in [Quality::Live, Quality::Syncing, Quality::Stale] {
            let book = FusedBook {
                last_update_id: u64::MAX,
                status,
                bids: vec![],
                asks: vec![(d("-0.5"), d("92233720368.54775807"))],
            };
            assert_eq!(decode_book(&encode_book(&book)).unwrap(), book);
        }
    }

    #[test]
    fn corrupt_book_json_is_an_error_not_a_panic() {
        let cases: [&[u8]; 7] = [
            b"",
            b"not json",
            b"{\"lastUpdateId\":1,\"status\":\"live\",\"bids\":[],\"asks\":[[\"1\"]]}",
            b"{\"lastUpdateId\":1,\"status\":\"dead\",\"bids\":[],\"asks\":[]}",
            b"{\"lastUpdateId\":-1,\"status\":\"live\",\"bids\":[],\"asks\":[]}",
            b"{\"lastUpdateId\":1,\"status\":\"live\",\"bids\":[[\"1e5\",\"1\"]],\"asks\":[]}",
            b"{\"status\":\"live\",\"bids\":[],\"asks\":[]}",
        ];
        for c in cases {
            assert!(decode_book(c).is_err(), "{}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn decode_record_names_the_key() {
        let nil = Value::Nil;
        assert_eq!(
            decode_record("k", &[nil.clone(), nil.clone(), nil.clone()]).unwrap(),
            None
        );
        let bad = [
            Value::BulkString(b"x".to_vec()),
            Value::BulkString(b"1".to_vec()),
            Value::BulkString(b"{}".to_vec()),
        ];
        let err = StoreError::from(decode_record("meltica:snap:X", &bad).unwrap_err());
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("meltica:snap:X")),
            "{err}"
        );
        let half = [Value::BulkString(b"1".to_vec()), nil.clone(), nil];
        assert!(decode_record("k", &half).is_err());
    }

    #[test]
    fn scan_patterns_escape_globs() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("meltica:snap:"), "meltica:snap:");
    }
}
