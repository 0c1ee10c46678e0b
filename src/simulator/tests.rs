//! End-to-end tests over real loopback sockets.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(20);

fn config(updates_per_sec: u32) -> SimulatorConfig {
    SimulatorConfig {
        updates_per_sec,
        trades_per_step: 0.5,
        ..SimulatorConfig::default()
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

type Ws = WebSocket<TcpStream>;

fn ws_connect(url: &str, addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (ws, resp) = tungstenite::client::client(url, stream).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Next text frame as JSON (control frames are handled by tungstenite).
fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("websocket read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("unexpected close {c:?}"),
            _ => {}
        }
    }
}

fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Sends a request and returns the reply carrying the same id, skipping market data.
fn request(ws: &mut Ws, method: &str, params: Value, id: u64) -> Value {
    send(ws, &json!({"method": method, "params": params, "id": id}));
    loop {
        let v = next_json(ws);
        if v.get("id") == Some(&json!(id)) {
            return v;
        }
    }
}

/// The next reply to a request (an object with `result` or `error`).
fn next_reply(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws);
        if v.get("result").is_some() || v.get("error").is_some() {
            return v;
        }
    }
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET on an existing keep-alive connection.
fn http_get_on(conn: &mut BufReader<TcpStream>, path: &str) -> HttpResponse {
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .unwrap()
        .1
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    HttpResponse {
        status,
        headers,
        body: serde_json::from_slice(&body).unwrap(),
    }
}

fn http_connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    BufReader::new(s)
}

fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_get_on(&mut http_connect(addr), path)
}

fn dec(v: &Value) -> Decimal {
    let s = v.as_str().expect("decimal string");
    assert_eq!(s.split('.').nth(1).map(str::len), Some(8), "{s}");
    Decimal::parse(s).unwrap()
}

fn apply(book: &mut BTreeMap<Decimal, Decimal>, levels: &Value) {
    for l in levels.as_array().unwrap() {
        let (p, q) = (dec(&l[0]), dec(&l[1]));
        if q.is_zero() {
            book.remove(&p);
        } else {
            book.insert(p, q);
        }
    }
}

fn load(levels: &Value) -> BTreeMap<Decimal, Decimal> {
    let mut m = BTreeMap::new();
    apply(&mut m, levels);
    m
}

#[test]
fn depth_snapshot_plus_diffs_reproduces_the_true_book() {
    let sim = Simulator::start(config(200)).unwrap();
    let mut ws = ws_connect(&sim.ws_url(), sim.addr());
    let params = json!(["btcusdt@depth@100ms", "btcusdt@trade"]);
    send(
        &mut ws,
        &json!({"method": "SUBSCRIBE", "params": params, "id": 1}),
    );
    assert_eq!(next_json(&mut ws), json!({"result": null, "id": 1}));

    let snap = http_get(sim.addr(), "/api/v3/depth?symbol=BTCUSDT&limit=100");
    assert_eq!(snap.status, 200);
    let last_id = snap.body["lastUpdateId"].as_u64().unwrap();
    assert_eq!(snap.body["bids"].as_array().unwrap().len(), 40);
    let truth = sim
        .book_at("BTCUSDT", last_id)
        .expect("snapshot id in history");
    let mut bids = load(&snap.body["bids"]);
    let mut asks = load(&snap.body["asks"]);
    assert_eq!(bids.len(), truth.bids.len());

    let mut prev_u: Option<u64> = None;
    let (mut applied, mut trades) = (0, 0);
    while applied < 100 || trades == 0 {
        let frame = next_json(&mut ws);
        let data = &frame["data"];
        match frame["stream"].as_str().unwrap() {
            "btcusdt@trade" => {
                assert_eq!(data["e"], "trade");
                assert_eq!(data["s"], "BTCUSDT");
                assert!(data["t"].is_u64() && data["T"].is_u64() && data["E"].is_u64());
                assert!(data["m"].is_boolean() && data["M"].is_boolean());
                assert!(dec(&data["q"]).raw() > 0 && dec(&data["p"]).raw() > 0);
                trades += 1;
            }
            "btcusdt@depth@100ms" => {
                assert_eq!(data["e"], "depthUpdate");
                assert_eq!(data["s"], "BTCUSDT");
                let (first, last) = (data["U"].as_u64().unwrap(), data["u"].as_u64().unwrap());
                assert!(first <= last);
                if last <= last_id {
                    continue;
                }
                match prev_u {
                    None => assert!(first <= last_id + 1 && last_id < last),
                    Some(p) => assert_eq!(first, p + 1),
                }
                prev_u = Some(last);
                apply(&mut bids, &data["b"]);
                apply(&mut asks, &data["a"]);
                let truth = sim.book_at("BTCUSDT", last).expect("diff id in history");
                let rb: Vec<_> = bids.iter().rev().map(|(&p, &q)| (p, q)).collect();
                let ra: Vec<_> = asks.iter().map(|(&p, &q)| (p, q)).collect();
                assert_eq!(rb, truth.bids, "bids after {last}");
                assert_eq!(ra, truth.asks, "asks after {last}");
                assert!(rb[0].0 < ra[0].0);
                applied += 1;
            }
            other => panic!("unexpected stream {other}"),
        }
    }
    assert!(sim.frames_sent() >= 100);
}

