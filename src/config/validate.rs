//! The config compiler: walks the located YAML tree, fills the runtime [`Config`] from the
//! defaults, and collects every problem (unknown key, wrong type, bad duration, bad value)
//! with its line and column before failing.
//!
//! Serde's `deny_unknown_fields` stops at the first problem; walking the tree instead lets
//! an operator fix a file in one pass.

use std::net::SocketAddr;
use std::time::Duration;

use super::node::{self, Key, Loc, Node, Value};
use super::*;
use crate::schema::{EventType, split_canonical};

/// Compiles YAML text into a validated [`Config`], or every problem found.
pub fn compile(text: &str) -> Result<Config, Vec<ConfigProblem>> {
    let root = match node::parse(text) {
        Ok(n) => n,
        Err(e) => {
            return Err(vec![ConfigProblem {
                loc: Some(e.loc),
                path: String::new(),
                message: format!("invalid YAML: {}", e.message),
            }]);
        }
    };
    let mut cx = Cx::default();
    let mut cfg = Config::default();
    if let Some(mut top) = cx.section(&root, "") {
        if let Some(n) = top.take("instruments")
            && let Some(list) = cx.instruments(n, "instruments")
        {
            cfg.instruments = list;
        }
        if let Some(n) = top.take("adapter") {
            adapter(&mut cx, n, &mut cfg.adapter);
        }
        if let Some(n) = top.take("dispatcher") {
            dispatcher(&mut cx, n, &mut cfg.dispatcher);
        }
        if let Some(n) = top.take("conductor") {
            conductor(&mut cx, n, &mut cfg.conductor);
        }
        if let Some(n) = top.take("snapshot_store")
            && let Some(mut s) = cx.section(n, "snapshot_store")
        {
            let redis = s.take("redis");
            if let Some(v) = s.take("backend") {
                cx.store_backend(v, redis, &mut cfg.snapshot_store.backend);
            } else if let Some(r) = redis {
                cx.problem(
                    r.loc,
                    "snapshot_store.redis",
                    "set `snapshot_store.backend: redis` to use these settings",
                );
            }
            if let Some(v) = s.take("ttl") {
                cx.positive_duration(v, "snapshot_store.ttl", &mut cfg.snapshot_store.ttl);
            }
            s.finish(&mut cx);
        }
        if let Some(n) = top.take("bus") {
            bus(&mut cx, n, &mut cfg.bus);
        }
        if let Some(n) = top.take("shard") {
            shard(&mut cx, n, &mut cfg.shard);
        }
        if let Some(n) = top.take("control") {
            control(&mut cx, n, &mut cfg.control);
        }
        if let Some(n) = top.take("telemetry") {
            telemetry(&mut cx, n, &mut cfg.telemetry);
        }
        if let Some(n) = top.take("threads") {
            threads(&mut cx, n, &mut cfg.threads);
        }
        if let Some(n) = top.take("log")
            && let Some(s) = cx.string(n, "log")
        {
            match LogLevel::parse(&s) {
                Some(l) => cfg.log = l,
                None => cx.problem(n.loc, "log", "expected one of error, warn, info, debug"),
            }
        }
        top.finish(&mut cx);
    }
    cross_checks(&mut cx, &root, &cfg);
    if cx.problems.is_empty() {
        Ok(cfg)
    } else {
        cx.problems
            .sort_by_key(|p| p.loc.map(|l| (l.line, l.column)).unwrap_or_default());
        Err(cx.problems)
    }
}

