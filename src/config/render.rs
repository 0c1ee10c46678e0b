//! Renders the effective configuration as YAML that [`super::validate::compile`] accepts.

use std::fmt::Write;
use std::time::Duration;

use super::{BusBackend, Config, FilterOp, LogLevel, StoreBackend, TradeStream, WaitStrategy};

fn dur(d: Duration) -> String {
    let ms = d.as_millis();
    if d.is_zero() {
        "0".into()
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}us", d.as_micros())
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms > 3_600_000 && ms.is_multiple_of(60_000) {
        format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The effective configuration as YAML.
pub fn to_yaml(c: &Config) -> String {
    let b = &c.adapter.binance;
    let mut o = String::new();
    let _ = writeln!(o, "instruments: [{}]", c.instruments.join(", "));
    let _ = writeln!(o, "adapter:\n  binance:");
    let _ = writeln!(o, "    ws_url: {}", quote(&b.ws_url));
    let _ = writeln!(o, "    rest_url: {}", quote(&b.rest_url));
    let _ = writeln!(o, "    handshake_timeout: {}", dur(b.handshake_timeout));
    let _ = writeln!(o, "    no_data_timeout: {}", dur(b.no_data_timeout));
    let _ = writeln!(o, "    stream_timeout: {}", dur(b.stream_timeout));
    let _ = writeln!(o, "    max_connection_age: {}", dur(b.max_connection_age));
    let _ = writeln!(o, "    rest_timeout: {}", dur(b.rest_timeout));
    let _ = writeln!(
        o,
        "    reconnect:\n      initial_backoff: {}\n      max_backoff: {}",
        dur(b.reconnect.initial),
        dur(b.reconnect.max)
    );
    let _ = writeln!(
        o,
        "    snapshot:\n      depth: {}\n      interval: {}\n      concurrency: {}",
        b.snapshot.depth,
        dur(b.snapshot.interval),
        b.snapshot.concurrency
    );
    let _ = writeln!(
        o,
        "    trade_stream: {}",
        match b.trade_stream {
            TradeStream::Trade => "trade",
            TradeStream::AggTrade => "aggTrade",
        }
    );
    let _ = writeln!(
        o,
        "    max_streams_per_connection: {}",
        b.max_streams_per_connection
    );
    let _ = writeln!(o, "    messages_per_second: {}", b.messages_per_second);
    let _ = writeln!(o, "dispatcher:\n  routes:");
    for r in &c.dispatcher.routes {
        let _ = writeln!(o, "    - type: {}", r.event_type);
        if !r.instruments.is_empty() {
            let _ = writeln!(o, "      instruments: [{}]", r.instruments.join(", "));
        }
        if !r.ws_topics.is_empty() {
            let _ = writeln!(o, "      ws_topics: [{}]", r.ws_topics.join(", "));
        }
        if !r.rest_pollers.is_empty() {
            let _ = writeln!(o, "      rest_pollers:");
            for p in &r.rest_pollers {
                let _ = writeln!(
                    o,
                    "        - {{name: {}, endpoint: {}, interval: {}}}",
                    quote(&p.name),
                    p.endpoint,
                    dur(p.interval)
                );
            }
        }
        if !r.filters.is_empty() {
            let _ = writeln!(o, "      filters:");
            for f in &r.filters {
                let op = match f.op {
                    FilterOp::Eq => "eq",
                    FilterOp::Neq => "neq",
                    FilterOp::In => "in",
                    FilterOp::Prefix => "prefix",
                };
                let vals: Vec<String> = f.value.iter().map(|v| quote(v)).collect();
                let _ = writeln!(
                    o,
                    "        - {{field: {}, op: {op}, value: [{}]}}",
                    f.field,
                    vals.join(", ")
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "conductor:\n  book_depth: {}\n  throttle: {}\n  staleness: {}",
        c.conductor.book_depth,
        dur(c.conductor.throttle),
        dur(c.conductor.staleness)
    );
    match &c.snapshot_store.backend {
        StoreBackend::Memory => {
            let _ = writeln!(o, "snapshot_store:\n  backend: memory");
        }
        StoreBackend::Redis(r) => {
            let _ = writeln!(
                o,
                "snapshot_store:\n  backend: redis\n  redis:\n    url: {}\n    prefix: {}",
                quote(&r.url),
                r.prefix
            );
        }
    }
    let _ = writeln!(o, "  ttl: {}", dur(c.snapshot_store.ttl));
    let _ = writeln!(o, "bus:");
    match &c.bus.backend {
        BusBackend::Memory => {
            let _ = writeln!(o, "  backend: memory");
        }
        BusBackend::Nats(n) => {
            let _ = writeln!(
                o,
                "  backend: nats\n  nats:\n    url: {}\n    subject_prefix: {}\n    engine_id: {}\n    control: {}\n    queue: {}\n    policy: {}",
                quote(&n.url),
                n.subject_prefix,
                n.engine_id,
                n.control,
                n.queue,
                n.policy.as_str()
            );
            if let Some(j) = &n.jetstream {
                let _ = writeln!(
                    o,
                    "    jetstream:\n      stream: {}\n      max_age: {}\n      max_msgs: {}\n      duplicate_window: {}",
                    j.stream,
                    dur(j.max_age),
                    j.max_msgs,
                    dur(j.duplicate_window)
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "  stage_queue: {}\n  subscriber_queue: {}\n  policy: {}\n  ws_addr: {}",
        c.bus.stage_queue,
        c.bus.subscriber_queue,
        c.bus.policy.as_str(),
        c.bus.ws_addr.map_or("~".to_owned(), |a| a.to_string())
    );
    let _ = writeln!(
        o,
        "shard:\n  count: {}\n  index: {}",
        c.shard.count, c.shard.index
    );
    let _ = writeln!(
        o,
        "control:\n  addr: {}",
        c.control.addr.map_or("~".into(), |a| quote(&a.to_string()))
    );
    match &c.control.token {
        Some(_) => {
            let _ = writeln!(o, "  token: \"<redacted>\"");
        }
        None => {
            let _ = writeln!(o, "  token: ~");
        }
    }
    let t = &c.telemetry;
    let _ = writeln!(
        o,
        "telemetry:\n  endpoint: {}",
        t.endpoint.as_deref().map_or("~".into(), quote)
    );
    let _ = writeln!(
        o,
        "  service_name: {}\n  sampling: {}\n  disabled: {}\n  batch_delay: {}\n  metric_interval: {}",
        quote(&t.service_name),
        t.sampling,
        t.disabled,
        dur(t.batch_delay),
        dur(t.metric_interval)
    );
    let pins: Vec<String> = c.threads.pin.iter().map(|p| p.to_string()).collect();
    let _ = writeln!(
        o,
        "threads:\n  pin: [{}]\n  wait: {}",
        pins.join(", "),
        match c.threads.wait {
            WaitStrategy::Block => "block",
            WaitStrategy::Spin => "spin",
        }
    );
    let _ = writeln!(
        o,
        "log: {}",
        match c.log {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::compile;

    #[test]
    fn rendered_config_compiles_back() {
        let c = Config::default();
        assert_eq!(compile(&to_yaml(&c)).unwrap(), c);
    }
}
