//! Measures `parse_frame` (envelope, instrument lookup and body, with the one-pass fast path
//! where there is one) on combined-stream frames: trade, bookTicker, a depth diff with 20
//! levels per side, and a 24hrTicker. Beside it, in the same run, the frame's `data` decoded
//! into the same typed wire structs by serde_json and by sonic-rs (decimals read straight
//! from the borrowed text), and the whole frame parsed into a `Value` by each.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meltica::adapter::InstrumentRegistry;
use meltica::adapter::binance::parse::parse_frame;
use meltica::schema::{Decimal, InstrumentInfo};
use std::hint::black_box;

fn registry() -> InstrumentRegistry {
    let mut r = InstrumentRegistry::default();
    r.insert(InstrumentInfo {
        id: 0,
        name: "BTC-USDT".into(),
        symbol: "BTCUSDT".into(),
        stream_prefix: "btcusdt".into(),
        base: "BTC".into(),
        quote: "USDT".into(),
        tick_size: Decimal::ZERO,
        step_size: Decimal::ZERO,
    });
    r
}

fn depth20() -> String {
    let lv = |base: i64, sign: i64| {
        (0..20)
            .map(|i| {
                format!(
                    "[\"{}.{:02}000000\",\"{}.{:08}\"]",
                    base + sign * i,
                    i,
                    i + 1,
                    i * 137
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1672515782136,"s":"BTCUSDT","U":157,"u":160,"b":[{}],"a":[{}]}}}}"#,
        lv(50000, -1),
        lv(50001, 1)
    )
}

const TICKER: &str = r#"{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1672515782136,"s":"BTCUSDT","p":"-94.99999800","P":"-0.950","w":"0.29628482","x":"0.10000000","c":"9905.00000200","Q":"0.10000000","b":"9905.00000000","B":"0.20000000","a":"9905.00000300","A":"0.10000000","o":"10000.00000000","h":"10100.00000000","l":"9800.00000000","v":"8913.30000000","q":"2640758.21840000","O":1672429382136,"C":1672515782136,"F":0,"L":18150,"n":18151}}"#;

/// The `data` object of a combined-stream frame.
fn data(frame: &str) -> &str {
    &frame[frame.find(",\"data\":").unwrap() + 8..frame.len() - 1]
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;
/// Registers the typed baselines for one frame.
type Baselines = fn(&mut Group<'_>, &str, &str);

/// The same `data` object decoded into meltica's wire type `T` (decimals read in place from
/// the borrowed frame) by serde_json and by sonic-rs.
fn typed<T: for<'de> serde::Deserialize<'de>>(g: &mut Group<'_>, name: &str, frame: &str) {
    let data = data(frame);
    serde_json::from_str::<T>(data).expect("serde_json reads the frame");
    sonic_rs::from_str::<T>(data).expect("sonic-rs reads the frame");
    g.bench_function(format!("serde_json_typed/{name}"), |b| {
        b.iter(|| serde_json::from_str::<T>(black_box(data)).unwrap())
    });
    g.bench_function(format!("sonic_rs_typed/{name}"), |b| {
        b.iter(|| sonic_rs::from_str::<T>(black_box(data)).unwrap())
    });
}

fn bench(c: &mut Criterion) {
    use meltica::adapter::{BinanceBookTicker, BinanceDepthUpdate, BinanceTicker, BinanceTrade};
    let reg = registry();
    let trade = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BTCUSDT","t":12345,"p":"50000.01000000","q":"0.00100000","T":1672515782136,"m":true,"M":true}}"#;
    let book_ticker = r#"{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}"#;
    let depth = depth20();
    let frames: [(&str, &str, Baselines); 4] = [
        ("trade", trade, typed::<BinanceTrade>),
        ("bookTicker", book_ticker, typed::<BinanceBookTicker>),
        ("depth20", &depth, typed::<BinanceDepthUpdate>),
        ("ticker", TICKER, typed::<BinanceTicker>),
    ];
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (name, frame, typed_baselines) in frames {
        assert!(parse_frame(frame, &reg, 0).is_ok(), "{name}");
        g.bench_function(format!("meltica/{name}"), |b| {
            b.iter(|| parse_frame(black_box(frame), &reg, 0).unwrap())
        });
        typed_baselines(&mut g, name, frame);
        g.bench_function(format!("serde_json_value/{name}"), |b| {
            b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(frame)).unwrap())
        });
        g.bench_function(format!("sonic_rs_value/{name}"), |b| {
            b.iter(|| sonic_rs::from_str::<sonic_rs::Value>(black_box(frame)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
