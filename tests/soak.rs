//! The soak: the engine against the simulator with every fault on, checked against the
//! simulator's truth while it runs (the same code as `meltica soak`).
//!
//! Length: `MELTICA_SOAK_SECS` seconds when set; otherwise 20 s, so a plain `cargo test`
//! stays reasonably quick. CI runs it on its own for a minute in release mode:
//!
//! ```text
//! MELTICA_SOAK_SECS=60 cargo test --release --test soak -- --nocapture
//! ```
//!
//! and `meltica soak --duration 1h` is the long version of the same run.

use std::time::Duration;

use meltica::cli::soak::{SoakOptions, run};
use meltica::engine::EngineCounts;

/// Seconds when `MELTICA_SOAK_SECS` is not set.
const DEFAULT_SECS: u64 = 20;

fn duration() -> Duration {
    let secs = match std::env::var("MELTICA_SOAK_SECS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("MELTICA_SOAK_SECS={v:?} is not a number of seconds")),
        Err(_) => DEFAULT_SECS,
    };
    Duration::from_secs(secs)
}

#[test]
fn every_invariant_holds_under_every_fault() {
    let report = run(&SoakOptions {
        duration: duration(),
        ..SoakOptions::default()
    })
    .expect("simulator and engine start");
    println!("{report}");

    // Each invariant on its own, so a failure names it.
    assert!(
        report.engine_failure.is_none(),
        "{:?}",
        report.engine_failure
    );
    assert_eq!(
        report.book_mismatches, 0,
        "first: {:?}",
        report.first_mismatch
    );
    assert_eq!(report.books_unverifiable, 0);
    assert!(report.drained, "the engine did not drain");
    for t in EngineCounts::INGESTED_TYPES {
        assert_eq!(report.counts.unaccounted(t), 0, "{t}: {:?}", report.counts);
    }
    assert_eq!(report.limit_429, 0, "REST weight limit exceeded");
    assert_eq!(
        report.live_after_snapshot.over_limit, 0,
        "{:?}",
        report.live_after_snapshot
    );
    for (name, n) in report.instruments.iter().zip(&report.live_books) {
        assert!(*n > 0, "{name} never went live");
    }
    let growth = report.rss_growth_pct().expect("VmRSS readable");
    assert!(growth < 10.0, "RSS grew {growth:.1} %");
    // And the report agrees.
    assert!(report.passed(), "{:?}", report.violations());
}