fn adapter(cx: &mut Cx, n: &Node, out: &mut AdapterConfig) {
    let Some(mut a) = cx.section(n, "adapter") else {
        return;
    };
    if let Some(n) = a.take("binance")
        && let Some(mut b) = cx.section(n, "adapter.binance")
    {
        let o = &mut out.binance;
        if let Some(v) = b.take("ws_url") {
            cx.url(
                v,
                "adapter.binance.ws_url",
                &["ws://", "wss://"],
                &mut o.ws_url,
            );
        }
        if let Some(v) = b.take("rest_url") {
            cx.url(
                v,
                "adapter.binance.rest_url",
                &["http://", "https://"],
                &mut o.rest_url,
            );
        }
        if let Some(v) = b.take("handshake_timeout") {
            cx.positive_duration(
                v,
                "adapter.binance.handshake_timeout",
                &mut o.handshake_timeout,
            );
        }
        if let Some(v) = b.take("no_data_timeout") {
            cx.positive_duration(v, "adapter.binance.no_data_timeout", &mut o.no_data_timeout);
        }
        if let Some(v) = b.take("stream_timeout") {
            cx.positive_duration(v, "adapter.binance.stream_timeout", &mut o.stream_timeout);
        }
        if let Some(v) = b.take("max_connection_age") {
            cx.positive_duration(
                v,
                "adapter.binance.max_connection_age",
                &mut o.max_connection_age,
            );
        }
        if let Some(v) = b.take("rest_timeout") {
            cx.positive_duration(v, "adapter.binance.rest_timeout", &mut o.rest_timeout);
        }
        if let Some(v) = b.take("reconnect")
            && let Some(mut r) = cx.section(v, "adapter.binance.reconnect")
        {
            if let Some(v) = r.take("initial_backoff") {
                cx.positive_duration(
                    v,
                    "adapter.binance.reconnect.initial_backoff",
                    &mut o.reconnect.initial,
                );
            }
            if let Some(v) = r.take("max_backoff") {
                cx.positive_duration(
                    v,
                    "adapter.binance.reconnect.max_backoff",
                    &mut o.reconnect.max,
                );
            }
            if o.reconnect.max < o.reconnect.initial {
                cx.problem(
                    v.loc,
                    "adapter.binance.reconnect",
                    "max_backoff must not be below initial_backoff",
                );
            }
            r.finish(cx);
        }
        if let Some(v) = b.take("snapshot")
            && let Some(mut s) = cx.section(v, "adapter.binance.snapshot")
        {
            if let Some(v) = s.take("depth") {
                let mut d = 0u64;
                if cx.uint(v, "adapter.binance.snapshot.depth", &mut d) {
                    if [5, 10, 20, 50, 100, 500, 1000, 5000].contains(&d) {
                        o.snapshot.depth = d as u32;
                    } else {
                        cx.problem(v.loc, "adapter.binance.snapshot.depth", "expected one of 5, 10, 20, 50, 100, 500, 1000, 5000 (Binance depth limits)");
                    }
                }
            }
            if let Some(v) = s.take("interval") {
                cx.duration(
                    v,
                    "adapter.binance.snapshot.interval",
                    &mut o.snapshot.interval,
                );
            }
            if let Some(v) = s.take("concurrency") {
                let mut n = 0u64;
                if cx.uint(v, "adapter.binance.snapshot.concurrency", &mut n) {
                    if (1..=16).contains(&n) {
                        o.snapshot.concurrency = n as usize;
                    } else {
                        cx.problem(
                            v.loc,
                            "adapter.binance.snapshot.concurrency",
                            "expected 1..=16 snapshots fetched at once",
                        );
                    }
                }
            }
            s.finish(cx);
        }
        if let Some(v) = b.take("trade_stream")
            && let Some(s) = cx.string(v, "adapter.binance.trade_stream")
        {
            match s.as_str() {
                "trade" => o.trade_stream = TradeStream::Trade,
                "aggTrade" => o.trade_stream = TradeStream::AggTrade,
                _ => cx.problem(
                    v.loc,
                    "adapter.binance.trade_stream",
                    "expected trade or aggTrade",
                ),
            }
        }
        if let Some(v) = b.take("max_streams_per_connection") {
            let mut m = 0u64;
            if cx.uint(v, "adapter.binance.max_streams_per_connection", &mut m) {
                if (1..=1024).contains(&m) {
                    o.max_streams_per_connection = m as usize;
                } else {
                    cx.problem(
                        v.loc,
                        "adapter.binance.max_streams_per_connection",
                        "expected 1..=1024 (Binance's per-connection limit)",
                    );
                }
            }
        }
        if let Some(v) = b.take("messages_per_second") {
            let mut m = 0u64;
            if cx.uint(v, "adapter.binance.messages_per_second", &mut m) {
                if (1..=5).contains(&m) {
                    o.messages_per_second = m as u32;
                } else {
                    cx.problem(
                        v.loc,
                        "adapter.binance.messages_per_second",
                        "expected 1..=5 (Binance disconnects above 5 per second)",
                    );
                }
            }
        }
        b.finish(cx);
    }
    a.finish(cx);
}

