//! The command line: `run`, `demo`, `simulate`, `check-config`, `tail`, `record`,
//! `replay`, `soak`. Exit codes: 0 success, 1 runtime failure (for `soak`: an invariant
//! failed), 2 configuration or usage error.

mod args;
mod replay;
mod sink;
pub mod soak;
mod status;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bus::{SubscribeOptions, SubscriptionFilter};
use crate::config::{BackpressurePolicy, Config, ConfigError, LogLevel};
use crate::engine::Engine;
use crate::simulator::{Simulator, SimulatorConfig};

pub use args::{Command, parse_args};

const USAGE: &str = "\
meltica — low-latency Binance spot market-data engine

USAGE:
  meltica run [--config PATH] [--emit ndjson] [--duration 30s]
  meltica demo [--duration 30s] [--emit ndjson]
  meltica simulate [--addr 127.0.0.1:9443]
  meltica check-config [--config PATH]
  meltica soak [--duration 1h] [--instruments N] [--seed S] [--no-faults]
{TAIL}
{REPLAY}

The config path defaults to $MELTICA_CONFIG, then ./config.yaml.";

fn usage() -> String {
    USAGE
        .replace("{TAIL}", tail::USAGE)
        .replace("{REPLAY}", replay::USAGE)
}

/// Runs the command line and returns the process exit code.
pub fn main(argv: &[String]) -> ExitCode {
    let cmd = match parse_args(argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meltica: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => check_config(config),
        Command::Run {
            config,
            emit_ndjson,
            duration,
        } => match load(config) {
            Ok(cfg) => run_engine(cfg, emit_ndjson, duration, Some(status::StatusView::new())),
            Err(code) => code,
        },
        Command::Demo {
            emit_ndjson,
            duration,
        } => demo(emit_ndjson, duration),
        Command::Simulate { addr } => simulate(addr),
        Command::Tail(args) => tail::main(&args),
        Command::Record(args) => replay::record(&args),
        Command::Replay(args) => replay::replay(&args),
        Command::Soak {
            duration,
            instruments,
            seed,
            no_faults,
        } => {
            let defaults = soak::SoakOptions::default();
            soak::main(&soak::SoakOptions {
                duration,
                instruments,
                seed: seed.unwrap_or(defaults.seed),
                faults: if no_faults {
                    crate::simulator::FaultConfig::none()
                } else {
                    defaults.faults.clone()
                },
                ..defaults
            })
        }
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let path = Config::resolve_path(path.as_deref());
    Config::load(&path).map_err(|e| {
        report_config_error(&e);
        ExitCode::from(2)
    })
}

fn report_config_error(e: &ConfigError) {
    eprintln!("meltica: {e}");
    if let ConfigError::Read { .. } = e {
        eprintln!("hint: pass --config PATH or set MELTICA_CONFIG");
    }
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    let path = Config::resolve_path(path.as_deref());
    match Config::load(&path) {
        Ok(cfg) => {
            println!("# effective configuration from {}", path.display());
            print!("{}", crate::config::render::to_yaml(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_config_error(&e);
            ExitCode::from(2)
        }
    }
}

/// SIGINT and SIGTERM set a flag; the main loop notices within 50 ms.
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            crate::warn!("cannot install handler for signal {sig}: {e}");
        }
    }
    flag
}

fn run_engine(
    cfg: Config,
    emit_ndjson: bool,
    duration: Option<Duration>,
    view: Option<status::StatusView>,
) -> ExitCode {
    run_engine_with(cfg, emit_ndjson, duration, view, None)
}

