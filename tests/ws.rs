//! The consumer WebSocket endpoint over real loopback sockets: simulator → engine → data bus
//! → `EventServer` → `EventClient`. Filters, the request checks and their HTTP statuses, a
//! slow consumer that cannot slow the engine, subscriptions freed on disconnect, and
//! shutdown.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meltica::bus::ws::{ClientError, EventClient, EventServer, Rejection, missed_notice};
use meltica::bus::{DataBus, SubscribeOptions, SubscriptionFilter};
use meltica::config::BackpressurePolicy;
use meltica::engine::Engine;
use meltica::schema::EventType;
use meltica::simulator::Simulator;
use serde_json::Value;
use tungstenite::Message;

const DEFAULTS: (usize, BackpressurePolicy) = (1024, BackpressurePolicy::DropOldest);

/// A simulator at `updates_per_sec`, an engine on it, and the endpoint on the engine's bus.
fn setup(updates_per_sec: u32, token: Option<&str>) -> (Simulator, Engine, EventServer) {
    let sim = support::simulator(updates_per_sec);
    let mut cfg = support::config_for(&sim);
    cfg.control.addr = None;
    let engine = Engine::start(cfg).expect("engine starts against the simulator");
    let server = EventServer::start(
        "127.0.0.1:0".parse().unwrap(),
        token.map(str::to_owned),
        engine.bus(),
        DEFAULTS,
    )
    .expect("event endpoint starts");
    (sim, engine, server)
}

fn connect(server: &EventServer, query: &str) -> EventClient {
    EventClient::connect(&format!("{}{query}", server.url()), None).expect("client connects")
}

/// The next event (notices are returned to the caller as `Err(count)`).
fn next(client: &mut EventClient) -> Result<Value, u64> {
    let line = client
        .recv_timeout(Duration::from_secs(20))
        .expect("an event within 20 s");
    if let Some(n) = missed_notice(&line) {
        return Err(n);
    }
    Ok(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
}

#[test]
fn trades_arrive_in_seq_order_as_the_contract_json() {
    let (sim, engine, server) = setup(200, None);
    let reference = engine.subscribe(
        SubscriptionFilter::types(&[EventType::Trade]),
        SubscribeOptions::new("reference", 65_536, BackpressurePolicy::DropOldest),
    );
    let mut client = connect(&server, "?type=TRADE");
    let mut lines: Vec<String> = Vec::new();
    while lines.len() < 40 {
        let line = client
            .recv_timeout(Duration::from_secs(20))
            .expect("a trade within 20 s");
        assert_eq!(missed_notice(&line), None, "a fast consumer misses nothing");
        lines.push(line);
    }
    // Every frame is exactly the JSON of the event the bus published.
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).expect("valid JSON");
        assert_eq!(v["type"], "TRADE", "{line}");
        let key = v["key"].as_str().unwrap().to_owned();
        while !expected.contains_key(&key) {
            let ev = reference
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("the bus never published {key}"));
            expected.insert(ev.key(), ev.to_json());
        }
        assert_eq!(line, &expected[&key]);
        let instrument = v["instrument"].as_str().unwrap().to_owned();
        let seq = v["seq"].as_u64().unwrap();
        if let Some(prev) = last_seq.insert(instrument.clone(), seq) {
            assert_eq!(seq, prev + 1, "seq gap for {instrument}");
        }
    }
    assert_eq!(server.counts().accepted, 1);
    // Counted once the batch is flushed, so possibly just after the client read it.
    assert!(support::wait_until(Duration::from_secs(5), || server
        .counts()
        .events_sent
        >= 40));
    client.close();
    server.shutdown();
    engine.shutdown().expect("clean shutdown");
    sim.shutdown();
}

