//! The shared WeChat client (`ande_wechat`) against the simulator, over real HTTP.
//!
//! These are the client's promises that only a server can check: concurrent callers share one
//! token fetch, a token error drops the cached token only if it is still the one that failed and
//! retries the call once (never more), and WeChat's answers map to the right errors. Call counts
//! are read back from the simulator's `/sim/calls`, not only from the client's own counter, so a
//! miscounting client cannot pass.

use std::time::Duration;

use ande_wechat::{
    ExposeSecret, SubscribeMessage, TokenMode, WechatClient, WechatConfig, WechatError,
    DEV_TEMPLATE_ID,
};
use serde_json::{json, Value};
use wechat_sim::{SimConfig, SimHandle};

const USER: &str = "oClientTestUser000000000001";

struct Sim {
    handle: SimHandle,
    http: reqwest::Client,
    config: SimConfig,
}

impl Sim {
    async fn start() -> Self {
        let config = SimConfig::default();
        let handle = wechat_sim::spawn(config.clone())
            .await
            .expect("simulator starts");
        Self {
            handle,
            http: ande_wechat::http::client(),
            config,
        }
    }

    fn client(&self, mode: TokenMode) -> WechatClient {
        let mut cfg = WechatConfig::new(
            self.handle.base_url.clone(),
            self.config.app_id.clone(),
            self.config.app_secret.clone(),
        );
        cfg.token_mode = mode;
        WechatClient::new(cfg).expect("client builds")
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(self.handle.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "POST {path}: {}", resp.status());
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Value::Null;
        }
        resp.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(self.handle.url(path)).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// How many calls the simulator saw on an endpoint (`stable_token`, `subscribe_send`, …).
    async fn calls(&self, endpoint: &str) -> u64 {
        self.get("/sim/calls").await[endpoint]["count"]
            .as_u64()
            .unwrap()
    }

    async fn fault(&self, spec: Value) {
        self.post("/sim/faults", spec).await;
    }

    async fn grant(&self, count: u64) {
        self.post(
            "/sim/credits",
            json!({"openid": USER, "template_id": DEV_TEMPLATE_ID, "count": count}),
        )
        .await;
    }

    async fn messages_sent(&self) -> usize {
        self.get("/sim/messages").await["messages"]
            .as_array()
            .unwrap()
            .len()
    }
}

fn message() -> SubscribeMessage {
    SubscribeMessage::new(USER, DEV_TEMPLATE_ID)
        .page("pages/customer/detail?id=1")
        .fitted_field("thing1", "新客户查看了您的简历")
        .field(
            "time2",
            ande_wechat::keywords::format_time(chrono::Utc::now()),
        )
        .fitted_field("thing3", "13800138000")
        .fitted_field("thing7", "张三")
}

