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

// ---------------------------------------------------------------------------------------
// Fault injection

/// One thing read from a WebSocket with a read timeout set.
#[derive(Debug)]
enum Got {
    Text(String),
    Ping,
    Pong,
    Close,
    /// The read timed out.
    Quiet,
    /// The connection ended without a close frame (or after one).
    Ended,
}

fn read_got(ws: &mut Ws) -> Got {
    match ws.read() {
        Ok(Message::Text(t)) => Got::Text(t.as_str().to_owned()),
        Ok(Message::Ping(_)) => Got::Ping,
        Ok(Message::Pong(_)) => Got::Pong,
        Ok(Message::Close(_)) => Got::Close,
        Ok(_) => Got::Quiet,
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Got::Quiet
        }
        Err(_) => Got::Ended,
    }
}

fn set_read_timeout(ws: &mut Ws, d: Duration) {
    ws.get_mut().set_read_timeout(Some(d)).unwrap();
}

/// `(U, u)` of a combined-stream depth diff; `None` for anything else.
fn diff_ids(text: &str) -> Option<(u64, u64)> {
    let v: Value = serde_json::from_str(text).ok()?;
    let d = &v["data"];
    if d["e"] != "depthUpdate" {
        return None;
    }
    Some((d["U"].as_u64()?, d["u"].as_u64()?))
}

/// The next `n` depth diffs, skipping other frames.
fn next_diffs(ws: &mut Ws, n: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if let Some(ids) = diff_ids(next_json(ws).to_string().as_str()) {
            out.push(ids);
        }
    }
    out
}

fn with_faults(updates_per_sec: u32, faults: FaultConfig) -> SimulatorConfig {
    SimulatorConfig {
        faults,
        client_message_limit: None,
        ..config(updates_per_sec)
    }
}

fn depth_url(sim: &Simulator, symbols: &[&str]) -> String {
    let streams: Vec<String> = symbols.iter().map(|s| format!("{s}@depth")).collect();
    format!("{}?streams={}", sim.ws_url(), streams.join("/"))
}

/// Reads until the connection ends; returns whether a close frame came first.
fn read_to_end(ws: &mut Ws) -> bool {
    set_read_timeout(ws, Duration::from_millis(50));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "connection never ended");
        match read_got(ws) {
            Got::Close => return true,
            Got::Ended => return false,
            _ => {}
        }
    }
}