#[test]
fn subscribe_list_unsubscribe_and_errors() {
    // Many requests back to back: the per-second message limit has its own test.
    let sim = Simulator::start(SimulatorConfig {
        client_message_limit: None,
        ..config(50)
    })
    .unwrap();
    let url = format!("ws://{}/ws", sim.addr());
    let mut ws = ws_connect(&url, sim.addr());
    wait_until("connection", || sim.connection_count() == 1);

    let streams = json!(["btcusdt@trade", "ethusdt@bookTicker"]);
    let r = request(&mut ws, "SUBSCRIBE", streams.clone(), 1);
    assert_eq!(r, json!({"result": null, "id": 1}));
    assert_eq!(sim.subscription_count(), 2);
    let r = request(&mut ws, "LIST_SUBSCRIPTIONS", json!([]), 2);
    assert_eq!(r, json!({"result": streams, "id": 2}));

    // Raw endpoint: bare payloads.
    let frame = loop {
        let v = next_json(&mut ws);
        if v.get("u").is_some() {
            break v;
        }
    };
    assert!(frame.get("stream").is_none() && frame.get("e").is_none());
    assert_eq!(frame["s"], "ETHUSDT");
    assert!(dec(&frame["b"]) < dec(&frame["a"]));
    assert!(dec(&frame["B"]).raw() > 0 && dec(&frame["A"]).raw() > 0);

    let r = request(&mut ws, "UNSUBSCRIBE", json!(["btcusdt@trade"]), 3);
    assert_eq!(r, json!({"result": null, "id": 3}));
    let r = request(&mut ws, "LIST_SUBSCRIPTIONS", json!([]), 4);
    assert_eq!(r["result"], json!(["ethusdt@bookTicker"]));
    assert_eq!(sim.subscription_count(), 1);

    for (i, bad) in ["xrpusdt@trade", "btcusdt@nonsense", "btcusdt"]
        .iter()
        .enumerate()
    {
        let id = 10 + i as u64;
        let r = request(&mut ws, "SUBSCRIBE", json!([bad]), id);
        assert_eq!(r["error"]["code"], 2, "{bad}: {r}");
        assert!(r.get("result").is_none());
    }
    let r = request(&mut ws, "NOPE", json!([]), 20);
    assert_eq!(r["error"]["code"], 2);

    ws.send(Message::text("{not json")).unwrap();
    let r = next_reply(&mut ws);
    assert_eq!(r["error"]["code"], 3);
    assert!(
        r["error"]["msg"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON")
    );
    assert_eq!(r["id"], Value::Null);

    // Still usable after errors; switch to combined frames.
    let r = request(&mut ws, "SET_PROPERTY", json!(["combined", true]), 30);
    assert_eq!(r, json!({"result": null, "id": 30}));
    let r = request(&mut ws, "GET_PROPERTY", json!(["combined"]), 31);
    assert_eq!(r, json!({"result": true, "id": 31}));
    let frame = next_json(&mut ws);
    assert_eq!(frame["stream"], "ethusdt@bookTicker");
    assert_eq!(frame["data"]["s"], "ETHUSDT");

    // A peer that goes away frees its subscriptions.
    drop(ws);
    wait_until("cleanup", || {
        sim.connection_count() == 0 && sim.subscription_count() == 0
    });
}

#[test]
fn url_streams_raw_paths_and_drop_connections() {
    let sim = Simulator::start(config(100)).unwrap();
    let url = format!(
        "{}?streams=btcusdt@bookTicker/ethusdt@depth/ethusdt@aggTrade",
        sim.ws_url()
    );
    let mut combined = ws_connect(&url, sim.addr());
    let raw_url = format!("ws://{}/ws/solusdt@depth", sim.addr());
    let mut raw = ws_connect(&raw_url, sim.addr());
    wait_until("connections", || sim.connection_count() == 2);
    assert_eq!(sim.subscription_count(), 4);

    let mut seen = std::collections::HashSet::new();
    while seen.len() < 3 {
        let f = next_json(&mut combined);
        let stream = f["stream"].as_str().unwrap().to_string();
        let data = &f["data"];
        match stream.as_str() {
            "btcusdt@bookTicker" => assert_eq!(data["s"], "BTCUSDT"),
            "ethusdt@depth" => assert_eq!(data["e"], "depthUpdate"),
            "ethusdt@aggTrade" => {
                assert_eq!(data["e"], "aggTrade");
                assert_eq!(data["f"], data["l"]);
                assert!(data["a"].is_u64());
            }
            other => panic!("unexpected stream {other}"),
        }
        seen.insert(stream);
    }
    let r = request(&mut combined, "LIST_SUBSCRIPTIONS", json!([]), 7);
    assert_eq!(
        r["result"],
        json!(["btcusdt@bookTicker", "ethusdt@depth", "ethusdt@aggTrade"])
    );
    let f = next_json(&mut raw);
    assert_eq!(f["e"], "depthUpdate");
    assert_eq!(f["s"], "SOLUSDT");

    let before = sim.frames_sent();
    sim.drop_connections();
    assert_eq!(sim.connection_count(), 0);
    assert_eq!(sim.subscription_count(), 0);
    for ws in [&mut combined, &mut raw] {
        // Frames already in flight may still arrive; then the stream ends without a close frame.
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => panic!("got a close frame"),
                Ok(_) => {}
                Err(e) => {
                    assert!(!matches!(e, tungstenite::Error::ConnectionClosed), "{e}");
                    break;
                }
            }
        }
    }
    assert!(sim.frames_sent() >= before);

    // Still listening.
    let mut again = ws_connect(
        &format!("{}?streams=btcusdt@depth", sim.ws_url()),
        sim.addr(),
    );
    assert_eq!(next_json(&mut again)["stream"], "btcusdt@depth");
    assert_eq!(sim.connection_count(), 1);

    // Bad stream in the URL and unknown paths are refused at the handshake.
    let bad = format!("{}?streams=foo@bar", sim.ws_url());
    let stream = TcpStream::connect(sim.addr()).unwrap();
    assert!(tungstenite::client::client(bad.as_str(), stream).is_err());
    let stream = TcpStream::connect(sim.addr()).unwrap();
    let bad = format!("ws://{}/nope", sim.addr());
    assert!(tungstenite::client::client(bad.as_str(), stream).is_err());
}

