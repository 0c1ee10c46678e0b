//! Measures `parse_frame` on combined-stream frames (trade, bookTicker, depth diff with 20
//! levels per side) — serde_json into borrowed typed structs — beside sonic-rs into the same
//! typed structs, and a plain `serde_json::Value` parse of the same bytes.

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

fn bench(c: &mut Criterion) {
    let reg = registry();
    let frames = [
        ("trade", r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BTCUSDT","t":12345,"p":"50000.01000000","q":"0.00100000","T":1672515782136,"m":true,"M":true}}"#.to_string()),
        ("bookTicker", r#"{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}"#.to_string()),
        ("depth20", depth20()),
    ];
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in &frames {
        assert!(parse_frame(frame, &reg, 0).is_ok(), "{name}");
        g.bench_function(format!("meltica/{name}"), |b| {
            b.iter(|| parse_frame(black_box(frame), &reg, 0).unwrap())
        });
        let data = &frame[frame.find(",\"data\":").unwrap() + 8..frame.len() - 1];
        g.bench_function(format!("sonic_rs_typed/{name}"), |b| {
            b.iter(|| match *name {
                "trade" => {
                    black_box(
                        sonic_rs::from_str::<meltica::adapter::BinanceTrade>(black_box(data))
                            .unwrap(),
                    );
                }
                "bookTicker" => {
                    black_box(
                        sonic_rs::from_str::<meltica::adapter::BinanceBookTicker>(black_box(data))
                            .unwrap(),
                    );
                }
                _ => {
                    black_box(
                        sonic_rs::from_str::<meltica::adapter::BinanceDepthUpdate>(black_box(data))
                            .unwrap(),
                    );
                }
            })
        });
        g.bench_function(format!("serde_json_value/{name}"), |b| {
            b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(frame)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