fn run_engine_with(
    cfg: Config,
    emit_ndjson: bool,
    duration: Option<Duration>,
    view: Option<status::StatusView>,
    recorder: Option<crate::adapter::record::Recorder>,
) -> ExitCode {
    crate::log::set_level(cfg.log);
    let stop = stop_flag();
    let mut builder = Engine::builder(cfg);
    if let Some(r) = recorder {
        builder = builder.record(r);
    }
    let sink = emit_ndjson.then(|| {
        let sub = builder.subscribe(
            SubscriptionFilter::all(),
            SubscribeOptions::new("ndjson-stdout", 65_536, BackpressurePolicy::Block),
        );
        sink::spawn_stdout(sub)
    });
    let engine = match builder.start() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("meltica: cannot start: {e}");
            match e {
                crate::engine::EngineError::Adapter(ref a) if is_tls_failure(&a.to_string()) => {
                    eprintln!(
                        "hint: the TLS handshake failed: use http:// and ws:// for a plain server (such as `meltica simulate`), or check the system clock, proxy and CA certificates"
                    )
                }
                crate::engine::EngineError::Adapter(_) => eprintln!(
                    "hint: check that the exchange is reachable (BINANCE_WS_PUBLIC_URL / BINANCE_REST_URL), or run `meltica demo` to use the built-in simulator"
                ),
                crate::engine::EngineError::EventsEndpoint { .. } => eprintln!(
                    "hint: another process holds that port: stop it, or pick another with MELTICA_WS_ADDR (127.0.0.1:0 takes any free port)"
                ),
                crate::engine::EngineError::ControlApi(_) => eprintln!(
                    "hint: another process holds the control port: stop it, or pick another with MELTICA_CONTROL_ADDR (127.0.0.1:0 takes any free port)"
                ),
                crate::engine::EngineError::Telemetry(_) => eprintln!(
                    "hint: fix telemetry.endpoint / OTEL_EXPORTER_OTLP_ENDPOINT, or set OTEL_SDK_DISABLED=true"
                ),
                crate::engine::EngineError::Backend(_) => eprintln!(
                    "hint: start the server named above, fix its URL in the config, or use the memory backend"
                ),
                _ => {}
            }
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = engine.events_addr() {
        eprintln!(
            "events: ws://{addr}/events  (meltica tail --url 'ws://{addr}/events?type=TRADE')"
        );
    }
    if let Some(addr) = engine.control_addr() {
        eprintln!(
            "control API: http://{addr}  (GET /control/routes, /healthz, /metrics; POST /control/subscribe)"
        );
    }
    let failure = engine.failure_signal();
    let started = Instant::now();
    let mut view = view;
    let mut next_view = Instant::now() + Duration::from_secs(1);
    loop {
        if stop.load(Ordering::Relaxed) {
            crate::info!("signal received; shutting down");
            break;
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if failure.recv_timeout(Duration::from_millis(50)).is_ok() {
            break;
        }
        if let Some(v) = view.as_mut()
            && Instant::now() >= next_view
        {
            next_view += Duration::from_secs(1);
            v.render(&engine);
        }
    }
    let result = engine.shutdown();
    if let Some(h) = sink {
        let _ = h.join();
    }
    match result {
        Ok(counts) => {
            if let Some(v) = view.as_mut() {
                v.summary(&counts);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meltica: {e}");
            ExitCode::from(1)
        }
    }
}

/// Whether an error text says a TLS handshake failed (rustls and ureq phrase it this way).
fn is_tls_failure(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "handshake",
        "corrupt message",
        "invalidcontenttype",
    ]
    .iter()
    .any(|k| e.contains(k))
}

fn demo(emit_ndjson: bool, duration: Option<Duration>) -> ExitCode {
    let sim = match Simulator::start(SimulatorConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meltica: cannot start the simulator: {e}");
            return ExitCode::from(1);
        }
    };
    let path = Config::resolve_path(None);
    let mut cfg = if path.exists() {
        match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                report_config_error(&e);
                return ExitCode::from(2);
            }
        }
    } else {
        Config::default()
    };
    cfg.adapter.binance.ws_url = sim.ws_url();
    cfg.adapter.binance.rest_url = sim.rest_url();
    cfg.instruments = sim.instruments();
    if std::env::var_os("MELTICA_LOG").is_none() {
        cfg.log = LogLevel::Warn;
    }
    // The demo must run anywhere: if the control port is taken, take any free one.
    if let Some(addr) = cfg.control.addr
        && std::net::TcpListener::bind(addr).is_err()
    {
        cfg.control.addr = Some(std::net::SocketAddr::new(addr.ip(), 0));
    }
    // Consumers in other processes can connect (`meltica tail --url …`).
    if cfg.bus.ws_addr.is_none() {
        cfg.bus.ws_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    eprintln!(
        "meltica demo: simulator on {} ({})",
        sim.addr(),
        cfg.instruments.join(", ")
    );
    let code = run_engine(cfg, emit_ndjson, duration, Some(status::StatusView::new()));
    sim.shutdown();
    code
}

fn simulate(addr: std::net::SocketAddr) -> ExitCode {
    let cfg = SimulatorConfig {
        addr,
        ..SimulatorConfig::default()
    };
    let sim = match Simulator::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meltica: cannot start the simulator on {addr}: {e}");
            if e.kind() == std::io::ErrorKind::AddrInUse {
                eprintln!("hint: the port is taken; pass --addr 127.0.0.1:0 for a free one");
            }
            return ExitCode::from(1);
        }
    };
    eprintln!("simulator listening on {}", sim.addr());
    eprintln!("  BINANCE_WS_PUBLIC_URL={}", sim.ws_url());
    eprintln!("  BINANCE_REST_URL={}", sim.rest_url());
    let stop = stop_flag();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    sim.shutdown();
    ExitCode::SUCCESS
}
