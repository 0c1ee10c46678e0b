//! The shipped config.yaml is valid, and `meltica check-config` reports every problem of a
//! broken file with line and column, exiting 2.

use std::process::Command;

use meltica::config::{BusBackend, Config, StoreBackend};
use meltica::schema::EventType;

#[test]
fn shipped_config_is_valid_and_streams_live_binance() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml")).unwrap();
    let cfg = Config::from_yaml_str(&text, "config.yaml").expect("config.yaml is valid");
    assert_eq!(cfg.instruments, ["BTC-USDT", "ETH-USDT"]);
    assert_eq!(
        cfg.adapter.binance.ws_url,
        "wss://stream.binance.com:9443/stream"
    );
    assert_eq!(cfg.adapter.binance.rest_url, "https://api.binance.com");
    assert_eq!(cfg.bus.backend, BusBackend::Memory);
    assert_eq!(cfg.snapshot_store.backend, StoreBackend::Memory);
    assert!(cfg.telemetry.endpoint.is_none());
    let types: Vec<EventType> = cfg.dispatcher.routes.iter().map(|r| r.event_type).collect();
    assert!(types.contains(&EventType::AnalyticsFused));
    assert!(types.contains(&EventType::Trade));
}

fn meltica(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meltica"));
    c.args(args).env_remove("MELTICA_CONFIG");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run meltica")
}

#[test]
fn check_config_reports_three_mistakes_with_locations() {
    let dir = std::env::temp_dir().join(format!("meltica-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.yaml");
    std::fs::write(
        &path,
        "instruments: [BTC-USDT]\n\
         adapter:\n  binance:\n    handshake_timeout: 10 parsecs\n    colour: blue\n\
         telemetry:\n  disabled: yes\n",
    )
    .unwrap();
    let out = meltica(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        err.contains("line 4, column 24: adapter.binance.handshake_timeout: invalid duration"),
        "{err}"
    );
    assert!(
        err.contains("line 5, column 5: adapter.binance.colour: unknown key"),
        "{err}"
    );
    assert!(
        err.contains("line 7, column 13: telemetry.disabled: expected true or false"),
        "{err}"
    );
}

#[test]
fn check_config_prints_the_effective_config_with_env_overrides() {
    let out = meltica(
        &[
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ],
        &[("BINANCE_REST_URL", "http://127.0.0.1:1")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rest_url: \"http://127.0.0.1:1\""), "{text}");
    let printed = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    Config::from_yaml_str(&printed, "printed").expect("printed config parses back");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = meltica(
        &["check-config", "--config", "/nonexistent/meltica.yaml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn a_non_loopback_control_api_needs_a_token() {
    let err = Config::from_yaml_str("control:\n  addr: 0.0.0.0:7070\n", "t").unwrap_err();
    assert!(err.to_string().contains("needs a token"), "{err}");
    Config::from_yaml_str("control:\n  addr: 0.0.0.0:7070\n  token: abc\n", "t").unwrap();
    let mut cfg = Config::default();
    let err = cfg
        .apply_env(|k| (k == "MELTICA_CONTROL_ADDR").then(|| "0.0.0.0:9000".to_string()))
        .unwrap_err();
    assert!(err.to_string().contains("needs a token"), "{err}");
}
