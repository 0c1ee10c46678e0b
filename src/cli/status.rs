//! The one-second status view of `demo` on stderr: per instrument best bid and ask,
//! events per second, and book status.

use std::io::Write;
use std::time::Instant;

use crate::engine::{Engine, EngineCounts};
use crate::schema::EventType;

pub struct StatusView {
    last: Vec<u64>,
    at: Instant,
}

impl Default for StatusView {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusView {
    pub fn new() -> Self {
        StatusView {
            last: Vec::new(),
            at: Instant::now(),
        }
    }

    pub fn render(&mut self, engine: &Engine) {
        let stats = engine.conductor_stats();
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        self.at = Instant::now();
        let counts = engine.counts();
        let mut out = String::new();
        out.push_str(&format!(
            "── meltica  up {:>4}s  connections {}  reconnects {}  resyncs {}  dispatch v{} ──\n",
            engine.uptime().as_secs(),
            counts.adapter.connections,
            counts.adapter.reconnects,
            counts.resyncs,
            engine.dispatch_version(),
        ));
        out.push_str(&format!(
            "{:<12} {:>14} {:>14} {:>10} {:>9}\n",
            "instrument", "best bid", "best ask", "events/s", "book"
        ));
        self.last.resize(engine.instruments().len(), 0);
        for inst in engine.instruments() {
            let id = inst.id() as usize;
            let total: u64 = stats.published[id]
                .iter()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                .sum();
            let rate = (total - self.last[id]) as f64 / secs;
            self.last[id] = total;
            let (bid, ask) = engine
                .latest_book(inst.name())
                .map(|r| {
                    let b = r.book.bids.first().map_or("-".into(), |l| l.0.to_string());
                    let a = r.book.asks.first().map_or("-".into(), |l| l.0.to_string());
                    (b, a)
                })
                .unwrap_or(("-".into(), "-".into()));
            out.push_str(&format!(
                "{:<12} {:>14} {:>14} {:>10.0} {:>9}\n",
                inst.name(),
                bid,
                ask,
                rate,
                engine.book_status(&inst).as_str()
            ));
        }
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }

    pub fn summary(&self, c: &EngineCounts) {
        let mut out = String::from("── summary ──\n");
        for t in EventType::ALL {
            let i = t.index();
            if c.ingested[i] + c.published[i] == 0 {
                continue;
            }
            out.push_str(&format!(
                "{:<20} ingested {:>9}  published {:>9}  filtered {:>7}  dropped {:>5}  rejected {:>5}\n",
                t.as_str(),
                c.ingested[i],
                c.published[i],
                c.filtered[i],
                c.dropped[i],
                c.rejected[i]
            ));
        }
        out.push_str(&format!(
            "frames {}  malformed {}  unknown {}  reconnects {}  snapshots {}  resyncs {}\n",
            c.adapter.frames,
            c.adapter.malformed,
            c.adapter.unknown_type + c.adapter.unknown_symbol,
            c.adapter.reconnects,
            c.adapter.snapshots,
            c.resyncs
        ));
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
}
