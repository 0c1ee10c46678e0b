//! Argument parsing for the four commands.

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
    Help,
}

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
            ("run" | "demo", "--duration") => {
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
    }
}
