//! Environment overrides, applied after the YAML.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Config, ConfigProblem, LogLevel};

/// Applies every override `lookup` knows of; returns the problems (empty when all applied).
pub fn apply(cfg: &mut Config, lookup: impl Fn(&str) -> Option<String>) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut bad = |var: &str, msg: String| {
        problems.push(ConfigProblem {
            loc: None,
            path: var.to_owned(),
            message: msg,
        })
    };
    let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());

    if let Some(v) = get("BINANCE_WS_PUBLIC_URL") {
        if v.starts_with("ws://") || v.starts_with("wss://") {
            cfg.adapter.binance.ws_url = v;
        } else {
            bad(
                "BINANCE_WS_PUBLIC_URL",
                format!("{v:?} is not a ws:// or wss:// URL"),
            );
        }
    }
    if let Some(v) = get("BINANCE_REST_URL") {
        if v.starts_with("http://") || v.starts_with("https://") {
            cfg.adapter.binance.rest_url = v.trim_end_matches('/').to_owned();
        } else {
            bad(
                "BINANCE_REST_URL",
                format!("{v:?} is not an http:// or https:// URL"),
            );
        }
    }
    if let Some(v) = get("MELTICA_CONTROL_ADDR") {
        match v.parse::<SocketAddr>() {
            Ok(a) => cfg.control.addr = Some(a),
            Err(_) => bad(
                "MELTICA_CONTROL_ADDR",
                format!("{v:?} is not an IP:port address"),
            ),
        }
    }
    if let Some(v) = get("MELTICA_WS_ADDR") {
        match v.parse::<SocketAddr>() {
            Ok(a) => cfg.bus.ws_addr = Some(a),
            Err(_) => bad(
                "MELTICA_WS_ADDR",
                format!("{v:?} is not an IP:port address"),
            ),
        }
    }
    if let Some(v) = get("MELTICA_CONTROL_TOKEN") {
        cfg.control.token = Some(v);
    }
    if let Some(v) = get("MELTICA_LOG") {
        match LogLevel::parse(&v) {
            Some(l) => cfg.log = l,
            None => bad(
                "MELTICA_LOG",
                format!("{v:?} is not one of error, warn, info, debug"),
            ),
        }
    }
    if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        if v.starts_with("http://") || v.starts_with("https://") {
            cfg.telemetry.endpoint = Some(v);
        } else {
            bad(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{v:?} is not an http(s) URL"),
            );
        }
    }
    if let Some(v) = get("OTEL_SERVICE_NAME") {
        cfg.telemetry.service_name = v;
    }
    if let Some(v) = get("OTEL_SDK_DISABLED") {
        match v.to_ascii_lowercase().as_str() {
            "true" => cfg.telemetry.disabled = true,
            "false" => cfg.telemetry.disabled = false,
            _ => bad("OTEL_SDK_DISABLED", format!("{v:?} is not true or false")),
        }
    }
    if let Some(v) = get("OTEL_TRACES_SAMPLER") {
        let arg = get("OTEL_TRACES_SAMPLER_ARG");
        match v.as_str() {
            "always_on" | "parentbased_always_on" => cfg.telemetry.sampling = 1.0,
            "always_off" | "parentbased_always_off" => cfg.telemetry.sampling = 0.0,
            "traceidratio" | "parentbased_traceidratio" => {
                match arg.as_deref().map(str::parse::<f64>) {
                    Some(Ok(r)) if (0.0..=1.0).contains(&r) => cfg.telemetry.sampling = r,
                    None => cfg.telemetry.sampling = 1.0,
                    _ => bad(
                        "OTEL_TRACES_SAMPLER_ARG",
                        "expected a ratio between 0 and 1".into(),
                    ),
                }
            }
            _ => bad("OTEL_TRACES_SAMPLER", format!("unsupported sampler {v:?}")),
        }
    }
    for (var, field) in [
        ("OTEL_BSP_SCHEDULE_DELAY", &mut cfg.telemetry.batch_delay),
        (
            "OTEL_METRIC_EXPORT_INTERVAL",
            &mut cfg.telemetry.metric_interval,
        ),
    ] {
        if let Some(v) = get(var) {
            match v.parse::<u64>() {
                Ok(ms) if ms > 0 => *field = Duration::from_millis(ms),
                _ => bad(
                    var,
                    format!("{v:?} is not a positive number of milliseconds"),
                ),
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn overrides_apply_after_yaml() {
        let env: HashMap<&str, &str> = [
            ("BINANCE_WS_PUBLIC_URL", "ws://127.0.0.1:9443/stream"),
            ("BINANCE_REST_URL", "http://127.0.0.1:9443/"),
            ("MELTICA_CONTROL_ADDR", "127.0.0.1:9999"),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ]
        .into();
        let mut cfg = Config::default();
        let problems = apply(&mut cfg, |k| env.get(k).map(|v| v.to_string()));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.adapter.binance.ws_url, "ws://127.0.0.1:9443/stream");
        assert_eq!(cfg.adapter.binance.rest_url, "http://127.0.0.1:9443");
        assert_eq!(cfg.control.addr.unwrap().port(), 9999);
        assert!(cfg.telemetry.disabled);
        assert_eq!(cfg.telemetry.sampling, 0.5);
    }

    #[test]
    fn bad_overrides_are_reported() {
        let mut cfg = Config::default();
        let problems = apply(&mut cfg, |k| match k {
            "MELTICA_CONTROL_ADDR" => Some("nowhere".into()),
            "BINANCE_WS_PUBLIC_URL" => Some("http://x".into()),
            _ => None,
        });
        assert_eq!(problems.len(), 2);
        assert!(problems.iter().all(|p| p.loc.is_none()));
    }
}
