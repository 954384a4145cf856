//! The gateway's HTTP API, endpoint by endpoint, over real HTTP against the machine's NATS and
//! Postgres with WeChat simulated: every success path and the failure paths a client can meet
//! (validation, tokens, WeChat refusals, limits, a missing event bus), plus a corpus of malformed
//! bodies that must never get a 5xx.
//!
//! Each test starts its own stack (own database and subject prefix) with `common::start`; the
//! NATS-outage tests build a lone gateway whose NATS is a closed port or a proxy they control.

use andectl::testing as common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ande_gateway::auth;
use common::TestStack;
use reqwest::header::HeaderMap;
use reqwest::RequestBuilder;
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

const TEMPLATE: &str = ande_wechat::DEV_TEMPLATE_ID;
/// How long a poll for something asynchronous (a lead, a notification) may take.
const POLL_DEADLINE: Duration = Duration::from_secs(15);
const TEST_SECRET: &str = "gateway-api-test-secret";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One HTTP answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn data(&self) -> &Value {
        &self.body["data"]
    }
}

async fn send(req: RequestBuilder) -> Answer {
    try_send(req).await.expect("the gateway answers")
}

async fn try_send(req: RequestBuilder) -> Result<Answer, reqwest::Error> {
    let r = req.send().await?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        headers,
        body,
        text,
    })
}

fn post(t: &TestStack, path: &str, body: Value) -> RequestBuilder {
    t.http.post(t.api(path)).json(&body)
}

fn get(t: &TestStack, path: &str) -> RequestBuilder {
    t.http.get(t.api(path))
}

/// The request id is in the body and in the header, and they are the same.
fn assert_request_id(a: &Answer) {
    let in_body = a.body["requestId"]
        .as_str()
        .unwrap_or_else(|| panic!("requestId in the body: {}", a.text));
    assert!(!in_body.is_empty());
    assert_eq!(
        a.header("x-request-id"),
        Some(in_body),
        "x-request-id header equals the body's requestId"
    );
}

/// A success envelope with this status.
fn assert_ok(a: &Answer, status: u16) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.body["success"], true, "{}", a.text);
    assert!(a.body["message"].is_string(), "{}", a.text);
    assert!(
        a.body["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "timestamp in ms: {}",
        a.text
    );
    assert!(a.body.get("data").is_some(), "{}", a.text);
    assert_request_id(a);
}

/// The error envelope `{success:false, message, error:{code, details}, timestamp, requestId}`.
fn assert_envelope_error(a: &Answer) {
    assert_eq!(
        a.body["success"], false,
        "error envelope expected, got {} {}",
        a.status, a.text
    );
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
    assert!(
        a.body["error"]["code"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{}",
        a.text
    );
    assert!(a.body["error"].get("details").is_some(), "{}", a.text);
    assert!(a.body["timestamp"].as_i64().is_some(), "{}", a.text);
    assert_request_id(a);
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        a.headers
    );
}

fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_envelope_error(a);
    assert_eq!(a.body["error"]["code"], code, "{}", a.text);
}

/// A 400 naming the field that is wrong.
fn assert_invalid_field(a: &Answer, field: &str) {
    assert_error(a, 400, "validation_failed");
    assert_eq!(a.body["error"]["details"]["field"], field, "{}", a.text);
    assert!(
        a.body["message"].as_str().unwrap().contains(field),
        "the message names the field: {}",
        a.text
    );
}

fn retry_after(a: &Answer) -> u64 {
    a.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After header: {:?}", a.headers))
}