/// A `Connection: close` GET read to EOF: status, headers, body bytes and whether the body
/// was as long as `Content-Length` said.
fn raw_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = std::str::from_utf8(&all[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = all[end + 4..].to_vec();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let complete = body.len() == len;
    (status, headers, body, complete)
}

#[test]
fn gap_fault_withholds_the_same_diffs_from_every_client() {
    let faults = FaultConfig {
        gap_rate: 0.2,
        ..FaultConfig::none()
    };
    let sim = Simulator::start(with_faults(200, faults)).unwrap();
    let url = depth_url(&sim, &["btcusdt"]);
    let mut a = ws_connect(&url, sim.addr());
    let mut b = ws_connect(&url, sim.addr());
    let da = next_diffs(&mut a, 120);
    let db = next_diffs(&mut b, 120);
    assert!(sim.faults().stats().gaps > 0);
    let lo = da[0].1.max(db[0].1);
    let hi = da.last().unwrap().1.min(db.last().unwrap().1);
    assert!(lo < hi, "no overlap");
    let within = |d: &[(u64, u64)]| -> Vec<(u64, u64)> {
        d.iter()
            .copied()
            .filter(|&(_, u)| (lo..=hi).contains(&u))
            .collect()
    };
    assert_eq!(within(&da), within(&db), "both clients see the same gaps");
    let mut gaps = 0;
    for w in da.windows(2) {
        let ((_, prev), (next, _)) = (w[0], w[1]);
        assert!(next > prev, "diffs stay in order");
        if next != prev + 1 {
            gaps += 1;
            // The market itself went through the withheld step.
            assert!(sim.book_at("BTCUSDT", next - 1).is_some());
        }
    }
    assert!(gaps > 0);
}

#[test]
fn duplicates_repeat_the_same_update_id_and_switch_off_at_runtime() {
    let sim = Simulator::start(with_faults(200, FaultConfig::none())).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    let clean = next_diffs(&mut ws, 5);
    assert!(clean.windows(2).all(|w| w[1].0 == w[0].1 + 1));

    sim.faults().update(|f| f.duplicate_rate = 1.0);
    wait_until("a duplicate", || sim.faults().stats().duplicates > 0);
    // Every frame now comes twice in a row; pairs still follow each other without gaps.
    let mut prev = next_diffs(&mut ws, 1)[0];
    loop {
        let d = next_diffs(&mut ws, 1)[0];
        if d == prev {
            break;
        }
        prev = d;
    }
    let pairs = next_diffs(&mut ws, 20);
    for p in pairs.chunks(2) {
        assert_eq!(p[0], p[1], "each diff twice: {pairs:?}");
    }
    for w in pairs.chunks(2).collect::<Vec<_>>().windows(2) {
        assert_eq!(w[1][0].0, w[0][0].1 + 1);
    }

    sim.faults().clear();
    let before = sim.faults().stats().duplicates;
    std::thread::sleep(Duration::from_millis(50));
    let mut run = 0;
    let mut last = 0;
    while run < 20 {
        let (first, u) = next_diffs(&mut ws, 1)[0];
        run = if first == last + 1 { run + 1 } else { 0 };
        last = u;
    }
    assert!(sim.faults().stats().duplicates - before <= 2);
}

#[test]
fn reorder_swaps_two_consecutive_frames() {
    let faults = FaultConfig {
        reorder_rate: 0.3,
        ..FaultConfig::none()
    };
    let sim = Simulator::start(with_faults(200, faults)).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    let d = next_diffs(&mut ws, 200);
    let mut swaps = 0;
    let mut i = 1;
    while i < d.len() {
        if d[i].1 < d[i - 1].1 {
            // The later diff came first, the held one right after it.
            assert_eq!(
                d[i - 1].0,
                d[i].1 + 1,
                "adjacent swap at {i}: {:?}",
                &d[i - 1..=i]
            );
            swaps += 1;
        }
        i += 1;
    }
    assert!(swaps > 0);
    assert!(sim.faults().stats().reorders >= swaps);
    // Nothing is lost: every id range arrives exactly once.
    let mut sorted = d.clone();
    sorted.sort();
    let start = sorted.iter().position(|x| *x == d[0]).unwrap();
    assert!(
        sorted[start..].windows(2).all(|w| w[1].0 == w[0].1 + 1),
        "gap after sorting"
    );
}

#[test]
fn junk_frames_come_on_top_of_real_diffs() {
    let faults = FaultConfig {
        malformed_rate: 0.2,
        truncated_rate: 0.2,
        unknown_event_rate: 0.2,
        ..FaultConfig::none()
    };
    let sim = Simulator::start(with_faults(200, faults)).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    let (mut malformed, mut truncated, mut unknown) = (0, 0, 0);
    let mut last_real = String::new();
    let mut diffs: Vec<(u64, u64)> = Vec::new();
    while diffs.len() < 200 {
        let Got::Text(t) = read_got(&mut ws) else {
            continue;
        };
        match serde_json::from_str::<Value>(&t) {
            Ok(v) if v["data"]["e"] == "mystery" => {
                assert_eq!(v["stream"], "btcusdt@foo");
                assert_eq!(v["data"]["s"], "BTCUSDT");
                unknown += 1;
            }
            Ok(_) => {
                diffs.push(diff_ids(&t).expect("a depth diff"));
                last_real = t;
            }
            Err(_) if !t.is_empty() && last_real.starts_with(&t) => {
                assert_eq!(t.len(), last_real.len() / 2);
                truncated += 1;
            }
            Err(_) => malformed += 1,
        }
    }
    assert!(malformed > 0 && truncated > 0 && unknown > 0);
    assert!(
        diffs.windows(2).all(|w| w[1].0 == w[0].1 + 1),
        "junk frames never replace a diff"
    );
    let s = sim.faults().stats();
    assert!(s.malformed >= malformed && s.truncated >= truncated && s.unknown >= unknown);
    assert_eq!(s.gaps + s.duplicates + s.reorders, 0);
}

#[test]
fn abrupt_disconnect_sends_no_close_frame() {
    let sim = Simulator::start(with_faults(100, FaultConfig::none())).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    next_diffs(&mut ws, 1);
    sim.faults().update(|f| f.disconnect_rate = 1000.0);
    assert!(!read_to_end(&mut ws), "no close frame");
    assert_eq!(sim.faults().stats().disconnects, 1);
    wait_until("connection gone", || sim.connection_count() == 0);
}

#[test]
fn half_open_connection_stops_pings_and_pongs_but_stays_open() {
    let cfg = SimulatorConfig {
        ping_interval: Duration::from_millis(50),
        ..with_faults(100, FaultConfig::none())
    };
    let sim = Simulator::start(cfg).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    set_read_timeout(&mut ws, Duration::from_millis(20));
    let mut pings = 0;
    while pings < 2 {
        if let Got::Ping = read_got(&mut ws) {
            pings += 1;
        }
    }
    sim.faults().update(|f| {
        f.half_open_rate = 1000.0;
        f.half_open_for = None;
    });
    wait_until("half-open", || sim.faults().stats().half_open == 1);
    sim.faults().clear();
    // Whatever was in flight arrives; then nothing at all, though the socket is open.
    std::thread::sleep(Duration::from_millis(50));
    while !matches!(read_got(&mut ws), Got::Quiet) {}
    ws.send(Message::Ping(Default::default())).unwrap();
    let quiet_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet_until {
        match read_got(&mut ws) {
            Got::Quiet => {}
            other => panic!("half-open connection delivered {other:?}"),
        }
    }
    assert_eq!(sim.connection_count(), 1, "the socket is still open");
    assert_eq!(sim.subscription_count(), 0);
    // The client's watchdog gives up; the server side notices and cleans up.
    drop(ws);
    wait_until("cleanup", || sim.connection_count() == 0);
}

#[test]
fn stalled_stream_keeps_pings_and_replies() {
    let cfg = SimulatorConfig {
        ping_interval: Duration::from_millis(50),
        ..with_faults(200, FaultConfig::none())
    };
    let sim = Simulator::start(cfg).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    next_diffs(&mut ws, 3);
    sim.faults().update(|f| {
        f.stall_rate = 1000.0;
        f.stall_for = None;
    });
    wait_until("stall", || sim.faults().stats().stalls == 1);
    sim.faults().clear();
    set_read_timeout(&mut ws, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(50));
    while !matches!(read_got(&mut ws), Got::Quiet) {}
    let (mut pings, until) = (0, Instant::now() + Duration::from_millis(400));
    while Instant::now() < until {
        match read_got(&mut ws) {
            Got::Ping => pings += 1,
            Got::Quiet => {}
            other => panic!("stalled stream delivered {other:?}"),
        }
    }
    assert!(pings >= 3, "pings continue: {pings}");
    set_read_timeout(&mut ws, TIMEOUT);
    let r = request(&mut ws, "LIST_SUBSCRIPTIONS", json!([]), 9);
    assert_eq!(r["result"], json!(["btcusdt@depth"]));
    assert_eq!(sim.connection_count(), 1);
}

#[test]
fn stall_with_an_end_resumes_with_a_gap() {
    let faults = FaultConfig {
        stall_rate: 1000.0,
        stall_for: Some(Duration::from_millis(200)),
        ..FaultConfig::none()
    };
    let sim = Simulator::start(with_faults(200, faults)).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    set_read_timeout(&mut ws, TIMEOUT);
    wait_until("stall", || sim.faults().stats().stalls >= 1);
    sim.faults().clear();
    let d = next_diffs(&mut ws, 50);
    assert!(
        d.windows(2).any(|w| w[1].0 > w[0].1 + 1),
        "data resumed after a gap: {d:?}"
    );
}

#[test]
fn server_shutdown_notice_then_close_after_the_grace() {
    let grace = Duration::from_millis(300);
    let sim = Simulator::start(with_faults(200, FaultConfig::none())).unwrap();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    next_diffs(&mut ws, 2);
    sim.faults().update(|f| {
        f.planned_disconnect_rate = 1000.0;
        f.shutdown_grace = grace;
    });
    let notice_at = loop {
        let v = next_json(&mut ws);
        if v["e"] == "serverShutdown" {
            assert!(v["E"].as_u64().unwrap() > 1_600_000_000_000);
            assert!(v.get("stream").is_none());
            break Instant::now();
        }
    };
    sim.faults().clear();
    // A client opens its replacement during the grace period.
    let mut replacement = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    set_read_timeout(&mut ws, Duration::from_millis(20));
    let mut during = 0;
    let closed_at = loop {
        match read_got(&mut ws) {
            Got::Text(t) => during += usize::from(diff_ids(&t).is_some()),
            Got::Close => break Instant::now(),
            Got::Ended => panic!("closed without a close frame"),
            _ => {}
        }
    };
    let waited = closed_at - notice_at;
    assert!(
        waited >= grace - Duration::from_millis(20),
        "closed after {waited:?}"
    );
    assert!(
        waited < grace + Duration::from_secs(1),
        "closed after {waited:?}"
    );
    assert!(during > 10, "data keeps flowing during the grace: {during}");
    assert_eq!(sim.faults().stats().planned, 1);
    assert_eq!(next_json(&mut replacement)["stream"], "btcusdt@depth");
    wait_until("old connection gone", || sim.connection_count() == 1);
}

#[test]
fn max_connection_age_shuts_connections_down_at_that_age() {
    let age = Duration::from_millis(400);
    let faults = FaultConfig {
        max_connection_age: Some(age),
        shutdown_grace: Duration::from_millis(100),
        ..FaultConfig::none()
    };
    let sim = Simulator::start(with_faults(100, faults)).unwrap();
    let opened = Instant::now();
    let mut ws = ws_connect(&depth_url(&sim, &["btcusdt"]), sim.addr());
    let notice_at = loop {
        if next_json(&mut ws)["e"] == "serverShutdown" {
            break opened.elapsed();
        }
    };
    assert!(notice_at >= age, "notice after {notice_at:?}");
    assert!(
        notice_at < age + Duration::from_millis(500),
        "notice after {notice_at:?}"
    );
    assert!(read_to_end(&mut ws), "close frame after the grace");
    let closed_at = opened.elapsed();
    assert!(
        closed_at >= age + Duration::from_millis(100),
        "closed after {closed_at:?}"
    );
    let s = sim.faults().stats();
    assert_eq!((s.aged, s.planned), (1, 0));
}

#[test]
fn injected_429_carries_retry_after_and_repeats_escalate_to_418() {
    let faults = FaultConfig {
        rest_429_rate: 1.0,
        rest_418_after: 2,
        rest_429_retry_after: Duration::from_secs(1),
        rest_418_retry_after: Duration::from_secs(1),
        ..FaultConfig::none()
    };
    let sim = Simulator::start(with_faults(10, faults)).unwrap();
    let addr = sim.addr();
    let r = http_get(addr, "/api/v3/depth?symbol=BTCUSDT&limit=5");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.body["code"], -1003);
    assert!(r.header("x-mbx-used-weight-1m").is_some());
    assert_eq!((sim.injected_429_count(), sim.limit_429_count()), (1, 0));

    // Not waiting for Retry-After is the client's fault, counted apart.
    let r = http_get(addr, "/api/v3/ping");
    assert_eq!(r.status, 429);
    assert_eq!(sim.ignored_retry_after_count(), 1);
    assert_eq!(sim.injected_429_count(), 1);

    std::thread::sleep(Duration::from_millis(1000));
    sim.faults()
        .update(|f| f.rest_429_retry_after = Duration::ZERO);
    let r = http_get(addr, "/api/v3/ping");
    assert_eq!((r.status, r.header("retry-after")), (429, Some("0")));
    // The third injected rejection is an IP ban.
    let r = http_get(addr, "/api/v3/ping");
    assert_eq!((r.status, r.header("retry-after")), (418, Some("1")));
    assert!(r.body["msg"].as_str().unwrap().contains("banned"));
    let r = http_get(addr, "/api/v3/ping");
    assert_eq!(r.status, 418, "still banned");
    sim.faults().clear();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(http_get(addr, "/api/v3/ping").status, 200);

    let s = sim.faults().stats();
    assert_eq!((s.rest_429, s.rest_418), (2, 1));
    assert_eq!(sim.rest_429_count(), 3);
    assert_eq!(sim.rest_418_count(), 2);
    assert_eq!(sim.ignored_retry_after_count(), 2);
    assert_eq!(sim.limit_429_count(), 0);
}

