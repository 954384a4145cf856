//! The system-test harness, shared by andectl's tests and the gateway's
//! (`services/gateway/tests/`): a whole stack per test, on its own database and subject prefix,
//! against the machine's real NATS and Postgres, with WeChat simulated.

use std::time::Duration;

use crate::stack::{Stack, StackOptions};
use serde_json::{json, Value};

pub struct TestStack {
    pub stack: Stack,
    pub http: reqwest::Client,
}

/// A port nothing listens on now (the OS picked it), for a server a test starts.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// An address on 127.0.0.1 with a port nothing listens on now.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
}

pub async fn start() -> TestStack {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut StackOptions)) -> TestStack {
    ande_platform::telemetry::init_for_tests();
    let common = ande_platform::testing::isolated_config().await;
    let mut opts = StackOptions::for_test(common);
    adjust(&mut opts);
    let stack = Stack::start(opts).await.expect("stack starts");
    TestStack {
        stack,
        http: ande_wechat::http::client(),
    }
}

impl TestStack {
    pub fn sim(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.stack.sim_url.as_deref().expect("simulator running")
        )
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.stack.gateway_url)
    }

    /// Switch a fault on in the simulator (`POST /sim/faults`, see wechat-sim's `faults`).
    pub async fn sim_fault(&self, spec: Value) {
        let r = self
            .http
            .post(self.sim("/sim/faults"))
            .json(&spec)
            .send()
            .await
            .expect("the simulator answers");
        assert!(r.status().is_success(), "fault {spec} refused");
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.api(path))
            .json(&body)
            .send()
            .await
            .expect("gateway answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// An advisor accepts one subscription: at the gateway (our credit) and inside WeChat. The
    /// openid is bound to the advisor first, and the accept is posted from its own session, as
    /// only a bound advisor's session may.
    pub async fn advisor_accepts(&self, advisor: &str, openid: &str, template: &str) {
        self.bind(advisor, openid).await;
        let token = self.session(openid).await;
        let r = self
            .http
            .post(self.api("/api/advisor/subscribe"))
            .bearer_auth(token)
            .json(
                &json!({"advisorId": advisor, "templateId": template, "subscribed": true,
                   "subscribeData": {"subscriptionStatus": "accept", "source": "miniprogram"}}),
            )
            .send()
            .await
            .expect("gateway answers");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "{body}");
        let r = self
            .http
            .post(self.sim("/sim/credits"))
            .json(&json!({"openid": openid, "template_id": template, "count": 1}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Bind `openid` to `advisor`, as `andectl advisor bind` does.
    pub async fn bind(&self, advisor: &str, openid: &str) {
        self.stack
            .bind_advisor(advisor, openid, "test")
            .await
            .unwrap();
    }

    /// A mini-program session token for `openid`, by the real login.
    pub async fn session(&self, openid: &str) -> String {
        self.stack.session(&self.http, openid).await.unwrap()
    }

    /// Messages the simulator accepted for `touser` so far.
    pub async fn messages(&self, touser: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(self.sim(&format!("/sim/messages?touser={touser}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .cloned()
            .or_else(|| v.get("messages").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }

    /// Messages the simulator accepted for `touser`, waiting until there are at least `n`.
    pub async fn wait_messages(&self, touser: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.messages(touser).await;
            if list.len() >= n || tokio::time::Instant::now() > deadline {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn db(&self) -> sqlx::PgPool {
        use ande_platform::ExposeSecret;
        sqlx::PgPool::connect(self.stack.common.database_url.expose_secret())
            .await
            .unwrap()
    }
}