async fn sim_post(t: &TestStack, path: &str, body: Value) -> Value {
    let r = t.http.post(t.sim(path)).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "simulator {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn sim_get(t: &TestStack, path: &str) -> Value {
    t.http
        .get(t.sim(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// How many calls the simulator received on one WeChat endpoint.
async fn sim_calls(t: &TestStack, endpoint: &str) -> i64 {
    sim_get(t, "/sim/calls").await[endpoint]["count"]
        .as_i64()
        .unwrap_or_else(|| panic!("/sim/calls has {endpoint}"))
}

async fn sim_fault(t: &TestStack, endpoint: &str, errcode: i64) {
    sim_post(
        t,
        "/sim/faults",
        json!({"endpoint": endpoint, "errcode": errcode, "count": 1}),
    )
    .await;
}

/// A wx.login code standing for `openid`.
async fn login_code(t: &TestStack, openid: &str) -> String {
    sim_post(t, "/sim/codes", json!({"openid": openid})).await["code"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A mini-program session token for `openid`, by the real login.
async fn session(t: &TestStack, openid: &str) -> String {
    t.session(openid).await
}

/// The session of `openid` after staff bound it to `advisor`: an advisor's own session.
async fn advisor_session(t: &TestStack, advisor: &str, openid: &str) -> String {
    t.bind(advisor, openid).await;
    session(t, openid).await
}

/// A staff account and its token, by the real login.
async fn staff_token(t: &TestStack) -> String {
    auth::set_staff_password(
        &t.stack.gateway_pool,
        "ops",
        SecretString::from("correct horse battery".to_string()),
    )
    .await
    .unwrap();
    let a = send(post(
        t,
        "/api/auth/login",
        json!({"username": "ops", "password": "correct horse battery"}),
    ))
    .await;
    assert_ok(&a, 200);
    a.data()["token"].as_str().unwrap().to_string()
}

fn action_body(customer: &str, advisor: &str) -> Value {
    json!({"customerId": customer, "advisorId": advisor, "actionType": "view_resume", "actionData": {"resumeId": "r-1"}})
}

/// Poll the journey of an action until leads has recorded it (and `until` holds).
async fn wait_journey(
    t: &TestStack,
    id: &str,
    token: &str,
    until: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let a = send(get(t, &format!("/api/actions/{id}")).bearer_auth(token)).await;
        if (a.status != 404 && until(&a)) || Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll a query until it returns a row (or the deadline passes).
async fn wait_row(db: &sqlx::PgPool, sql: &str, bind: &str) -> Option<sqlx::postgres::PgRow> {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        // Test queries, some with a template id written in by the test itself.
        if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(bind)
            .fetch_optional(db)
            .await
            .unwrap()
        {
            return Some(row);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn with_secret() -> TestStack {
    common::start_with(|o| o.gateway.jwt_secret = SecretString::from(TEST_SECRET.to_string())).await
}

fn secret() -> SecretString {
    SecretString::from(TEST_SECRET.to_string())
}

// ---------------------------------------------------------------------------------------------
// POST /api/wechat/openid
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_answers_the_openid_and_a_session_token_never_the_session_key() {
    let t = with_secret().await;
    let code = login_code(&t, "o_login_alice").await;

    let a = send(post(&t, "/api/wechat/openid", json!({"code": code}))).await;

    assert_ok(&a, 200);
    assert_eq!(a.body["message"], "获取openid成功", "the seed's message");
    assert_eq!(a.data()["openid"], "o_login_alice");
    let token = a.data()["token"].as_str().expect("a session token");
    let claims = auth::verify(&secret(), auth::MINIPROGRAM_AUDIENCE, token)
        .expect("signed with JWT_SECRET for the mini-program");
    assert_eq!(claims.sub, "o_login_alice");
    assert!(claims.phone.is_none());
    assert!(
        auth::verify(&secret(), auth::STAFF_AUDIENCE, token).is_none(),
        "a session is not a staff token"
    );
    assert!(a.data()["expiresIn"].as_u64().is_some_and(|s| s > 0));
    let lower = a.text.to_ascii_lowercase();
    assert!(
        !lower.contains("session_key") && !lower.contains("sessionkey"),
        "the session_key stays on the server: {}",
        a.text
    );
    let keys: Vec<&String> = a.data().as_object().unwrap().keys().collect();
    assert!(
        keys.iter()
            .all(|k| ["openid", "token", "expiresIn", "unionid"].contains(&k.as_str())),
        "only these fields: {keys:?}"
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_maps_each_wechat_refusal_to_its_own_code_and_status() {
    let t = common::start_with(|o| o.sim.code_ttl = Duration::from_millis(20)).await;

    // 40029: the code expired.
    let expired = login_code(&t, "o_login_bob").await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let a = send(post(&t, "/api/wechat/openid", json!({"code": expired}))).await;
    assert_error(&a, 400, "wechat_invalid_code");
    assert_eq!(a.body["error"]["details"]["errcode"], 40029);

    // 40163: a code used twice (the second use is refused).
    let code = login_code(&t, "o_login_bob").await;
    assert_ok(
        &send(post(&t, "/api/wechat/openid", json!({"code": code}))).await,
        200,
    );
    let a = send(post(&t, "/api/wechat/openid", json!({"code": code}))).await;
    assert_error(&a, 409, "wechat_code_used");
    assert_eq!(a.body["error"]["details"]["errcode"], 40163);

    // Injected at the simulator: blocked user, too frequent, WeChat busy.
    for (errcode, status, code_name, retry) in [
        (40226, 403, "wechat_user_blocked", false),
        (45011, 429, "wechat_too_frequent", true),
        (-1, 503, "wechat_busy", true),
    ] {
        sim_fault(&t, "jscode2session", errcode).await;
        let code = login_code(&t, "o_login_bob").await;
        let a = send(post(&t, "/api/wechat/openid", json!({"code": code}))).await;
        assert_error(&a, status, code_name);
        assert_eq!(a.body["error"]["details"]["errcode"], errcode);
        assert!(a.body["error"]["details"]["errmsg"].is_string());
        assert_eq!(
            a.headers.contains_key("retry-after"),
            retry,
            "Retry-After only when retrying helps: {errcode}"
        );
        assert!(!a.text.contains("session_key"));
    }
    // The faults were one-shot: the next login works.
    let code = login_code(&t, "o_login_bob").await;
    assert_ok(
        &send(post(&t, "/api/wechat/openid", json!({"code": code}))).await,
        200,
    );

    // No code at all: refused before WeChat is asked.
    let before = sim_calls(&t, "jscode2session").await;
    assert_invalid_field(
        &send(post(&t, "/api/wechat/openid", json!({}))).await,
        "code",
    );
    assert_invalid_field(
        &send(post(&t, "/api/wechat/openid", json!({"code": "  "}))).await,
        "code",
    );
    assert_invalid_field(
        &send(post(
            &t,
            "/api/wechat/openid",
            json!({"code": "c".repeat(129)}),
        ))
        .await,
        "code",
    );
    assert_eq!(
        sim_calls(&t, "jscode2session").await,
        before,
        "invalid input never reaches WeChat"
    );
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// POST /api/advisor/subscribe
// ---------------------------------------------------------------------------------------------

async fn subscription(db: &sqlx::PgPool, openid: &str, template: &str) -> Option<(i32, String)> {
    let row = wait_row(db, &format!("SELECT credits, last_status FROM notifier.subscriptions WHERE openid = $1 AND template_id = '{template}'"), openid).await?;
    Some((row.get("credits"), row.get("last_status")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_takes_the_seed_body_and_the_raw_wx_result_for_several_templates() {
    let t = common::start().await;
    let db = t.db().await;

    // The seed's body, as the mini-program sends it.
    let seed = json!({"advisorId": "adv-s", "openid": "o_adv_seed", "templateId": "T_seed", "subscribed": true,
        "subscribeData": {"source": "miniprogram", "timestamp": "2024-01-01T12:00:00.000Z", "userAgent": {}, "subscriptionStatus": "accept"}});
    let seed_session = advisor_session(&t, "adv-s", "o_adv_seed").await;
    let a = send(post(&t, "/api/advisor/subscribe", seed).bearer_auth(&seed_session)).await;
    assert_ok(&a, 201);
    assert_eq!(a.body["message"], "订阅状态保存成功");
    assert_eq!(a.data()["recorded"].as_array().unwrap().len(), 1);
    assert_eq!(a.data()["recorded"][0]["templateId"], "T_seed");
    assert_eq!(a.data()["recorded"][0]["status"], "accept");
    assert_eq!(
        subscription(&db, "o_adv_seed", "T_seed").await,
        Some((1, "accept".into())),
        "one accept is one credit"
    );

    // `subscribed: false` without subscriptionStatus is a reject.
    let bool_session = advisor_session(&t, "adv-s", "o_adv_bool").await;
    let a = send(post(&t, "/api/advisor/subscribe", json!({"advisorId": "adv-s", "openid": "o_adv_bool", "templateId": "T_seed", "subscribed": false})).bearer_auth(&bool_session)).await;
    assert_ok(&a, 201);
    assert_eq!(a.data()["recorded"][0]["status"], "reject");

    // The raw answer of wx.requestSubscribeMessage for three templates at once.
    let raw = json!({"advisorId": "adv-r", "openid": "o_adv_raw",
        "result": {"T_a": "accept", "T_r": "reject", "T_b": "ban", "errMsg": "requestSubscribeMessage:ok"}});
    let raw_session = advisor_session(&t, "adv-r", "o_adv_raw").await;
    let a = send(post(&t, "/api/advisor/subscribe", raw).bearer_auth(&raw_session)).await;
    assert_ok(&a, 201);
    let recorded = a.data()["recorded"].as_array().unwrap();
    assert_eq!(recorded.len(), 3, "errMsg is not a template: {}", a.text);
    let status_of = |tpl: &str| {
        recorded
            .iter()
            .find(|r| r["templateId"] == tpl)
            .map(|r| r["status"].clone())
    };
    assert_eq!(status_of("T_a"), Some(json!("accept")));
    assert_eq!(status_of("T_r"), Some(json!("reject")));
    assert_eq!(status_of("T_b"), Some(json!("ban")));
    assert_eq!(
        subscription(&db, "o_adv_raw", "T_a").await,
        Some((1, "accept".into()))
    );
    assert_eq!(
        subscription(&db, "o_adv_raw", "T_r").await,
        Some((0, "reject".into()))
    );
    assert_eq!(
        subscription(&db, "o_adv_raw", "T_b").await,
        Some((0, "ban".into()))
    );

    // The openid is the session's, not the body's.
    let token = advisor_session(&t, "adv-x", "o_adv_session").await;
    let a = send(post(&t, "/api/advisor/subscribe", json!({"advisorId": "adv-x", "openid": "o_someone_else", "templateId": "T_s", "subscribed": true})).bearer_auth(&token)).await;
    assert_ok(&a, 201);
    assert_eq!(a.data()["openid"], "o_adv_session");
    assert_eq!(
        subscription(&db, "o_adv_session", "T_s").await,
        Some((1, "accept".into()))
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_refuses_bad_statuses_and_missing_fields() {
    let t = common::start().await;
    let base =
        || json!({"advisorId": "adv-1", "openid": "o_adv", "templateId": "T1", "subscribed": true});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };

    let a = send(post(
        &t,
        "/api/advisor/subscribe",
        with("subscribeData", json!({"subscriptionStatus": "maybe"})),
    ))
    .await;
    assert_invalid_field(&a, "subscribeData.subscriptionStatus");
    let a = send(post(
        &t,
        "/api/advisor/subscribe",
        json!({"advisorId": "adv-1", "openid": "o_adv", "result": {"T1": "maybe", "errMsg": "x"}}),
    ))
    .await;
    assert_invalid_field(&a, "result.T1");
    let a = send(post(&t, "/api/advisor/subscribe", json!({"advisorId": "adv-1", "openid": "o_adv", "result": {"errMsg": "requestSubscribeMessage:ok"}}))).await;
    assert_invalid_field(&a, "result");
    let a = send(post(
        &t,
        "/api/advisor/subscribe",
        json!({"advisorId": "adv-1", "openid": "o_adv", "result": "accept"}),
    ))
    .await;
    assert_invalid_field(&a, "result");
    let six: serde_json::Map<String, Value> =
        (0..6).map(|i| (format!("T{i}"), json!("accept"))).collect();
    let a = send(post(
        &t,
        "/api/advisor/subscribe",
        json!({"advisorId": "adv-1", "openid": "o_adv", "result": six}),
    ))
    .await;
    assert_invalid_field(&a, "result");
    assert_invalid_field(
        &send(post(
            &t,
            "/api/advisor/subscribe",
            with("subscribed", json!("yes")),
        ))
        .await,
        "subscribed",
    );
    let mut no_decision = base();
    no_decision.as_object_mut().unwrap().remove("subscribed");
    assert_invalid_field(
        &send(post(&t, "/api/advisor/subscribe", no_decision)).await,
        "subscribed",
    );
    assert_invalid_field(
        &send(post(
            &t,
            "/api/advisor/subscribe",
            with("advisorId", json!("")),
        ))
        .await,
        "advisorId",
    );
    // A valid body without a session: refused, whatever openid it names.
    assert_error(
        &send(post(&t, "/api/advisor/subscribe", base())).await,
        403,
        "forbidden",
    );
    assert_invalid_field(
        &send(post(
            &t,
            "/api/advisor/subscribe",
            with("templateId", json!({"id": 1})),
        ))
        .await,
        "templateId",
    );
    let a = send(post(&t, "/api/advisor/subscribe", base()).bearer_auth("not-a-token")).await;
    assert_error(&a, 401, "unauthorized");
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// POST /api/customer/action
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_is_recorded_with_its_id_ip_user_agent_and_unknown_fields() {
    let t = common::start().await;
    let mut body = action_body("cust-1", "adv-1");
    body["customerName"] = json!("张三");
    // Fields old clients send, which the gateway does not model.
    body["resumeId"] = json!("r-1");
    body["ip"] = json!("10.0.0.1");
    body["userAgent"] = json!({"platform": "ios"});

    let a =
        send(post(&t, "/api/customer/action", body).header("user-agent", "wechat-devtools/1.0"))
            .await;

    assert_ok(&a, 201);
    assert_eq!(a.body["message"], "行为记录成功");
    let id = a.data()["actionId"].as_str().expect("actionId");
    let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7, "UUIDv7 action ids");
    assert!(
        a.data()["sequence"].as_u64().is_some_and(|s| s > 0),
        "acked by JetStream: {}",
        a.text
    );
    assert_eq!(a.data()["duplicate"], false);

    let db = t.db().await;
    let row = wait_row(
        &db,
        "SELECT * FROM leads.actions WHERE action_id = $1::uuid",
        id,
    )
    .await
    .expect("leads stored the action");
    assert_eq!(row.get::<String, _>("customer_id"), "cust-1");
    assert_eq!(row.get::<String, _>("advisor_id"), "adv-1");
    assert_eq!(row.get::<String, _>("action_type"), "view_resume");
    assert_eq!(
        row.get::<Value, _>("action_data"),
        json!({"resumeId": "r-1"})
    );
    assert_eq!(
        row.get::<Option<String>, _>("customer_name").as_deref(),
        Some("张三")
    );
    assert_eq!(
        row.get::<Option<String>, _>("client_ip").as_deref(),
        Some("127.0.0.1"),
        "the connection's address, not the body's"
    );
    assert_eq!(
        row.get::<Option<String>, _>("user_agent").as_deref(),
        Some("wechat-devtools/1.0")
    );
    let extra: Value = row.get("extra");
    assert_eq!(
        extra,
        json!({"resumeId": "r-1", "ip": "10.0.0.1", "userAgent": {"platform": "ios"}}),
        "unknown fields are kept"
    );
    assert_eq!(
        row.get::<String, _>("outcome_kind"),
        "none",
        "no phone, no lead"
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_validation_names_the_field() {
    let t = common::start().await;
    let with = |k: &str, v: Value| {
        let mut b = action_body("cust-1", "adv-1");
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = action_body("cust-1", "adv-1");
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases = [
        (without("customerId"), "customerId"),
        (with("customerId", json!("   ")), "customerId"),
        (with("customerId", json!("c".repeat(129))), "customerId"),
        (with("customerId", json!(["c"])), "customerId"),
        (without("advisorId"), "advisorId"),
        (with("advisorId", json!("")), "advisorId"),
        (with("advisorId", json!("a\u{0}b")), "advisorId"),
        (without("actionType"), "actionType"),
        (with("actionType", json!("x".repeat(65))), "actionType"),
        (with("actionType", json!(true)), "actionType"),
        (with("actionData", json!("a string")), "actionData"),
        (with("actionData", json!([1, 2])), "actionData"),
        (
            with("actionData", json!({"big": "x".repeat(17 * 1024)})),
            "actionData",
        ),
        (with("actionData", json!({"s": "a\u{0}b"})), "actionData"),
        (with("customerName", json!("名".repeat(65))), "customerName"),
        (with("customerName", json!({"first": "张"})), "customerName"),
        (
            with("customerPhone", json!("1".repeat(33))),
            "customerPhone",
        ),
        (with("customerPhone", json!([138])), "customerPhone"),
        (with("customerPhone", json!("138\n0013")), "customerPhone"),
    ];
    for (body, field) in cases {
        let a = send(post(&t, "/api/customer/action", body.clone())).await;
        assert_invalid_field(&a, field);
    }
    let mut deep = json!("leaf");
    for _ in 0..20 {
        deep = json!({ "d": deep });
    }
    assert_invalid_field(
        &send(post(&t, "/api/customer/action", with("actionData", deep))).await,
        "actionData",
    );

    // Lenient where old clients need it: numeric ids, blank optional fields, null actionData.
    let mut lenient = with("customerId", json!(12345));
    lenient["advisorId"] = json!(7);
    lenient["customerPhone"] = json!("");
    lenient["actionData"] = Value::Null;
    assert_ok(&send(post(&t, "/api/customer/action", lenient)).await, 201);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_action_and_stores_it_once() {
    let t = common::start().await;
    let body = action_body("cust-idem", "adv-1");
    let keyed =
        |b: Value, key: &str| post(&t, "/api/customer/action", b).header("Idempotency-Key", key);

    let first = send(keyed(body.clone(), "key-1")).await;
    assert_ok(&first, 201);
    let id = first.data()["actionId"].as_str().unwrap().to_string();
    let again = send(keyed(body.clone(), "key-1")).await;
    assert_ok(&again, 200);
    assert_eq!(
        again.data()["actionId"],
        id.as_str(),
        "a retry answers the same action id"
    );
    assert_eq!(again.data()["eventId"], first.data()["eventId"]);
    assert_eq!(again.data()["duplicate"], true);

    // The same key for another request is a conflict, not a silent replay.
    let mut other = body.clone();
    other["actionType"] = json!("book_service");
    let a = send(keyed(other, "key-1")).await;
    assert_error(&a, 409, "idempotency_key_reused");

    // A different key is a different action.
    let third = send(keyed(body.clone(), "key-2")).await;
    assert_ok(&third, 201);
    assert_ne!(third.data()["actionId"], id.as_str());

    let db = t.db().await;
    wait_row(
        &db,
        "SELECT 1 FROM leads.actions WHERE action_id = $1::uuid",
        &id,
    )
    .await
    .expect("stored");
    let third_id = third.data()["actionId"].as_str().unwrap();
    wait_row(
        &db,
        "SELECT 1 FROM leads.actions WHERE action_id = $1::uuid",
        third_id,
    )
    .await
    .expect("stored");
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM leads.actions WHERE customer_id = 'cust-idem'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(n, 2, "key-1 twice is one row, key-2 another");

    // Malformed keys are refused.
    assert_invalid_field(&send(keyed(body.clone(), "")).await, "Idempotency-Key");
    assert_invalid_field(
        &send(keyed(body.clone(), &"k".repeat(201))).await,
        "Idempotency-Key",
    );
    assert_invalid_field(
        &send(keyed(body.clone(), "has space")).await,
        "Idempotency-Key",
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_idempotency_key_record_one_action() {
    let t = common::start().await;
    let body = action_body("cust-race", "adv-1");
    let answers = futures::future::join_all((0..8).map(|_| {
        send(post(&t, "/api/customer/action", body.clone()).header("Idempotency-Key", "race"))
    }))
    .await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|a| {
            a.data()["actionId"]
                .as_str()
                .unwrap_or_else(|| panic!("{}", a.text))
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one action id for every retry: {ids:?}");
    assert_eq!(
        answers.iter().filter(|a| a.status == 201).count(),
        1,
        "exactly one answer is the creation"
    );
    let id = ids.into_iter().next().unwrap();
    let db = t.db().await;
    wait_row(
        &db,
        "SELECT 1 FROM leads.actions WHERE action_id = $1::uuid",
        &id,
    )
    .await
    .expect("stored");
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM leads.actions WHERE customer_id = 'cust-race'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(n, 1);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_of_different_sessions_do_not_collide() {
    let t = common::start().await;
    let alice = session(&t, "o_idem_alice").await;
    let mallory = session(&t, "o_idem_mallory").await;
    let body = action_body("shared-customer-id", "adv-1");

    let a = send(
        post(&t, "/api/customer/action", body.clone())
            .header("Idempotency-Key", "k")
            .bearer_auth(&alice),
    )
    .await;
    assert_ok(&a, 201);
    let b = send(
        post(&t, "/api/customer/action", body.clone())
            .header("Idempotency-Key", "k")
            .bearer_auth(&mallory),
    )
    .await;
    assert_ok(&b, 201);
    assert_ne!(
        a.data()["actionId"],
        b.data()["actionId"],
        "another customer's key never hands out their action"
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_takes_the_openid_from_the_session_and_refuses_a_bad_token() {
    let t = with_secret().await;
    let token = session(&t, "o_cust_session").await;
    let mut body = action_body("cust-s", "adv-1");
    body["openid"] = json!("o_forged_in_body");

    let a = send(post(&t, "/api/customer/action", body.clone()).bearer_auth(&token)).await;
    assert_ok(&a, 201);
    let id = a.data()["actionId"].as_str().unwrap();
    let db = t.db().await;
    let row = wait_row(
        &db,
        "SELECT openid FROM leads.actions WHERE action_id = $1::uuid",
        id,
    )
    .await
    .expect("stored");
    assert_eq!(
        row.get::<Option<String>, _>("openid").as_deref(),
        Some("o_cust_session")
    );

    // Without a session the body's openid is not trusted either.
    let a = send(post(&t, "/api/customer/action", body.clone())).await;
    assert_ok(&a, 201);
    let row = wait_row(
        &db,
        "SELECT openid FROM leads.actions WHERE action_id = $1::uuid",
        a.data()["actionId"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_ne!(
        row.get::<Option<String>, _>("openid").as_deref(),
        Some("o_forged_in_body")
    );

    // Garbage, a token signed with another secret, a staff token: all 401 (expiry is covered
    // by the unit tests of ande_gateway::auth).
    let other_secret = auth::issue(
        &SecretString::from("other".to_string()),
        auth::MINIPROGRAM_AUDIENCE,
        "o_x",
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    let staff = auth::issue(
        &secret(),
        auth::STAFF_AUDIENCE,
        "ops",
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    for bad in ["garbage", other_secret.as_str(), staff.as_str()] {
        let a = send(post(&t, "/api/customer/action", body.clone()).bearer_auth(bad)).await;
        assert_error(&a, 401, "unauthorized");
    }
    // An Authorization header that is not a bearer token is refused too, never ignored (the
    // action would silently lose its customer).
    for header in ["Basic b3BzOnB3", "Bearer", "Bearer ", "Token abc"] {
        let a =
            send(post(&t, "/api/customer/action", body.clone()).header("authorization", header))
                .await;
        assert_error(&a, 401, "unauthorized");
    }
    // The scheme is case-insensitive (RFC 9110): a lower-case "bearer" is still this session.
    let a = send(
        post(&t, "/api/customer/action", body.clone())
            .header("authorization", format!("bearer {token}")),
    )
    .await;
    assert_ok(&a, 201);
    let row = wait_row(
        &db,
        "SELECT openid FROM leads.actions WHERE action_id = $1::uuid",
        a.data()["actionId"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        row.get::<Option<String>, _>("openid").as_deref(),
        Some("o_cust_session")
    );
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// POST /api/message/send and POST /api/auth/login
// ---------------------------------------------------------------------------------------------

fn message(touser: &str) -> Value {
    json!({"touser": touser, "template_id": TEMPLATE, "page": "pages/customer/detail?id=customer_123", "miniprogram_state": "formal",
        "data": {"thing1": {"value": "客户张三查看了您的简历"}, "time2": {"value": "2024-01-01 12:00:00"},
                 "thing3": {"value": "13800138000"}, "thing7": {"value": "张三"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_send_is_for_staff_only() {
    let t = with_secret().await;
    let a = send(post(&t, "/api/message/send", message("o_target"))).await;
    assert_error(&a, 401, "unauthorized");
    let a = send(post(&t, "/api/message/send", message("o_target")).bearer_auth("garbage")).await;
    assert_error(&a, 401, "unauthorized");
    let customer = session(&t, "o_customer_sender").await;
    let a = send(post(&t, "/api/message/send", message("o_target")).bearer_auth(&customer)).await;
    assert_error(&a, 403, "forbidden");
    assert_eq!(
        sim_calls(&t, "subscribe_send").await,
        0,
        "nothing reached WeChat"
    );

    // Login: wrong password and unknown user look the same; missing fields are 400.
    auth::set_staff_password(
        &t.stack.gateway_pool,
        "ops",
        SecretString::from("correct horse battery".to_string()),
    )
    .await
    .unwrap();
    let wrong = send(post(
        &t,
        "/api/auth/login",
        json!({"username": "ops", "password": "nope"}),
    ))
    .await;
    assert_error(&wrong, 401, "unauthorized");
    let unknown = send(post(
        &t,
        "/api/auth/login",
        json!({"username": "nobody", "password": "nope"}),
    ))
    .await;
    assert_error(&unknown, 401, "unauthorized");
    assert_eq!(
        wrong.body["message"], unknown.body["message"],
        "no hint which usernames exist"
    );
    assert_invalid_field(
        &send(post(&t, "/api/auth/login", json!({"password": "x"}))).await,
        "username",
    );
    assert_invalid_field(
        &send(post(&t, "/api/auth/login", json!({"username": "ops"}))).await,
        "password",
    );
    assert_invalid_field(
        &send(post(
            &t,
            "/api/auth/login",
            json!({"username": "ops", "password": 12345}),
        ))
        .await,
        "password",
    );

    let a = send(post(
        &t,
        "/api/auth/login",
        json!({"username": "ops", "password": "correct horse battery"}),
    ))
    .await;
    assert_ok(&a, 200);
    let token = a.data()["token"].as_str().unwrap();
    let claims = auth::verify(&secret(), auth::STAFF_AUDIENCE, token).expect("a staff token");
    assert_eq!(claims.sub, "ops");
    assert!(
        auth::verify(&secret(), auth::MINIPROGRAM_AUDIENCE, token).is_none(),
        "a staff token is not a session"
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_send_answers_wechats_errcode_and_msgid() {
    let t = common::start().await;
    let staff = staff_token(&t).await;

    // A `thing` over 20 characters: refused here, WeChat never called.
    let before = sim_calls(&t, "subscribe_send").await;
    let mut long = message("o_target_send");
    long["data"]["thing1"]["value"] = json!("这是一段超过二十个字符的很长很长很长的说明文字");
    let a = send(post(&t, "/api/message/send", long).bearer_auth(&staff)).await;
    assert_invalid_field(&a, "data.thing1.value");
    let mut bad_state = message("o_target_send");
    bad_state["miniprogram_state"] = json!("production");
    assert_invalid_field(
        &send(post(&t, "/api/message/send", bad_state).bearer_auth(&staff)).await,
        "miniprogram_state",
    );
    let mut no_data = message("o_target_send");
    no_data["data"] = json!({});
    assert_invalid_field(
        &send(post(&t, "/api/message/send", no_data).bearer_auth(&staff)).await,
        "data",
    );
    let mut bad_value = message("o_target_send");
    bad_value["data"]["thing7"] = json!("张三");
    assert_invalid_field(
        &send(post(&t, "/api/message/send", bad_value).bearer_auth(&staff)).await,
        "data.thing7",
    );
    let mut unknown_type = message("o_target_send");
    unknown_type["data"]["gizmo1"] = json!({"value": "x"});
    assert_invalid_field(
        &send(post(&t, "/api/message/send", unknown_type).bearer_auth(&staff)).await,
        "data.gizmo1.value",
    );
    let mut no_touser = message("");
    no_touser["touser"] = json!("");
    assert_invalid_field(
        &send(post(&t, "/api/message/send", no_touser).bearer_auth(&staff)).await,
        "touser",
    );
    assert_eq!(
        sim_calls(&t, "subscribe_send").await,
        before,
        "invalid messages never reach WeChat"
    );

    // No credit at WeChat: 43101, a 409 carrying WeChat's errcode.
    let a = send(post(&t, "/api/message/send", message("o_target_send")).bearer_auth(&staff)).await;
    assert_error(&a, 409, "wechat_no_subscription");
    assert_eq!(a.body["error"]["details"]["errcode"], 43101);
    assert!(
        a.body["error"]["details"]["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("user refuse to accept the msg"),
        "{}",
        a.text
    );
    assert_eq!(sim_calls(&t, "subscribe_send").await, before + 1);
    // A template WeChat does not know: 40037, a 404 naming it.
    let mut unknown_template = message("o_target_send");
    unknown_template["template_id"] = json!("no-such-template");
    let a = send(post(&t, "/api/message/send", unknown_template).bearer_auth(&staff)).await;
    assert_error(&a, 404, "wechat_unknown_template");
    assert_eq!(a.body["error"]["details"]["errcode"], 40037);

    // With a credit: sent, errcode 0 and the msgid WeChat gave.
    sim_post(
        &t,
        "/sim/credits",
        json!({"openid": "o_target_send", "template_id": TEMPLATE, "count": 1}),
    )
    .await;
    let a = send(post(&t, "/api/message/send", message("o_target_send")).bearer_auth(&staff)).await;
    assert_ok(&a, 200);
    assert_eq!(a.data()["errcode"], 0);
    assert_eq!(a.data()["errmsg"], "ok");
    let msgid = a.data()["msgid"]
        .as_str()
        .map(String::from)
        .or_else(|| a.data()["msgid"].as_u64().map(|n| n.to_string()))
        .expect("msgid");
    let messages = t.wait_messages("o_target_send", 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["msgid"].to_string().trim_matches('"'), msgid);
    assert_eq!(
        messages[0]["data"]["thing1"]["value"],
        "客户张三查看了您的简历"
    );
    assert_eq!(messages[0]["page"], "pages/customer/detail?id=customer_123");
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// GET /api/actions/{id}
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_shows_lead_and_notification_to_staff_and_to_the_owner_only() {
    let t = common::start().await;
    let staff = staff_token(&t).await;
    t.advisor_accepts("adv-j", "o_advisor_j", TEMPLATE).await;
    let owner = session(&t, "o_journey_owner").await;
    let stranger = session(&t, "o_journey_stranger").await;

    let mut body = action_body("cust-j", "adv-j");
    body["customerName"] = json!("李四");
    body["customerPhone"] = json!("13900139000");
    let a = send(post(&t, "/api/customer/action", body).bearer_auth(&owner)).await;
    assert_ok(&a, 201);
    let id = a.data()["actionId"].as_str().unwrap().to_string();

    // Staff see the whole journey once the notification went out.
    let j = wait_journey(&t, &id, &staff, |a| {
        a.data()["notification"]["status"] == "sent"
    })
    .await;
    assert_ok(&j, 200);
    let d = j.data();
    assert_eq!(d["actionId"], id.as_str());
    assert_eq!(d["recorded"]["customerId"], "cust-j");
    assert_eq!(d["recorded"]["openid"], "o_journey_owner");
    assert_eq!(
        d["recorded"]["clientIp"], "127.0.0.1",
        "staff see the connection"
    );
    assert_eq!(d["lead"]["status"], "created");
    assert_eq!(d["lead"]["newCustomer"], true);
    assert!(d["lead"]["leadId"].is_string());
    assert_eq!(d["notification"]["status"], "sent", "{}", j.text);
    let messages = t.wait_messages("o_advisor_j", 1).await;
    assert_eq!(
        d["notification"]["msgid"].to_string().trim_matches('"'),
        messages[0]["msgid"].to_string().trim_matches('"'),
        "the msgid WeChat gave"
    );

    // The owner sees it, without our bookkeeping about the connection, and without learning
    // whether the number was known already (no created/matched, no customer code).
    let j = send(get(&t, &format!("/api/actions/{id}")).bearer_auth(&owner)).await;
    assert_ok(&j, 200);
    assert_eq!(j.data()["lead"]["status"], "lead");
    assert!(
        j.data()["lead"].get("customerCode").is_none()
            && j.data()["lead"].get("newCustomer").is_none()
            && j.data()["lead"].get("leadId").is_none(),
        "{}",
        j.text
    );
    let mut again = action_body("cust-j2", "adv-j");
    again["customerPhone"] = json!("13900139000");
    let a2 = send(post(&t, "/api/customer/action", again).bearer_auth(&owner)).await;
    let id2 = a2.data()["actionId"].as_str().unwrap().to_string();
    let staff_view = wait_journey(&t, &id2, &staff, |a| {
        a.data()["lead"]["status"] == "matched"
    })
    .await;
    assert_eq!(staff_view.data()["lead"]["status"], "matched");
    let j2 = send(get(&t, &format!("/api/actions/{id2}")).bearer_auth(&owner)).await;
    assert_eq!(
        j2.data()["lead"]["status"],
        "lead",
        "a match reads as a new lead does"
    );
    assert!(
        j.data()["recorded"].get("clientIp").is_none()
            && j.data()["recorded"].get("userAgent").is_none(),
        "{}",
        j.text
    );

    // Another customer may not.
    let j = send(get(&t, &format!("/api/actions/{id}")).bearer_auth(&stranger)).await;
    assert_error(&j, 403, "forbidden");
    assert!(
        !j.text.contains("13900139000"),
        "nothing of the action leaks"
    );

    // No token, a bad token, a bad id, an unknown id.
    assert_error(
        &send(get(&t, &format!("/api/actions/{id}"))).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(get(&t, &format!("/api/actions/{id}")).bearer_auth("garbage")).await,
        401,
        "unauthorized",
    );
    assert_invalid_field(
        &send(get(&t, "/api/actions/not-a-uuid").bearer_auth(&staff)).await,
        "id",
    );
    let unknown = uuid::Uuid::now_v7();
    assert_error(
        &send(get(&t, &format!("/api/actions/{unknown}")).bearer_auth(&staff)).await,
        404,
        "not_found",
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_shows_a_notification_pending_for_lack_of_credit_and_a_no_lead_reason() {
    let t = common::start().await;
    let staff = staff_token(&t).await;
    let a = send(post(
        &t,
        "/api/customer/action",
        action_body("cust-p", "adv-without-credit"),
    ))
    .await;
    assert_ok(&a, 201);
    let id = a.data()["actionId"].as_str().unwrap().to_string();

    let j = wait_journey(&t, &id, &staff, |a| {
        a.data()["notification"]["status"] == "pending_credit"
    })
    .await;
    assert_ok(&j, 200);
    assert_eq!(j.data()["lead"]["status"], "none", "{}", j.text);
    assert!(
        j.data()["lead"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "why no lead: {}",
        j.text
    );
    assert_eq!(
        j.data()["notification"]["status"],
        "pending_credit",
        "{}",
        j.text
    );

    // An action recorded without a session belongs to no customer session.
    let someone = session(&t, "o_someone").await;
    assert_error(
        &send(get(&t, &format!("/api/actions/{id}")).bearer_auth(&someone)).await,
        403,
        "forbidden",
    );
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// POST /api/wechat/phone
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_by_code_attaches_to_the_session_and_later_actions_make_a_lead() {
    let t = with_secret().await;

    // Without a session: the number, no token.
    let code = sim_post(&t, "/sim/phone-codes", json!({"phone": "13912345678"})).await["code"]
        .as_str()
        .unwrap()
        .to_string();
    let a = send(post(&t, "/api/wechat/phone", json!({"code": code}))).await;
    assert_ok(&a, 200);
    assert_eq!(a.data()["phoneNumber"], "13912345678");
    assert_eq!(a.data()["purePhoneNumber"], "13912345678");
    assert_eq!(a.data()["countryCode"], "86");
    assert!(a.data().get("token").is_none());

    // The code was spent: WeChat's 40029 is a 400.
    let a = send(post(&t, "/api/wechat/phone", json!({"code": code}))).await;
    assert_error(&a, 400, "wechat_invalid_code");
    assert_eq!(a.body["error"]["details"]["errcode"], 40029);
    assert_invalid_field(
        &send(post(&t, "/api/wechat/phone", json!({}))).await,
        "code",
    );
    assert_error(
        &send(post(&t, "/api/wechat/phone", json!({"code": "x"})).bearer_auth("garbage")).await,
        401,
        "unauthorized",
    );

    // With a session: a renewed token carrying the number.
    let token = session(&t, "o_phone_user").await;
    let code = sim_post(&t, "/sim/phone-codes", json!({"phone": "13700137000"})).await["code"]
        .as_str()
        .unwrap()
        .to_string();
    let a = send(post(&t, "/api/wechat/phone", json!({"code": code})).bearer_auth(&token)).await;
    assert_ok(&a, 200);
    let renewed = a.data()["token"].as_str().expect("a renewed session token");
    let claims = auth::verify(&secret(), auth::MINIPROGRAM_AUDIENCE, renewed).unwrap();
    assert_eq!(claims.sub, "o_phone_user");
    assert_eq!(claims.phone.as_deref(), Some("13700137000"));

    // A later action without customerPhone carries the number and creates a lead.
    let a = send(
        post(
            &t,
            "/api/customer/action",
            action_body("cust-phone", "adv-1"),
        )
        .bearer_auth(renewed),
    )
    .await;
    assert_ok(&a, 201);
    let db = t.db().await;
    let lead = wait_row(
        &db,
        "SELECT owner_advisor_id FROM leads.leads WHERE phone = $1",
        "13700137000",
    )
    .await
    .expect("a lead by the session's phone");
    assert_eq!(lead.get::<String, _>("owner_advisor_id"), "adv-1");
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Health, OpenAPI, unknown paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_report_each_dependency() {
    let t = common::start().await;
    let a = send(get(&t, "/api/health")).await;
    assert_ok(&a, 200);
    assert_eq!(a.data()["status"], "ok", "{}", a.text);
    assert_eq!(a.data()["nats"], "connected");
    assert_eq!(a.data()["stream"]["status"], "ok");
    assert_eq!(
        a.data()["stream"]["name"].as_str().unwrap(),
        t.stack.common.subjects().stream()
    );
    assert_eq!(a.data()["database"], "ok");
    let r = send(get(&t, "/api/health/ready")).await;
    assert_ok(&r, 200);
    assert_eq!(r.data()["status"], "ok");
    t.stack.stop().await.unwrap();
}

/// The paths the issue asks for; the document must list each, and every path it lists must be
/// served.
const EXPECTED_PATHS: [(&str, &str); 40] = [
    ("post", "/api/wechat/openid"),
    ("post", "/api/wechat/phone"),
    ("get", "/api/wechat/events"),
    ("post", "/api/wechat/events"),
    ("post", "/api/advisor/subscribe"),
    ("post", "/api/advisor/bind"),
    ("get", "/api/advisor/credits"),
    ("get", "/api/advisor-bindings"),
    ("post", "/api/advisor-bindings"),
    ("post", "/api/advisor-bindings/unbind"),
    ("get", "/api/advisor-settings"),
    ("post", "/api/advisor-settings"),
    ("post", "/api/advisor-pairings"),
    ("post", "/api/customer/action"),
    ("get", "/api/actions/{id}"),
    ("get", "/api/digests/{id}"),
    ("post", "/api/message/send"),
    ("post", "/api/auth/login"),
    ("post", "/api/staff/session"),
    ("post", "/api/staff/session/end"),
    ("get", "/api/staff/me"),
    ("post", "/api/staff/me/password"),
    ("get", "/api/staff/leads"),
    ("get", "/api/staff/leads/{id}"),
    ("post", "/api/staff/leads/{id}"),
    ("get", "/api/staff/advisors"),
    ("get", "/api/staff/notifications"),
    ("post", "/api/staff/notifications/{id}/retry"),
    ("post", "/api/staff/sending"),
    ("get", "/api/staff/overview"),
    ("get", "/api/staff/dead-letters"),
    ("get", "/api/staff/dead-letters/{seq}"),
    ("post", "/api/staff/dead-letters/{seq}/retry"),
    ("post", "/api/staff/dead-letters/{seq}/purge"),
    ("get", "/api/staff/users"),
    ("post", "/api/staff/users"),
    ("post", "/api/staff/users/{name}"),
    ("get", "/api/health"),
    ("get", "/api/health/ready"),
    ("get", "/api/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_path_and_every_listed_path_is_served() {
    let t = common::start().await;
    let a = send(get(&t, "/api/openapi.json")).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        a.text
    );
    let paths = a.body["paths"].as_object().expect("paths");
    for (method, path) in EXPECTED_PATHS {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is documented"
        );
    }
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op["responses"].is_object(), "{method} {path} has responses");
            let url = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
            let req = match method.as_str() {
                "get" => get(&t, &url),
                "post" => post(&t, &url, json!({})),
                m => panic!("unexpected method {m}"),
            };
            let a = send(req).await;
            assert_ne!(a.status, 405, "{method} {path} is routed");
            assert_ne!(
                a.body["message"], "no such endpoint",
                "{method} {path} is routed"
            );
        }
    }
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        EXPECTED_PATHS.len(),
        "nothing undocumented in the list"
    );
    assert!(a.body["paths"]["/api/customer/action"]["post"]["requestBody"].is_object());
    assert!(a.body["components"]["securitySchemes"]["staffToken"].is_object());
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_the_envelope() {
    let t = common::start().await;
    assert_error(&send(get(&t, "/api/nope")).await, 404, "not_found");
    assert_error(&send(post(&t, "/nope", json!({}))).await, 404, "not_found");
    let a = send(get(&t, "/api/customer/action")).await;
    assert_error(&a, 405, "method_not_allowed");
    assert!(
        a.header("allow").is_some_and(|v| v.contains("POST")),
        "{:?}",
        a.headers
    );
    assert_error(
        &send(t.http.delete(t.api("/api/health"))).await,
        405,
        "method_not_allowed",
    );
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Middleware: rate limits, body limit, CORS, request ids
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_ip_answers_429_with_retry_after() {
    let t = common::start_with(|o| o.gateway.rate_per_ip = 3).await;
    for _ in 0..3 {
        assert_ok(&send(get(&t, "/api/health")).await, 200);
    }
    let a = send(post(&t, "/api/customer/action", action_body("c", "a"))).await;
    assert_error(&a, 429, "rate_limited");
    assert!((1..=60).contains(&retry_after(&a)), "{:?}", a.headers);
    // Refused before any route runs, yet in the envelope with the request's id.
    let a = send(get(&t, "/api/health").header("x-request-id", "limited-1")).await;
    assert_error(&a, 429, "rate_limited");
    assert_eq!(a.body["requestId"], "limited-1");
    assert_eq!(a.header("x-request-id"), Some("limited-1"));
    // A browser page can read the refusal.
    let a = send(get(&t, "/api/health").header("origin", "https://tool.example")).await;
    assert_error(&a, 429, "rate_limited");
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_openid_answers_429_with_retry_after() {
    let t = common::start_with(|o| o.gateway.rate_per_openid = 2).await;
    let busy = session(&t, "o_busy").await;
    let calm = session(&t, "o_calm").await;
    for _ in 0..2 {
        assert_ok(
            &send(post(&t, "/api/customer/action", action_body("c", "a")).bearer_auth(&busy)).await,
            201,
        );
    }
    let a = send(post(&t, "/api/customer/action", action_body("c", "a")).bearer_auth(&busy)).await;
    assert_error(&a, 429, "rate_limited");
    assert!((1..=60).contains(&retry_after(&a)));
    assert_ok(
        &send(post(&t, "/api/customer/action", action_body("c", "a")).bearer_auth(&calm)).await,
        201,
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_in_chunks_is_read_whole_and_in_order() {
    let t = common::start().await;
    let addr = gateway_addr(&t);
    // The JSON is cut mid-name and mid-value: any chunk dropped, kept alone or put out of order
    // leaves a body that does not parse (400).
    let mut req = b"POST /api/customer/action HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in [
        &b"{\"customerId\":\"c-chunked\",\"advis"[..],
        b"orId\":\"a-chunked\",\"actionType\":\"view_",
        b"resume\",\"actionData\":{\"resumeId\":\"r-1\"}}",
    ] {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let a = raw_http(&addr, &req).await;
    assert_ok(&a, 201);
    assert!(a.body["data"]["actionId"].is_string(), "{}", a.text);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413() {
    let t = common::start().await;
    let limit = 64 * 1024;
    let mut body = action_body("c", "a");
    body["padding"] = json!("x".repeat(limit));
    let a = send(post(&t, "/api/customer/action", body)).await;
    assert_error(&a, 413, "payload_too_large");
    // Without a Content-Length (chunked), the limit holds all the same.
    let addr = t
        .stack
        .gateway_url
        .trim_start_matches("http://")
        .to_string();
    let mut req = b"POST /api/customer/action HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in [
        b"{\"customerId\":\"".to_vec(),
        vec![b'x'; limit],
        b"\"}".to_vec(),
    ] {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let a = raw_http(&addr, &req).await;
    assert_error(&a, 413, "payload_too_large");
    // A client that waits for "100 Continue" is refused at once, before it sends the body.
    let started = Instant::now();
    let a = raw_http(
        &addr,
        b"POST /api/customer/action HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&a, 413, "payload_too_large");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not waiting for a body it refuses"
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_any_origin_by_default_and_exposes_the_request_id() {
    let t = common::start().await;
    let a = send(get(&t, "/api/health").header("origin", "https://servicewechat.com")).await;
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert!(a
        .header("access-control-expose-headers")
        .is_some_and(|h| h.to_ascii_lowercase().contains("x-request-id")));
    // Without `Origin` (the mini-program, any non-browser client): no CORS headers, and a
    // `Vary` that keeps caches from serving this answer to a browser.
    let plain = send(get(&t, "/api/health")).await;
    assert_ok(&plain, 200);
    assert_eq!(plain.header("access-control-allow-origin"), None);
    assert_eq!(plain.header("vary"), Some("origin"));
    // OPTIONS is answered as a preflight with or without `Origin`, as tower-http always did.
    let options = send(
        t.http
            .request(reqwest::Method::OPTIONS, t.api("/api/health")),
    )
    .await;
    assert!(options.status < 300, "{} {}", options.status, options.text);
    let pre = send(
        t.http
            .request(reqwest::Method::OPTIONS, t.api("/api/customer/action"))
            .header("origin", "https://servicewechat.com")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization,idempotency-key",
            ),
    )
    .await;
    assert!(pre.status < 300, "preflight: {} {}", pre.status, pre.text);
    assert!(
        pre.header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{:?}",
        pre.headers
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_from_cors_origin_allows_only_those_origins() {
    let t =
        common::start_with(|o| o.gateway.cors_origins = vec!["https://admin.ande.example".into()])
            .await;
    let a = send(get(&t, "/api/health").header("origin", "https://admin.ande.example")).await;
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://admin.ande.example")
    );
    let a = send(get(&t, "/api/health").header("origin", "https://evil.example")).await;
    assert_eq!(a.header("access-control-allow-origin"), None);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_accepted_echoed_and_in_the_body() {
    let t = common::start().await;
    let a = send(get(&t, "/api/health").header("x-request-id", "mini-42")).await;
    assert_ok(&a, 200);
    assert_eq!(a.body["requestId"], "mini-42");
    // On errors too.
    let a =
        send(post(&t, "/api/customer/action", json!({})).header("x-request-id", "mini-43")).await;
    assert_error(&a, 400, "validation_failed");
    assert_eq!(a.body["requestId"], "mini-43");
    // Made up when absent, and when the given one is not sane.
    let a = send(get(&t, "/api/health")).await;
    assert_ok(&a, 200);
    assert!(uuid::Uuid::parse_str(a.body["requestId"].as_str().unwrap()).is_ok());
    let a = send(get(&t, "/api/health").header("x-request-id", "r".repeat(300))).await;
    assert_ok(&a, 200);
    assert_ne!(a.body["requestId"], "r".repeat(300));
    let b = send(get(&t, "/api/health")).await;
    assert_ne!(
        a.body["requestId"], b.body["requestId"],
        "one id per request"
    );
    t.stack.stop().await.unwrap();
}

/// Send bytes as they are on a fresh connection (for what an HTTP client will not send) and read
/// the answer until the server closes.
async fn raw_http(addr: &str, request: &[u8]) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (413) before reading everything: a failed write is not a failure.
    let _ = conn.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut headers = HeaderMap::new();
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            chunked |= k == "transfer-encoding" && v.contains("chunked");
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
    }
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        headers,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        text: body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The event bus is down
// ---------------------------------------------------------------------------------------------

/// A gateway alone (no leads, no notifier, no simulator) whose NATS is `nats_url`.
struct LoneGateway {
    url: String,
    pool: sqlx::PgPool,
    http: reqwest::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LoneGateway {
    async fn start(mut common: ande_platform::config::CommonConfig, nats_url: &str) -> Self {
        ande_platform::telemetry::init_for_tests();
        common.nats_url = nats_url.to_string();
        let mut config = ande_gateway::GatewayConfig::with_common(common, "http://127.0.0.1:1");
        config.port = 0;
        config.jwt_secret = secret();
        let gateway = ande_gateway::Gateway::bind(config)
            .await
            .expect("the gateway starts without NATS");
        let url = format!("http://{}", gateway.addr);
        let pool = gateway.state().pool.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(gateway.run(stop.clone()));
        Self {
            url,
            pool,
            http: ande_wechat::http::client(),
            stop,
            task,
        }
    }
    fn post(&self, path: &str, body: Value) -> RequestBuilder {
        self.http.post(format!("{}{path}", self.url)).json(&body)
    }
    fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Send and check that the answer came within the 2 s the issue allows.
async fn timed(req: RequestBuilder) -> Answer {
    let started = Instant::now();
    let a = send(req).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered in {:?}: {}",
        started.elapsed(),
        a.text
    );
    a
}

fn assert_bus_down(a: &Answer) {
    assert_error(a, 503, "event_bus_unavailable");
    assert!(retry_after(a) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_the_gateway_starts_and_answers_503_within_two_seconds() {
    let g = LoneGateway::start(
        ande_platform::testing::isolated_config().await,
        "nats://127.0.0.1:1",
    )
    .await;

    assert_bus_down(&timed(g.post("/api/customer/action", action_body("c", "a"))).await);
    let advisor = auth::issue(
        &secret(),
        auth::MINIPROGRAM_AUDIENCE,
        "o_a",
        None,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_bus_down(
        &timed(
            g.post(
                "/api/advisor/subscribe",
                json!({"advisorId": "a", "templateId": "T", "subscribed": true}),
            )
            .bearer_auth(&advisor),
        )
        .await,
    );
    // Validation still comes first: a bad request is a 400 whatever the bus.
    assert_invalid_field(
        &timed(g.post("/api/customer/action", json!({"advisorId": "a"}))).await,
        "customerId",
    );

    // Staff login needs only Postgres; what needs the notifier or leads is 503 at once.
    auth::set_staff_password(
        &g.pool,
        "ops",
        SecretString::from("correct horse battery".to_string()),
    )
    .await
    .unwrap();
    let login = send(g.post(
        "/api/auth/login",
        json!({"username": "ops", "password": "correct horse battery"}),
    ))
    .await;
    assert_ok(&login, 200);
    let staff = login.data()["token"].as_str().unwrap().to_string();
    assert_bus_down(
        &timed(
            g.post("/api/message/send", message("o_target"))
                .bearer_auth(&staff),
        )
        .await,
    );
    assert_bus_down(
        &timed(
            g.get(&format!("/api/actions/{}", uuid::Uuid::now_v7()))
                .bearer_auth(&staff),
        )
        .await,
    );
    assert_bus_down(&timed(g.post("/api/wechat/phone", json!({"code": "c"}))).await);

    let h = timed(g.get("/api/health")).await;
    assert_ok(&h, 200);
    assert_eq!(h.data()["nats"], "disconnected");
    assert_eq!(h.data()["database"], "ok");
    let r = timed(g.get("/api/health/ready")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.data()["status"], "degraded");
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leads_notifier_or_wechat_the_gateway_answers_at_once() {
    // NATS is there, but no leads or notifier answers, and WeChat is a closed port.
    let common = ande_platform::testing::isolated_config().await;
    let nats_url = common.nats_url.clone();
    let g = LoneGateway::start(common, &nats_url).await;
    auth::set_staff_password(
        &g.pool,
        "ops",
        SecretString::from("correct horse battery".to_string()),
    )
    .await
    .unwrap();
    let login = send(g.post(
        "/api/auth/login",
        json!({"username": "ops", "password": "correct horse battery"}),
    ))
    .await;
    let staff = login.data()["token"].as_str().unwrap().to_string();

    let a = timed(
        g.get(&format!("/api/actions/{}", uuid::Uuid::now_v7()))
            .bearer_auth(&staff),
    )
    .await;
    assert_error(&a, 503, "service_unavailable");
    let a = timed(
        g.post("/api/message/send", message("o_target"))
            .bearer_auth(&staff),
    )
    .await;
    assert_error(&a, 503, "service_unavailable");
    let a = timed(g.post("/api/wechat/phone", json!({"code": "c"}))).await;
    assert_error(&a, 503, "service_unavailable");
    let a = timed(g.post("/api/wechat/openid", json!({"code": "c"}))).await;
    assert_error(&a, 502, "wechat_unreachable");
    assert!(
        !a.text.contains("127.0.0.1:1") && !a.text.contains("secret"),
        "no internals in the answer: {}",
        a.text
    );
    // Recording needs only JetStream: it works.
    assert_ok(
        &timed(g.post("/api/customer/action", action_body("c", "a"))).await,
        201,
    );
    g.stop().await;
}

/// A TCP proxy to NATS that the test switches on and off; switching off cuts every connection.
struct Proxy {
    addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

async fn proxy_to(target: String) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (up, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut rx = rx.clone();
            if !*rx.borrow() {
                continue; // dropped: the client sees the connection closed
            }
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = rx.wait_for(|up| !*up) => {}
                }
            });
        }
    });
    Proxy { addr, up }
}

/// `host:port` of the first server of a NATS URL.
fn nats_host_port(url: &str) -> String {
    let first = url.split(',').next().unwrap().trim();
    let no_scheme = first.split_once("://").map_or(first, |(_, r)| r);
    let no_auth = no_scheme.rsplit_once('@').map_or(no_scheme, |(_, r)| r);
    let host = no_auth.trim_end_matches('/');
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:4222")
    }
}

/// Post an action until it is recorded (the gateway reconnected), or give up after a while.
async fn action_until_recorded(g: &LoneGateway) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = send(g.post("/api/customer/action", action_body("c", "a"))).await;
        if a.status == 201 || Instant::now() > deadline {
            return a;
        }
        assert_bus_down(&a);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_recovers_by_itself_when_nats_comes_back() {
    let common = ande_platform::testing::isolated_config().await;
    let proxy = proxy_to(nats_host_port(&common.nats_url)).await;
    let g = LoneGateway::start(common, &format!("nats://{}", proxy.addr)).await;

    // NATS is not there at start: 503 at once.
    assert_bus_down(&timed(g.post("/api/customer/action", action_body("c", "a"))).await);

    // NATS arrives: the gateway connects, creates its stream, and records.
    proxy.up.send(true).unwrap();
    let a = action_until_recorded(&g).await;
    assert_ok(&a, 201);
    let r = send(g.get("/api/health/ready")).await;
    assert_ok(&r, 200);

    // NATS goes away while running: 503 within 2 s once the connection is seen gone.
    proxy.up.send(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while send(g.get("/api/health")).await.data()["nats"] == "connected"
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_bus_down(&timed(g.post("/api/customer/action", action_body("c", "a"))).await);

    // And back again.
    proxy.up.send(true).unwrap();
    assert_ok(&action_until_recorded(&g).await, 201);
    g.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Malformed bodies: never a 5xx, always the error envelope
// ---------------------------------------------------------------------------------------------

const FIELDS: [&str; 18] = [
    "code",
    "advisorId",
    "openid",
    "templateId",
    "subscribed",
    "subscribeData",
    "result",
    "customerId",
    "actionType",
    "actionData",
    "customerName",
    "customerPhone",
    "touser",
    "template_id",
    "data",
    "page",
    "username",
    "password",
];

/// Every field of every endpoint set to `v`.
fn all_fields(v: Value) -> Vec<u8> {
    let m: serde_json::Map<String, Value> =
        FIELDS.iter().map(|f| (f.to_string(), v.clone())).collect();
    serde_json::to_vec(&m).unwrap()
}

fn nested(depth: usize, open: &str, close: &str, leaf: &str) -> Vec<u8> {
    format!("{}{leaf}{}", open.repeat(depth), close.repeat(depth)).into_bytes()
}

/// (name, content type, body, expected status)
fn corpus() -> Vec<(String, Option<&'static str>, Vec<u8>, u16)> {
    const JSON: Option<&str> = Some("application/json");
    let mut c: Vec<(String, Option<&'static str>, Vec<u8>, u16)> = Vec::new();
    let mut add = |name: &str, ct: Option<&'static str>, body: Vec<u8>, status: u16| {
        c.push((name.to_string(), ct, body, status))
    };
    add("empty body", JSON, vec![], 400);
    add("whitespace body", JSON, b" \n\t ".to_vec(), 400);
    add("empty body, no content type", None, vec![], 400);
    for top in [
        "[]",
        r#"[{"code":"c","customerId":"c","advisorId":"a","actionType":"v"}]"#,
        "null",
        "42",
        "-1.5e300",
        "\"code\"",
        "true",
    ] {
        add(
            &format!("top level {top}"),
            JSON,
            top.as_bytes().to_vec(),
            400,
        );
    }
    add("truncated", JSON, br#"{"code": "abc"#.to_vec(), 400);
    add(
        "trailing garbage",
        JSON,
        br#"{"code": "abc"} xyz"#.to_vec(),
        400,
    );
    add("two objects", JSON, br#"{}{}"#.to_vec(), 400);
    add("single quotes", JSON, b"{'code': 'abc'}".to_vec(), 400);
    add("comment", JSON, b"{/* c */}".to_vec(), 400);
    add(
        "number out of range",
        JSON,
        br#"{"code": 1e400}"#.to_vec(),
        400,
    );
    add(
        "invalid UTF-8 in strings",
        JSON,
        {
            let mut b = b"{".to_vec();
            for (i, f) in FIELDS.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(format!("\"{f}\":\"a").as_bytes());
                b.extend_from_slice(&[0xff, 0xfe, 0xc3]);
                b.push(b'"');
            }
            b.push(b'}');
            b
        },
        400,
    );
    add(
        "invalid UTF-8 bytes",
        JSON,
        vec![0xff, 0xfe, 0xfd, 0x00, 0x80],
        400,
    );
    add(
        "UTF-16 body",
        JSON,
        "{\"code\":\"abc\"}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect(),
        400,
    );
    add("lone surrogate", JSON, all_fields_raw(r#""\ud800""#), 400);
    add("NUL bytes", JSON, b"{\"code\":\"a\0b\"}".to_vec(), 400);
    add(
        "deep nesting, arrays",
        JSON,
        nested(10_000, "[", "]", "1"),
        400,
    );
    add(
        "deep nesting, objects",
        JSON,
        nested(10_000, "{\"a\":", "}", "1"),
        400,
    );
    add(
        "deep nesting inside a field",
        JSON,
        [
            b"{\"actionData\":".to_vec(),
            nested(10_000, "{\"a\":", "}", "1"),
            b"}".to_vec(),
        ]
        .concat(),
        400,
    );
    add(
        "deep nesting, unclosed",
        JSON,
        "[".repeat(10_000).into_bytes(),
        400,
    );
    for (name, v) in [
        ("true", json!(true)),
        ("false", json!(false)),
        ("null", Value::Null),
        ("array", json!([])),
        ("array of strings", json!(["a", "b"])),
        ("object", json!({"nested": [1, {"x": null}]})),
        ("empty string", json!("")),
        ("blank string", json!("   ")),
        ("NUL", json!("\u{0}")),
        ("control characters", json!("a\u{7}\u{1b}[31mb")),
        ("huge strings", json!("x".repeat(3000))),
        ("huge multibyte strings", json!("顾".repeat(1000))),
    ] {
        add(&format!("every field {name}"), JSON, all_fields(v), 400);
    }
    add(
        "one huge string",
        JSON,
        serde_json::to_vec(&json!({"code": "x".repeat(60_000), "customerId": "x".repeat(60)}))
            .unwrap(),
        400,
    );
    add(
        "many keys",
        JSON,
        {
            let m: serde_json::Map<String, Value> =
                (0..4000).map(|i| (format!("k{i}"), json!(i))).collect();
            serde_json::to_vec(&m).unwrap()
        },
        400,
    );
    add(
        "form content type",
        Some("application/x-www-form-urlencoded"),
        b"code=abc&customerId=c&advisorId=a&actionType=view".to_vec(),
        400,
    );
    add(
        "text/plain prose",
        Some("text/plain"),
        b"hello world".to_vec(),
        400,
    );
    add(
        "xml",
        Some("application/xml"),
        b"<code>abc</code>".to_vec(),
        400,
    );
    add(
        "multipart",
        Some("multipart/form-data; boundary=x"),
        b"--x\r\nContent-Disposition: form-data; name=\"code\"\r\n\r\nabc\r\n--x--\r\n".to_vec(),
        400,
    );
    add(
        "1 MB string",
        JSON,
        serde_json::to_vec(&json!({"code": "x".repeat(1 << 20)})).unwrap(),
        413,
    );
    add(
        "1 MB array",
        JSON,
        format!("[{}1]", "1,".repeat(1 << 19)).into_bytes(),
        413,
    );
    add(
        "1 MB of garbage",
        Some("application/octet-stream"),
        vec![0xAB; 1 << 20],
        413,
    );
    c
}

fn all_fields_raw(raw_value: &str) -> Vec<u8> {
    let inner: Vec<String> = FIELDS
        .iter()
        .map(|f| format!("\"{f}\":{raw_value}"))
        .collect();
    format!("{{{}}}", inner.join(",")).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_never_get_a_5xx_and_always_the_error_envelope() {
    let t = common::start_with(|o| o.gateway.rate_per_ip = 100_000).await;
    let staff = staff_token(&t).await;
    let customer = session(&t, "o_corpus").await;
    let endpoints: [(&str, Option<&str>); 8] = [
        ("/api/wechat/openid", None),
        ("/api/wechat/phone", None),
        ("/api/wechat/phone", Some(&customer)),
        ("/api/advisor/subscribe", None),
        ("/api/customer/action", None),
        ("/api/customer/action", Some(&customer)),
        ("/api/message/send", Some(&staff)),
        ("/api/auth/login", None),
    ];
    let logins_before = sim_calls(&t, "jscode2session").await;
    let mut failures = Vec::new();
    for (name, content_type, body, expected) in corpus() {
        for (path, token) in endpoints {
            let mut req = t.http.post(t.api(path)).body(body.clone());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            if let Some(tok) = token {
                req = req.bearer_auth(tok);
            }
            let a = match try_send(req).await {
                Ok(a) => a,
                Err(e) => {
                    failures.push(format!("{path} with {name}: no answer ({e:?})"));
                    continue;
                }
            };
            let envelope_ok = a.body["success"] == false
                && a.body["error"]["code"].is_string()
                && a.body["message"].is_string()
                && a.body["requestId"].is_string()
                && a.header("x-request-id") == a.body["requestId"].as_str();
            if a.status != expected || !envelope_ok {
                failures.push(format!(
                    "{path} with {name}: {} {}",
                    a.status,
                    a.text.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} malformed requests answered badly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        sim_calls(&t, "jscode2session").await,
        logins_before,
        "no malformed body reached WeChat"
    );
    assert_eq!(sim_calls(&t, "subscribe_send").await, 0);
    assert_eq!(sim_calls(&t, "phone_number").await, 0);
    // The gateway still works, and once leads has stored this action (published after every
    // malformed request, so consumed after anything they might have published), it is the only
    // one: nothing malformed was recorded.
    let marker = send(post(&t, "/api/customer/action", action_body("c", "a"))).await;
    assert_ok(&marker, 201);
    let db = t.db().await;
    let marker_id = marker.body["data"]["actionId"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = wait_row(
        &db,
        "SELECT 1 FROM leads.actions WHERE action_id = $1::uuid",
        &marker_id,
    )
    .await;
    assert!(stored.is_some(), "leads stored the valid action");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM leads.actions")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_subscribe_with_an_idempotency_key_adds_each_credit_once() {
    let t = common::start().await;
    let db = t.db().await;
    let advisor = advisor_session(&t, "adv-idem", "o_idem").await;
    let body = json!({"advisorId": "adv-idem", "openid": "o_idem", "result": {"T_A": "accept", "T_B": "accept", "errMsg": "requestSubscribeMessage:ok"}});
    let first = send(
        post(&t, "/api/advisor/subscribe", body.clone())
            .header("Idempotency-Key", "sub-1")
            .bearer_auth(&advisor),
    )
    .await;
    assert_ok(&first, 201);
    let retry = send(
        post(&t, "/api/advisor/subscribe", body.clone())
            .header("Idempotency-Key", "sub-1")
            .bearer_auth(&advisor),
    )
    .await;
    assert_ok(&retry, 201);
    assert_eq!(
        first.body["data"]["recorded"], retry.body["data"]["recorded"],
        "same event ids"
    );
    // A new key is a new decision: one more credit.
    let other = send(
        post(&t, "/api/advisor/subscribe", body)
            .header("Idempotency-Key", "sub-2")
            .bearer_auth(&advisor),
    )
    .await;
    assert_ok(&other, 201);
    for _ in 0..200 {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT sum(credits)::bigint FROM notifier.subscriptions WHERE openid = 'o_idem'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifier.subscription_events WHERE openid = 'o_idem'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if total == Some(4) && events == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let credits: Vec<(String, i32)> = sqlx::query_as("SELECT template_id, credits FROM notifier.subscriptions WHERE openid = 'o_idem' ORDER BY template_id").fetch_all(&db).await.unwrap();
    assert_eq!(
        credits,
        vec![("T_A".to_string(), 2), ("T_B".to_string(), 2)]
    );
    // The same key for another decision is refused.
    let changed = json!({"advisorId": "adv-idem", "openid": "o_idem", "result": {"T_A": "reject"}});
    let conflict = send(
        post(&t, "/api/advisor/subscribe", changed)
            .header("Idempotency-Key", "sub-1")
            .bearer_auth(&advisor),
    )
    .await;
    assert_error(&conflict, 409, "idempotency_key_reused");
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_character_in_the_subscribe_source_is_refused_not_passed_on() {
    let t = common::start().await;
    let body = json!({"advisorId": "a", "openid": "o_src", "templateId": "T", "subscribed": true, "subscribeData": {"source": "mini\u{0}program"}});
    let a = send(post(&t, "/api/advisor/subscribe", body)).await;
    assert_invalid_field(&a, "subscribeData.source");
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_digest_page_lists_the_waiting_actions_for_the_advisor_only() {
    let t = common::start().await;
    let template = ande_wechat::DEV_TEMPLATE_ID;
    let advisor_openid = "o_digest_advisor";
    // Three customers act while the advisor has no subscription: all three wait.
    for (i, name) in ["甲", "乙", "丙"].iter().enumerate() {
        let mut body = action_body(&format!("c{i}"), "adv-digest");
        body["customerName"] = json!(name);
        body["customerPhone"] = json!(format!("1370000000{i}"));
        assert_ok(&send(post(&t, "/api/customer/action", body)).await, 201);
    }
    let db = t.db().await;
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE advisor_id = 'adv-digest' AND state = 'waiting_credit'")
            .fetch_one(&db)
            .await
            .unwrap();
        if waiting == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The accept releases them as one digest.
    t.advisor_accepts("adv-digest", advisor_openid, template)
        .await;
    let messages = t.wait_messages(advisor_openid, 1).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let page = messages[0]["page"].as_str().unwrap();
    let digest_id = page.split("digest=").nth(1).expect("a digest page");
    let path = format!("/api/digests/{digest_id}");

    let advisor = session(&t, advisor_openid).await;
    let a = send(get(&t, &path).bearer_auth(&advisor)).await;
    assert_ok(&a, 200);
    assert_eq!(a.data()["count"], 3);
    let mut names: Vec<&str> = a.data()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["customerName"].as_str().unwrap())
        .collect();
    // Listed oldest first; three actions of one batch may share a millisecond, so compare the set.
    names.sort_unstable();
    let mut expected = ["甲", "乙", "丙"];
    expected.sort_unstable();
    assert_eq!(names, expected);
    assert_eq!(a.data()["state"], "sent");

    let other = session(&t, "o_someone_else").await;
    assert_error(
        &send(get(&t, &path).bearer_auth(&other)).await,
        403,
        "forbidden",
    );
    // Unbound from the advisor, the phone that received it loses access.
    sqlx::query("DELETE FROM notifier.advisor_bindings WHERE advisor_id = 'adv-digest'")
        .execute(&db)
        .await
        .unwrap();
    assert_error(
        &send(get(&t, &path).bearer_auth(&advisor)).await,
        403,
        "forbidden",
    );
    let staff = staff_token(&t).await;
    assert_ok(&send(get(&t, &path).bearer_auth(&staff)).await, 200);
    let unknown = format!("/api/digests/{}", uuid::Uuid::now_v7());
    assert_error(
        &send(get(&t, &unknown).bearer_auth(&staff)).await,
        404,
        "not_found",
    );
    assert_error(
        &send(get(&t, "/api/digests/nope").bearer_auth(&staff)).await,
        400,
        "validation_failed",
    );
    assert_error(&send(get(&t, &path)).await, 401, "unauthorized");
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_changes_are_rate_limited_per_openid() {
    let t = common::start_with(|o| o.gateway.rate_per_openid = 2).await;
    let flood = advisor_session(&t, "a", "o_flood").await;
    let body = json!({"advisorId": "a", "templateId": "T", "subscribed": true});
    for _ in 0..2 {
        assert_ok(
            &send(post(&t, "/api/advisor/subscribe", body.clone()).bearer_auth(&flood)).await,
            201,
        );
    }
    // Keyed on the session's openid: naming another openid in the body changes nothing.
    let mut disguised = body.clone();
    disguised["openid"] = json!("o_other");
    let limited = send(post(&t, "/api/advisor/subscribe", disguised).bearer_auth(&flood)).await;
    assert_error(&limited, 429, "rate_limited");
    assert!(retry_after(&limited) >= 1);
    let other = advisor_session(&t, "a", "o_other").await;
    assert_ok(
        &send(post(&t, "/api/advisor/subscribe", body).bearer_auth(&other)).await,
        201,
    );
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Trust: advisors are proven by a binding, not asserted in a body
// ---------------------------------------------------------------------------------------------

async fn sim_messages(t: &TestStack, touser: &str) -> usize {
    t.messages(touser).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisors_notifications_cannot_be_hijacked_by_a_stranger() {
    let t = common::start().await;
    let db = t.db().await;
    let tpl = ande_wechat::DEV_TEMPLATE_ID;
    let (real, stranger) = ("o_real_adv7", "o_stranger");
    t.advisor_accepts("adv-7", real, tpl).await;
    // The stranger holds credits inside WeChat, so a send to them would succeed.
    sim_post(
        &t,
        "/sim/credits",
        json!({"openid": stranger, "template_id": tpl, "count": 5}),
    )
    .await;

    let accept = json!({"advisorId": "adv-7", "templateId": tpl, "subscribed": true});
    let strangers = session(&t, stranger).await;
    let a = send(post(&t, "/api/advisor/subscribe", accept.clone()).bearer_auth(&strangers)).await;
    assert_error(&a, 403, "forbidden");
    let mut anonymous = accept.clone();
    anonymous["openid"] = json!(stranger);
    assert_error(
        &send(post(&t, "/api/advisor/subscribe", anonymous)).await,
        403,
        "forbidden",
    );
    // A ban for the real advisor's openid, anonymous or from the stranger's session: refused.
    let ban = json!({"advisorId": "adv-7", "openid": real, "templateId": tpl, "subscribeData": {"subscriptionStatus": "ban"}});
    assert_error(
        &send(post(&t, "/api/advisor/subscribe", ban.clone())).await,
        403,
        "forbidden",
    );
    assert_error(
        &send(post(&t, "/api/advisor/subscribe", ban).bearer_auth(&strangers)).await,
        403,
        "forbidden",
    );
    let stranger_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifier.subscription_events WHERE openid = $1")
            .bind(stranger)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(stranger_rows, 0, "nothing recorded for the stranger");

    // The next customer action reaches the real advisor, and only them.
    let mut body = action_body("cust-h", "adv-7");
    body["customerPhone"] = json!("13700000077");
    assert_ok(&send(post(&t, "/api/customer/action", body)).await, 201);
    assert_eq!(t.wait_messages(real, 1).await.len(), 1);
    assert_eq!(sim_messages(&t, stranger).await, 0);

    // Even a subscription recorded for an unbound openid (say, before this release) is never
    // used: only bound openids receive an advisor's notifications.
    sqlx::query("INSERT INTO notifier.subscriptions (advisor_id, openid, template_id, credits, last_status, accepts) VALUES ('adv-7', $1, $2, 5, 'accept', 5)")
        .bind(stranger)
        .bind(tpl)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE notifier.subscriptions SET updated_at = now() + interval '1 hour' WHERE openid = $1")
        .bind(stranger)
        .execute(&db)
        .await
        .unwrap();
    t.advisor_accepts("adv-7", real, tpl).await;
    let mut body = action_body("cust-h2", "adv-7");
    body["customerPhone"] = json!("13700000078");
    assert_ok(&send(post(&t, "/api/customer/action", body)).await, 201);
    assert_eq!(t.wait_messages(real, 2).await.len(), 2);
    assert_eq!(sim_messages(&t, stranger).await, 0);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisors_bind_by_staff_or_by_a_one_time_pairing_code() {
    let t = common::start().await;
    let staff = staff_token(&t).await;
    let tpl = ande_wechat::DEV_TEMPLATE_ID;
    let advisor = session(&t, "o_paired").await;
    let accept = json!({"advisorId": "adv-p", "templateId": tpl, "subscribed": true});
    assert_error(
        &send(post(&t, "/api/advisor/subscribe", accept.clone()).bearer_auth(&advisor)).await,
        403,
        "forbidden",
    );

    // Pairing codes are made by staff only.
    let pairing = json!({"advisorId": "adv-p"});
    assert_error(
        &send(post(&t, "/api/advisor-pairings", pairing.clone()).bearer_auth(&advisor)).await,
        403,
        "forbidden",
    );
    let made = send(post(&t, "/api/advisor-pairings", pairing.clone()).bearer_auth(&staff)).await;
    assert_ok(&made, 201);
    let code = made.data()["code"].as_str().unwrap().to_string();

    // Redeemed from the advisor's own session, once.
    assert_error(
        &send(post(&t, "/api/advisor/bind", json!({"code": code}))).await,
        401,
        "unauthorized",
    );
    let bound =
        send(post(&t, "/api/advisor/bind", json!({"code": code})).bearer_auth(&advisor)).await;
    assert_ok(&bound, 201);
    assert_eq!(bound.data()["advisorId"], "adv-p");
    assert_eq!(bound.data()["openid"], "o_paired");
    assert_eq!(bound.data()["boundBy"], "pairing");
    let thief = session(&t, "o_thief").await;
    assert_error(
        &send(post(&t, "/api/advisor/bind", json!({"code": code})).bearer_auth(&thief)).await,
        404,
        "not_found",
    );
    assert_ok(
        &send(post(&t, "/api/advisor/subscribe", accept.clone()).bearer_auth(&advisor)).await,
        201,
    );

    // An expired code binds nobody.
    let late = send(post(&t, "/api/advisor-pairings", pairing).bearer_auth(&staff)).await;
    let late_code = late.data()["code"].as_str().unwrap().to_string();
    let db = t.db().await;
    sqlx::query("UPDATE notifier.advisor_pairings SET expires_at = now() - interval '1 second' WHERE redeemed_at IS NULL")
        .execute(&db)
        .await
        .unwrap();
    assert_error(
        &send(post(&t, "/api/advisor/bind", json!({"code": late_code})).bearer_auth(&thief)).await,
        404,
        "not_found",
    );

    // Staff list, unbind and bind directly.
    let listed = send(get(&t, "/api/advisor-bindings?advisorId=adv-p").bearer_auth(&staff)).await;
    assert_ok(&listed, 200);
    assert_eq!(listed.data()["bindings"].as_array().unwrap().len(), 1);
    assert_error(
        &send(get(&t, "/api/advisor-bindings").bearer_auth(&advisor)).await,
        403,
        "forbidden",
    );
    let key = json!({"advisorId": "adv-p", "openid": "o_paired"});
    // Nobody but staff binds or unbinds: not a customer's session, not an anonymous caller.
    for path in ["/api/advisor-bindings", "/api/advisor-bindings/unbind"] {
        let by_customer = post(&t, path, key.clone()).bearer_auth(&thief);
        assert_error(&send(by_customer).await, 403, "forbidden");
        assert_error(
            &send(post(&t, path, key.clone())).await,
            401,
            "unauthorized",
        );
    }
    assert_ok(
        &send(post(&t, "/api/advisor-bindings/unbind", key.clone()).bearer_auth(&staff)).await,
        200,
    );
    assert_error(
        &send(post(&t, "/api/advisor-bindings/unbind", key.clone()).bearer_auth(&staff)).await,
        404,
        "not_found",
    );
    assert_error(
        &send(post(&t, "/api/advisor/subscribe", accept.clone()).bearer_auth(&advisor)).await,
        403,
        "forbidden",
    );
    let rebound = send(post(&t, "/api/advisor-bindings", key).bearer_auth(&staff)).await;
    assert_ok(&rebound, 201);
    assert_eq!(rebound.data()["boundBy"], "staff:ops");
    assert_ok(
        &send(post(&t, "/api/advisor/subscribe", accept).bearer_auth(&advisor)).await,
        201,
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_token_forged_with_the_development_secret_is_rejected() {
    let t = with_secret().await;
    let forged = auth::issue(
        &SecretString::from(ande_gateway::config::DEV_JWT_SECRET.to_string()),
        auth::STAFF_AUDIENCE,
        "ops",
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    let a = send(get(&t, "/api/advisor-bindings").bearer_auth(&forged)).await;
    assert_error(&a, 401, "unauthorized");
    let a = send(post(&t, "/api/message/send", message("o_target")).bearer_auth(&forged)).await;
    assert_error(&a, 401, "unauthorized");
    // A customer session is no staff token either, even signed with the right secret.
    let customer = session(&t, "o_not_staff").await;
    let a = send(get(&t, "/api/advisor-bindings").bearer_auth(&customer)).await;
    assert_error(&a, 403, "forbidden");
    t.stack.stop().await.unwrap();
}

#[test]
fn outside_development_the_gateway_binary_refuses_to_start_without_a_secret() {
    let run = |extra: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in extra {
            c.env(k, v);
        }
        c.env("API_PORT", "1").output().unwrap()
    };
    // No ANDE_ENV is production: the development JWT secret (the default) is refused, on
    // loopback too, before anything is started.
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("JWT_SECRET"), "{err}");
    let out = run(&[("JWT_SECRET", "abababababababababababababababababab")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("too repetitive"));
    let out = run(&[
        ("JWT_SECRET", "q9G2v+Lr8ZtX0mN4bK7cW1sJ5yHdPfE3aUoR6iTg"),
        ("WECHAT_API_BASE", "http://127.0.0.1:3900"),
        ("WECHAT_APP_ID", "wx1234567890abcdef"),
        ("WECHAT_APP_SECRET", "0123456789abcdef0123456789abcdef"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WECHAT_API_BASE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_actions_can_be_refused_outright() {
    let t = common::start_with(|o| o.gateway.anonymous_actions = false).await;
    let a = send(post(
        &t,
        "/api/customer/action",
        action_body("c-anon", "adv-a"),
    ))
    .await;
    assert_error(&a, 401, "unauthorized");
    let customer = session(&t, "o_with_session").await;
    let a = send(
        post(&t, "/api/customer/action", action_body("c-anon", "adv-a")).bearer_auth(&customer),
    )
    .await;
    assert_ok(&a, 201);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_anonymous_actions_spends_the_budget_and_delays_no_verified_customer() {
    const FLOOD: usize = 5_000;
    const BUDGET: i64 = 20;
    let t = common::start_with(|o| {
        o.gateway.rate_per_ip = 1_000_000;
        o.notifier.anonymous_per_hour = BUDGET;
    })
    .await;
    let db = t.db().await;
    let (adv, advisor_openid) = ("adv-flood", "o_adv_flood");
    t.advisor_accepts(adv, advisor_openid, TEMPLATE).await;
    // Plenty of credit, ours and WeChat's: only the budget can hold the flood back.
    // (once the notifier has applied the accept)
    for _ in 0..200 {
        let done = sqlx::query("UPDATE notifier.subscriptions SET credits = 500, accepts = 500 WHERE advisor_id = $1 AND accepts >= 1")
            .bind(adv)
            .execute(&db)
            .await
            .unwrap()
            .rows_affected();
        if done == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sim_post(
        &t,
        "/sim/credits",
        json!({"openid": advisor_openid, "template_id": TEMPLATE, "count": 500}),
    )
    .await;

    // A verified customer's latency before the flood, for comparison.
    let customer = session(&t, "o_verified_flood").await;
    let verified = |n: usize| {
        let mut b = action_body(&format!("c-verified-{n}"), adv);
        b["customerPhone"] = json!(format!("1360000000{n}"));
        b
    };
    let start = std::time::Instant::now();
    assert_ok(
        &send(post(&t, "/api/customer/action", verified(1)).bearer_auth(&customer)).await,
        201,
    );
    t.wait_messages(advisor_openid, 1).await;
    let before = start.elapsed();

    // 5,000 anonymous actions naming the advisor, 16 at a time.
    let url = t.api("/api/customer/action");
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (http, url) = (t.http.clone(), url.clone());
        tasks.spawn(async move {
            for i in (w..FLOOD).step_by(16) {
                let body = json!({"customerId": format!("anon-{i}"), "advisorId": "adv-flood", "actionType": "view_resume",
                                  "customerPhone": format!("135{:08}", i)});
                let r = http.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 201);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Positive signal: the notifier has taken in every one of them.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifier.notifications WHERE advisor_id = $1 AND anonymous",
        )
        .bind(adv)
        .fetch_one(&db)
        .await
        .unwrap();
        if n == FLOOD as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} anonymous notifications stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The verified customer's notification arrives as fast as before the flood.
    let sent_before = sim_messages(&t, advisor_openid).await;
    let start = std::time::Instant::now();
    assert_ok(
        &send(post(&t, "/api/customer/action", verified(2)).bearer_auth(&customer)).await,
        201,
    );
    t.wait_messages(advisor_openid, sent_before + 1).await;
    let after = start.elapsed();
    let diag: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT state, anonymous, count(*) FROM notifier.notifications GROUP BY 1, 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let log: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT event, errcode FROM notifier.deliveries ORDER BY id DESC LIMIT 5")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(
        after < before * 3 + std::time::Duration::from_secs(1),
        "verified latency {after:?} after the flood vs {before:?} before; {diag:?} {log:?}"
    );
    // The flood spent at most its budget of the advisor's sends.
    let anonymous_sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifier.notifications WHERE advisor_id = $1 AND anonymous AND state IN ('queued', 'sending', 'sent')",
    )
    .bind(adv)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(anonymous_sent <= BUDGET, "{anonymous_sent} anonymous sends");
    assert!(
        sent_before as i64 <= 1 + BUDGET,
        "{sent_before} messages before the verified one"
    );
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Connections: slow and idle clients, the connection cap, who the client is
// ---------------------------------------------------------------------------------------------

fn gateway_addr(t: &TestStack) -> String {
    t.stack
        .gateway_url
        .trim_start_matches("http://")
        .to_string()
}

/// Read until the peer closes (Ok(true)) or `within` passes (Ok(false)).
async fn closed_within(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_normal_requests_still_served() {
    use tokio::io::AsyncWriteExt;
    let t = common::start_with(|o| {
        o.gateway.limits.header_timeout = std::time::Duration::from_secs(1);
        o.gateway.limits.idle_timeout = std::time::Duration::from_secs(2);
        o.gateway.limits.max_connections = 4;
    })
    .await;
    let addr = gateway_addr(&t);
    // Slowloris: four connections (the cap) that trickle a request head and never finish it.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let start = std::time::Instant::now();
    // Keep trickling while the header deadline runs: each is closed all the same.
    for s in slow.iter_mut() {
        let _ = s.write_all(b"X-A: 1\r\n").await;
    }
    for s in slow.iter_mut() {
        assert!(
            closed_within(s, std::time::Duration::from_secs(4)).await,
            "a slow client kept its connection"
        );
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(4));
    // A normal request is served (the slow ones held every slot until they were closed).
    assert_ok(&send(get(&t, "/api/health")).await, 200);

    // An idle keep-alive connection is closed after the idle deadline.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    assert!(closed_within(&mut idle, std::time::Duration::from_secs(5)).await);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_in_use_outlives_the_idle_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = std::time::Duration::from_secs(2);
    let t = common::start_with(|o| o.gateway.limits.idle_timeout = idle).await;
    let mut conn = tokio::net::TcpStream::connect(gateway_addr(&t))
        .await
        .unwrap();
    // Requests 1.5 s apart for 3 s: the idle timer set when the connection opened fires while
    // the connection is in use, and must wait for the rest of the idle time instead of closing.
    let mut last = std::time::Instant::now();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        }
        conn.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"}") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0, "request {i}: the connection was closed while in use");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"), "request {i}");
        last = std::time::Instant::now();
    }
    // Then left alone, it is closed about `idle` after its last read.
    assert!(closed_within(&mut conn, std::time::Duration::from_secs(5)).await);
    let quiet = last.elapsed();
    assert!(
        quiet >= idle - std::time::Duration::from_millis(200),
        "closed {quiet:?} after the last request"
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // From an untrusted peer, a new X-Forwarded-For each time does not make a new client.
    let t = common::start_with(|o| o.gateway.rate_per_ip = 3).await;
    for i in 0..3 {
        let a =
            send(get(&t, "/api/health").header("x-forwarded-for", format!("198.51.100.{i}"))).await;
        assert_ok(&a, 200);
    }
    let a = send(get(&t, "/api/health").header("x-forwarded-for", "198.51.100.99")).await;
    assert_error(&a, 429, "rate_limited");
    t.stack.stop().await.unwrap();

    // Behind our own proxy (here: loopback trusted), each forwarded client has its own bucket.
    let t = common::start_with(|o| {
        o.gateway.rate_per_ip = 3;
        o.gateway.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    for i in 0..6 {
        let a =
            send(get(&t, "/api/health").header("x-forwarded-for", format!("198.51.100.{i}"))).await;
        assert_ok(&a, 200);
    }
    // ... and a client's claim to the left of our proxy's entry changes nothing.
    for _ in 0..3 {
        let a =
            send(get(&t, "/api/health").header("x-forwarded-for", "6.6.6.6, 203.0.113.5")).await;
        assert_ok(&a, 200);
    }
    let a = send(get(&t, "/api/health").header("x-forwarded-for", "7.7.7.7, 203.0.113.5")).await;
    assert_error(&a, 429, "rate_limited");
    t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Staff login: throttled per client and account, tokens revoked by passwd and disable
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_flood_does_not_block_a_valid_login_from_elsewhere() {
    // Loopback is our "proxy", so X-Forwarded-For tells the clients apart.
    let t = common::start_with(|o| {
        o.gateway.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        o.gateway.rate_per_ip = 100_000;
    })
    .await;
    staff_token(&t).await;
    let login = |client: &'static str, password: &'static str| {
        post(
            &t,
            "/api/auth/login",
            json!({"username": "ops", "password": password}),
        )
        .header("x-forwarded-for", client)
    };
    // An attacker floods wrong passwords for the account from one client...
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let r = login("198.51.100.66", "wrong password!!");
        flood.spawn(async move { send(r).await.status });
    }
    // ... while the staff member logs in from their own.
    let a = send(login("198.51.100.7", "correct horse battery")).await;
    assert_ok(&a, 200);
    let mut statuses = Vec::new();
    while let Some(s) = flood.join_next().await {
        statuses.push(s.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "the flood is throttled: {statuses:?}"
    );
    // The attacker's client is locked out of the account even with the right password; the
    // staff member's is not.
    let a = send(login("198.51.100.66", "correct horse battery")).await;
    assert_error(&a, 429, "rate_limited");
    assert!(retry_after(&a) >= 1);
    assert_ok(
        &send(login("198.51.100.7", "correct horse battery")).await,
        200,
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_or_a_disabled_account_revokes_staff_tokens_at_once() {
    let t = common::start().await;
    let before = staff_token(&t).await;
    assert_ok(
        &send(get(&t, "/api/advisor-bindings").bearer_auth(&before)).await,
        200,
    );
    auth::set_staff_password(
        &t.stack.gateway_pool,
        "ops",
        SecretString::from("another horse battery".to_string()),
    )
    .await
    .unwrap();
    let a = send(get(&t, "/api/advisor-bindings").bearer_auth(&before)).await;
    assert_error(&a, 401, "unauthorized");
    let login = |pw: &str| {
        post(
            &t,
            "/api/auth/login",
            json!({"username": "ops", "password": pw}),
        )
    };
    let fresh = send(login("another horse battery")).await;
    assert_ok(&fresh, 200);
    let fresh = fresh.data()["token"].as_str().unwrap().to_string();
    assert_ok(
        &send(get(&t, "/api/advisor-bindings").bearer_auth(&fresh)).await,
        200,
    );

    assert!(auth::set_disabled(&t.stack.gateway_pool, "ops", true)
        .await
        .unwrap());
    assert_error(
        &send(get(&t, "/api/advisor-bindings").bearer_auth(&fresh)).await,
        401,
        "unauthorized",
    );
    assert_error(
        &send(login("another horse battery")).await,
        401,
        "unauthorized",
    );
    assert!(auth::set_disabled(&t.stack.gateway_pool, "ops", false)
        .await
        .unwrap());
    assert_error(
        &send(get(&t, "/api/advisor-bindings").bearer_auth(&fresh)).await,
        401,
        "unauthorized",
    );
    assert_ok(&send(login("another horse battery")).await, 200);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_send_retried_with_the_same_key_is_sent_once() {
    let t = with_secret().await;
    let staff = staff_token(&t).await;
    sim_post(
        &t,
        "/sim/credits",
        json!({"openid": "o_keyed", "template_id": TEMPLATE, "count": 5}),
    )
    .await;
    let calls = || sim_calls(&t, "subscribe_send");
    let before = calls().await;
    let keyed = |key: &str, body: Value| {
        post(&t, "/api/message/send", body)
            .bearer_auth(&staff)
            .header("Idempotency-Key", key)
    };
    let first = send(keyed("send-1", message("o_keyed"))).await;
    assert_ok(&first, 200);
    let again = send(keyed("send-1", message("o_keyed"))).await;
    assert_ok(&again, 200);
    assert_eq!(
        first.data()["msgid"],
        again.data()["msgid"],
        "the first answer"
    );
    assert_eq!(calls().await, before + 1, "one WeChat send");
    assert_eq!(sim_messages(&t, "o_keyed").await, 1);
    // The key for another message: a conflict, nothing sent.
    let other = send(keyed("send-1", message("o_someone_else"))).await;
    assert_error(&other, 409, "conflict");
    assert_eq!(calls().await, before + 1);
    // A refusal is kept too: the retry is told the same, WeChat is not asked again.
    let refused = send(keyed("send-2", message("o_no_credit"))).await;
    assert_error(&refused, 409, "wechat_no_subscription");
    let refused_again = send(keyed("send-2", message("o_no_credit"))).await;
    assert_error(&refused_again, 409, "wechat_no_subscription");
    assert_eq!(calls().await, before + 2);

    // WeChat too slow to answer: the outcome is unknown, said so, and never sent blind again.
    sim_post(
        &t,
        "/sim/faults",
        json!({"endpoint": "subscribe_send", "latency_ms": 6000, "count": 1}),
    )
    .await;
    let slow = send(keyed("send-3", message("o_keyed"))).await;
    assert_error(&slow, 502, "send_outcome_unknown");
    assert!(slow.text.contains("same Idempotency-Key"), "{}", slow.text);
    let retry = send(keyed("send-3", message("o_keyed"))).await;
    assert_error(&retry, 409, "conflict");
    assert!(retry.text.contains("unknown"), "{}", retry.text);
    assert_eq!(
        calls().await,
        before + 3,
        "the unknown send was not repeated"
    );
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_logins_and_phone_lookups_are_limited_per_client_and_session() {
    let t = common::start_with(|o| o.gateway.rate_wechat = 3).await;
    for i in 0..3 {
        let code = login_code(&t, &format!("o_quota_{i}")).await;
        assert_ok(
            &send(post(&t, "/api/wechat/openid", json!({"code": code}))).await,
            200,
        );
    }
    let code = login_code(&t, "o_quota_3").await;
    let a = send(post(&t, "/api/wechat/openid", json!({"code": code}))).await;
    assert_error(&a, 429, "rate_limited");
    let a = send(post(&t, "/api/wechat/phone", json!({"code": "any"}))).await;
    assert_error(&a, 429, "rate_limited");
    t.stack.stop().await.unwrap();
}

/// An advisor reads their own remaining credits from their session (to ask for more accepts
/// when they run low); a stranger's session sees none of them; without a session, 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisor_reads_their_own_credits_and_nobody_elses() {
    let t = common::start().await;
    let tpl = ande_wechat::DEV_TEMPLATE_ID;
    t.advisor_accepts("adv-credits", "o_adv_credits", tpl).await;
    t.advisor_accepts("adv-credits", "o_adv_credits", tpl).await;
    let mine = session(&t, "o_adv_credits").await;
    let a = eventually_credits(&t, &mine, 2).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let accounts = a.data()["credits"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "{}", a.text);
    assert_eq!(accounts[0]["advisorId"], "adv-credits");
    assert_eq!(accounts[0]["templateId"], tpl);
    assert_eq!(
        (
            accounts[0]["longTerm"].as_bool(),
            accounts[0]["lastStatus"].as_str()
        ),
        (Some(false), Some("accept"))
    );

    let strangers = session(&t, "o_stranger_credits").await;
    let s = send(get(&t, "/api/advisor/credits").bearer_auth(&strangers)).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.data()["credits"],
        json!([]),
        "a stranger sees no one's credits"
    );
    let none = send(get(&t, "/api/advisor/credits")).await;
    assert_error(&none, 401, "unauthorized");
}

/// `GET /api/advisor/credits` until the first account shows `n` credits (accepts are applied
/// by the notifier's consumer, asynchronously).
async fn eventually_credits(t: &TestStack, token: &str, n: i64) -> Answer {
    for _ in 0..200 {
        let a = send(get(t, "/api/advisor/credits").bearer_auth(token)).await;
        if a.data()["credits"][0]["credits"].as_i64() == Some(n) {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the credits never reached {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_set_an_advisors_quiet_hours_and_nobody_else_can() {
    let t = common::start().await;
    let staff = staff_token(&t).await;
    let fresh = send(get(&t, "/api/advisor-settings?advisorId=adv-q").bearer_auth(&staff)).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(fresh.data()["quietHours"], Value::Null);

    let set = send(
        post(
            &t,
            "/api/advisor-settings",
            json!({"advisorId": "adv-q", "quietHours": "21:30-07:00"}),
        )
        .bearer_auth(&staff),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.data()["quietHours"], "21:30-07:00");
    assert!(set.data()["updatedBy"]
        .as_str()
        .is_some_and(|b| b.starts_with("staff:")));
    let bad = send(
        post(
            &t,
            "/api/advisor-settings",
            json!({"advisorId": "adv-q", "quietHours": "late"}),
        )
        .bearer_auth(&staff),
    )
    .await;
    assert_error(&bad, 400, "validation_failed");

    // A mini-program session (even the advisor's own) and no token are refused; nothing changed.
    t.bind("adv-q", "o_adv_q").await;
    let own = session(&t, "o_adv_q").await;
    for req in [
        post(
            &t,
            "/api/advisor-settings",
            json!({"advisorId": "adv-q", "quietHours": "off"}),
        )
        .bearer_auth(&own),
        post(
            &t,
            "/api/advisor-settings",
            json!({"advisorId": "adv-q", "quietHours": "off"}),
        ),
    ] {
        let a = send(req).await;
        assert!([401, 403].contains(&a.status), "{}", a.text);
    }
    let read = send(get(&t, "/api/advisor-settings?advisorId=adv-q").bearer_auth(&own)).await;
    assert!([401, 403].contains(&read.status), "{}", read.text);
    let still = send(get(&t, "/api/advisor-settings?advisorId=adv-q").bearer_auth(&staff)).await;
    assert_eq!(still.data()["quietHours"], "21:30-07:00");
    t.stack.stop().await.unwrap();
}