#[test]
fn exceeding_the_weight_limit_is_a_counted_429_and_ignoring_it_a_ban() {
    // Stay clear of a minute boundary, where the meter resets.
    let into_minute = now_ms() % 60_000;
    if into_minute > 55_000 {
        std::thread::sleep(Duration::from_millis(60_500 - into_minute));
    }
    let sim = Simulator::start(SimulatorConfig {
        rest_weight_limit: Some(30),
        rest_ban: Duration::from_secs(1),
        ..with_faults(10, FaultConfig::none())
    })
    .unwrap();
    let addr = sim.addr();
    let info = http_get(addr, "/api/v3/exchangeInfo?symbol=BTCUSDT");
    assert_eq!(info.body["rateLimits"][0]["limit"], 30);
    let mut conn = http_connect(addr);
    // 20 used; depth with limit 100 weighs 5: the third one crosses 30.
    for expected_used in [25, 30] {
        let r = http_get_on(&mut conn, "/api/v3/depth?symbol=BTCUSDT&limit=100");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-mbx-used-weight-1m"),
            Some(expected_used.to_string().as_str())
        );
    }
    let r = http_get_on(&mut conn, "/api/v3/depth?symbol=BTCUSDT&limit=100");
    assert_eq!(r.status, 429);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    assert_eq!(r.header("x-mbx-used-weight-1m"), Some("35"));
    assert_eq!((sim.limit_429_count(), sim.injected_429_count()), (1, 0));
    assert_eq!(sim.rest_weight_peak_per_minute(), 35);

    // Two more inside the window: 429, then the third strike bans the IP.
    assert_eq!(http_get_on(&mut conn, "/api/v3/ping").status, 429);
    assert_eq!(http_get_on(&mut conn, "/api/v3/ping").status, 429);
    let r = http_get_on(&mut conn, "/api/v3/ping");
    assert_eq!((r.status, r.header("retry-after")), (418, Some("1")));
    assert_eq!(http_get_on(&mut conn, "/api/v3/ping").status, 418);
    assert_eq!(
        sim.limit_429_count(),
        1,
        "only the first was over the limit"
    );
    assert_eq!(sim.ignored_retry_after_count(), 4);
    assert_eq!((sim.rest_429_count(), sim.rest_418_count()), (3, 2));
    assert_eq!(sim.faults().stats().total(), 0, "nothing was injected");
}