fn dispatcher(cx: &mut Cx, n: &Node, out: &mut DispatcherConfig) {
    let Some(mut d) = cx.section(n, "dispatcher") else {
        return;
    };
    if let Some(v) = d.take("routes")
        && let Some(items) = cx.seq(v, "dispatcher.routes")
    {
        let mut routes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("dispatcher.routes[{i}]");
            if let Some(r) = route(cx, item, &path) {
                if routes
                    .iter()
                    .any(|x: &RouteConfig| x.event_type == r.event_type)
                {
                    cx.problem(
                        item.loc,
                        &path,
                        &format!("a route for {} is already defined", r.event_type),
                    );
                }
                routes.push(r);
            }
        }
        out.routes = routes;
    }
    d.finish(cx);
}

fn route(cx: &mut Cx, n: &Node, path: &str) -> Option<RouteConfig> {
    let mut s = cx.section(n, path)?;
    let mut r = RouteConfig::for_type(EventType::Trade);
    let mut ok = true;
    match s.take("type") {
        None => {
            cx.problem(n.loc, path, "missing key `type`");
            ok = false;
        }
        Some(v) => {
            if let Some(t) = cx.string(v, &format!("{path}.type")) {
                match EventType::parse(&t) {
                    Some(EventType::ControlUpdate) | None => {
                        cx.problem(v.loc, &format!("{path}.type"), &format!("unknown type {t:?}; expected TICKER, TRADE, ORDERBOOK.TOP, ORDERBOOK.SNAPSHOT, ORDERBOOK.DELTA or ANALYTICS.FUSED"));
                        ok = false;
                    }
                    Some(t) => r.event_type = t,
                }
            } else {
                ok = false;
            }
        }
    }
    if let Some(v) = s.take("instruments")
        && let Some(list) = cx.instruments(v, &format!("{path}.instruments"))
    {
        r.instruments = list;
    }
    if let Some(v) = s.take("ws_topics")
        && let Some(items) = cx.seq(v, &format!("{path}.ws_topics"))
    {
        for it in items {
            if let Some(t) = cx.string(it, &format!("{path}.ws_topics")) {
                if t.contains('@') && !t.contains(char::is_whitespace) {
                    r.ws_topics.push(t);
                } else {
                    cx.problem(
                        it.loc,
                        &format!("{path}.ws_topics"),
                        &format!("{t:?} is not a Binance stream name like btcusdt@trade"),
                    );
                }
            }
        }
    }
    if let Some(v) = s.take("rest_pollers")
        && let Some(items) = cx.seq(v, &format!("{path}.rest_pollers"))
    {
        for (i, it) in items.iter().enumerate() {
            let pp = format!("{path}.rest_pollers[{i}]");
            let Some(mut p) = cx.section(it, &pp) else {
                continue;
            };
            let mut poller = PollerConfig {
                name: "depth".into(),
                endpoint: "/api/v3/depth".into(),
                interval: Duration::from_secs(30),
            };
            if let Some(v) = p.take("name")
                && let Some(s) = cx.string(v, &format!("{pp}.name"))
            {
                poller.name = s;
            }
            if let Some(v) = p.take("endpoint")
                && let Some(s) = cx.string(v, &format!("{pp}.endpoint"))
            {
                if s == "/api/v3/depth" {
                    poller.endpoint = s;
                } else {
                    cx.problem(
                        v.loc,
                        &format!("{pp}.endpoint"),
                        "only /api/v3/depth can be polled",
                    );
                }
            }
            if let Some(v) = p.take("interval") {
                cx.positive_duration(v, &format!("{pp}.interval"), &mut poller.interval);
            }
            p.finish(cx);
            r.rest_pollers.push(poller);
        }
    }
    if let Some(v) = s.take("filters")
        && let Some(items) = cx.seq(v, &format!("{path}.filters"))
    {
        for (i, it) in items.iter().enumerate() {
            if let Some(f) = filter(cx, it, &format!("{path}.filters[{i}]")) {
                r.filters.push(f);
            }
        }
    }
    s.finish(cx);
    ok.then_some(r)
}

