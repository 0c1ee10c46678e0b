//! Shared helpers for integration tests: a simulator on loopback and a config aimed at it.
#![allow(dead_code)]

pub mod store_contract;

use std::time::{Duration, Instant};

use meltica::config::{Config, LogLevel};
use meltica::simulator::{Simulator, SimulatorConfig};

/// The `meltica` binary with `args`, without any override the config reads from the
/// caller's environment (`MELTICA_*`, `BINANCE_*`, `OTEL_*`): a test sets the ones it means.
pub fn meltica(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_meltica"));
    c.args(args);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if ["MELTICA_", "BINANCE_", "OTEL_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            c.env_remove(key);
        }
    }
    c
}

/// Simulated `<BASE>USDT` symbols, one per base asset.
pub fn usdt_symbols(bases: &[String]) -> Vec<meltica::simulator::SimSymbol> {
    bases
        .iter()
        .map(|b| {
            meltica::simulator::SimSymbol::new(
                &format!("{b}USDT"),
                b,
                "USDT",
                "100",
                "0.01",
                "0.001",
            )
        })
        .collect()
}

/// Starts a simulator on 127.0.0.1:0 with the given market steps per second.
pub fn simulator(updates_per_sec: u32) -> Simulator {
    Simulator::start(SimulatorConfig {
        updates_per_sec,
        ..SimulatorConfig::default()
    })
    .expect("start simulator")
}

/// The default config pointed at `sim`, streaming BTC-USDT and ETH-USDT.
pub fn config_for(sim: &Simulator) -> Config {
    let mut cfg = Config::default();
    cfg.adapter.binance.ws_url = sim.ws_url();
    cfg.adapter.binance.rest_url = sim.rest_url();
    cfg.adapter.binance.reconnect.initial = Duration::from_millis(100);
    cfg.adapter.binance.reconnect.max = Duration::from_millis(800);
    cfg.adapter.binance.snapshot.depth = 100;
    cfg.instruments = vec!["BTC-USDT".into(), "ETH-USDT".into()];
    cfg.log = LogLevel::Warn;
    cfg.control.addr = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