#[test]
fn slow_and_failed_snapshots() {
    let delay = Duration::from_millis(300);
    let faults = FaultConfig {
        slow_snapshot_rate: 1.0,
        slow_snapshot_delay: delay,
        ..FaultConfig::none()
    };
    let sim = Simulator::start(with_faults(200, faults)).unwrap();
    let addr = sim.addr();
    let started = Instant::now();
    let r = http_get(addr, "/api/v3/depth?symbol=BTCUSDT&limit=100");
    assert!(started.elapsed() >= delay);
    assert_eq!(r.status, 200);
    // Taken when asked, so older than the book by the time it arrives, but exact.
    let id = r.body["lastUpdateId"].as_u64().unwrap();
    assert!(sim.current_book("BTCUSDT").unwrap().last_update_id > id);
    let truth = sim.book_at("BTCUSDT", id).unwrap();
    assert_eq!(r.body["bids"].as_array().unwrap().len(), truth.bids.len());
    assert_eq!(dec(&r.body["bids"][0][0]), truth.bids[0].0);
    assert_eq!(sim.depth_snapshots_served().len(), 1);
    // Only snapshots are slow.
    let started = Instant::now();
    assert_eq!(http_get(addr, "/api/v3/ping").status, 200);
    assert!(started.elapsed() < delay);

    sim.faults().update(|f| {
        f.slow_snapshot_rate = 0.0;
        f.failed_snapshot_rate = 1.0;
    });
    let (mut errors, mut cut) = (0, 0);
    while errors == 0 || cut == 0 {
        assert!(errors + cut < 100);
        let (status, _, body, complete) = raw_get(addr, "/api/v3/depth?symbol=BTCUSDT");
        match status {
            500 => {
                assert!(complete);
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["code"], -1001);
                errors += 1;
            }
            200 => {
                assert!(!complete, "a failing 200 is cut short");
                assert!(serde_json::from_slice::<Value>(&body).is_err());
                cut += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!(sim.faults().stats().failed_snapshots, errors + cut);
    assert_eq!(
        sim.depth_snapshots_served().len(),
        1,
        "failures are not served"
    );
}

#[test]
fn fault_config_all_yields_every_kind() {
    let faults = FaultConfig {
        half_open_for: Some(Duration::from_millis(200)),
        stall_for: None,
        shutdown_grace: Duration::from_millis(50),
        max_connection_age: Some(Duration::from_millis(250)),
        rest_429_rate: 0.3,
        rest_429_retry_after: Duration::ZERO,
        rest_418_retry_after: Duration::ZERO,
        slow_snapshot_rate: 0.3,
        slow_snapshot_delay: Duration::from_millis(10),
        failed_snapshot_rate: 0.3,
        ..FaultConfig::all().scaled(100.0)
    };
    let sim = Simulator::start(with_faults(200, faults)).unwrap();
    let addr = sim.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = std::thread::spawn({
        let stop = std::sync::Arc::clone(&stop);
        move || {
            // About 200 weight a second: well inside the 6000 a minute.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                raw_get(addr, "/api/v3/depth?symbol=ETHUSDT&limit=20");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    });
    let url = depth_url(&sim, &["btcusdt", "ethusdt", "solusdt"]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    let missing = |s: FaultStats| -> Vec<&'static str> {
        s.counts()
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(k, _)| *k)
            .collect()
    };
    let mut connections = 0;
    while !missing(sim.faults().stats()).is_empty() && Instant::now() < deadline {
        let mut ws = ws_connect(&url, addr);
        connections += 1;
        set_read_timeout(&mut ws, Duration::from_millis(50));
        let mut last_data = Instant::now();
        // A client watchdog: give up on a connection that ends or goes quiet.
        loop {
            match read_got(&mut ws) {
                Got::Text(_) => last_data = Instant::now(),
                Got::Close | Got::Ended => break,
                _ if last_data.elapsed() > Duration::from_millis(300) => break,
                _ => {}
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();
    let stats = sim.faults().stats();
    assert!(
        missing(stats).is_empty(),
        "missing {:?} after {connections} connections: {stats}",
        missing(stats)
    );
    eprintln!(
        "every fault within {:?}, {connections} connections: {stats}",
        started.elapsed()
    );
    assert_eq!(sim.limit_429_count(), 0);
    assert_eq!(sim.ignored_retry_after_count(), 0);
}