#[test]
fn rest_endpoints_and_error_codes() {
    let sim = Simulator::start(config(50)).unwrap();
    let addr = sim.addr();
    let mut conn = http_connect(addr);

    let r = http_get_on(&mut conn, "/api/v3/ping");
    assert_eq!((r.status, r.body.clone()), (200, json!({})));
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert!(r.header("x-mbx-used-weight-1m").is_some());

    let r = http_get_on(&mut conn, "/api/v3/time");
    assert!(r.body["serverTime"].as_u64().unwrap() > 1_600_000_000_000);

    let r = http_get_on(&mut conn, "/api/v3/exchangeInfo");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["timezone"], "UTC");
    let syms = r.body["symbols"].as_array().unwrap();
    assert_eq!(syms.len(), 3);
    let btc = &syms[0];
    assert_eq!(btc["symbol"], "BTCUSDT");
    assert_eq!(btc["status"], "TRADING");
    assert_eq!(btc["baseAsset"], "BTC");
    assert_eq!(btc["quoteAsset"], "USDT");
    assert_eq!(btc["filters"][0]["filterType"], "PRICE_FILTER");
    assert_eq!(btc["filters"][0]["tickSize"], "0.01000000");
    assert_eq!(btc["filters"][1]["filterType"], "LOT_SIZE");
    assert_eq!(btc["filters"][1]["stepSize"], "0.00001000");
    assert_eq!(sim.instruments(), ["BTC-USDT", "ETH-USDT", "SOL-USDT"]);

    let r = http_get_on(&mut conn, "/api/v3/exchangeInfo?symbol=ETHUSDT");
    assert_eq!(r.body["symbols"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["symbols"][0]["symbol"], "ETHUSDT");
    let r = http_get_on(
        &mut conn,
        "/api/v3/exchangeInfo?symbols=%5B%22SOLUSDT%22,%22BTCUSDT%22%5D",
    );
    let names: Vec<&str> = r.body["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SOLUSDT", "BTCUSDT"]);
    let r = http_get_on(&mut conn, "/api/v3/exchangeInfo?symbol=FOOBAR");
    assert_eq!((r.status, r.body["code"].clone()), (400, json!(-1121)));

    let r = http_get_on(&mut conn, "/api/v3/depth?symbol=ETHUSDT&limit=5");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["bids"].as_array().unwrap().len(), 5);
    assert_eq!(r.body["asks"].as_array().unwrap().len(), 5);
    assert!(dec(&r.body["bids"][0][0]) < dec(&r.body["asks"][0][0]));
    assert!(dec(&r.body["bids"][0][0]) > dec(&r.body["bids"][1][0]));
    let r = http_get_on(&mut conn, "/api/v3/depth?symbol=ETHUSDT");
    assert_eq!(r.body["asks"].as_array().unwrap().len(), 40);

    let r = http_get_on(&mut conn, "/api/v3/depth");
    assert_eq!(
        (r.status, r.body.clone()),
        (
            400,
            json!({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."})
        )
    );
    let r = http_get_on(&mut conn, "/api/v3/depth?symbol=NOPE");
    assert_eq!(
        (r.status, r.body.clone()),
        (400, json!({"code": -1121, "msg": "Invalid symbol."}))
    );
    let r = http_get_on(&mut conn, "/api/v3/depth?symbol=BTCUSDT&limit=abc");
    assert_eq!((r.status, r.body["code"].clone()), (400, json!(-1100)));
    let r = http_get_on(&mut conn, "/api/v3/nothing");
    assert_eq!(r.status, 404);
    assert!(r.body["code"].is_i64());

    // Pipelined requests on the same keep-alive connection.
    write!(
        conn.get_mut(),
        "GET /api/v3/ping HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v3/ping HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    for _ in 0..2 {
        let mut line = String::new();
        loop {
            line.clear();
            conn.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        let mut body = [0u8; 2];
        conn.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"{}");
    }
    let r = http_get_on(&mut conn, "/api/v3/ping");
    assert_eq!(r.status, 200);
}

#[test]
fn pause_freezes_the_book() {
    let sim = Simulator::start(config(500)).unwrap();
    let first = sim.current_book("BTCUSDT").unwrap().last_update_id;
    wait_until("some steps", || {
        sim.current_book("BTCUSDT").unwrap().last_update_id > first
    });
    sim.set_paused(true);
    let a = sim.current_book("SOLUSDT").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let b = sim.current_book("SOLUSDT").unwrap();
    assert_eq!(a, b);
    assert_eq!(sim.book_at("SOLUSDT", a.last_update_id), Some(a.clone()));
    let snap = http_get(sim.addr(), "/api/v3/depth?symbol=SOLUSDT&limit=1000");
    assert_eq!(snap.body["lastUpdateId"].as_u64(), Some(a.last_update_id));
    assert_eq!(snap.body["bids"].as_array().unwrap().len(), a.bids.len());
    assert!(sim.current_book("XRPUSDT").is_none());
    assert!(sim.book_at("XRPUSDT", a.last_update_id).is_none());
    sim.set_paused(false);
    wait_until("resume", || {
        sim.current_book("SOLUSDT").unwrap().last_update_id > a.last_update_id
    });
}

#[test]
fn server_pings_and_drops_silent_peers() {
    let cfg = SimulatorConfig {
        client_message_limit: None,
        ping_interval: Duration::from_millis(50),
        pong_timeout: Duration::from_millis(300),
        ..config(20)
    };
    let sim = Simulator::start(cfg).unwrap();
    // A tungstenite client answers pings while it reads.
    let mut ws = ws_connect(&sim.ws_url(), sim.addr());
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let stop = std::sync::Arc::clone(&stop);
        move || {
            let mut pings = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match ws.read() {
                    Ok(Message::Ping(_)) => pings += 1,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("reader dropped: {e}"),
                }
            }
            pings
        }
    });
    wait_until("reader connected", || sim.connection_count() == 1);
    // Handshake by hand, then never read: no pongs, so the server hangs up.
    let mut silent = TcpStream::connect(sim.addr()).unwrap();
    write!(
        silent,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    silent.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    assert_eq!(sim.connection_count(), 2);
    wait_until("silent peer dropped", || sim.connection_count() == 1);
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pings = reader.join().expect("reader stayed connected");
    assert!(pings >= 3, "pings {pings}");
    assert_eq!(sim.connection_count(), 1);
}