fn filter(cx: &mut Cx, n: &Node, path: &str) -> Option<FilterConfig> {
    let mut s = cx.section(n, path)?;
    let field = match s.take("field") {
        Some(v) => cx.string(v, &format!("{path}.field")).and_then(|f| {
            if ["instrument", "market", "side"].contains(&f.as_str()) {
                Some(f)
            } else {
                cx.problem(
                    v.loc,
                    &format!("{path}.field"),
                    &format!("unknown field {f:?}; expected instrument, market or side"),
                );
                None
            }
        }),
        None => {
            cx.problem(n.loc, path, "missing key `field`");
            None
        }
    };
    let op = match s.take("op") {
        Some(v) => cx
            .string(v, &format!("{path}.op"))
            .and_then(|o| match o.as_str() {
                "eq" => Some(FilterOp::Eq),
                "neq" => Some(FilterOp::Neq),
                "in" => Some(FilterOp::In),
                "prefix" => Some(FilterOp::Prefix),
                _ => {
                    cx.problem(
                        v.loc,
                        &format!("{path}.op"),
                        "expected eq, neq, in or prefix",
                    );
                    None
                }
            }),
        None => {
            cx.problem(n.loc, path, "missing key `op`");
            None
        }
    };
    let value = match s.take("value") {
        Some(v) => match &v.value {
            Value::Seq(items) => {
                let vals: Vec<String> = items
                    .iter()
                    .filter_map(|i| cx.string(i, &format!("{path}.value")))
                    .collect();
                Some(vals)
            }
            _ => cx.string(v, &format!("{path}.value")).map(|s| vec![s]),
        },
        None => {
            cx.problem(n.loc, path, "missing key `value`");
            None
        }
    };
    s.finish(cx);
    let (field, op, value) = (field?, op?, value?);
    if op != FilterOp::In && value.len() != 1 {
        cx.problem(n.loc, path, "eq, neq and prefix take a single value");
        return None;
    }
    Some(FilterConfig { field, op, value })
}

fn conductor(cx: &mut Cx, n: &Node, out: &mut ConductorConfig) {
    let Some(mut s) = cx.section(n, "conductor") else {
        return;
    };
    if let Some(v) = s.take("book_depth") {
        let mut d = 0u64;
        if cx.uint(v, "conductor.book_depth", &mut d) {
            if (1..=5000).contains(&d) {
                out.book_depth = d as usize;
            } else {
                cx.problem(v.loc, "conductor.book_depth", "expected 1..=5000");
            }
        }
    }
    if let Some(v) = s.take("throttle") {
        cx.duration(v, "conductor.throttle", &mut out.throttle);
    }
    if let Some(v) = s.take("staleness") {
        cx.positive_duration(v, "conductor.staleness", &mut out.staleness);
    }
    s.finish(cx);
}

fn bus(cx: &mut Cx, n: &Node, out: &mut BusConfig) {
    let Some(mut s) = cx.section(n, "bus") else {
        return;
    };
    let nats = s.take("nats");
    if let Some(v) = s.take("backend") {
        cx.bus_backend(v, nats, &mut out.backend);
    } else if let Some(n) = nats {
        cx.problem(
            n.loc,
            "bus.nats",
            "set `bus.backend: nats` to use these settings",
        );
    }
    if let Some(v) = s.take("stage_queue") {
        cx.capacity(v, "bus.stage_queue", &mut out.stage_queue);
    }
    if let Some(v) = s.take("subscriber_queue") {
        cx.capacity(v, "bus.subscriber_queue", &mut out.subscriber_queue);
    }
    if let Some(v) = s.take("policy") {
        cx.policy(v, "bus.policy", &mut out.policy);
    }
    if let Some(v) = s.take("ws_addr") {
        if matches!(v.value, Value::Null) {
            out.ws_addr = None;
        } else if let Some(a) = cx.string(v, "bus.ws_addr") {
            match a.parse::<SocketAddr>() {
                Ok(a) => out.ws_addr = Some(a),
                Err(_) => cx.problem(
                    v.loc,
                    "bus.ws_addr",
                    &format!("{a:?} is not an IP:port address"),
                ),
            }
        }
    }
    s.finish(cx);
}

fn shard(cx: &mut Cx, n: &Node, out: &mut ShardConfig) {
    let Some(mut s) = cx.section(n, "shard") else {
        return;
    };
    let mut count = u64::from(out.count);
    let mut index = u64::from(out.index);
    if let Some(v) = s.take("count")
        && cx.uint(v, "shard.count", &mut count)
        && !(1..=1024).contains(&count)
    {
        cx.problem(v.loc, "shard.count", "expected 1 to 1024 engines");
    }
    if let Some(v) = s.take("index")
        && cx.uint(v, "shard.index", &mut index)
        && index >= count
    {
        cx.problem(
            v.loc,
            "shard.index",
            &format!("must be below shard.count ({count})"),
        );
    }
    if (1..=1024).contains(&count) && index < count {
        *out = ShardConfig {
            count: count as u32,
            index: index as u32,
        };
    }
    s.finish(cx);
}

