//! Measures the dispatcher stage on one trade: route lookup, filter, canonicalisation into
//! an `Event` (the stage's whole per-event work), beside a naive router that looks the
//! route up in a `HashMap<String, _>` and formats the key string per event.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meltica::adapter::binance::parse::{Frame, parse_frame};
use meltica::adapter::{InstrumentRegistry, RawInstance};
use meltica::config::{FilterConfig, FilterOp, RouteConfig, TradeStream};
use meltica::dispatcher::{DispatchTable, Dispatcher, DispatcherStats};
use meltica::schema::{EventType, InstrumentInfo};

fn registry() -> InstrumentRegistry {
    let mut r = InstrumentRegistry::default();
    for n in ["BTC-USDT", "ETH-USDT"] {
        r.insert(InstrumentInfo::named(n).unwrap());
    }
    r
}

fn bench(c: &mut Criterion) {
    let reg = registry();
    let frame = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BTCUSDT","t":12345,"p":"50000.01000000","q":"0.00100000","T":1672515782136,"m":false,"M":true}}"#;
    let Ok(Frame::Instance(raw)) = parse_frame(frame, &reg, 0) else {
        panic!()
    };
    let routes = vec![RouteConfig {
        filters: vec![FilterConfig {
            field: "instrument".into(),
            op: FilterOp::In,
            value: vec!["BTC-USDT".into(), "ETH-USDT".into()],
        }],
        ..RouteConfig::for_type(EventType::Trade)
    }];
    let table = DispatchTable::from_config(&routes, &reg, TradeStream::Trade);
    let mut d = Dispatcher::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(table)),
        Arc::new(DispatcherStats::default()),
    );
    let mut g = c.benchmark_group("dispatcher/trade");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("meltica_route_filter_canonicalize", |b| {
        b.iter_batched(
            || raw.clone(),
            |r: RawInstance| black_box(d.process(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut naive: HashMap<String, Vec<String>> = HashMap::new();
    naive.insert("TRADE".into(), vec!["BTC-USDT".into(), "ETH-USDT".into()]);
    let mut seq = 0u64;
    g.bench_function("naive_hashmap_router", |b| {
        b.iter_batched(
            || raw.clone(),
            |r: RawInstance| {
                let inst = r.instrument.name().to_owned();
                let allowed = naive.get("TRADE").is_some_and(|v| v.contains(&inst));
                seq += 1;
                let key = format!("{inst}:TRADE:{seq}");
                black_box((allowed, key, r))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
