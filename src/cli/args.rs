//! Argument parsing for the commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::validate::parse_duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run {
        config: Option<PathBuf>,
        emit_ndjson: bool,
        duration: Option<Duration>,
    },
    Demo {
        emit_ndjson: bool,
        duration: Option<Duration>,
    },
    Simulate {
        addr: SocketAddr,
    },
    CheckConfig {
        config: Option<PathBuf>,
    },
    /// `tail`, `record` and `replay` parse their own arguments.
    Tail(Vec<String>),
    Record(Vec<String>),
    Replay(Vec<String>),
    Soak {
        duration: Duration,
        instruments: usize,
        /// `None`: the simulator's default seed.
        seed: Option<u64>,
        no_faults: bool,
    },
    Help,
}

/// Default length of `meltica soak`.
pub const SOAK_DURATION: Duration = Duration::from_secs(3600);
/// Most instruments `meltica soak` simulates.
pub const SOAK_MAX_INSTRUMENTS: usize = 1000;

/// Parses `argv` (without the program name).
pub fn parse_args(argv: &[String]) -> Result<Command, String> {
    let Some((cmd, rest)) = argv.split_first() else {
        return Ok(Command::Help);
    };
    match cmd.as_str() {
        "tail" => return Ok(Command::Tail(rest.to_vec())),
        "record" => return Ok(Command::Record(rest.to_vec())),
        "replay" => return Ok(Command::Replay(rest.to_vec())),
        _ => {}
    }
    let mut config = None;
    let mut emit = false;
    let mut duration = None;
    let mut addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9443));
    let mut instruments = 3;
    let mut seed = None;
    let mut no_faults = false;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match (cmd.as_str(), flag) {
            (_, "-h" | "--help") => return Ok(Command::Help),
            ("run" | "check-config", "--config") => {
                config = Some(PathBuf::from(value("--config")?))
            }
            ("run" | "demo", "--emit") => {
                let v = value("--emit")?;
                if v != "ndjson" {
                    return Err(format!("--emit supports only ndjson, not {v:?}"));
                }
                emit = true;
            }
            ("run" | "demo" | "soak", "--duration") => {
                let v = value("--duration")?;
                duration = Some(
                    parse_duration(&v)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| format!("invalid --duration {v:?}; use e.g. 30s, 5m"))?,
                );
            }
            ("simulate", "--addr") => {
                let v = value("--addr")?;
                addr = v
                    .parse()
                    .map_err(|_| format!("invalid --addr {v:?}; use IP:port"))?;
            }
            ("soak", "--instruments") => {
                let v = value("--instruments")?;
                instruments = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=SOAK_MAX_INSTRUMENTS).contains(n))
                    .ok_or_else(|| {
                        format!("invalid --instruments {v:?}; use 1..={SOAK_MAX_INSTRUMENTS}")
                    })?;
            }
            ("soak", "--seed") => {
                let v = value("--seed")?;
                seed = Some(
                    v.parse()
                        .map_err(|_| format!("invalid --seed {v:?}; use an unsigned integer"))?,
                );
            }
            ("soak", "--no-faults") if inline.is_none() => no_faults = true,
            _ => return Err(format!("unknown argument {a:?} for {cmd:?}")),
        }
    }
    Ok(match cmd.as_str() {
        "run" => Command::Run {
            config,
            emit_ndjson: emit,
            duration,
        },
        "demo" => Command::Demo {
            emit_ndjson: emit,
            duration,
        },
        "simulate" => Command::Simulate { addr },
        "check-config" => Command::CheckConfig { config },
        "soak" => Command::Soak {
            duration: duration.unwrap_or(SOAK_DURATION),
            instruments,
            seed,
            no_faults,
        },
        "help" | "-h" | "--help" => Command::Help,
        other => return Err(format!("unknown command {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, String> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn commands() {
        assert_eq!(
            p("run --config x.yaml --emit ndjson --duration 30s").unwrap(),
            Command::Run {
                config: Some("x.yaml".into()),
                emit_ndjson: true,
                duration: Some(Duration::from_secs(30)),
            }
        );
        assert_eq!(
            p("demo --duration=10s").unwrap(),
            Command::Demo {
                emit_ndjson: false,
                duration: Some(Duration::from_secs(10))
            }
        );
        assert_eq!(
            p("simulate --addr 127.0.0.1:0").unwrap(),
            Command::Simulate {
                addr: "127.0.0.1:0".parse().unwrap()
            }
        );
        assert!(p("run --emit csv").is_err());
        assert!(p("run --duration soon").is_err());
        assert!(p("simulate --config x").is_err());
        assert!(p("fly").is_err());
        assert_eq!(
            p("soak").unwrap(),
            Command::Soak {
                duration: SOAK_DURATION,
                instruments: 3,
                seed: None,
                no_faults: false
            }
        );
        assert_eq!(
            p("soak --duration 90s --instruments 8 --seed 42 --no-faults").unwrap(),
            Command::Soak {
                duration: Duration::from_secs(90),
                instruments: 8,
                seed: Some(42),
                no_faults: true
            }
        );
        assert!(p("soak --instruments 0").is_err());
        assert!(p("soak --seed -1").is_err());
        assert!(p("soak --no-faults=yes").is_err());
        assert!(p("soak --emit ndjson").is_err());
        assert!(p("demo --no-faults").is_err());
    }
}
