//! One trace spans gateway → leads → notifier: the `traceparent` the gateway puts on the action
//! event carries the same trace id as the one leads puts on the outcome it publishes while
//! handling that action (its consume span is a child of the gateway's span).
//! In its own test binary because it installs the global tracing subscriber.

use andectl::testing as common;

use std::time::Duration;

use ande_events::{Event, EventKind, LeadOutcome};
use ande_platform::bus::Bus;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use serde_json::json;

fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outcome_continues_the_trace_of_the_action() {
    ande_platform::telemetry::init_with_filter("test", false, "warn");
    let t = common::start().await;
    let (status, body) = t
        .post("/api/customer/action", json!({"customerId": "c", "advisorId": "a", "actionType": "view_resume", "customerPhone": "13800138000"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let bus = Bus::connect(&t.stack.common, "test").await.unwrap();
    let stream = bus.js.get_stream(bus.subjects.stream()).await.unwrap();
    let read = |kind: EventKind| {
        let stream = stream.clone();
        let subject = bus.subjects.event(kind);
        async move {
            let c = stream
                .create_consumer(pull::Config {
                    filter_subject: subject,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .unwrap();
            for _ in 0..100 {
                let mut batch = c
                    .fetch()
                    .max_messages(1)
                    .expires(Duration::from_millis(200))
                    .messages()
                    .await
                    .unwrap();
                if let Some(Ok(m)) = batch.next().await {
                    return (m.headers.clone().unwrap_or_default(), m.payload.clone());
                }
            }
            panic!("no {kind:?} event");
        }
    };
    let (action, _) = read(EventKind::ActionRecorded).await;
    let (outcome, outcome_payload) = read(EventKind::LeadOutcome).await;
    let a = action
        .get("traceparent")
        .expect("the gateway sends trace context")
        .as_str()
        .to_string();
    let o = outcome
        .get("traceparent")
        .expect("leads sends trace context")
        .as_str()
        .to_string();
    assert_eq!(trace_id(&a), trace_id(&o), "{a} vs {o}");
    assert_eq!(
        action
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .as_str(),
        body["data"]["eventId"].as_str().unwrap()
    );
    // The correlation id rides in the envelope (events carry no header for it any more).
    let outcome_event = LeadOutcome::decode_checked(&outcome_payload).unwrap();
    assert_eq!(
        outcome_event.meta.unwrap().correlation_id,
        body["data"]["actionId"].as_str().unwrap()
    );
    assert!(
        outcome.get(ande_events::headers::CORRELATION_ID).is_none(),
        "the envelope's fields are not repeated as headers"
    );
    t.stack.stop().await.unwrap();
}
