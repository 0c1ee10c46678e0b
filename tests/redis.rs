//! The Redis snapshot store and its write-through against a real Redis server
//! (`REDIS_URL`, default `redis://127.0.0.1:6379/`). Without a server each test prints that
//! it skipped, unless `MELTICA_REQUIRE_SERVICES=1`, where it fails.

#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use meltica::schema::{Decimal, EventType, FusedBook, Quality};
use meltica::snapshot::redis::{DEFAULT_URL, RedisSnapshotStore, RedisWriteThrough};
use meltica::snapshot::{Key, SnapshotStore, StoreError};
use support::store_contract;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn services_required() -> bool {
    std::env::var("MELTICA_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// A store under a prefix of this process and test alone, cleared before and after.
struct Scratch {
    prefix: String,
    store: Arc<RedisSnapshotStore>,
}

impl Scratch {
    /// Another store on the same server and prefix.
    fn open(&self) -> RedisSnapshotStore {
        RedisSnapshotStore::new(&redis_url(), &self.prefix).unwrap()
    }

    /// A plain connection for planting values the store would never write.
    fn raw(&self) -> redis::Connection {
        redis::Client::open(redis_url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.store.clear_prefix();
    }
}

fn scratch(test: &str) -> Option<Scratch> {
    let prefix = format!("meltica-test-{}-{test}", std::process::id());
    let store = RedisSnapshotStore::new(&redis_url(), &prefix).unwrap();
    match store.ping() {
        Ok(()) => {}
        Err(e) if services_required() => {
            panic!("MELTICA_REQUIRE_SERVICES=1 but Redis is not usable: {e}")
        }
        Err(e) => {
            println!("skipped {test}: {e} (MELTICA_REQUIRE_SERVICES=1 makes this a failure)");
            return None;
        }
    }
    store.clear_prefix().unwrap();
    Some(Scratch {
        prefix,
        store: Arc::new(store),
    })
}

fn book(id: u64) -> Arc<FusedBook> {
    Arc::new(FusedBook {
        last_update_id: id,
        status: Quality::Live,
        bids: vec![(
            Decimal::parse("50000.01").unwrap(),
            Decimal::from_raw(id as i64),
        )],
        asks: vec![(Decimal::parse("50000.02").unwrap(), Decimal::ONE)],
    })
}

fn key(market: &str, event_type: EventType, instrument: &str) -> Key {
    Key {
        market: market.into(),
        instrument: instrument.into(),
        event_type,
    }
}

#[test]
fn redis_store_basic_contract() {
    let Some(s) = scratch("basic") else { return };
    store_contract::basic(&*s.store, "REDIS");
}

#[test]
fn redis_store_ttl_sweep() {
    let Some(s) = scratch("ttl") else { return };
    store_contract::ttl(&*s.store, "REDIS");
}

#[test]
fn redis_store_contended_cas_loses_nothing() {
    let Some(s) = scratch("contended") else {
        return;
    };
    store_contract::contended(s.store.clone(), "REDIS", 300);
}

#[test]
fn cas_increments_from_four_threads_are_exact() {
    let Some(s) = scratch("increments") else {
        return;
    };
    let k = Key::fused("BTC-USDT");
    let initial = 5;
    for _ in 0..initial {
        s.store.put(&k, book(0)).unwrap();
    }
    let per_thread = 250u64;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, k) = (s.store.clone(), k.clone());
            std::thread::spawn(move || {
                let mut expected = store.get(&k).unwrap().map_or(0, |r| r.version);
                let mut done = 0;
                while done < per_thread {
                    match store.compare_and_swap(&k, expected, book(expected + 1)) {
                        Ok(v) => {
                            done += 1;
                            expected = v;
                        }
                        Err(StoreError::Conflict { current, .. }) => {
                            expected = current.map_or(0, |r| r.version);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = s.store.get(&k).unwrap().unwrap();
    assert_eq!(r.version, 4 * per_thread + initial);
    assert_eq!(
        r.book.last_update_id, r.version,
        "the last write is the stored book"
    );
}

#[test]
fn latest_returns_every_stored_book() {
    let Some(s) = scratch("latest") else { return };
    let spot = meltica::schema::MARKET_BINANCE_SPOT;
    let mut expected = Vec::new();
    for (i, instrument) in ["BTC-USDT", "ETH-USDT", "SOL-USDT"].iter().enumerate() {
        for t in [EventType::AnalyticsFused, EventType::OrderbookSnapshot] {
            let k = key(spot, t, instrument);
            let writes = i as u64 + 1;
            for n in 1..=writes {
                s.store.put(&k, book(100 * writes + n)).unwrap();
            }
            expected.push((k, writes, 101 * writes));
        }
    }
    s.store
        .put(
            &key("OTHER-MARKET", EventType::AnalyticsFused, "BTC-USDT"),
            book(7),
        )
        .unwrap();
    expected.sort();

    let latest = s.store.latest(spot).unwrap();
    let got: Vec<_> = latest
        .iter()
        .map(|(k, r)| (k.clone(), r.version, r.book.last_update_id))
        .collect();
    assert_eq!(got, expected);
    for (k, r) in &latest {
        assert_eq!(
            *r.book,
            *book(r.book.last_update_id),
            "{k:?} decodes intact"
        );
    }
    let other = s.store.latest("OTHER-MARKET").unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].1.book.last_update_id, 7);
    assert!(s.store.latest("NO-SUCH-MARKET").unwrap().is_empty());
}

#[test]
fn corrupt_records_are_unavailable_and_name_the_key() {
    let Some(s) = scratch("corrupt") else { return };
    let mut raw = s.raw();
    let bad_book = Key::fused("BAD-BOOK");
    let bad_version = Key::fused("BAD-VERSION");
    let not_a_hash = Key::fused("NOT-A-HASH");
    redis::cmd("HSET")
        .arg(s.store.record_key(&bad_book))
        .arg("version")
        .arg("1")
        .arg("updated_ms")
        .arg("1")
        .arg("book")
        .arg("{\"lastUpdateId\":1,\"status\":\"live\",\"bids\":[[\"1e5\",\"1\"]]")
        .exec(&mut raw)
        .unwrap();
    redis::cmd("HSET")
        .arg(s.store.record_key(&bad_version))
        .arg("version")
        .arg("one")
        .exec(&mut raw)
        .unwrap();
    redis::cmd("SET")
        .arg(s.store.record_key(&not_a_hash))
        .arg("x")
        .exec(&mut raw)
        .unwrap();

    let names_key = |r: Result<_, StoreError>, k: &Key| match r {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains(&s.store.record_key(k)), "{m}");
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("expected Unavailable, got a value"),
    };
    names_key(s.store.get(&bad_book).map(|_| ()), &bad_book);
    names_key(s.store.get(&bad_version).map(|_| ()), &bad_version);
    names_key(s.store.get(&not_a_hash).map(|_| ()), &not_a_hash);
    names_key(s.store.put(&bad_version, book(1)).map(|_| ()), &bad_version);
    names_key(
        s.store
            .compare_and_swap(&bad_version, 0, book(1))
            .map(|_| ()),
        &bad_version,
    );
    names_key(s.store.put(&not_a_hash, book(1)).map(|_| ()), &not_a_hash);
    match s.store.latest(meltica::schema::MARKET_BINANCE_SPOT) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains(":snap:"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The sweep leaves values it cannot read alone and the store keeps working.
    s.store.sweep_expired(Duration::ZERO).unwrap();
    assert_eq!(s.store.put(&Key::fused("GOOD"), book(1)).unwrap(), 1);
}

#[test]
fn reconnects_after_the_server_drops_its_connections() {
    let Some(s) = scratch("reconnect") else {
        return;
    };
    let name = format!("meltica-test-{}-reconnect", std::process::id());
    let store = s.open().with_client_name(&name);
    let mut raw = s.raw();
    let kill = |raw: &mut redis::Connection| {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(raw).unwrap();
        let mut killed = 0;
        for line in list.lines() {
            let field = |f: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(f))
                    .unwrap_or_default()
                    .to_owned()
            };
            if field("name=") == name {
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(field("id="))
                    .exec(raw)
                    .unwrap();
                killed += 1;
            }
        }
        killed
    };
    let k = Key::fused("BTC-USDT");
    assert_eq!(store.put(&k, book(1)).unwrap(), 1);
    assert_eq!(kill(&mut raw), 1, "one pooled connection");
    assert_eq!(store.get(&k).unwrap().unwrap().version, 1, "get reconnects");
    assert_eq!(kill(&mut raw), 1);
    assert_eq!(store.put(&k, book(2)).unwrap(), 2, "put reconnects");
    assert_eq!(kill(&mut raw), 1);
    // A compare-and-swap is not repeated on its own (its first attempt may have landed):
    // at most one call fails, and the next one reconnects.
    let v = match store.compare_and_swap(&k, 2, book(3)) {
        Ok(v) => v,
        Err(StoreError::Unavailable(m)) => {
            println!("compare-and-swap on a dropped connection: {m}");
            store.compare_and_swap(&k, 2, book(3)).unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(v, 3);
}

#[test]
fn unreachable_server_is_unavailable_promptly() {
    let store = RedisSnapshotStore::new("redis://127.0.0.1:1/", "meltica-test").unwrap();
    let k = Key::fused("BTC-USDT");
    let started = Instant::now();
    let results: Vec<Result<(), StoreError>> = vec![
        store.ping(),
        store.get(&k).map(|_| ()),
        store.put(&k, book(1)).map(|_| ()),
        store.compare_and_swap(&k, 0, book(1)).map(|_| ()),
        store.sweep_expired(Duration::from_secs(1)).map(|_| ()),
        store.latest("BINANCE-SPOT").map(|_| ()),
        store.clear_prefix().map(|_| ()),
    ];
    for r in results {
        match r {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.starts_with("redis at 127.0.0.1:1 unreachable: "), "{m}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(RedisSnapshotStore::new("http://nope", "x").is_err());
}

#[test]
fn write_through_ends_with_the_latest_book_per_key() {
    let Some(s) = scratch("write-through") else {
        return;
    };
    // A queue of 4 makes producers outrun the writer, so the overflow path is taken; one of
    // 4096 coalesces within batches instead.
    for capacity in [4, 4096] {
        s.store.clear_prefix().unwrap();
        write_through_run(&s, capacity);
    }
}

fn write_through_run(s: &Scratch, capacity: usize) {
    let keys: Vec<Key> = (0..8).map(|i| Key::fused(&format!("I{i}-USDT"))).collect();
    let per_key = 1500u64;
    let wt = Arc::new(RedisWriteThrough::start(s.open(), capacity));
    let producers: Vec<_> = keys
        .chunks(2)
        .map(|own| {
            let (wt, own) = (wt.clone(), own.to_vec());
            std::thread::spawn(move || {
                for n in 1..=per_key {
                    for k in &own {
                        wt.offer(k.clone(), book(n));
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let wt = Arc::into_inner(wt).expect("producers are done");
    let stats = wt.shutdown();
    println!("write-through, queue of {capacity}: {stats:?}");

    assert_eq!(stats.offered, keys.len() as u64 * per_key);
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.abandoned, 0);
    assert_eq!(
        stats.offered,
        stats.written + stats.coalesced,
        "every book was written or superseded"
    );
    let mut versions = 0;
    for k in &keys {
        let r = s.store.get(k).unwrap().expect("every key written");
        assert_eq!(
            r.book.last_update_id, per_key,
            "{k:?} holds its latest book"
        );
        versions += r.version;
    }
    assert_eq!(versions, stats.written, "one version per write");
    assert_eq!(
        s.store
            .latest(meltica::schema::MARKET_BINANCE_SPOT)
            .unwrap()
            .len(),
        keys.len()
    );
}

#[test]
fn write_through_keeps_trying_while_redis_is_unreachable() {
    let store = RedisSnapshotStore::new("redis://127.0.0.1:1/", "meltica-test")
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let wt = RedisWriteThrough::start(store, 16);
    for n in 1..=5 {
        wt.offer(Key::fused("BTC-USDT"), book(n));
        wt.offer(Key::fused("ETH-USDT"), book(n));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while wt.stats().failed < 3 {
        assert!(Instant::now() < deadline, "no retries: {:?}", wt.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let stats = wt.shutdown_within(Duration::from_millis(300));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stats.offered, 10);
    assert_eq!(stats.written, 0);
    assert_eq!(stats.abandoned, 2, "the latest book of each key");
    assert_eq!(stats.coalesced, 8);
    assert_eq!(
        stats.offered,
        stats.written + stats.coalesced + stats.abandoned
    );
}

/// A `redis-server` of this test's own on a free loopback port, stopped on drop.
struct PrivateRedis(std::process::Child);

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn write_through_catches_up_when_redis_comes_back() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let store = RedisSnapshotStore::new(&url, "meltica-test")
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let wt = RedisWriteThrough::start(store, 64);
    let keys = [Key::fused("BTC-USDT"), Key::fused("ETH-USDT")];
    for n in 1..=20 {
        for k in &keys {
            wt.offer(k.clone(), book(n));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while wt.stats().failed < 2 {
        assert!(Instant::now() < deadline, "no retries: {:?}", wt.stats());
        std::thread::sleep(Duration::from_millis(20));
    }

    let server = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--logfile", ""])
        .stdout(std::process::Stdio::null())
        .spawn();
    let _server = match server {
        Ok(child) => PrivateRedis(child),
        Err(e) if services_required() => panic!("MELTICA_REQUIRE_SERVICES=1 but {e}"),
        Err(e) => {
            println!("skipped catch-up: cannot run redis-server: {e}");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while wt.stats().written < 2 {
        assert!(
            Instant::now() < deadline,
            "never caught up: {:?}",
            wt.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = wt.shutdown();
    println!("write-through across an outage: {stats:?}");
    assert_eq!(stats.offered, 40);
    assert_eq!(
        (stats.written, stats.coalesced, stats.abandoned),
        (2, 38, 0)
    );
    assert!(stats.failed >= 2);
    let check = RedisSnapshotStore::new(&url, "meltica-test").unwrap();
    for k in &keys {
        let r = check.get(k).unwrap().unwrap();
        assert_eq!((r.version, r.book.last_update_id), (1, 20), "{k:?}");
    }
}
