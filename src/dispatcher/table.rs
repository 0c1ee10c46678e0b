//! The dispatch table: canonical type → route. The single source of truth for what is
//! ingested and what is forwarded. Coverage is reference-counted per (type, instrument) by
//! consumer; every change bumps `version`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use crate::adapter::InstrumentRegistry;
use crate::adapter::binance::topics::{needs_book, topics_for};
use crate::config::{FilterConfig, FilterOp, RouteConfig, TradeStream};
use crate::schema::event::write_json_string;
use crate::schema::{EventType, Instrument, MARKET_BINANCE_SPOT};

/// Consumer name that holds the routes from the config file.
pub const CONFIG_CONSUMER: &str = "config";

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    pub event_type: EventType,
    /// Instrument id → the consumers holding it.
    pub holders: BTreeMap<u32, BTreeSet<String>>,
    /// Derived from `holders`, indexed by instrument id: the hot-path lookup.
    covers: Vec<bool>,
    /// Extra native topics from the config.
    pub extra_topics: Vec<String>,
    /// REST poll intervals applied to every covered instrument.
    pub poll_intervals: Vec<Duration>,
    pub filters: Vec<FilterConfig>,
}

impl Route {
    fn new(event_type: EventType) -> Self {
        Route {
            event_type,
            holders: BTreeMap::new(),
            covers: Vec::new(),
            extra_topics: Vec::new(),
            poll_intervals: Vec::new(),
            filters: Vec::new(),
        }
    }

    fn recompute(&mut self) {
        let n = self
            .holders
            .keys()
            .next_back()
            .map_or(0, |m| *m as usize + 1);
        self.covers = vec![false; n];
        for id in self.holders.keys() {
            self.covers[*id as usize] = true;
        }
    }

    #[inline]
    pub fn covers(&self, id: u32) -> bool {
        self.covers.get(id as usize).copied().unwrap_or(false)
    }
}

/// Field values a filter can look at, borrowed from the event being routed.
#[derive(Debug, Clone, Copy)]
pub struct FieldView<'a> {
    pub instrument: &'a str,
    pub side: Option<&'a str>,
}

impl FilterConfig {
    /// Whether an event with these fields passes.
    pub fn matches(&self, f: &FieldView<'_>) -> bool {
        let actual = match self.field.as_str() {
            "instrument" => Some(f.instrument),
            "market" => Some(MARKET_BINANCE_SPOT),
            "side" => f.side,
            _ => None,
        };
        match (self.op, actual) {
            (FilterOp::Eq, Some(a)) => self.value[0] == a,
            (FilterOp::Neq, Some(a)) => self.value[0] != a,
            (FilterOp::Neq, None) => true,
            (FilterOp::In, Some(a)) => self.value.iter().any(|v| v == a),
            (FilterOp::Prefix, Some(a)) => a.starts_with(self.value[0].as_str()),
            (_, None) => false,
        }
    }
}

/// What a table change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The table changed.
    Changed,
    /// Nothing to do: the consumer already held it, or did not hold it.
    Unchanged,
}

/// The dispatch table.
#[derive(Debug, Clone)]
pub struct DispatchTable {
    routes: [Option<Route>; EventType::COUNT],
    /// Instruments known when the table was last changed, by id.
    instruments: Vec<Instrument>,
    trade: TradeStream,
    pub version: u64,
}

impl DispatchTable {
    /// The table the config describes, held by the `config` consumer.
    pub fn from_config(
        routes: &[RouteConfig],
        registry: &InstrumentRegistry,
        trade: TradeStream,
    ) -> Self {
        let mut table = DispatchTable {
            routes: Default::default(),
            instruments: registry.all().to_vec(),
            trade,
            version: 1,
        };
        for r in routes {
            let mut route = Route::new(r.event_type);
            for i in registry.all() {
                if r.instruments.is_empty() || r.instruments.iter().any(|n| n == i.name()) {
                    route
                        .holders
                        .entry(i.id())
                        .or_default()
                        .insert(CONFIG_CONSUMER.to_owned());
                }
            }
            route.extra_topics = r.ws_topics.clone();
            route.poll_intervals = r.rest_pollers.iter().map(|p| p.interval).collect();
            route.filters = r.filters.clone();
            route.recompute();
            table.routes[r.event_type.index()] = Some(route);
        }
        table
    }

    pub fn route(&self, t: EventType) -> Option<&Route> {
        self.routes[t.index()].as_ref()
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().flatten()
    }

