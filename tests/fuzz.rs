//! Fuzzing the parsers that read untrusted input: WebSocket frames ([`parse_frame`], and
//! [`parse_depth_snapshot`] for REST bodies) and control command bodies ([`parse_command`],
//! which the HTTP and NATS control facades call). Inputs are arbitrary bytes, JSON-like
//! token soup, and valid Binance frames and commands mutated: truncated, bytes flipped or
//! inserted, fields spliced in from other messages, numbers replaced by huge or odd ones,
//! values wrapped in deep nesting, arrays grown to thousands of elements.
//!
//! Properties: nothing panics; every answer is one the parser documents (a command error is
//! `400` exactly when the body is not a JSON object); and the heap a parse holds at once is
//! proportional to its input (measured per thread by a tracking global allocator). A
//! megabyte of nesting is an error, not a stack overflow. The last property streams
//! malformed frames through a running engine and checks that each one is counted and that
//! nothing else is disturbed.
//!
//! How long it runs:
//! - `MELTICA_FUZZ_CASES`: cases per property (default 2000, so `cargo test` stays fast).
//! - `MELTICA_FUZZ_SECS`: a wall-clock budget for the whole file. Every property then runs
//!   batches of cases until its share is spent: the properties run a test thread each
//!   (`RUST_TEST_THREADS`, else one per core), so each gets the budget divided by the
//!   number of rounds they need (three rounds of five properties on two threads).
//!
//! CI runs `MELTICA_FUZZ_SECS=30 cargo test --release --test fuzz`. For ten minutes:
//!
//! ```text
//! MELTICA_FUZZ_SECS=600 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! A failure prints the smallest input proptest found; `PROPTEST_RNG_SEED=<n>` repeats a run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use meltica::adapter::InstrumentRegistry;
use meltica::adapter::binance::parse::{Frame, ParseError, parse_depth_snapshot, parse_frame};
use meltica::bus::{SubscribeOptions, SubscriptionFilter};
use meltica::config::{BackpressurePolicy, Config, LogLevel, RouteConfig};
use meltica::engine::{Engine, EngineCounts, FrameError};
use meltica::schema::control::{CommandError, ControlOp, parse_command};
use meltica::schema::{Decimal, EventType, InstrumentInfo, Payload, Quality};

// ── heap tracking ──────────────────────────────────────────────────────────────────────

