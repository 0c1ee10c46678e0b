//! The engine over real sockets with telemetry on: an OTLP/HTTP receiver on loopback gets
//! the four stage spans of every sampled event, linked parent to child with one trace id
//! per event (the event's `traceId`), control-command spans, and the engine's metrics.

mod support;
mod telemetry_support;

use std::collections::HashMap;
use std::time::Duration;

use meltica::bus::{ControlBus, SubscribeOptions, SubscriptionFilter};
use meltica::engine::Engine;
use meltica::schema::EventType;
use meltica::schema::control::{AckStatus, ControlCommand};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use telemetry_support::OtlpReceiver;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn spans_and_metrics_reach_an_otlp_collector() {
    let receiver = OtlpReceiver::start();
    let sim = support::simulator(50);
    let mut cfg = support::config_for(&sim);
    cfg.telemetry.endpoint = Some(receiver.base_url.clone());
    cfg.telemetry.service_name = "meltica-test".into();
    cfg.telemetry.sampling = 1.0;
    cfg.telemetry.batch_delay = Duration::from_millis(100);
    cfg.telemetry.metric_interval = Duration::from_millis(200);
    let builder = Engine::builder(cfg);
    let sub = builder.subscribe(
        SubscriptionFilter::types(&[EventType::Trade]),
        SubscribeOptions::default(),
    );
    let engine = builder.start().unwrap();
    let mut trace_ids = Vec::new();
    while trace_ids.len() < 20 {
        let ev = sub
            .recv_timeout(Duration::from_secs(20))
            .expect("trades flow");
        trace_ids.push(ev.trace_id.to_string());
    }
    let ack = engine.control().execute(
        ControlCommand {
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            ..ControlCommand::subscribe(EventType::Ticker, &["SOL-USDT"], "ops")
        },
        Duration::from_secs(10),
    );
    assert_eq!(ack.status, AckStatus::Accepted);
    std::thread::sleep(Duration::from_millis(600));
    engine.shutdown().unwrap();
    let got = receiver.stop();
    assert!(got.errors.is_empty(), "{:?}", got.errors);

    // Spans by id, and which trace each belongs to.
    let mut spans = HashMap::new();
    let mut service = None;
    for req in &got.traces {
        for rs in &req.resource_spans {
            for a in rs.resource.iter().flat_map(|r| &r.attributes) {
                if a.key == "service.name" {
                    service = a.value.clone().and_then(|v| v.value);
                }
            }
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    spans.insert(s.span_id.clone(), s.clone());
                }
            }
        }
    }
    assert_eq!(service, Some(AnyValue::StringValue("meltica-test".into())));
    let chain = [
        "databus.publish",
        "conductor.orchestrate",
        "dispatcher.canonicalize",
        "adapter.receive",
    ];
    let mut complete = 0;
    for tid in &trace_ids {
        let Some(publish) = spans
            .values()
            .find(|s| s.name == "databus.publish" && hex(&s.trace_id) == *tid)
        else {
            continue;
        };
        // Walk the parents: publish → orchestrate → canonicalize → receive (a root).
        let mut span = publish;
        for (k, name) in chain.iter().enumerate() {
            assert_eq!(&span.name, name, "trace {tid}");
            assert_eq!(hex(&span.trace_id), *tid, "one trace id per event");
            assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
            if k + 1 < chain.len() {
                span = spans
                    .get(&span.parent_span_id)
                    .unwrap_or_else(|| panic!("{name} has no parent in trace {tid}"));
            } else {
                assert!(
                    span.parent_span_id.is_empty(),
                    "adapter.receive is the root"
                );
            }
        }
        complete += 1;
    }
    assert!(
        complete >= 15,
        "only {complete} of 20 sampled trades have a complete span chain"
    );
    let control = spans
        .values()
        .find(|s| s.name == "control.command")
        .expect("a control command span");
    assert_eq!(hex(&control.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");

    // Metrics: names present, values plausible.
    let mut metrics: HashMap<String, Vec<f64>> = HashMap::new();
    for req in &got.metrics {
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let vals = metrics.entry(m.name.clone()).or_default();
                    match &m.data {
                        Some(Data::Sum(s)) => vals.extend(s.data_points.iter().map(value)),
                        Some(Data::Gauge(g)) => vals.extend(g.data_points.iter().map(value)),
                        Some(Data::Histogram(h)) => {
                            vals.extend(h.data_points.iter().map(|p| p.count as f64))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    for name in [
        "meltica.events.ingested",
        "meltica.events.filtered",
        "meltica.events.rejected",
        "meltica.events.published",
        "meltica.events.dropped",
        "meltica.events.coalesced",
        "meltica.events.unaccounted",
        "meltica.queue.depth",
        "meltica.book.resyncs",
        "meltica.book.status",
        "meltica.snapshot.cas_conflicts",
        "meltica.ws.reconnects",
        "meltica.rest.weight_used",
        "meltica.stage.latency",
        "meltica.e2e.latency",
        "meltica.control.sla",
    ] {
        assert!(
            metrics.contains_key(name),
            "metric {name} missing; got {:?}",
            metrics.keys().collect::<Vec<_>>()
        );
    }
    let max = |n: &str| metrics[n].iter().copied().fold(0.0, f64::max);
    assert!(max("meltica.events.ingested") >= 20.0);
    assert!(max("meltica.events.published") >= 20.0);
    assert!(
        max("meltica.stage.latency") >= 1.0,
        "stage latency histogram has samples"
    );
    assert!(
        max("meltica.control.sla") >= 1.0,
        "control SLA histogram has the command"
    );
    assert!(max("meltica.book.status") <= 2.0);
}

fn value(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match p.value {
        Some(Value::AsInt(i)) => i as f64,
        Some(Value::AsDouble(d)) => d,
        None => 0.0,
    }
}
