//! `meltica record` and `meltica replay`: keep every raw input of a run, and feed it again
//! through the real parser and the whole pipeline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::adapter::record::{Recording, RecordingWriter};
use crate::bus::{SubscribeOptions, SubscriptionFilter};
use crate::config::validate::parse_duration;
use crate::config::{BackpressurePolicy, BusBackend, Config, StoreBackend};
use crate::engine::Engine;

// No line continuation here: it would eat the indentation of the first line.
pub const USAGE: &str = "  meltica record --out FILE [--config PATH] [--duration 30s]
  meltica replay FILE [--speed 1x|2x|max] [--emit ndjson]";

fn flag_value<'a>(
    it: &mut impl Iterator<Item = &'a String>,
    inline: Option<&str>,
    flag: &str,
) -> Result<String, String> {
    inline
        .map(str::to_owned)
        .or_else(|| it.next().cloned())
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn split(a: &str) -> (&str, Option<&str>) {
    match a.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v)),
        _ => (a, None),
    }
}

fn usage_error(e: String) -> ExitCode {
    eprintln!("meltica: {e}\n\nUSAGE:\n{USAGE}");
    ExitCode::from(2)
}

/// `meltica record`: runs the engine as `run` does and writes every frame and REST body it
/// receives to FILE.
pub fn record(args: &[String]) -> ExitCode {
    let (mut out, mut config, mut duration) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = split(a);
        let v = match flag_value(&mut it, inline, flag) {
            Ok(v) => v,
            Err(e) => return usage_error(e),
        };
        match flag {
            "--out" => out = Some(PathBuf::from(v)),
            "--config" => config = Some(PathBuf::from(v)),
            "--duration" => match parse_duration(&v).filter(|d| !d.is_zero()) {
                Some(d) => duration = Some(d),
                None => return usage_error(format!("invalid --duration {v:?}; use e.g. 30s")),
            },
            _ => return usage_error(format!("unknown argument {a:?} for \"record\"")),
        }
    }
    let Some(out) = out else {
        return usage_error("record needs --out FILE".into());
    };
    let cfg = match super::load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let writer = match RecordingWriter::create(&out, &crate::config::render::to_yaml(&cfg)) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("meltica: cannot record: {e}");
            eprintln!("hint: check that the directory exists and is writable");
            return ExitCode::from(1);
        }
    };
    let code = super::run_engine_with(cfg, false, duration, None, Some(writer.recorder()));
    match writer.finish() {
        Ok(n) => {
            eprintln!("recorded {n} inputs to {}", out.display());
            code
        }
        Err(e) => {
            eprintln!("meltica: recording incomplete: {e}");
            ExitCode::from(1)
        }
    }
}

/// `meltica replay`: feeds a recording through the pipeline, at its own pace or as fast as
/// possible. At `max` speed two replays of one recording print identical NDJSON.
pub fn replay(args: &[String]) -> ExitCode {
    let (mut file, mut speed, mut emit) = (None, Some(1.0f64), false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = split(a);
        match flag {
            "--speed" => {
                let v = match flag_value(&mut it, inline, flag) {
                    Ok(v) => v,
                    Err(e) => return usage_error(e),
                };
                speed = match v.as_str() {
                    "max" => None,
                    s => match s.strip_suffix('x').and_then(|n| n.parse::<f64>().ok()) {
                        Some(x) if x > 0.0 && x.is_finite() => Some(x),
                        _ => return usage_error(format!("--speed {v:?}: use 1x, 10x or max")),
                    },
                };
            }
            "--emit" => match flag_value(&mut it, inline, flag) {
                Ok(v) if v == "ndjson" => emit = true,
                Ok(v) => return usage_error(format!("--emit supports only ndjson, not {v:?}")),
                Err(e) => return usage_error(e),
            },
            f if !f.starts_with('-') && file.is_none() => file = Some(PathBuf::from(f)),
            _ => return usage_error(format!("unknown argument {a:?} for \"replay\"")),
        }
    }
    let Some(file) = file else {
        return usage_error("replay needs a FILE".into());
    };
    let recording = match Recording::open(&file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meltica: cannot replay: {e}");
            return ExitCode::from(1);
        }
    };
    let mut cfg = match Config::from_yaml_str(&recording.config, &file.display().to_string()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meltica: the recording's configuration is invalid: {e}");
            return ExitCode::from(1);
        }
    };
    // A replay stays on this machine, and publishes every book change: throttling is a
    // decision made on the replaying machine's clock, which would make output differ.
    cfg.control.addr = None;
    cfg.telemetry.endpoint = None;
    cfg.snapshot_store.backend = StoreBackend::Memory;
    cfg.bus.backend = BusBackend::Memory;
    cfg.conductor.throttle = Duration::ZERO;
    cfg.conductor.staleness = Duration::from_secs(365 * 86_400);
    crate::log::set_level(cfg.log);
    let mut builder = Engine::builder(cfg).deterministic();
    let source = builder.frame_source();
    let sink = emit.then(|| {
        super::sink::spawn_stdout(builder.subscribe(
            SubscriptionFilter::all(),
            SubscribeOptions::new("ndjson-stdout", 65_536, BackpressurePolicy::Block),
        ))
    });
    let engine = match builder.start() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("meltica: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = super::stop_flag();
    let started = Instant::now();
    let mut first: Option<u64> = None;
    let (mut inputs, mut refused) = (0u64, 0u64);
    let mut failed = None;
    for input in recording {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let input = match input {
            Ok(i) => i,
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        };
        if let Some(x) = speed {
            let at = *first.get_or_insert(input.t);
            let due = Duration::from_nanos(((input.t.saturating_sub(at)) as f64 / x) as u64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        inputs += 1;
        let pushed = match &input.depth {
            Some(instrument) => source.push_depth_snapshot_received(instrument, &input.d, input.t),
            None => source.push_frame_received(&input.d, input.t),
        };
        // Malformed or unknown frames are counted by the engine, as they were live.
        if pushed.is_err() {
            refused += 1;
        }
    }
    drop(source);
    let result = engine.shutdown();
    if let Some(h) = sink {
        let _ = h.join();
    }
    eprintln!(
        "replayed {inputs} inputs ({refused} not ingested) from {} in {:.1?}",
        file.display(),
        started.elapsed()
    );
    if let Some(e) = failed {
        eprintln!("meltica: the recording ends early: {e}");
        return ExitCode::from(1);
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meltica: {e}");
            ExitCode::from(1)
        }
    }
}