#[test]
fn filters_by_type_and_instrument() {
    let (sim, engine, server) = setup(200, None);
    let mut client = connect(&server, "?type=TRADE,ORDERBOOK.DELTA&instrument=eth-usdt");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let v = next(&mut client).expect("no missed events");
        assert_eq!(v["instrument"], "ETH-USDT", "{v}");
        *seen
            .entry(v["type"].as_str().unwrap().to_owned())
            .or_default() += 1;
        if seen.len() == 2 {
            break;
        }
    }
    let types: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert!(
        seen.contains_key("TRADE") && seen.contains_key("ORDERBOOK.DELTA"),
        "only {types:?}"
    );
    let clients = server.clients();
    assert_eq!(clients.len(), 1);
    assert_eq!(
        clients[0].target,
        "/events?type=TRADE,ORDERBOOK.DELTA&instrument=eth-usdt"
    );
    server.shutdown();
    engine.shutdown().expect("clean shutdown");
    sim.shutdown();
}

fn rejected(server: &EventServer, query: &str, token: Option<&str>) -> (u16, String) {
    let url = format!("ws://{}{query}", server.addr());
    match EventClient::connect(&url, token) {
        Err(ClientError::Rejected { status, body }) => (status, body),
        Err(e) => panic!("{query}: expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("{query}: expected an HTTP refusal, got a connection"),
    }
}

#[test]
fn bad_requests_are_refused_with_their_http_status() {
    let (sim, engine, server) = setup(100, Some("s3cret"));
    let tok = Some("s3cret");

    let (status, body) = rejected(&server, "/events?type=TRADE", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(rejected(&server, "/events", Some("wrong")).0, 401);
    // The token is never taken from the URL.
    assert_eq!(rejected(&server, "/events?token=s3cret", None).0, 401);
    let (status, body) = rejected(&server, "/events?token=s3cret", tok);
    assert_eq!(status, 400);
    assert!(body.contains("Authorization"), "{body}");

    let (status, body) = rejected(&server, "/events?type=TRADE,NOPE", tok);
    assert_eq!(status, 422);
    let v: Value = serde_json::from_str(&body).expect("JSON error body");
    assert!(v["error"].as_str().unwrap().contains("NOPE"), "{body}");

    let (status, body) = rejected(&server, "/events?policy=block", tok);
    assert_eq!(status, 400);
    assert!(body.contains("stall"), "{body}");
    assert_eq!(rejected(&server, "/events?policy=sometimes", tok).0, 400);
    assert_eq!(rejected(&server, "/events?capacity=0", tok).0, 400);
    assert_eq!(rejected(&server, "/events?colour=blue", tok).0, 400);
    assert_eq!(rejected(&server, "/stream", tok).0, 404);

    // Not a WebSocket upgrade at all.
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");

    // The right token works.
    let mut client = EventClient::connect(&format!("{}?type=TRADE", server.url()), tok)
        .expect("the right token connects");
    let v = next(&mut client).expect("an event");
    assert_eq!(v["type"], "TRADE");

    // A refusal is counted once its answer is written, so possibly just after it was read.
    assert!(support::wait_until(Duration::from_secs(5), || server
        .counts()
        .rejected_total()
        == 11));
    let c = server.counts();
    assert_eq!(c.rejected_for(Rejection::Unauthorized), 3);
    assert_eq!(c.rejected_for(Rejection::BadRequest), 5);
    assert_eq!(c.rejected_for(Rejection::UnknownType), 1);
    assert_eq!(c.rejected_for(Rejection::NotFound), 1);
    assert_eq!(c.rejected_for(Rejection::NotWebSocket), 1);
    assert_eq!((c.accepted, c.connected), (1, 1));

    // A non-loopback endpoint without a token does not start.
    let err = EventServer::start(
        "0.0.0.0:0".parse().unwrap(),
        None,
        engine.bus() as Arc<dyn DataBus>,
        DEFAULTS,
    )
    .err()
    .expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

    client.close();
    server.shutdown();
    engine.shutdown().expect("clean shutdown");
    sim.shutdown();
}

#[test]
fn a_slow_consumer_loses_events_but_never_slows_the_engine() {
    let (sim, engine, server) = setup(1000, None);
    // An in-process consumer that keeps up.
    let fast = Arc::new(engine.subscribe(
        SubscriptionFilter::all(),
        SubscribeOptions::new("fast", 65_536, BackpressurePolicy::DropOldest),
    ));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (fast, received) = (fast.clone(), received.clone());
        // Runs until the engine stops and the queue is drained.
        std::thread::spawn(move || {
            while let Some(_ev) = fast.recv() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // A remote consumer that reads one frame every 100 ms.
    let slow_stop = Arc::new(AtomicBool::new(false));
    let slow = {
        let mut client = connect(&server, "?capacity=16&policy=drop_oldest");
        let stop = slow_stop.clone();
        std::thread::spawn(move || {
            let mut read = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if client.recv_timeout(Duration::from_secs(1)).is_ok() {
                    read += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (client, read)
        })
    };
    let published = |e: &Engine| e.counts().published.iter().sum::<u64>();
    assert!(support::wait_until(Duration::from_secs(10), || server
        .clients()
        .first()
        .is_some_and(|c| c.offered > 0)));
    let before = published(&engine);
    let dropping = support::wait_until(Duration::from_secs(60), || {
        server.clients().first().is_some_and(|c| c.dropped > 1000)
    });
    let info = server.clients();
    assert!(
        dropping,
        "the slow consumer's queue never overflowed: {info:?}"
    );
    let during = published(&engine) - before;
    slow_stop.store(true, Ordering::Relaxed);
    let (mut client, slow_read) = slow.join().unwrap();

    // The engine kept publishing at its own pace while the slow consumer fell behind.
    assert!(
        during > 10 * slow_read.max(100),
        "published {during} while the slow consumer read {slow_read}"
    );

    // Reading at full speed, the slow consumer reaches the notice of what it missed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missed = None;
    while missed.is_none() && Instant::now() < deadline {
        let line = client
            .recv_timeout(Duration::from_secs(10))
            .expect("frames keep coming");
        missed = missed_notice(&line);
    }
    let missed = missed.expect("a missed notice");
    assert!(missed > 0);
    assert!(server.counts().missed >= missed);
    drop(client);
    server.shutdown();
    engine.shutdown().expect("clean shutdown");
    // The consumer that keeps up lost nothing.
    reader.join().unwrap();
    let stats = fast.stats();
    assert_eq!(stats.dropped(), 0, "the fast consumer lost events");
    assert_eq!(received.load(Ordering::Relaxed), stats.offered());
    sim.shutdown();
}

#[test]
fn a_consumer_that_leaves_frees_its_subscription() {
    let (sim, engine, server) = setup(200, None);
    let bus = engine.bus();
    let base = bus.subscriber_count();

    // A polite close.
    let mut client = connect(&server, "?type=TRADE");
    assert!(support::wait_until(Duration::from_secs(5), || bus
        .subscriber_count()
        == base + 1));
    next(&mut client).expect("an event");
    client.close();
    assert!(
        support::wait_until(Duration::from_secs(10), || bus.subscriber_count() == base
            && server.counts().connected == 0),
        "{} subscribers, {:?}",
        bus.subscriber_count(),
        server.counts()
    );

    // Pings are answered; then the connection just vanishes (no close frame).
    let (mut ws, _) = tungstenite::connect(format!("{}?type=TRADE", server.url())).unwrap();
    ws.send(Message::Ping("are you there".into())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no pong");
        if let Message::Pong(p) = ws.read().expect("a frame") {
            assert_eq!(&p[..], b"are you there");
            break;
        }
    }
    assert_eq!(bus.subscriber_count(), base + 1);
    drop(ws);
    assert!(
        support::wait_until(Duration::from_secs(10), || bus.subscriber_count() == base
            && server.counts().connected == 0),
        "{} subscribers, {:?}",
        bus.subscriber_count(),
        server.counts()
    );
    assert_eq!(server.counts().accepted, 2);
    server.shutdown();
    engine.shutdown().expect("clean shutdown");
    sim.shutdown();
}

/// Reads until the connection ends; returns its close code and reason.
fn until_closed(client: &mut EventClient) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match client.recv_timeout(Duration::from_secs(5)) {
            Ok(_) | Err(ClientError::Timeout) => {}
            Err(ClientError::Closed { code, reason }) => return (code, reason),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("still open after 20 s");
}

#[test]
fn shutdown_closes_every_consumer_promptly() {
    let (sim, engine, server) = setup(200, None);
    let mut busy = connect(&server, "?type=TRADE,ORDERBOOK.DELTA");
    // SOL-USDT is not streamed by this engine: an idle consumer.
    let mut idle = connect(&server, "?instrument=SOL-USDT");
    next(&mut busy).expect("an event");
    assert!(support::wait_until(Duration::from_secs(5), || server
        .counts()
        .connected
        == 2));
    let addr = server.addr();
    let t = Instant::now();
    server.shutdown();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    for c in [&mut busy, &mut idle] {
        let (code, reason) = until_closed(c);
        assert_eq!(code, 1001, "{reason}");
        assert!(reason.contains("shutting down"), "{reason}");
    }
    // The port no longer accepts consumers.
    let err = EventClient::connect(&format!("ws://{addr}/events"), None)
        .err()
        .expect("nobody listens");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    engine.shutdown().expect("clean shutdown");
    sim.shutdown();
}

#[test]
fn consumers_are_told_when_the_engine_stops() {
    let (sim, engine, server) = setup(200, None);
    let mut client = connect(&server, "?type=TRADE");
    next(&mut client).expect("an event");
    engine.shutdown().expect("clean shutdown");
    let (code, reason) = until_closed(&mut client);
    assert_eq!((code, reason.as_str()), (1001, "the engine stopped"));
    assert!(support::wait_until(Duration::from_secs(5), || server
        .counts()
        .connected
        == 0));
    server.shutdown();
    sim.shutdown();
}

#[test]
fn a_disconnect_consumer_is_cut_off_with_the_reason() {
    let (sim, engine, server) = setup(1000, None);
    let mut client = connect(&server, "?policy=disconnect&capacity=4");
    // Not reading: the socket fills, then the queue, and the bus cuts the consumer off.
    assert!(
        support::wait_until(Duration::from_secs(60), || server
            .clients()
            .first()
            .is_some_and(|c| c.dropped > 0)),
        "{:?}",
        server.clients()
    );
    // Reading again, the consumer gets what was queued, a missed notice, and the reason.
    let mut missed = 0;
    let (code, reason) = loop {
        match client.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => missed += missed_notice(&line).unwrap_or(0),
            Err(ClientError::Closed { code, reason }) => break (code, reason),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("too slow"), "{reason}");
    assert!(missed > 0, "no missed notice before the close");
    server.shutdown();
    engine.shutdown().expect("clean shutdown");
    sim.shutdown();
}

/// Sends `request` on a fresh connection and returns whatever comes back until EOF.
fn raw_exchange(server: &EventServer, request: &[u8]) -> String {
    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    raw.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn hostile_input_is_refused_without_harm() {
    let (sim, engine, server) = setup(100, None);
    let garbage = raw_exchange(&server, b"\x00\x01\x02 not http at all\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    let post = raw_exchange(&server, b"POST /events HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405"), "{post:?}");

    // A request that never completes is dropped after the handshake timeout.
    let t = Instant::now();
    let slow = raw_exchange(&server, b"GET /events HTTP/1.1\r\nHost: x\r\n");
    assert!(slow.is_empty(), "{slow:?}");
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());

    // A consumer may chatter; an oversized frame ends its connection, nobody else's.
    let mut ok = connect(&server, "?type=TRADE");
    let (mut ws, _) = tungstenite::connect(format!("{}?type=TRADE", server.url())).unwrap();
    ws.send(Message::text("hello")).unwrap();
    // The server may cut the connection before all of it is written.
    let _ = ws.send(Message::binary(vec![0u8; 1 << 20]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ws.read().is_ok() {
        assert!(
            Instant::now() < deadline,
            "the oversized frame was accepted"
        );
    }
    for _ in 0..3 {
        next(&mut ok).expect("the other consumer is unaffected");
    }
    assert!(support::wait_until(Duration::from_secs(5), || server
        .counts()
        .connected
        == 1));
    let c = server.counts();
    assert_eq!(c.rejected_for(Rejection::BadRequest), 1, "{c:?}");
    assert_eq!(c.rejected_for(Rejection::MethodNotAllowed), 1, "{c:?}");
    assert_eq!(c.rejected_for(Rejection::Handshake), 1, "{c:?}");
    server.shutdown();
    engine.shutdown().expect("clean shutdown");
    sim.shutdown();
}