/// Parses a backpressure policy name.
pub fn parse_policy(s: &str) -> Option<BackpressurePolicy> {
    match s {
        "block" => Some(BackpressurePolicy::Block),
        "drop_oldest" => Some(BackpressurePolicy::DropOldest),
        "drop_newest" => Some(BackpressurePolicy::DropNewest),
        "conflate" => Some(BackpressurePolicy::Conflate),
        "disconnect" => Some(BackpressurePolicy::Disconnect),
        _ => None,
    }
}

fn control(cx: &mut Cx, n: &Node, out: &mut ControlConfig) {
    let Some(mut s) = cx.section(n, "control") else {
        return;
    };
    if let Some(v) = s.take("addr")
        && matches!(v.value, Value::Null)
    {
        out.addr = None;
    } else if let Some(v) = s.take("addr")
        && let Some(a) = cx.string(v, "control.addr")
    {
        match a.parse::<SocketAddr>() {
            Ok(a) => out.addr = Some(a),
            Err(_) => cx.problem(
                v.loc,
                "control.addr",
                &format!("{a:?} is not an IP:port address"),
            ),
        }
    }
    if let Some(v) = s.take("token")
        && !matches!(v.value, Value::Null)
        && let Some(t) = cx.string(v, "control.token")
    {
        if t.is_empty() {
            cx.problem(
                v.loc,
                "control.token",
                "must not be empty (omit it for no token)",
            );
        } else {
            out.token = Some(t);
        }
    }
    s.finish(cx);
}

fn telemetry(cx: &mut Cx, n: &Node, out: &mut TelemetryConfig) {
    let Some(mut s) = cx.section(n, "telemetry") else {
        return;
    };
    if let Some(v) = s.take("endpoint")
        && !matches!(v.value, Value::Null)
    {
        let mut e = String::new();
        if cx.url(v, "telemetry.endpoint", &["http://", "https://"], &mut e) {
            out.endpoint = Some(e);
        }
    }
    if let Some(v) = s.take("service_name")
        && let Some(n) = cx.string(v, "telemetry.service_name")
    {
        out.service_name = n;
    }
    if let Some(v) = s.take("sampling") {
        let f = match v.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        };
        match f {
            Some(f) if (0.0..=1.0).contains(&f) => out.sampling = f,
            _ => cx.problem(
                v.loc,
                "telemetry.sampling",
                &format!(
                    "expected a ratio between 0 and 1, found {}",
                    v.value.describe()
                ),
            ),
        }
    }
    if let Some(v) = s.take("disabled") {
        cx.boolean(v, "telemetry.disabled", &mut out.disabled);
    }
    if let Some(v) = s.take("batch_delay") {
        cx.positive_duration(v, "telemetry.batch_delay", &mut out.batch_delay);
    }
    if let Some(v) = s.take("metric_interval") {
        cx.positive_duration(v, "telemetry.metric_interval", &mut out.metric_interval);
    }
    s.finish(cx);
}

fn threads(cx: &mut Cx, n: &Node, out: &mut ThreadsConfig) {
    let Some(mut s) = cx.section(n, "threads") else {
        return;
    };
    if let Some(v) = s.take("pin") {
        match &v.value {
            Value::Bool(false) | Value::Null => out.pin.clear(),
            Value::Seq(items) => {
                out.pin.clear();
                for it in items {
                    let mut c = 0u64;
                    if cx.uint(it, "threads.pin", &mut c) {
                        out.pin.push(c as usize);
                    }
                }
            }
            other => cx.problem(
                v.loc,
                "threads.pin",
                &format!(
                    "expected false or a list of core ids, found {}",
                    other.describe()
                ),
            ),
        }
    }
    if let Some(v) = s.take("wait")
        && let Some(w) = cx.string(v, "threads.wait")
    {
        match w.as_str() {
            "block" => out.wait = WaitStrategy::Block,
            "spin" => out.wait = WaitStrategy::Spin,
            _ => cx.problem(v.loc, "threads.wait", "expected block or spin"),
        }
    }
    s.finish(cx);
}