    /// Whether `t` is routed for the instrument with id `id`.
    #[inline]
    pub fn covers(&self, t: EventType, id: u32) -> bool {
        self.routes[t.index()]
            .as_ref()
            .is_some_and(|r| r.covers(id))
    }

    /// Whether the instrument needs a local book (any book type routed for it).
    pub fn needs_book(&self, id: u32) -> bool {
        EventType::ALL
            .iter()
            .any(|t| needs_book(*t) && self.covers(*t, id))
    }

    /// Whether fused books are published for the instrument.
    #[inline]
    pub fn fuses(&self, id: u32) -> bool {
        self.covers(EventType::AnalyticsFused, id)
    }

    fn learn(&mut self, inst: &Instrument) {
        let id = inst.id() as usize;
        if self.instruments.len() <= id {
            self.instruments.resize(id + 1, inst.clone());
        }
        self.instruments[id] = inst.clone();
    }

    /// `consumer` takes a reference on (`t`, `inst`).
    pub fn subscribe(&mut self, t: EventType, inst: &Instrument, consumer: &str) -> Change {
        self.learn(inst);
        let route = self.routes[t.index()].get_or_insert_with(|| Route::new(t));
        let fresh = route
            .holders
            .entry(inst.id())
            .or_default()
            .insert(consumer.to_owned());
        if !fresh {
            return Change::Unchanged;
        }
        route.recompute();
        self.version += 1;
        Change::Changed
    }

    /// `consumer` drops its reference on (`t`, `inst`); coverage ends with the last one.
    pub fn unsubscribe(&mut self, t: EventType, inst: &Instrument, consumer: &str) -> Change {
        let Some(route) = self.routes[t.index()].as_mut() else {
            return Change::Unchanged;
        };
        let Some(set) = route.holders.get_mut(&inst.id()) else {
            return Change::Unchanged;
        };
        if !set.remove(consumer) {
            return Change::Unchanged;
        }
        if set.is_empty() {
            route.holders.remove(&inst.id());
        }
        route.recompute();
        self.version += 1;
        Change::Changed
    }

    /// Replaces a route's filters (the route is created if it does not exist).
    pub fn set_filters(&mut self, t: EventType, filters: Vec<FilterConfig>) -> Change {
        let route = self.routes[t.index()].get_or_insert_with(|| Route::new(t));
        if route.filters == filters {
            return Change::Unchanged;
        }
        route.filters = filters;
        self.version += 1;
        Change::Changed
    }

    /// Every native topic the table needs, deduplicated and sorted.
    pub fn topics(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for r in self.routes() {
            for id in r.holders.keys() {
                if let Some(i) = self.instruments.get(*id as usize) {
                    out.extend(topics_for(r.event_type, i, self.trade));
                }
            }
            out.extend(r.extra_topics.iter().cloned());
        }
        out
    }

    /// Every REST poller the table needs: (instrument, interval), deduplicated.
    pub fn pollers(&self) -> Vec<(Instrument, Duration)> {
        let mut set: BTreeSet<(u32, Duration)> = BTreeSet::new();
        for r in self.routes() {
            for every in &r.poll_intervals {
                for id in r.holders.keys() {
                    set.insert((*id, *every));
                }
            }
        }
        set.into_iter()
            .filter_map(|(id, every)| {
                self.instruments
                    .get(id as usize)
                    .map(|i| (i.clone(), every))
            })
            .collect()
    }