#[test]
fn slow_consumer_is_disconnected() {
    let cfg = SimulatorConfig {
        send_queue: 64,
        trades_per_step: 8.0,
        ..config(20_000)
    };
    let sim = Simulator::start(cfg).unwrap();
    let streams: Vec<String> = ["btcusdt", "ethusdt", "solusdt"]
        .iter()
        .flat_map(|s| ["depth", "trade", "aggTrade", "bookTicker"].map(|k| format!("{s}@{k}")))
        .collect();
    let url = format!("{}?streams={}", sim.ws_url(), streams.join("/"));
    let ws = ws_connect(&url, sim.addr());
    // Never read: socket buffers (tens of MB on loopback) fill, then the queue overflows.
    let started = Instant::now();
    while sim.connection_count() != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "slow consumer still connected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sim.subscription_count(), 0);
    drop(ws);
}

#[test]
fn high_rates_catch_up_without_sleeping() {
    let sim = Simulator::start(config(100_000)).unwrap();
    let start = sim.current_book("BTCUSDT").unwrap().last_update_id;
    std::thread::sleep(Duration::from_millis(500));
    let end = sim.current_book("BTCUSDT").unwrap().last_update_id;
    // Far beyond what a 1 ms sleep per step would allow.
    assert!(end - start > 2000, "only {} ids", end - start);
}