/// Counts the bytes each thread holds, so a parse's peak heap can be measured while other
/// tests run on other threads.
struct Tracking;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn note(delta: i64) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v);
            }
        });
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // While a block moves, the old and the new one are both held.
        note(new_size as i64);
        note(-(layout.size() as i64));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f` on this thread and returns its result and the most heap it held at once
/// (including what the result still holds).
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as u64)
}

/// The most heap a parse of `len` bytes may hold. The worst case is an array of tiny
/// elements that each become a larger value (`"",` → a 24-byte `String`; `[],` → a 32-byte
/// JSON value), in a vector that doubles while growing; the constant covers fixed-size
/// buffers and error messages.
fn heap_bound(len: usize) -> u64 {
    40 * len as u64 + 64 * 1024
}

// ── how long ───────────────────────────────────────────────────────────────────────────

/// Properties that loop on `MELTICA_FUZZ_SECS`.
const PROPERTIES: u32 = 5;

fn cases() -> u32 {
    std::env::var("MELTICA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000)
}

/// This property's share of `MELTICA_FUZZ_SECS`, if set.
fn time_share() -> Option<Duration> {
    let secs: f64 = std::env::var("MELTICA_FUZZ_SECS")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let threads = std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32)
        })
        .unwrap_or(1)
        .clamp(1, PROPERTIES);
    // The properties run in this many rounds of `threads` at a time.
    let rounds = PROPERTIES.div_ceil(threads);
    Some(Duration::from_secs_f64(secs.max(0.0) / f64::from(rounds)))
}

/// Runs `test` on values of `strategy`: `cases()` of them, or batches of that many until
/// this property's share of `MELTICA_FUZZ_SECS` is spent. Panics with the smallest failing
/// input.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let deadline = time_share().map(|d| started + d);
    let cases = cases().max(1);
    let mut ran = 0u64;
    loop {
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        ran += u64::from(cases);
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    println!(
        "{name}: {ran} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ── inputs ─────────────────────────────────────────────────────────────────────────────

fn registry() -> &'static InstrumentRegistry {
    static R: OnceLock<InstrumentRegistry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = InstrumentRegistry::default();
        for n in ["BTC-USDT", "ETH-USDT", "BNB-BTC"] {
            r.insert(InstrumentInfo::named(n).expect("canonical name"));
        }
        r
    })
}

/// Valid frames of every kind the adapter reads: Binance's documentation examples, raw and
/// in the combined-stream envelope, replies, the shutdown notice, an unknown event.
const FRAMES: &[&str] = &[
    r#"{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}"#,
    r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#,
    r#"{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}"#,
    r#"{"u":400900217,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#,
    r#"{"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00","w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10","a":"0.0026","A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18","O":0,"C":86400000,"F":0,"L":18150,"n":18151}"#,
    r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1672515782136,"s":"BTCUSDT","U":157,"u":160,"b":[["50000.01000000","1.50000000"],["49999.99","0"]],"a":[["50000.02","2"]]}}"#,
    r#"{"stream":"ethusdt@trade","data":{"e":"trade","E":1672515782136,"s":"ETHUSDT","t":12345,"p":"3000.01","q":"0.1","T":1672515782136,"m":false,"M":true}}"#,
    r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BTCUSDT","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}}"#,
    r#"{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}"#,
    r#"{"stream":"bnbbtc@ticker","data":{"e":"24hrTicker","E":1672515782136,"s":"BNBBTC","p":"0.0015","P":"250.00","w":"0.0018","x":"0.0009","c":"0.0025","Q":"10","b":"0.0024","B":"10","a":"0.0026","A":"100","o":"0.0010","h":"0.0025","l":"0.0010","v":"10000","q":"18","O":0,"C":86400000,"F":0,"L":18150,"n":18151}}"#,
    r#"{"result":null,"id":1}"#,
    r#"{"result":["btcusdt@trade","btcusdt@depth@100ms"],"id":3}"#,
    r#"{"error":{"code":2,"msg":"Invalid request: unknown variant"},"id":5}"#,
    r#"{"e":"serverShutdown","E":1672515782136}"#,
    r#"{"stream":"btcusdt@foo","data":{"e":"mystery","E":1672515782136,"s":"BTCUSDT"}}"#,
    r#"{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}"#,
];

/// Valid command bodies, with the path operation they go with.
const COMMANDS: &[(ControlOp, &str)] = &[
    (
        ControlOp::Subscribe,
        r#"{"type":"TICKER","filters":{"instrument":"BTC-USDT"},"consumer":"ops","traceId":"t1"}"#,
    ),
    (
        ControlOp::Subscribe,
        r#"{"type":"ANALYTICS.FUSED","filters":{"instrument":["BTC-USDT","ETH-USDT"],"market":"BINANCE-SPOT"}}"#,
    ),
    (
        ControlOp::Unsubscribe,
        r#"{"type":"TICKER","filters":{"instrument":"BTC-USDT"},"consumer":"ops"}"#,
    ),
    (
        ControlOp::UpdateFilters,
        r#"{"type":"TRADE","filters":[{"field":"instrument","op":"in","value":["BTC-USDT","ETH-USDT"]},{"field":"side","op":"eq","value":"buy"}]}"#,
    ),
    (
        ControlOp::UpdateFilters,
        r#"{"type":"ORDERBOOK.TOP","filters":{"instrument":"BTC-USDT","market":["BINANCE-SPOT"]}}"#,
    ),
];

const OPS: [ControlOp; 3] = [
    ControlOp::Subscribe,
    ControlOp::Unsubscribe,
    ControlOp::UpdateFilters,
];

/// Numbers a field might be replaced with: limits of u64, i64 and the 1e8 fixed point,
/// exponents, signs, leading zeros, too many digits.
fn odd_number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "-1",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "92233720368.54775807",
            "92233720368.54775808",
            "-92233720368.54775808",
            "0.000000001",
            "0.00000001",
            "1e400",
            "1E-400",
            "-1e308",
            "1.",
            ".5",
            ".",
            "0x10",
            "00000000000000000000001",
            "340282366920938463463374607431768211456",
            "NaN",
            "Infinity",
        ])
        .prop_map(str::to_owned),
        (1usize..2000).prop_map(|n| "9".repeat(n)),
        (1usize..400, 1usize..400).prop_map(|(a, b)| format!(
            "{}.{}",
            "1".repeat(a),
            "2".repeat(b)
        )),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
    ]
}

/// Strings a field might be replaced with.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "depthUpdate",
            "trade",
            "aggTrade",
            "24hrTicker",
            "serverShutdown",
            "BTCUSDT",
            "btcusdt@trade",
            "btcusdt@depth",
            "btcusdt@",
            "@",
            "BTC-USDT",
            "ANALYTICS.FUSED",
            "CONTROL.UPDATE",
            "\\u0000",
            "\\ud800",
            "\\\"",
            "\\",
            "é漢🦀",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,40}",
        (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Token soup: fragments of Binance JSON in random order, to reach past the first byte.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\"e\"",
            "\"s\"",
            "\"U\"",
            "\"u\"",
            "\"b\"",
            "\"a\"",
            "\"data\"",
            "\"stream\"",
            "\"id\"",
            "\"result\"",
            "\"error\"",
            "\"depthUpdate\"",
            "\"trade\"",
            "\"BTCUSDT\"",
            "\"btcusdt@trade\"",
            "\"btcusdt@depth@100ms\"",
            "\"1.5\"",
            "1",
            "-1",
            "null",
            "true",
            "1e9",
            " ",
            "{\"stream\":\"",
            "\",\"data\":",
            "\"type\"",
            "\"filters\"",
            "\"instrument\"",
            "\"BTC-USDT\"",
            "\"consumer\"",
            "\"TICKER\"",
        ])
        .prop_map(str::to_owned),
        odd_number(),
    ];
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

/// One change to a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    /// Keep only the first `n` bytes (modulo the length).
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Insert a slice of another valid message: fields spliced across kinds.
    Splice {
        at: usize,
        from: usize,
        start: usize,
        len: usize,
    },
    /// Replace the k-th run of digits (a number or a decimal string's content).
    Number(usize, String),
    /// Replace the k-th string's content.
    Str(usize, String),
    /// Wrap the k-th run of digits in `depth` arrays (past serde_json's limit of 128 too).
    Nest(usize, usize),
    /// Insert `n` copies of a level into the first list of levels.
    Levels(usize, String),
    /// Repeat a slice right after itself (duplicate keys, doubled values).
    Repeat(usize, usize),
}

fn mutation(sources: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 0..sources, any::<usize>(), 1usize..64).prop_map(
            |(at, from, start, len)| Mutation::Splice {
                at,
                from,
                start,
                len
            }
        ),
        (any::<usize>(), odd_number()).prop_map(|(k, n)| Mutation::Number(k, n)),
        (any::<usize>(), odd_string()).prop_map(|(k, s)| Mutation::Str(k, s)),
        (any::<usize>(), 1usize..300).prop_map(|(k, d)| Mutation::Nest(k, d)),
        (
            0usize..5000,
            prop_oneof![
                Just(r#"["1.5","2"]"#.to_owned()),
                Just("[]".to_owned()),
                Just(r#"["1"]"#.to_owned()),
                Just(r#"["1","2","3"]"#.to_owned()),
                Just("0".to_owned()),
                odd_number().prop_map(|n| format!(r#"["{n}","1"]"#)),
            ]
        )
            .prop_map(|(n, l)| Mutation::Levels(n, l)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

/// Byte ranges of maximal runs of digits and dots.
fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of the contents of quoted strings (escapes are not special: a mutation
/// may land anywhere).
fn string_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let quotes: Vec<usize> = b
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'"')
        .map(|(i, _)| i)
        .collect();
    quotes.chunks_exact(2).map(|q| (q[0] + 1, q[1])).collect()
}

fn apply(sources: &[&str], base: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut b = base.as_bytes().to_vec();
    for m in mutations {
        let len = b.len().max(1);
        match m {
            Mutation::Truncate(n) => b.truncate(n % len),
            Mutation::Flip(i, x) => {
                if !b.is_empty() {
                    b[i % len] ^= x;
                }
            }
            Mutation::Insert(i, bytes) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Mutation::Splice {
                at,
                from,
                start,
                len: n,
            } => {
                let src = sources[from % sources.len()].as_bytes();
                let s = start % src.len();
                let e = (s + n).min(src.len());
                let at = at % (b.len() + 1);
                b.splice(at..at, src[s..e].iter().copied());
            }
            Mutation::Number(k, n) => {
                let runs = digit_runs(&b);
                if !runs.is_empty() {
                    let (s, e) = runs[k % runs.len()];
                    b.splice(s..e, n.bytes());
                }
            }
            Mutation::Str(k, s) => {
                let runs = string_runs(&b);
                if !runs.is_empty() {
                    let (st, e) = runs[k % runs.len()];
                    b.splice(st..e, s.bytes());
                }
            }
            Mutation::Nest(k, depth) => {
                let runs = digit_runs(&b);
                if !runs.is_empty() {
                    let (s, e) = runs[k % runs.len()];
                    b.splice(e..e, std::iter::repeat_n(b']', *depth));
                    b.splice(s..s, std::iter::repeat_n(b'[', *depth));
                }
            }
            Mutation::Levels(n, level) => {
                if let Some(p) = b.windows(2).position(|w| w == b"[[") {
                    let mut extra = Vec::with_capacity(n * (level.len() + 1));
                    for _ in 0..*n {
                        extra.extend_from_slice(level.as_bytes());
                        extra.push(b',');
                    }
                    b.splice(p + 1..p + 1, extra);
                }
            }
            Mutation::Repeat(i, n) => {
                if !b.is_empty() {
                    let s = i % len;
                    let e = (s + n).min(b.len());
                    let copy = b[s..e].to_vec();
                    b.splice(e..e, copy);
                }
            }
        }
    }
    b
}

// ── checks ─────────────────────────────────────────────────────────────────────────────

/// Parses `text` as a frame and as a snapshot body; every outcome must be a documented one
/// and the heap held proportional to the input.
fn check_frame(text: &str) -> Result<(), TestCaseError> {
    let reg = registry();
    let (res, peak) = peak_heap(|| parse_frame(text, reg, 7));
    prop_assert!(
        peak <= heap_bound(text.len()),
        "parse_frame held {peak} bytes for {} input bytes",
        text.len()
    );
    match res {
        Ok(Frame::Instance(raw)) => {
            prop_assert!(reg.by_name(raw.instrument.name()).is_some());
            prop_assert_eq!(raw.ingress_ns, 7);
        }
        Ok(Frame::Response(_) | Frame::ServerShutdown) => {}
        Err(ParseError::Malformed | ParseError::UnknownType | ParseError::UnknownSymbol) => {}
    }
    let (res, peak) = peak_heap(|| parse_depth_snapshot(text));
    prop_assert!(peak <= heap_bound(text.len()));
    if let Ok(s) = res {
        prop_assert!(s.bids.len() + s.asks.len() <= text.len());
    }
    Ok(())
}

/// Parses `body` as a command for `op`. A body that is not a JSON object is a 400, anything
/// else refused is a 422, and an accepted command keeps the documented limits.
fn check_command(op: ControlOp, body: &[u8]) -> Result<(), TestCaseError> {
    let (res, peak) = peak_heap(|| parse_command(op, body));
    prop_assert!(
        peak <= heap_bound(body.len()),
        "parse_command held {peak} bytes for {} input bytes",
        body.len()
    );
    let is_object = serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.is_object());
    match res {
        Ok(cmd) => {
            prop_assert!(is_object);
            prop_assert_eq!(cmd.op, op);
            prop_assert!(cmd.event_type != EventType::ControlUpdate);
            prop_assert!(!cmd.consumer.is_empty() && cmd.consumer.len() <= 128);
            prop_assert!(cmd.trace_id.as_ref().is_none_or(|t| t.len() <= 128));
            match op {
                ControlOp::Subscribe | ControlOp::Unsubscribe => {
                    prop_assert!(!cmd.instruments.is_empty());
                    for i in &cmd.instruments {
                        prop_assert!(meltica::schema::split_canonical(i).is_some(), "{}", i);
                    }
                }
                ControlOp::UpdateFilters => {
                    for f in &cmd.filters {
                        prop_assert!(["instrument", "market", "side"].contains(&f.field.as_str()));
                    }
                }
            }
        }
        Err(e @ CommandError::Malformed(_)) => {
            prop_assert!(!is_object, "{}", e);
            prop_assert_eq!(e.http_status(), 400);
        }
        Err(e @ CommandError::Invalid(_)) => {
            prop_assert!(is_object, "{}", e);
            prop_assert_eq!(e.http_status(), 422);
        }
    }
    Ok(())
}

// ── properties ─────────────────────────────────────────────────────────────────────────

#[test]
fn frames_from_arbitrary_input_never_panic() {
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        any::<String>(),
        token_soup(),
        token_soup().prop_map(|s| format!(r#"{{"stream":"btcusdt@depth","data":{{{s}}}}}"#)),
        token_soup().prop_map(|s| format!(r#"{{"e":"depthUpdate","s":"BTCUSDT",{s}}}"#)),
    ];
    fuzz("frames/arbitrary", input, |text| check_frame(&text));
}

#[test]
fn mutated_binance_frames_never_panic() {
    let input = (
        0..FRAMES.len(),
        prop::collection::vec(mutation(FRAMES.len()), 1..5),
    );
    fuzz("frames/mutated", input, |(i, muts)| {
        let bytes = apply(FRAMES, FRAMES[i], &muts);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            check_frame(text)?;
        }
        check_frame(&String::from_utf8_lossy(&bytes))
    });
}

#[test]
fn command_bodies_from_arbitrary_input_never_panic() {
    let input = (
        prop::sample::select(OPS.to_vec()),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            any::<String>().prop_map(String::into_bytes),
            token_soup().prop_map(String::into_bytes),
            token_soup().prop_map(|s| format!("{{{s}}}").into_bytes()),
        ],
    );
    fuzz("commands/arbitrary", input, |(op, body)| {
        check_command(op, &body)
    });
}

#[test]
fn mutated_command_bodies_never_panic() {
    let bodies: Vec<&str> = COMMANDS.iter().map(|(_, b)| *b).collect();
    let input = (
        0..COMMANDS.len(),
        prop::sample::select(OPS.to_vec()),
        any::<bool>(),
        prop::collection::vec(mutation(bodies.len()), 1..5),
    );
    fuzz("commands/mutated", input, |(i, other_op, keep_op, muts)| {
        let (op, body) = COMMANDS[i];
        let op = if keep_op { op } else { other_op };
        check_command(op, &apply(&bodies, body, &muts))
    });
}

// ── fixed cases ────────────────────────────────────────────────────────────────────────

/// Runs `f` on a thread with half the stack of an engine stage thread (2 MiB), so deep
/// input that only just fits on a stage thread fails here.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic");
}

#[test]
fn a_megabyte_of_nesting_is_an_error_not_a_stack_overflow() {
    on_small_stack(|| {
        const MB: usize = 1 << 20;
        let open = "[[".repeat(MB / 2);
        let balanced = "[".repeat(MB / 2) + &"]".repeat(MB / 2);
        let objects = r#"{"a":"#.repeat(MB / 5) + "1" + &"}".repeat(MB / 5);
        // (text, parse_frame accepts it, parse_depth_snapshot accepts it). Nesting where a
        // value is read is refused; nesting in a field nobody reads is skipped without
        // recursion (serde_json keeps one byte per level on the heap), so the message
        // around it still parses, as it must when Binance adds fields.
        let cases = [
            (open.clone(), false, false),
            (balanced.clone(), false, false),
            (objects.clone(), false, false),
            (format!(r#"{{"e":"trade","x":{balanced}}}"#), false, false),
            (format!(r#"{{"id":1,"result":{balanced}}}"#), false, false),
            (
                format!(
                    r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":{balanced},"a":[]}}}}"#
                ),
                false,
                false,
            ),
            (
                format!(
                    r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true,"M":{open}}}}}"#
                ),
                false,
                false,
            ),
            (
                format!(r#"{{"stream":{balanced},"data":{{}}}}"#),
                false,
                false,
            ),
            (
                format!(r#"{{"lastUpdateId":1,"bids":{balanced},"asks":[]}}"#),
                false,
                false,
            ),
            (
                format!(
                    r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[],"z":{balanced}}}}}"#
                ),
                true,
                false,
            ),
            (
                format!(
                    r#"{{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true,"M":true,"x":{balanced}}}"#
                ),
                true,
                false,
            ),
            (
                format!(r#"{{"lastUpdateId":1,"bids":[],"asks":[],"z":{balanced}}}"#),
                false,
                true,
            ),
        ];
        let reg = registry();
        for (text, frame_ok, snapshot_ok) in &cases {
            assert!(text.len() >= MB - 1, "{}", text.len());
            let head = &text[..40.min(text.len())];
            let (res, peak) = peak_heap(|| parse_frame(text, reg, 0));
            if *frame_ok {
                assert!(matches!(res, Ok(Frame::Instance(_))), "{head}…: {res:?}");
            } else {
                assert_eq!(res, Err(ParseError::Malformed), "{head}…");
            }
            assert!(peak <= heap_bound(text.len()), "{head}…: {peak} bytes");
            let (res, peak) = peak_heap(|| parse_depth_snapshot(text));
            assert_eq!(res.is_ok(), *snapshot_ok, "{head}…: {res:?}");
            assert!(peak <= heap_bound(text.len()), "{head}…: {peak} bytes");
            // Commands are read into a JSON value tree, which stops at 128 levels.
            for op in OPS {
                let r = parse_command(op, text.as_bytes());
                assert!(
                    matches!(r, Err(CommandError::Malformed(_))),
                    "{head}…: {r:?}"
                );
            }
        }
    });
}

#[test]
fn huge_arrays_and_strings_take_memory_in_proportion() {
    let reg = registry();
    let levels = r#"["50000.01000000","1.50000000"],"#.repeat(200_000);
    let diff = format!(
        r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[{}],"a":[]}}}}"#,
        levels.trim_end_matches(',')
    );
    let cases = [
        // Parses: 200,000 levels.
        diff,
        // Tiny elements that become bigger values.
        format!(
            r#"{{"result":[{}],"id":1}}"#,
            r#""","#.repeat(300_000).trim_end_matches(',')
        ),
        format!(
            r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[{}],"a":[]}}}}"#,
            "[],".repeat(300_000).trim_end_matches(',')
        ),
        format!(
            r#"{{"e":"trade","x":[{}]}}"#,
            "0,".repeat(500_000).trim_end_matches(',')
        ),
        // A 4 MB symbol and a 4 MB error message.
        format!(r#"{{"e":"trade","s":"{}"}}"#, "B".repeat(4 << 20)),
        format!(
            r#"{{"error":{{"code":1,"msg":"{}"}},"id":1}}"#,
            "m".repeat(4 << 20)
        ),
    ];
    for text in &cases {
        let (res, peak) = peak_heap(|| parse_frame(text, reg, 0));
        let ratio = peak as f64 / text.len() as f64;
        println!(
            "{:>8} bytes → {:>9} bytes held at most ({ratio:.1}x): {:?}",
            text.len(),
            peak,
            res.as_ref().map(|_| "ok").map_err(|e| *e)
        );
        assert!(
            peak <= heap_bound(text.len()),
            "{} bytes held for {} input bytes",
            peak,
            text.len()
        );
    }
    let body = format!(
        r#"{{"type":"TRADE","filters":{{"instrument":[{}]}}}}"#,
        r#""BTC-USDT","#.repeat(5_000).trim_end_matches(',')
    );
    let (res, peak) = peak_heap(|| parse_command(ControlOp::Subscribe, body.as_bytes()));
    assert_eq!(res.map(|c| c.instruments.len()).ok(), Some(5_000));
    assert!(peak <= heap_bound(body.len()), "{peak}");
}

// ── through a running engine ───────────────────────────────────────────────────────────

/// How a frame that must not be ingested was built, and what the parser must say.
#[derive(Debug, Clone)]
enum Bad {
    /// A proper prefix of a valid frame: never complete JSON.
    Truncated(usize, usize),
    /// Bytes that do not start a JSON value.
    Garbage(Vec<u8>),
    /// A valid frame with a field of the wrong type.
    WrongType(usize),
    /// A stream or event type the adapter does not know.
    Unknown(String),
    /// A symbol the engine does not stream.
    Unsubscribed(u64),
    /// A read field (the price) wrapped in deep nesting.
    Deep(usize),
    /// Any mutation of a valid frame; pushed only if a standalone parse refuses it too.
    Mutated(usize, Vec<Mutation>),
}

fn bad_frame() -> impl Strategy<Value = Bad> {
    prop_oneof![
        (0..FRAMES.len(), any::<usize>()).prop_map(|(i, n)| Bad::Truncated(i, n)),
        (
            prop::sample::select(b"#x@;)>~\x01".to_vec()),
            prop::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(first, mut rest)| {
                rest.insert(0, first);
                Bad::Garbage(rest)
            }),
        (0usize..4).prop_map(Bad::WrongType),
        "[a-z]{1,12}".prop_map(Bad::Unknown),
        any::<u64>().prop_map(Bad::Unsubscribed),
        (129usize..5000).prop_map(Bad::Deep),
        (
            0..FRAMES.len(),
            prop::collection::vec(mutation(FRAMES.len()), 1..4)
        )
            .prop_map(|(i, m)| Bad::Mutated(i, m)),
    ]
}

impl Bad {
    /// The frame text, and the error the adapter must report (`None`: whatever a
    /// standalone parse says, provided it is an error).
    fn build(&self) -> (String, Option<ParseError>) {
        match self {
            Bad::Truncated(i, n) => {
                let f = FRAMES[*i];
                // A combined frame cut right after its data object is classified by its
                // stream name first (unknown type or symbol) before the data is read.
                let must = (!f.starts_with(r#"{"stream""#)).then_some(ParseError::Malformed);
                (f[..n % f.len()].to_owned(), must)
            }
            Bad::Garbage(b) => (
                String::from_utf8_lossy(b).into_owned(),
                Some(ParseError::Malformed),
            ),
            Bad::WrongType(k) => (
                [
                    r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":"one","p":"1","q":"1","T":1,"m":true,"M":true}}"#,
                    r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":{"1":"2"},"a":[]}}"#,
                    r#"{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":-1,"u":2,"b":[],"a":[]}"#,
                    r#"{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"92233720368.54775808","q":"1","T":1,"m":true,"M":true}"#,
                ][*k]
                    .to_owned(),
                Some(ParseError::Malformed),
            ),
            Bad::Unknown(name) => (
                format!(r#"{{"stream":"btcusdt@{name}x","data":{{"e":"{name}","E":1,"s":"BTCUSDT"}}}}"#),
                Some(ParseError::UnknownType),
            ),
            Bad::Unsubscribed(n) => (
                format!(
                    r#"{{"stream":"zz{n}usdt@trade","data":{{"e":"trade","E":1,"s":"ZZ{n}USDT","t":1,"p":"1","q":"1","T":1,"m":true,"M":true}}}}"#
                ),
                Some(ParseError::UnknownSymbol),
            ),
            Bad::Deep(d) => (
                format!(
                    r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":{}"1"{},"q":"1","T":1,"m":true,"M":true}}}}"#,
                    "[".repeat(*d),
                    "]".repeat(*d)
                ),
                Some(ParseError::Malformed),
            ),
            Bad::Mutated(i, m) => (
                String::from_utf8_lossy(&apply(FRAMES, FRAMES[*i], m)).into_owned(),
                None,
            ),
        }
    }
}

fn trade_frame(id: u64) -> String {
    format!(
        r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1,"s":"BTCUSDT","t":{id},"p":"150.00000000","q":"0.01000000","T":1,"m":true,"M":true}}}}"#
    )
}

/// A diff of one level: bids between 90 and 99, asks between 201 and 210, so the book
/// never crosses; quantity 0 removes the level.
fn diff_frame(u: u64, bid: bool, price: u64, qty: u64) -> String {
    let level = format!(r#"[["{price}.00000000","{qty}.00000000"]]"#);
    let (b, a) = if bid {
        (level.as_str(), "[]")
    } else {
        ("[]", level.as_str())
    };
    format!(
        r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":{u},"u":{u},"b":{b},"a":{a}}}}}"#
    )
}

/// What the test expects the engine to have seen.
#[derive(Default)]
struct Expected {
    trades: u64,
    last_update_id: u64,
    malformed: u64,
    unknown_type: u64,
    unknown_symbol: u64,
    bids: BTreeMap<u64, u64>,
    asks: BTreeMap<u64, u64>,
}

#[test]
fn malformed_frames_through_a_running_engine_are_counted_and_disturb_nothing() {
    let mut cfg = Config {
        instruments: vec!["BTC-USDT".into()],
        ..Config::default()
    };
    cfg.dispatcher.routes = [
        EventType::Trade,
        EventType::OrderbookDelta,
        EventType::AnalyticsFused,
    ]
    .iter()
    .map(|t| RouteConfig::for_type(*t))
    .collect();
    cfg.control.addr = None;
    cfg.log = LogLevel::Error;
    let mut builder = Engine::builder(cfg);
    let source = builder.frame_source();
    let sub = builder.subscribe(
        SubscriptionFilter::types(&[EventType::Trade, EventType::OrderbookDelta]),
        SubscribeOptions::new("fuzz", 1 << 16, BackpressurePolicy::Block),
    );
    let engine = builder.start().expect("engine starts");

    // Every valid event arrives, in order, and every diff is applied to a live book.
    let consumer = std::thread::spawn(move || {
        let (mut trades, mut last_u) = (0u64, 1000u64);
        while let Some(ev) = sub.recv() {
            match &ev.payload {
                Payload::Trade(t) => {
                    assert_eq!(t.trade_id, trades + 1, "trades in order, none lost");
                    trades += 1;
                }
                Payload::Delta(d) => {
                    assert_eq!(d.first_update_id, last_u + 1, "diffs in order, none lost");
                    assert_eq!(
                        ev.quality,
                        Quality::Live,
                        "diff {} not live",
                        d.final_update_id
                    );
                    last_u = d.final_update_id;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (trades, last_u)
    });

    source
        .push_depth_snapshot(
            "BTC-USDT",
            r#"{"lastUpdateId":1000,"bids":[["99.00000000","1.00000000"]],"asks":[["201.00000000","1.00000000"]]}"#,
        )
        .expect("snapshot accepted");
    let expected = RefCell::new(Expected {
        last_update_id: 1000,
        bids: BTreeMap::from([(99, 1)]),
        asks: BTreeMap::from([(201, 1)]),
        ..Expected::default()
    });
    let input = (
        prop::collection::vec(bad_frame(), 1..8),
        any::<bool>(),
        0u64..10,
        0u64..4,
    );
    fuzz(
        "engine/malformed-stream",
        input,
        |(bad, bid, offset, qty)| {
            let mut exp = expected.borrow_mut();
            for b in &bad {
                let (text, must) = b.build();
                let standalone = parse_frame(&text, engine_registry(), 0);
                let want = match (must, standalone) {
                    (Some(e), _) => e,
                    (None, Err(e)) => e,
                    // A mutation that is still a valid message would change the stream.
                    (None, Ok(_)) => continue,
                };
                let got = source.push_frame(&text);
                prop_assert_eq!(got, Err(FrameError::Parse(want)), "{:?}", b);
                match want {
                    ParseError::Malformed => exp.malformed += 1,
                    ParseError::UnknownType => exp.unknown_type += 1,
                    ParseError::UnknownSymbol => exp.unknown_symbol += 1,
                }
            }
            exp.trades += 1;
            prop_assert_eq!(source.push_frame(&trade_frame(exp.trades)), Ok(()));
            exp.last_update_id += 1;
            let price = if bid { 90 + offset } else { 201 + offset };
            let side = if bid { &mut exp.bids } else { &mut exp.asks };
            if qty == 0 {
                side.remove(&price);
            } else {
                side.insert(price, qty);
            }
            let u = exp.last_update_id;
            prop_assert_eq!(source.push_frame(&diff_frame(u, bid, price, qty)), Ok(()));
            Ok(())
        },
    );

    let exp = expected.into_inner();
    let inst = engine.instruments()[0].clone();
    let settled = Instant::now() + Duration::from_secs(10);
    while engine
        .latest_book("BTC-USDT")
        .is_none_or(|r| r.book.last_update_id < exp.last_update_id)
        && Instant::now() < settled
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(engine.failure().is_none(), "{:?}", engine.failure());
    assert_eq!(engine.book_status(&inst), Quality::Live);
    let book = engine.latest_book("BTC-USDT").expect("a fused book");
    let dec = |n: u64| Decimal::from_int(n as i64);
    let want_bids: Vec<_> = exp
        .bids
        .iter()
        .rev()
        .map(|(p, q)| (dec(*p), dec(*q)))
        .collect();
    let want_asks: Vec<_> = exp.asks.iter().map(|(p, q)| (dec(*p), dec(*q))).collect();
    assert_eq!(book.book.last_update_id, exp.last_update_id);
    assert_eq!(book.book.status, Quality::Live);
    assert_eq!(book.book.bids, want_bids);
    assert_eq!(book.book.asks, want_asks);

    let counts = engine.shutdown().expect("no stage failed");
    let (trades, last_u) = consumer.join().expect("consumer checks pass");
    assert_eq!(trades, exp.trades);
    assert_eq!(last_u, exp.last_update_id);
    assert_eq!(counts.adapter.malformed, exp.malformed);
    assert_eq!(counts.adapter.unknown_type, exp.unknown_type);
    assert_eq!(counts.adapter.unknown_symbol, exp.unknown_symbol);
    assert_eq!(counts.resyncs, 0, "a malformed frame caused a resync");
    assert_eq!(counts.published[EventType::Trade.index()], exp.trades);
    for t in EngineCounts::INGESTED_TYPES {
        assert_eq!(counts.unaccounted(t), 0, "{t}: {counts:?}");
    }
    println!(
        "engine: {} malformed, {} unknown type, {} unknown symbol frames among {} trades and {} diffs",
        exp.malformed,
        exp.unknown_type,
        exp.unknown_symbol,
        exp.trades,
        exp.last_update_id - 1000
    );
}

/// The registry the engine builds from `instruments: [BTC-USDT]`, for standalone parses.
fn engine_registry() -> &'static InstrumentRegistry {
    static R: OnceLock<InstrumentRegistry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = InstrumentRegistry::default();
        r.insert(InstrumentInfo::named("BTC-USDT").expect("canonical name"));
        r
    })
}
