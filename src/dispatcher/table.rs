//! The dispatch table: canonical type → route. The single source of truth for what is
//! ingested and what is forwarded; every change bumps `dispatch_version`.

use crate::adapter::InstrumentRegistry;
use crate::adapter::binance::topics::{needs_book, topics_for};
use crate::config::{FilterConfig, FilterOp, RouteConfig, TradeStream};
use crate::schema::{EventType, Instrument, MARKET_BINANCE_SPOT};

/// A route with its instruments resolved to ids.
#[derive(Debug, Clone)]
pub struct Route {
    pub event_type: EventType,
    /// Indexed by instrument id.
    pub covers: Vec<bool>,
    pub ws_topics: Vec<String>,
    pub filters: Vec<FilterConfig>,
    pub pollers: Vec<(Instrument, std::time::Duration)>,
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

/// The dispatch table.
#[derive(Debug, Clone)]
pub struct DispatchTable {
    routes: [Option<Route>; EventType::COUNT],
    pub version: u64,
}

impl DispatchTable {
    pub fn from_config(
        routes: &[RouteConfig],
        registry: &InstrumentRegistry,
        trade: TradeStream,
    ) -> DispatchTable {
        let mut table = DispatchTable {
            routes: Default::default(),
            version: 1,
        };
        for r in routes {
            let covers: Vec<bool> = registry
                .all()
                .iter()
                .map(|i| r.instruments.is_empty() || r.instruments.iter().any(|n| n == i.name()))
                .collect();
            let mut ws_topics: Vec<String> = Vec::new();
            for i in registry.all().iter().filter(|i| covers[i.id() as usize]) {
                ws_topics.extend(topics_for(r.event_type, i, trade));
            }
            ws_topics.extend(r.ws_topics.iter().cloned());
            let mut pollers = Vec::new();
            for p in &r.rest_pollers {
                for i in registry.all().iter().filter(|i| covers[i.id() as usize]) {
                    pollers.push((i.clone(), p.interval));
                }
            }
            table.routes[r.event_type.index()] = Some(Route {
                event_type: r.event_type,
                covers,
                ws_topics,
                filters: r.filters.clone(),
                pollers,
            });
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
            .is_some_and(|r| r.covers.get(id as usize).copied().unwrap_or(false))
    }

    /// Whether the instrument needs a local book (any book type routed for it).
    pub fn needs_book(&self, id: u32) -> bool {
        EventType::ALL
            .iter()
            .any(|t| needs_book(*t) && self.covers(*t, id))
    }

    /// Whether fused books are published for the instrument.
    pub fn fuses(&self, id: u32) -> bool {
        self.covers(EventType::AnalyticsFused, id)
    }

    /// Every native topic the table needs, deduplicated and sorted.
    pub fn all_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .routes()
            .flat_map(|r| r.ws_topics.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every REST poller the table needs.
    pub fn all_pollers(&self) -> Vec<(Instrument, std::time::Duration)> {
        self.routes()
            .flat_map(|r| r.pollers.iter().cloned())
            .collect()
    }
}