#[test]
fn shutdown_releases_the_port() {
    let sim = Simulator::start(config(100)).unwrap();
    let addr = sim.addr();
    let mut ws = ws_connect(&sim.ws_url(), addr);
    request(&mut ws, "SUBSCRIBE", json!(["btcusdt@depth"]), 1);
    let mut idle_rest = http_connect(addr);
    http_get_on(&mut idle_rest, "/api/v3/ping");
    sim.shutdown();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => panic!("got a close frame"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let again = Simulator::start(SimulatorConfig {
        addr,
        ..config(100)
    })
    .unwrap();
    assert_eq!(again.addr(), addr);
    drop(again);
}

#[test]
fn rejects_bad_configs() {
    let bad = [
        SimulatorConfig {
            book_levels: 101,
            ..SimulatorConfig::default()
        },
        SimulatorConfig {
            symbols: Vec::new(),
            ..SimulatorConfig::default()
        },
        SimulatorConfig {
            symbols: vec![SimSymbol::new(
                "btcusdt", "BTC", "USDT", "50000", "0.01", "0.1",
            )],
            ..SimulatorConfig::default()
        },
    ];
    for cfg in bad {
        assert!(Simulator::start(cfg).is_err());
    }
}

#[test]
fn ticker_stream_reports_24h_stats() {
    let sim = Simulator::start(config(100)).unwrap();
    let url = format!("{}?streams=ethusdt@ticker", sim.ws_url());
    let mut ws = ws_connect(&url, sim.addr());
    let f = next_json(&mut ws);
    assert_eq!(f["stream"], "ethusdt@ticker");
    let d = &f["data"];
    assert_eq!(d["e"], "24hrTicker");
    assert_eq!(d["s"], "ETHUSDT");
    for k in [
        "p", "w", "x", "c", "Q", "b", "B", "a", "A", "o", "h", "l", "v", "q",
    ] {
        dec(&d[k]);
    }
    assert!(d["P"].as_str().unwrap().parse::<f64>().is_ok());
    assert!(dec(&d["l"]) <= dec(&d["h"]));
    assert!(dec(&d["b"]) < dec(&d["a"]));
    for k in ["E", "O", "C", "n"] {
        assert!(d[k].is_u64(), "{k}");
    }
    assert!(d["F"].is_i64() && d["L"].is_i64());
}

#[test]
fn more_than_five_client_messages_a_second_cut_the_connection() {
    let sim = Simulator::start(config(10)).unwrap();
    let mut ws = ws_connect(&sim.ws_url(), sim.addr());
    for id in 1..=5 {
        let req = format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{id}}}"#);
        ws.send(Message::text(req)).unwrap();
        assert_eq!(next_json(&mut ws)["id"], id);
    }
    assert_eq!(sim.rate_violations(), 0);
    assert_eq!(sim.max_client_messages_per_second(), 5);
    ws.send(Message::text(r#"{"method":"LIST_SUBSCRIPTIONS","id":6}"#))
        .unwrap();
    wait_until("the sixth message cuts the connection", || {
        sim.rate_violations() == 1
    });
    wait_until("connection gone", || sim.connection_count() == 0);
    assert_eq!(
        sim.client_requests().len(),
        0,
        "LIST_SUBSCRIPTIONS is not logged"
    );
}
