//! Sharded engines on NATS and Redis, as an operator runs them: two `meltica run` processes
//! split four instruments by hash and publish to the same NATS subjects and JetStream
//! stream; one `meltica tail` sees every instrument; a consumer started late reads the
//! latest books from Redis and continues from the stream without a gap.
//!
//! Needs Redis at 127.0.0.1:6379 and NATS with JetStream at 127.0.0.1:4222. Without them the
//! test says it skipped, unless `MELTICA_REQUIRE_SERVICES=1`, where it fails.
#![cfg(all(feature = "nats", feature = "redis"))]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meltica::bus::nats::{NatsTail, TailStart};
use meltica::config::shard_of;
use meltica::schema::EventType;
use meltica::simulator::{SimSymbol, Simulator, SimulatorConfig};
use meltica::snapshot::redis::RedisSnapshotStore;
use serde_json::Value;

const NATS: &str = "nats://127.0.0.1:4222";
const REDIS: &str = "redis://127.0.0.1:6379/";
const INSTRUMENTS: [&str; 4] = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "BNB-USDT"];

fn reachable(addr: &str) -> bool {
    let a: SocketAddr = addr.parse().unwrap();
    TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
}

fn services_up(test: &str) -> bool {
    let up = reachable("127.0.0.1:4222") && reachable("127.0.0.1:6379");
    if !up {
        assert!(
            std::env::var("MELTICA_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{test}: Redis (6379) and NATS (4222) are required"
        );
        println!("{test}: skipped: Redis or NATS is not running");
    }
    up
}

fn engine_config(sim: &Simulator, tag: &str, index: u32) -> String {
    format!(
        r#"instruments: [{instruments}]
adapter:
  binance:
    ws_url: {ws}
    rest_url: {rest}
    snapshot: {{depth: 100}}
dispatcher:
  routes:
    - type: TRADE
    - type: ANALYTICS.FUSED
conductor:
  throttle: 50ms
snapshot_store:
  backend: redis
  redis: {{url: "{REDIS}", prefix: {tag}}}
bus:
  backend: nats
  nats:
    url: {NATS}
    subject_prefix: {tag}
    engine_id: shard{index}
    jetstream: {{stream: {stream}, max_age: 10m}}
shard: {{count: 2, index: {index}}}
control: {{addr: ~}}
log: warn
"#,
        instruments = INSTRUMENTS.join(", "),
        ws = sim.ws_url(),
        rest = sim.rest_url(),
        stream = tag.to_uppercase(),
    )
}

fn stop(mut child: Child) -> (Option<i32>, String) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

/// (instrument, type) → seqs in arrival order, from NDJSON lines.
fn seqs(lines: &[Value]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut m: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for v in lines {
        m.entry((
            v["instrument"].as_str().unwrap().to_owned(),
            v["type"].as_str().unwrap().to_owned(),
        ))
        .or_default()
        .push(v["seq"].as_u64().unwrap());
    }
    m
}

#[test]
fn sharded_engines_publish_one_stream_and_a_late_consumer_resumes_from_redis() {
    if !services_up("sharded_engines") {
        return;
    }
    let shards: Vec<u32> = INSTRUMENTS.iter().map(|i| shard_of(i, 2)).collect();
    assert!(
        shards.contains(&0) && shards.contains(&1),
        "the four instruments split over both shards: {shards:?}"
    );
    let sim = Simulator::start(SimulatorConfig {
        symbols: vec![
            SimSymbol::new("BTCUSDT", "BTC", "USDT", "50000", "0.01", "0.00001"),
            SimSymbol::new("ETHUSDT", "ETH", "USDT", "3000", "0.01", "0.0001"),
            SimSymbol::new("SOLUSDT", "SOL", "USDT", "150", "0.01", "0.001"),
            SimSymbol::new("BNBUSDT", "BNB", "USDT", "600", "0.01", "0.001"),
        ],
        updates_per_sec: 20,
        trades_per_step: 0.5,
        ..SimulatorConfig::default()
    })
    .unwrap();
    let tag = format!("mcluster{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).unwrap();
    let store = RedisSnapshotStore::new(REDIS, &tag).unwrap();
    store.clear_prefix().unwrap();

    // The operator's tail, listening before the engines start.
    let tail = support::meltica(&[
        "tail",
        "--nats",
        NATS,
        "--prefix",
        &tag,
        "--type",
        "TRADE,ANALYTICS.FUSED",
        "--duration",
        "9s",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let engines: Vec<Child> = (0..2)
        .map(|i| {
            let path = dir.join(format!("shard{i}.yaml"));
            std::fs::write(&path, engine_config(&sim, &tag, i)).unwrap();
            support::meltica(&["run", "--config", path.to_str().unwrap()])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));

    // A consumer that starts late: the latest books from Redis, then the stream.
    let books: HashMap<String, u64> = store
        .latest("BINANCE-SPOT")
        .unwrap()
        .into_iter()
        .map(|(k, r)| (k.instrument.to_string(), r.book.last_update_id))
        .collect();
    assert_eq!(
        books.keys().collect::<HashSet<_>>(),
        INSTRUMENTS
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<_>>()
            .iter()
            .collect(),
        "Redis holds a book for every instrument of both shards"
    );
    std::thread::sleep(Duration::from_secs(2));

    for e in engines {
        let (code, err) = stop(e);
        assert_eq!(code, Some(0), "engine exited badly:\n{err}");
    }
    let out = tail.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "tail: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One tail saw every instrument, each in order, with no key twice.
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("tail prints contract JSON"))
        .collect();
    let keys: Vec<&str> = lines.iter().map(|v| v["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys.len(),
        keys.iter().collect::<HashSet<_>>().len(),
        "duplicate keys"
    );
    let by_stream = seqs(&lines);
    for i in INSTRUMENTS {
        for t in ["TRADE", "ANALYTICS.FUSED"] {
            let s = by_stream
                .get(&(i.to_owned(), t.to_owned()))
                .unwrap_or_else(|| panic!("tail saw no {t} for {i}"));
            assert!(
                s.windows(2).all(|w| w[1] == w[0] + 1),
                "{i} {t}: out of order or gapped: {s:?}"
            );
        }
    }
    println!(
        "tail: {} events over {} streams from 2 engines",
        lines.len(),
        by_stream.len()
    );

    // The late consumer resumes each instrument at the book it read from Redis.
    let late = NatsTail::connect(
        NATS,
        &tag,
        &[EventType::AnalyticsFused],
        &[],
        Some(TailStart::First),
    )
    .unwrap();
    let mut fused: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    while let Ok(line) = late.recv_timeout(Duration::from_secs(2)) {
        let v: Value = serde_json::from_str(&line).unwrap();
        fused
            .entry(v["instrument"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                v["seq"].as_u64().unwrap(),
                v["payload"]["lastUpdateId"].as_u64().unwrap(),
            ));
    }
    late.shutdown();
    for (instrument, from_redis) in &books {
        let events = &fused[instrument];
        let at = events
            .iter()
            .position(|(_, id)| id == from_redis)
            .unwrap_or_else(|| {
                panic!("{instrument}: the stream has no book at update id {from_redis}")
            });
        let rest: Vec<u64> = events[at..].iter().map(|(s, _)| *s).collect();
        assert!(
            rest.len() > 1 && rest.windows(2).all(|w| w[1] == w[0] + 1),
            "{instrument}: the stream after the Redis book is gapped: {rest:?}"
        );
        println!(
            "{instrument}: Redis book at update id {from_redis}; the stream continues with {} more books, gap-free",
            rest.len() - 1
        );
    }
    store.clear_prefix().unwrap();
    delete_stream(&tag.to_uppercase());
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown();
}

/// Removes the test's JetStream stream.
fn delete_stream(name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Ok(client) = async_nats::connect(NATS).await {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(name).await;
        }
    });
}
