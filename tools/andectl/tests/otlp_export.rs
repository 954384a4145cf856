//! Traces leave the process by OTLP: one customer action, exported over http/protobuf to a small
//! collector in this test, is one trace from the HTTP request (continuing the client's
//! `traceparent`) through the gateway's publish, leads' consume, transaction and outcome publish,
//! the notifier's consume and the queued send that runs later in a worker, to the WeChat call;
//! and no span carries the customer's phone, a secret or an access token.
//! In its own test binary because it installs the global subscriber with an exporter.

use andectl::testing as common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The collector: `POST /v1/traces` with an OTLP protobuf body, spans kept in order received.
async fn collector() -> (String, Arc<Mutex<Vec<Exported>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
                let mut out = kept.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        out.push(Exported {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            attrs: span
                                .attributes
                                .iter()
                                .map(|a| (a.key.clone(), text(&a.value)))
                                .collect(),
                        });
                    }
                }
                // An empty ExportTraceServiceResponse.
                Vec::<u8>::new()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_action_is_one_exported_trace_from_request_to_wechat_call() {
    let (endpoint, spans) = collector().await;
    let vars: Vec<(String, String)> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "ande-all-in-one"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ande_platform::telemetry::init_with_vars("test", false, "warn", &vars);

    let t = common::start().await;
    t.advisor_accepts("adv-otel", "o_advisor_otel", ande_wechat::DEV_TEMPLATE_ID)
        .await;
    // The mini-program's own trace: ours must continue it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let resp = t
        .http
        .post(t.api("/api/customer/action"))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(
            &json!({"customerId": "c-otel", "advisorId": "adv-otel", "actionType": "view_resume",
                      "customerName": "王五", "customerPhone": "13900139000"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(t.wait_messages("o_advisor_otel", 1).await.len(), 1);
    // Let the last spans end (acks, the recorded answer), then flush the exporter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ande_platform::telemetry::shutdown().await;

    let all = spans.lock().unwrap().clone();
    assert!(
        !all.is_empty(),
        "nothing exported; failed exports: {}",
        ande_platform::metrics::TRACE_SPANS_FAILED.get()
    );
    let trace: Vec<&Exported> = all.iter().filter(|s| s.trace_id == client_trace).collect();
    let names: Vec<String> = trace
        .iter()
        .map(|s| format!("{} {:?}", s.name, s.attrs.get("consumer")))
        .collect();
    let find = |name: &str, attr: Option<(&str, &str)>| -> &Exported {
        trace
            .iter()
            .copied()
            .find(|s| {
                s.name == name
                    && attr.is_none_or(|(k, v)| s.attrs.get(k).is_some_and(|x| x.contains(v)))
            })
            .unwrap_or_else(|| {
                let others: Vec<String> = all
                    .iter()
                    .map(|s| format!("{} {} {}", s.trace_id, s.name, s.parent))
                    .collect();
                panic!("no span {name} {attr:?} in the trace: {names:#?}; all: {others:#?}")
            })
    };
    let http = find("http", Some(("path", "/api/customer/action")));
    assert_eq!(
        http.parent, client_span,
        "the request continues the client's span"
    );
    assert_eq!(
        http.service, "ande-all-in-one",
        "OTEL_SERVICE_NAME names the resource"
    );
    let action_publish = find("publish", Some(("event", "ActionRecorded")));
    let leads_consume = find("consume", Some(("consumer", "leads")));
    let transaction = find("transaction", None);
    let outcome_publish = find("publish", Some(("event", "LeadOutcome")));
    let notifier_consume = find("consume", Some(("consumer", "notifier-outcomes")));
    let send = find("notification.send", None);
    let wechat = find("wechat.send_subscribe", None);

    let by_id: HashMap<&str, &Exported> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let descends = |child: &Exported, ancestor: &Exported| {
        let mut at = child;
        while let Some(p) = by_id.get(at.parent.as_str()) {
            if p.span_id == ancestor.span_id {
                return true;
            }
            at = p;
        }
        false
    };
    assert!(descends(action_publish, http), "publish under the request");
    assert_eq!(
        leads_consume.parent, action_publish.span_id,
        "consume under the publish"
    );
    assert_eq!(
        transaction.parent, leads_consume.span_id,
        "transaction under the consume"
    );
    assert!(
        descends(outcome_publish, leads_consume),
        "outcome published while consuming"
    );
    assert_eq!(notifier_consume.parent, outcome_publish.span_id);
    assert_eq!(
        send.parent, notifier_consume.span_id,
        "the queued send continues the consume"
    );
    assert_eq!(
        wechat.parent, send.span_id,
        "the WeChat call under the send"
    );

    // Nothing secret or personal in any exported span, of this trace or any other.
    for s in &all {
        for (k, v) in &s.attrs {
            for forbidden in ["13900139000", "王五", "dev_app_secret", "access_token"] {
                assert!(
                    !v.contains(forbidden) && !k.contains(forbidden),
                    "span {} attribute {k}={v} holds {forbidden}",
                    s.name
                );
            }
        }
    }
}
