//! One customer action through the whole system, over HTTP, against real NATS and Postgres:
//! subscribe → action → lead in Postgres → outcome → subscribe message at the WeChat simulator.

use andectl::testing as common;

use serde_json::{json, Value};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_action_becomes_a_lead_and_a_message_to_the_advisor() {
    let t = common::start().await;
    let template = ande_wechat::DEV_TEMPLATE_ID;
    t.advisor_accepts("adv-1", "o_advisor_e2e", template).await;

    let (status, body) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "cust-1", "advisorId": "adv-1", "actionType": "view_resume",
                   "actionData": {"resumeId": "r-1"}, "customerName": "张三", "customerPhone": "+86 138-0013-8000",
                   "resumeId": "r-1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    let action_id = body["data"]["actionId"]
        .as_str()
        .expect("action id")
        .to_string();

    let messages = t.wait_messages("o_advisor_e2e", 1).await;
    assert_eq!(
        messages.len(),
        1,
        "one message at the simulator: {messages:?}"
    );
    let m = &messages[0];
    assert_eq!(m["touser"], "o_advisor_e2e");
    assert_eq!(m["template_id"], template);
    assert_eq!(m["data"]["thing1"]["value"], "新客户查看了您的简历");
    assert_eq!(m["data"]["thing3"]["value"], "13800138000");
    assert_eq!(m["data"]["thing7"]["value"], "张三");

    let db = t.db().await;
    let lead = sqlx::query("SELECT id, name, phone, owner_advisor_id, status, level, remark, customer_code FROM leads.leads WHERE phone = '13800138000'")
        .fetch_one(&db)
        .await
        .expect("the lead exists");
    assert_eq!(lead.get::<String, _>("name"), "张三");
    assert_eq!(lead.get::<String, _>("owner_advisor_id"), "adv-1");
    assert_eq!(lead.get::<String, _>("status"), "待定");
    assert_eq!(lead.get::<String, _>("level"), "B类");
    assert_eq!(
        lead.get::<String, _>("remark"),
        "通过微信小程序查看简历自动创建"
    );
    assert!(lead.get::<String, _>("customer_code").starts_with("KH"));
    let lead_id: uuid::Uuid = lead.get("id");
    assert_eq!(m["page"], format!("pages/customer/detail?id={lead_id}"));

    let action = sqlx::query(
        "SELECT outcome_kind, client_ip, extra FROM leads.actions WHERE action_id = $1::uuid",
    )
    .bind(&action_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(action.get::<String, _>("outcome_kind"), "created");
    assert_eq!(action.get::<String, _>("client_ip"), "127.0.0.1");
    assert_eq!(
        action.get::<Value, _>("extra")["resumeId"],
        "r-1",
        "unknown fields are kept"
    );

    // The same customer again: matched, and the message says 客户, not 新客户.
    t.advisor_accepts("adv-1", "o_advisor_e2e", template).await;
    let (status, _) = t
        .post("/api/customer/action", json!({"customerId": "cust-1", "advisorId": "adv-1", "actionType": "contact_advisor", "customerPhone": "13800138000"}))
        .await;
    assert_eq!(status, 201);
    let messages = t.wait_messages("o_advisor_e2e", 2).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["data"]["thing1"]["value"], "客户想要联系您");
    let leads: i64 = sqlx::query_scalar("SELECT count(*) FROM leads.leads")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(leads, 1, "matched by phone, not created again");
    t.stack.stop().await.unwrap();
}

/// A customer browses with their session and no phone, then leaves the phone: the advisor's
/// message says how many advisors' resumes they looked at before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_message_tells_of_the_customers_earlier_browsing() {
    let t = common::start().await;
    let template = ande_wechat::DEV_TEMPLATE_ID;
    t.advisor_accepts("adv-hist", "o_advisor_hist", template)
        .await;
    let customer = t.session("o_customer_hist").await;
    let act = |advisor: &str, phone: Option<&str>| {
        let mut body =
            json!({"customerId": "c-hist", "advisorId": advisor, "actionType": "view_resume"});
        if let Some(p) = phone {
            body["customerPhone"] = json!(p);
            body["customerName"] = json!("赵六");
        }
        t.http
            .post(t.api("/api/customer/action"))
            .bearer_auth(&customer)
            .json(&body)
            .send()
    };
    for advisor in ["adv-a", "adv-b", "adv-c", "adv-a"] {
        assert_eq!(act(advisor, None).await.unwrap().status(), 201);
    }
    assert_eq!(
        act("adv-hist", Some("13500003333")).await.unwrap().status(),
        201
    );
    let messages = t.wait_messages("o_advisor_hist", 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0]["data"]["thing1"]["value"],
        "新客户查看简历，此前浏览3位顾问简历"
    );
    assert_eq!(messages[0]["data"]["thing3"]["value"], "13500003333");
    t.stack.stop().await.unwrap();
}