async fn hundred_callers_one_fetch(mode: TokenMode, endpoint: &str) {
    let sim = Sim::start().await;
    // Hold the token answer back so that all callers are waiting on it together.
    sim.fault(json!({"endpoint": endpoint, "latency_ms": 300, "count": 1}))
        .await;
    let client = sim.client(mode);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let client = client.clone();
        tasks.spawn(async move { client.access_token().await });
    }
    let mut tokens = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        tokens.push(joined.unwrap().unwrap());
    }

    assert_eq!(tokens.len(), 100);
    assert!(tokens.iter().all(|t| t == &tokens[0]), "one token for all");
    assert_eq!(client.token_fetches(), 1);
    assert_eq!(sim.calls(endpoint).await, 1);
    // And later callers hit the cache.
    assert_eq!(client.access_token().await.unwrap(), tokens[0]);
    assert_eq!(sim.calls(endpoint).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_callers_share_one_stable_token_fetch() {
    hundred_callers_one_fetch(TokenMode::Stable, "stable_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_callers_share_one_classic_token_fetch() {
    hundred_callers_one_fetch(TokenMode::Classic, "token").await;
}

#[tokio::test]
async fn stable_mode_never_calls_the_classic_endpoint() {
    let sim = Sim::start().await;
    let client = sim.client(TokenMode::Stable);
    client.access_token().await.unwrap();
    assert_eq!(sim.calls("stable_token").await, 1);
    assert_eq!(sim.calls("token").await, 0);
}

#[tokio::test]
async fn a_token_error_refreshes_and_retries_once() {
    let sim = Sim::start().await;
    sim.grant(1).await;
    let client = sim.client(TokenMode::Stable);
    client.access_token().await.unwrap();
    sim.fault(json!({"endpoint": "subscribe_send", "errcode": 40001, "count": 1}))
        .await;

    let receipt = client.send_subscribe(&message()).await.unwrap();

    assert!(!receipt.msgid.is_empty());
    assert_eq!(sim.calls("subscribe_send").await, 2);
    assert_eq!(client.token_fetches(), 2, "the failed token was dropped");
    assert_eq!(sim.calls("stable_token").await, 2);
    assert_eq!(sim.messages_sent().await, 1);
}

#[tokio::test]
async fn an_expired_token_is_replaced_without_the_caller_noticing() {
    let sim = Sim::start().await;
    sim.grant(1).await;
    let client = sim.client(TokenMode::Stable);
    let old = client.access_token().await.unwrap();
    sim.post("/sim/tokens/expire", json!({})).await; // every token now answers 42001

    client.send_subscribe(&message()).await.unwrap();

    assert_ne!(client.access_token().await.unwrap(), old);
    assert_eq!(sim.calls("subscribe_send").await, 2);
    assert_eq!(client.token_fetches(), 2);
}

#[tokio::test]
async fn phone_number_also_retries_once_after_a_token_error() {
    let sim = Sim::start().await;
    let code = sim
        .post("/sim/phone-codes", json!({"phone": "13800138000"}))
        .await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = sim.client(TokenMode::Stable);
    sim.fault(json!({"endpoint": "phone_number", "errcode": 40014, "count": 1}))
        .await;

    let phone = client.phone_number(&code, None).await.unwrap();

    assert_eq!(phone.pure_phone_number, "13800138000");
    assert_eq!(phone.country_code, "86");
    assert_eq!(sim.calls("phone_number").await, 2);
    assert_eq!(client.token_fetches(), 2);
}

#[tokio::test]
async fn a_lasting_token_error_is_retried_once_only() {
    let sim = Sim::start().await;
    sim.grant(1).await;
    let client = sim.client(TokenMode::Stable);
    sim.fault(json!({"endpoint": "subscribe_send", "errcode": 40001}))
        .await;

    let err = client.send_subscribe(&message()).await.unwrap_err();

    assert_eq!(err.errcode(), Some(40001));
    assert!(err.is_token_error());
    assert_eq!(sim.calls("subscribe_send").await, 2);
    assert_eq!(client.token_fetches(), 2);
    assert_eq!(sim.messages_sent().await, 0);
}

/// Twenty sends fail together on the same token: one refresh serves them all, and each send
/// is tried exactly twice. (The sharper interleaving, a late error meeting the refetched stable
/// token that has the same string, is pinned down deterministically by the unit test
/// `a_late_token_error_leaves_the_refetched_token_alone` in `ande_wechat`.)
#[tokio::test]
async fn concurrent_token_errors_drop_the_failed_token_once() {
    let sim = Sim::start().await;
    let client = sim.client(TokenMode::Stable);
    client.access_token().await.unwrap(); // every send below starts from this token
    sim.fault(json!({"endpoint": "subscribe_send", "errcode": 40001}))
        .await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        tasks.spawn(async move { client.send_subscribe(&message()).await });
    }
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.unwrap().unwrap_err().errcode(), Some(40001));
    }

    assert_eq!(
        sim.calls("subscribe_send").await,
        40,
        "two attempts each, no more"
    );
    assert_eq!(client.token_fetches(), 2, "one refresh for all twenty");
    assert_eq!(sim.calls("stable_token").await, 2);
}