fn cross_checks(cx: &mut Cx, root: &Node, cfg: &Config) {
    cx.problems
        .extend(cfg.check_rules(Some(root_loc(root, "control"))));
    for r in &cfg.dispatcher.routes {
        for i in &r.instruments {
            if !cfg.instruments.contains(i) {
                cx.problem(
                    root_loc(root, "dispatcher"),
                    "dispatcher.routes",
                    &format!(
                        "route {} names {i}, which is not in `instruments`",
                        r.event_type
                    ),
                );
            }
        }
    }
}

fn root_loc(root: &Node, key: &str) -> Loc {
    if let Value::Map(m) = &root.value
        && let Some((k, _)) = m.iter().find(|(k, _)| k.name == key)
    {
        return k.loc;
    }
    root.loc
}

/// Parses a duration such as `250ms`, `10s`, `1m`, `1h`, `500us`, `0`, or a sum of parts
/// such as `23h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, after) = rest.split_at(split);
        if num.is_empty() {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per = match unit.trim() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * nanos_per;
        rest = next;
    }
    (total.is_finite() && total < 1e18).then(|| Duration::from_nanos(total as u64))
}

/// Problems collected so far.
#[derive(Default)]
struct Cx {
    problems: Vec<ConfigProblem>,
}

/// A mapping being read: keys taken are marked, the rest are reported as unknown.
struct Section<'n> {
    entries: &'n [(Key, Node)],
    taken: Vec<bool>,
    path: String,
}

impl<'n> Section<'n> {
    fn take(&mut self, key: &str) -> Option<&'n Node> {
        let i = self.entries.iter().position(|(k, _)| k.name == key)?;
        self.taken[i] = true;
        Some(&self.entries[i].1)
    }

    fn finish(self, cx: &mut Cx) {
        for ((k, _), taken) in self.entries.iter().zip(self.taken) {
            if !taken {
                let path = if self.path.is_empty() {
                    k.name.clone()
                } else {
                    format!("{}.{}", self.path, k.name)
                };
                cx.problem(k.loc, &path, "unknown key");
            }
        }
    }
}

impl Cx {
    fn problem(&mut self, loc: Loc, path: &str, message: &str) {
        self.problems.push(ConfigProblem {
            loc: Some(loc),
            path: path.to_owned(),
            message: message.to_owned(),
        });
    }

