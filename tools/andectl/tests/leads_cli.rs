//! `andectl leads`: the leads service's queries from the command line.

use andectl::testing as common;

use std::time::Duration;

use ande_platform::bus::Bus;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leads_show_ls_and_journey_answer_from_the_running_service() {
    let t = common::start().await;
    let (status, body) = t
        .post("/api/customer/action", json!({"customerId": "c1", "advisorId": "adv-cli", "actionType": "view_resume", "customerName": "孙九", "customerPhone": "13911112222"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let action_id = body["data"]["actionId"].as_str().unwrap().to_string();
    let bus = Bus::connect(&t.stack.common, "test").await.unwrap();

    let mut out = Vec::new();
    for _ in 0..100 {
        out.clear();
        if andectl::leads::show(&bus, None, Some("139 1111 2222"), &mut out)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lead: Value = serde_json::from_slice(&out).expect("a lead as JSON");
    assert_eq!(lead["name"], "孙九");
    assert_eq!(lead["ownerAdvisorId"], "adv-cli");

    let mut out = Vec::new();
    andectl::leads::list(&bus, Some("adv-cli"), None, None, 10, &mut out)
        .await
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let mut out = Vec::new();
    andectl::leads::list(&bus, Some("nobody"), None, None, 10, &mut out)
        .await
        .unwrap();
    assert!(out.is_empty());

    let mut out = Vec::new();
    andectl::leads::journey(&bus, &action_id, &mut out)
        .await
        .unwrap();
    let j: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(j["outcome"]["kind"], "created");

    let err = andectl::leads::show(&bus, None, Some("12345"), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid request: invalid_phone"),
        "{err}"
    );
    t.stack.stop().await.unwrap();
}