#[tokio::test]
async fn invalidation_leaves_a_newer_token_alone() {
    let sim = Sim::start().await;
    // Classic mode: every fetch gives a new token, so old and new can be told apart.
    let client = sim.client(TokenMode::Classic);
    let first = client.access_token().await.unwrap();
    assert!(client.invalidate_access_token(&first).await);
    let second = client.access_token().await.unwrap();
    assert_ne!(first, second);

    assert!(!client.invalidate_access_token(&first).await);

    assert_eq!(client.access_token().await.unwrap(), second);
    assert_eq!(client.token_fetches(), 2);
    assert_eq!(sim.calls("token").await, 2);
}

#[tokio::test]
async fn errors_other_than_token_errors_are_not_retried() {
    let sim = Sim::start().await;
    let client = sim.client(TokenMode::Stable);

    // No credit: 43101, permanent.
    let err = client.send_subscribe(&message()).await.unwrap_err();
    assert_eq!(err.errcode(), Some(43101));
    assert!(!err.is_retryable());

    // Busy: -1, retryable, but the client leaves retrying to its caller.
    sim.grant(1).await;
    sim.fault(json!({"endpoint": "subscribe_send", "errcode": -1, "count": 1}))
        .await;
    let err = client.send_subscribe(&message()).await.unwrap_err();
    assert_eq!(err.errcode(), Some(-1));
    assert!(err.is_retryable());

    assert_eq!(sim.calls("subscribe_send").await, 2, "one call each");
    assert_eq!(client.token_fetches(), 1);
}

#[tokio::test]
async fn invalid_keyword_values_come_back_as_47003_naming_the_field() {
    let sim = Sim::start().await;
    sim.grant(1).await;
    let client = sim.client(TokenMode::Stable);
    let msg = message().field("thing3", "x".repeat(21));

    let err = client.send_subscribe(&msg).await.unwrap_err();

    match err {
        WechatError::Api { errcode, errmsg } => {
            assert_eq!(errcode, 47003);
            assert!(errmsg.contains("data.thing3.value"), "{errmsg}");
        }
        other => panic!("expected 47003, got {other:?}"),
    }
}

#[tokio::test]
async fn login_codes_work_once() {
    let sim = Sim::start().await;
    let minted = sim.post("/sim/codes", json!({"openid": USER})).await;
    let code = minted["code"].as_str().unwrap();
    let client = sim.client(TokenMode::Stable);

    let session = client.code2session(code).await.unwrap();
    assert_eq!(session.openid, USER);
    let key = session.session_key.expose_secret();
    assert!(!key.is_empty());
    assert!(
        !format!("{session:?}").contains(key),
        "Debug shows no session key"
    );

    let again = client.code2session(code).await.unwrap_err();
    assert_eq!(again.errcode(), Some(40163));
    assert!(!again.is_retryable());

    sim.fault(json!({"endpoint": "jscode2session", "errcode": -1, "count": 1}))
        .await;
    let busy = client.code2session("another-code").await.unwrap_err();
    assert_eq!(busy.errcode(), Some(-1));
    assert!(busy.is_retryable());
    assert_eq!(client.token_fetches(), 0, "login needs no access token");
}

#[tokio::test]
async fn a_slow_answer_times_out_at_the_configured_timeout() {
    let sim = Sim::start().await;
    sim.fault(json!({"endpoint": "stable_token", "latency_ms": 2000, "count": 1}))
        .await;
    let mut cfg = WechatConfig::new(
        sim.handle.base_url.clone(),
        sim.config.app_id.clone(),
        sim.config.app_secret.clone(),
    );
    cfg.timeout = Duration::from_millis(300);
    let client = WechatClient::new(cfg).unwrap();

    let started = std::time::Instant::now();
    let err = client.access_token().await.unwrap_err();

    assert_eq!(err, WechatError::Timeout);
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_millis(1500));
}