    /// The table as JSON for `GET /control/routes`; deterministic for a given table.
    pub fn to_json(&self) -> String {
        let mut o = format!("{{\"dispatchVersion\":{},\"routes\":[", self.version);
        for (n, r) in self.routes().enumerate() {
            if n > 0 {
                o.push(',');
            }
            let _ = write!(o, "{{\"type\":\"{}\",\"instruments\":{{", r.event_type);
            for (k, (id, consumers)) in r.holders.iter().enumerate() {
                if k > 0 {
                    o.push(',');
                }
                let name = self.instruments.get(*id as usize).map_or("", |i| i.name());
                let _ = write!(o, "{}:[", json_str(name));
                let list: Vec<String> = consumers.iter().map(|c| json_str(c)).collect();
                o.push_str(&list.join(","));
                o.push(']');
            }
            o.push_str("},\"wsTopics\":[");
            let mut topics: BTreeSet<String> = BTreeSet::new();
            for id in r.holders.keys() {
                if let Some(i) = self.instruments.get(*id as usize) {
                    topics.extend(topics_for(r.event_type, i, self.trade));
                }
            }
            topics.extend(r.extra_topics.iter().cloned());
            let list: Vec<String> = topics.iter().map(|t| json_str(t)).collect();
            o.push_str(&list.join(","));
            o.push_str("],\"restPollers\":[");
            let list: Vec<String> = r
                .poll_intervals
                .iter()
                .map(|d| {
                    format!(
                        "{{\"endpoint\":\"/api/v3/depth\",\"intervalMs\":{}}}",
                        d.as_millis()
                    )
                })
                .collect();
            o.push_str(&list.join(","));
            o.push_str("],\"filters\":[");
            let list: Vec<String> = r
                .filters
                .iter()
                .map(|f| {
                    let op = match f.op {
                        FilterOp::Eq => "eq",
                        FilterOp::Neq => "neq",
                        FilterOp::In => "in",
                        FilterOp::Prefix => "prefix",
                    };
                    let vals: Vec<String> = f.value.iter().map(|v| json_str(v)).collect();
                    format!(
                        "{{\"field\":{},\"op\":\"{op}\",\"value\":[{}]}}",
                        json_str(&f.field),
                        vals.join(",")
                    )
                })
                .collect();
            o.push_str(&list.join(","));
            o.push_str("]}");
        }
        o.push_str("]}");
        o
    }
}

fn json_str(s: &str) -> String {
    let mut v = Vec::with_capacity(s.len() + 2);
    write_json_string(s, &mut v);
    String::from_utf8(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::InstrumentInfo;

    fn registry() -> InstrumentRegistry {
        let mut r = InstrumentRegistry::default();
        for n in ["BTC-USDT", "ETH-USDT", "SOL-USDT"] {
            r.insert(InstrumentInfo::named(n).unwrap());
        }
        r
    }

    #[test]
    fn reference_counted_per_consumer() {
        let reg = registry();
        let routes = vec![RouteConfig {
            instruments: vec!["BTC-USDT".into()],
            ..RouteConfig::for_type(EventType::Ticker)
        }];
        let mut t = DispatchTable::from_config(&routes, &reg, TradeStream::Trade);
        let eth = reg.by_name("ETH-USDT").unwrap().clone();
        assert!(!t.covers(EventType::Ticker, eth.id()));
        assert_eq!(t.subscribe(EventType::Ticker, &eth, "a"), Change::Changed);
        assert_eq!(t.subscribe(EventType::Ticker, &eth, "a"), Change::Unchanged);
        assert_eq!(t.subscribe(EventType::Ticker, &eth, "b"), Change::Changed);
        assert!(t.topics().contains("ethusdt@ticker"));
        assert_eq!(t.unsubscribe(EventType::Ticker, &eth, "a"), Change::Changed);
        assert!(t.topics().contains("ethusdt@ticker"), "b still holds it");
        assert_eq!(t.unsubscribe(EventType::Ticker, &eth, "b"), Change::Changed);
        assert!(!t.topics().contains("ethusdt@ticker"));
        assert_eq!(
            t.unsubscribe(EventType::Ticker, &eth, "b"),
            Change::Unchanged
        );
        assert_eq!(t.version, 5);
    }

    #[test]
    fn fused_and_delta_share_the_depth_stream() {
        let reg = registry();
        let mut t = DispatchTable::from_config(&[], &reg, TradeStream::AggTrade);
        let btc = reg.by_name("BTC-USDT").unwrap().clone();
        t.subscribe(EventType::AnalyticsFused, &btc, "x");
        t.subscribe(EventType::OrderbookDelta, &btc, "y");
        t.subscribe(EventType::Trade, &btc, "y");
        assert_eq!(
            t.topics().into_iter().collect::<Vec<_>>(),
            ["btcusdt@aggTrade", "btcusdt@depth@100ms"]
        );
        t.unsubscribe(EventType::AnalyticsFused, &btc, "x");
        assert!(t.topics().contains("btcusdt@depth@100ms"));
        assert!(t.needs_book(btc.id()));
        assert!(!t.fuses(btc.id()));
    }

    #[test]
    fn routes_json_is_valid() {
        let reg = registry();
        let t =
            DispatchTable::from_config(&crate::config::default_routes(), &reg, TradeStream::Trade);
        let v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        assert_eq!(v["dispatchVersion"], 1);
        assert_eq!(v["routes"].as_array().unwrap().len(), 5);
    }
}