    fn section<'n>(&mut self, n: &'n Node, path: &str) -> Option<Section<'n>> {
        match &n.value {
            Value::Map(entries) => Some(Section {
                entries,
                taken: vec![false; entries.len()],
                path: path.to_owned(),
            }),
            Value::Null => Some(Section {
                entries: &[],
                taken: Vec::new(),
                path: path.to_owned(),
            }),
            other => {
                self.problem(
                    n.loc,
                    path,
                    &format!("expected a mapping, found {}", other.describe()),
                );
                None
            }
        }
    }

    fn seq<'n>(&mut self, n: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &n.value {
            Value::Seq(items) => Some(items),
            other => {
                self.problem(
                    n.loc,
                    path,
                    &format!("expected a list, found {}", other.describe()),
                );
                None
            }
        }
    }

    fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.problem(
                    n.loc,
                    path,
                    &format!("expected a string, found {}", other.describe()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, n: &Node, path: &str, out: &mut bool) {
        match &n.value {
            Value::Bool(b) => *out = *b,
            other => self.problem(
                n.loc,
                path,
                &format!("expected true or false, found {}", other.describe()),
            ),
        }
    }

    fn uint(&mut self, n: &Node, path: &str, out: &mut u64) -> bool {
        match &n.value {
            Value::Int(i) if *i >= 0 && *i <= u64::MAX as i128 => {
                *out = *i as u64;
                true
            }
            other => {
                self.problem(
                    n.loc,
                    path,
                    &format!(
                        "expected a non-negative integer, found {}",
                        other.describe()
                    ),
                );
                false
            }
        }
    }

    fn capacity(&mut self, n: &Node, path: &str, out: &mut usize) {
        let mut c = 0u64;
        if self.uint(n, path, &mut c) {
            if (1..=1 << 24).contains(&c) {
                *out = c as usize;
            } else {
                self.problem(n.loc, path, "expected a capacity between 1 and 16777216");
            }
        }
    }

    fn duration(&mut self, n: &Node, path: &str, out: &mut Duration) -> bool {
        let parsed = match &n.value {
            Value::Str(s) => parse_duration(s),
            Value::Int(0) => Some(Duration::ZERO),
            _ => None,
        };
        match parsed {
            Some(d) => {
                *out = d;
                true
            }
            None => {
                self.problem(
                    n.loc,
                    path,
                    &format!(
                        "invalid duration {}; use a number with a unit: 500ms, 10s, 1m, 1h",
                        n.value.describe()
                    ),
                );
                false
            }
        }
    }

    fn positive_duration(&mut self, n: &Node, path: &str, out: &mut Duration) {
        let mut d = Duration::ZERO;
        if self.duration(n, path, &mut d) {
            if d.is_zero() {
                self.problem(n.loc, path, "must be greater than zero");
            } else {
                *out = d;
            }
        }
    }

    fn url(&mut self, n: &Node, path: &str, schemes: &[&str], out: &mut String) -> bool {
        let Some(u) = self.string(n, path) else {
            return false;
        };
        if schemes
            .iter()
            .any(|s| u.starts_with(s) && u.len() > s.len())
            && !u.contains(char::is_whitespace)
        {
            *out = u;
            true
        } else {
            self.problem(
                n.loc,
                path,
                &format!("{u:?} is not a URL starting with {}", schemes.join(" or ")),
            );
            false
        }
    }

    fn store_backend(&mut self, n: &Node, settings: Option<&Node>, out: &mut StoreBackend) {
        let path = "snapshot_store.backend";
        let Some(b) = self.string(n, path) else {
            return;
        };
        match b.as_str() {
            "memory" => {
                *out = StoreBackend::Memory;
                if let Some(r) = settings {
                    self.problem(r.loc, "snapshot_store.redis", "only used with backend redis");
                }
            }
            "redis" if !cfg!(feature = "redis") => self.problem(
                n.loc,
                path,
                "backend `redis` needs meltica built with the `redis` feature (cargo build --features redis)",
            ),
            "redis" => {
                let mut r = RedisConfig::default();
                if let Some(node) = settings
                    && let Some(mut s) = self.section(node, "snapshot_store.redis")
                {
                    if let Some(v) = s.take("url") {
                        self.url(
                            v,
                            "snapshot_store.redis.url",
                            &["redis://", "rediss://"],
                            &mut r.url,
                        );
                    }
                    if let Some(v) = s.take("prefix") {
                        self.name(v, "snapshot_store.redis.prefix", &mut r.prefix);
                    }
                    s.finish(self);
                }
                *out = StoreBackend::Redis(r);
            }
            _ => self.problem(
                n.loc,
                path,
                &format!("unknown backend {b:?}; expected memory or redis"),
            ),
        }
    }

    fn bus_backend(&mut self, n: &Node, settings: Option<&Node>, out: &mut BusBackend) {
        let path = "bus.backend";
        let Some(b) = self.string(n, path) else {
            return;
        };
        match b.as_str() {
            "memory" => {
                *out = BusBackend::Memory;
                if let Some(r) = settings {
                    self.problem(r.loc, "bus.nats", "only used with backend nats");
                }
            }
            "nats" if !cfg!(feature = "nats") => self.problem(
                n.loc,
                path,
                "backend `nats` needs meltica built with the `nats` feature (cargo build --features nats)",
            ),
            "nats" => {
                let mut c = NatsConfig::default();
                if let Some(node) = settings
                    && let Some(mut s) = self.section(node, "bus.nats")
                {
                    if let Some(v) = s.take("url") {
                        self.url(v, "bus.nats.url", &["nats://", "tls://"], &mut c.url);
                    }
                    if let Some(v) = s.take("subject_prefix") {
                        self.name(v, "bus.nats.subject_prefix", &mut c.subject_prefix);
                    }
                    if let Some(v) = s.take("engine_id") {
                        self.name(v, "bus.nats.engine_id", &mut c.engine_id);
                    }
                    if let Some(v) = s.take("control") {
                        self.boolean(v, "bus.nats.control", &mut c.control);
                    }
                    if let Some(v) = s.take("queue") {
                        self.capacity(v, "bus.nats.queue", &mut c.queue);
                    }
                    if let Some(v) = s.take("policy") {
                        self.policy(v, "bus.nats.policy", &mut c.policy);
                    }
                    if let Some(v) = s.take("jetstream")
                        && let Some(mut j) = self.section(v, "bus.nats.jetstream")
                    {
                        let mut js = JetStreamConfig::default();
                        if let Some(v) = j.take("stream") {
                            self.name(v, "bus.nats.jetstream.stream", &mut js.stream);
                        }
                        if let Some(v) = j.take("max_age") {
                            self.duration(v, "bus.nats.jetstream.max_age", &mut js.max_age);
                        }
                        if let Some(v) = j.take("max_msgs") {
                            self.uint(v, "bus.nats.jetstream.max_msgs", &mut js.max_msgs);
                        }
                        if let Some(v) = j.take("duplicate_window") {
                            self.positive_duration(
                                v,
                                "bus.nats.jetstream.duplicate_window",
                                &mut js.duplicate_window,
                            );
                        }
                        j.finish(self);
                        c.jetstream = Some(js);
                    }
                    s.finish(self);
                }
                *out = BusBackend::Nats(c);
            }
            _ => self.problem(
                n.loc,
                path,
                &format!("unknown backend {b:?}; expected memory or nats"),
            ),
        }
    }

    fn policy(&mut self, n: &Node, path: &str, out: &mut BackpressurePolicy) {
        if let Some(p) = self.string(n, path) {
            match parse_policy(&p) {
                Some(p) => *out = p,
                None => self.problem(
                    n.loc,
                    path,
                    "expected block, drop_oldest, drop_newest, conflate or disconnect",
                ),
            }
        }
    }

    /// A name used in keys and subjects: letters, digits, `-` and `_`.
    fn name(&mut self, n: &Node, path: &str, out: &mut String) {
        let Some(v) = self.string(n, path) else {
            return;
        };
        if !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            *out = v;
        } else {
            self.problem(
                n.loc,
                path,
                &format!("{v:?}: use letters, digits, `-` and `_` only"),
            );
        }
    }

    fn instruments(&mut self, n: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.seq(n, path)?;
        let mut out: Vec<String> = Vec::new();
        for it in items {
            if let Some(s) = self.string(it, path) {
                if split_canonical(&s).is_none() {
                    self.problem(
                        it.loc,
                        path,
                        &format!("{s:?} is not an instrument like BTC-USDT"),
                    );
                } else if out.contains(&s) {
                    self.problem(it.loc, path, &format!("{s} is listed twice"));
                } else {
                    out.push(s);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_the_default() {
        assert_eq!(compile("").unwrap(), Config::default());
        assert_eq!(compile("# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("23h30m"), Some(Duration::from_secs(84_600)));
        assert_eq!(parse_duration("1m30"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("10"), None);
    }

    #[test]
    fn reports_every_problem_with_location() {
        let yaml = "\
instruments: [BTC-USDT]
adapter:
  binance:
    handshake_timeout: 10 parsecs
    colour: blue
telemetry:
  disabled: yes
";
        let problems = compile(yaml).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let p = &problems[0];
        assert_eq!(p.path, "adapter.binance.handshake_timeout");
        assert_eq!(
            p.loc,
            Some(Loc {
                line: 4,
                column: 24
            })
        );
        assert_eq!(problems[1].path, "adapter.binance.colour");
        assert_eq!(problems[1].loc, Some(Loc { line: 5, column: 5 }));
        assert!(problems[1].message.contains("unknown key"));
        assert_eq!(problems[2].path, "telemetry.disabled");
        assert_eq!(problems[2].loc.unwrap().line, 7);
    }

    #[test]
    fn routes_and_filters() {
        let yaml = "\
instruments: [BTC-USDT, ETH-USDT]
dispatcher:
  routes:
    - type: TRADE
      filters:
        - {field: instrument, op: in, value: [BTC-USDT, ETH-USDT]}
    - type: ORDERBOOK.SNAPSHOT
      rest_pollers: [{name: depth, endpoint: /api/v3/depth, interval: 5s}]
";
        let cfg = compile(yaml).unwrap();
        assert_eq!(cfg.dispatcher.routes.len(), 2);
        assert_eq!(cfg.dispatcher.routes[0].filters[0].op, FilterOp::In);
        assert_eq!(
            cfg.dispatcher.routes[1].rest_pollers[0].interval,
            Duration::from_secs(5)
        );
        let bad = "dispatcher:\n  routes:\n    - type: CANDLES\n    - {type: TRADE, filters: [{field: colour, op: like, value: x}]}\n";
        let problems = compile(bad).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
    }

    #[test]
    fn backends_not_compiled_in_are_named() {
        let problems = compile("bus:\n  backend: nats\n").unwrap_err();
        assert!(problems[0].message.contains("`nats` feature"));
    }
}
