//! The simulator's behaviours, each through its HTTP API as a client sees it.
//!
//! Every test spawns its own simulator on a free port (in process, via `wechat_sim::spawn`), so
//! tests run in parallel and never share state. Lifetimes are shortened to about a second where
//! a test needs something to expire.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wechat_sim::{SimConfig, SimHandle};

const DEV_TEMPLATE: &str = ande_wechat::DEV_TEMPLATE_ID;
const USER: &str = "oUserOfTheTests0000000000001";

struct Sim {
    handle: SimHandle,
    http: reqwest::Client,
    config: SimConfig,
}

impl Sim {
    async fn start() -> Self {
        Self::with(SimConfig::default()).await
    }

    async fn with(config: SimConfig) -> Self {
        let handle = wechat_sim::spawn(config.clone())
            .await
            .expect("simulator starts");
        Self {
            handle,
            http: ande_wechat::http::client(),
            config,
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .get(self.handle.url(path))
            .query(query)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
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

    async fn login(&self, code: &str) -> Value {
        let c = &self.config;
        self.get(
            "/sns/jscode2session",
            &[
                ("appid", &c.app_id),
                ("secret", &c.app_secret),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ],
        )
        .await
    }

    async fn classic_token(&self) -> Value {
        let c = &self.config;
        self.get(
            "/cgi-bin/token",
            &[
                ("grant_type", "client_credential"),
                ("appid", &c.app_id),
                ("secret", &c.app_secret),
            ],
        )
        .await
    }

    async fn stable_token(&self, force_refresh: bool) -> Value {
        let c = &self.config;
        self.post(
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": c.app_id, "secret": c.app_secret,
                   "force_refresh": force_refresh}),
        )
        .await
    }

    /// A token for the APIs that need one.
    async fn token(&self) -> String {
        token_of(&self.stable_token(false).await)
    }

    async fn send(&self, token: &str, body: Value) -> Value {
        let path = format!("/cgi-bin/message/subscribe/send?access_token={token}");
        self.post(&path, body).await
    }

    async fn phone(&self, token: &str, code: &str) -> Value {
        let path = format!("/wxa/business/getuserphonenumber?access_token={token}");
        self.post(&path, json!({"code": code})).await
    }

    /// The errcode an API call with `token` gets before its body is looked at: 0 if the token
    /// is accepted (the empty send then fails on `touser` with 40003).
    async fn token_errcode(&self, token: &str) -> i64 {
        match errcode(&self.send(token, json!({})).await) {
            40003 => 0,
            other => other,
        }
    }

    async fn grant(&self, openid: &str, template_id: &str, count: u64) -> Value {
        self.post(
            "/sim/credits",
            json!({"openid": openid, "template_id": template_id, "count": count}),
        )
        .await
    }

    async fn credits(&self, openid: &str, template_id: &str) -> u64 {
        let v = self
            .get(
                "/sim/credits",
                &[("openid", openid), ("template_id", template_id)],
            )
            .await;
        v["remaining"].as_u64().unwrap()
    }

    async fn fault(&self, fault: Value) {
        self.post("/sim/faults", fault).await;
    }
}

fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

fn errmsg(v: &Value) -> &str {
    v["errmsg"].as_str().unwrap_or_default()
}

fn token_of(v: &Value) -> String {
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {v}"))
        .to_string()
}

fn message_data() -> Value {
    json!({
        "thing1": {"value": "客户查看了您的简历"},
        "time2": {"value": "2024年05月01日 15:01"},
        "thing3": {"value": "13800138000"},
        "thing7": {"value": "张三"},
    })
}

fn message(touser: &str) -> Value {
    json!({
        "touser": touser,
        "template_id": DEV_TEMPLATE,
        "page": "pages/customer/detail?id=42",
        "data": message_data(),
        "miniprogram_state": "developer",
        "lang": "zh_CN",
    })
}

fn short(config: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut c = SimConfig::default();
    config(&mut c);
    c
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---------------------------------------------------------------- login codes

#[tokio::test]
async fn an_unseen_login_code_is_valid_once_and_gives_a_stable_openid() {
    let sim = Sim::start().await;
    let first = sim.login("code-from-wx-login").await;
    let openid = first["openid"].as_str().unwrap();
    assert_eq!(openid.len(), 28, "{first}");
    assert!(openid.starts_with('o'));
    assert_eq!(first["session_key"].as_str().unwrap().len(), 24);
    assert!(
        first.get("errcode").is_none(),
        "success carries no errcode: {first}"
    );
    assert!(first.get("unionid").is_none());

    let again = sim.login("code-from-wx-login").await;
    assert_eq!(errcode(&again), 40163);
    assert!(errmsg(&again).starts_with("code been used"), "{again}");

    let elsewhere = Sim::start().await.login("code-from-wx-login").await;
    assert_eq!(
        elsewhere["openid"], openid,
        "the same code gives the same user in every run"
    );
    assert_ne!(sim.login("another-code").await["openid"], openid);
}

#[tokio::test]
async fn a_minted_login_code_logs_in_as_the_chosen_openid_and_expires() {
    let sim = Sim::with(short(|c| c.code_ttl = Duration::from_millis(800))).await;
    let minted = sim.post("/sim/codes", json!({"openid": USER})).await;
    let code = minted["code"].as_str().unwrap();
    assert_eq!(sim.login(code).await["openid"], USER);

    let stale = sim.post("/sim/codes", json!({"openid": USER})).await;
    sleep_ms(900).await;
    let late = sim.login(stale["code"].as_str().unwrap()).await;
    assert_eq!(errcode(&late), 40029, "{late}");
    assert!(errmsg(&late).starts_with("invalid code"));
}

#[tokio::test]
async fn appid_secret_and_grant_type_are_checked_everywhere() {
    let sim = Sim::start().await;
    let c = sim.config.clone();
    let login = |appid: &str, secret: &str| {
        let q = [
            ("appid", appid.to_string()),
            ("secret", secret.to_string()),
            ("js_code", "x".to_string()),
            ("grant_type", "authorization_code".to_string()),
        ];
        let http = sim.http.clone();
        let url = sim.handle.url("/sns/jscode2session");
        async move {
            http.get(url)
                .query(&q)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(errcode(&login("wx_wrong", &c.app_secret).await), 40013);
    assert_eq!(errcode(&login(&c.app_id, "wrong").await), 40125);
    assert_eq!(errcode(&login("", &c.app_secret).await), 41002);

    let token = sim
        .get(
            "/cgi-bin/token",
            &[
                ("grant_type", "client_credential"),
                ("appid", &c.app_id),
                ("secret", "no"),
            ],
        )
        .await;
    assert_eq!(errcode(&token), 40125);
    let token = sim
        .get(
            "/cgi-bin/token",
            &[
                ("grant_type", "password"),
                ("appid", &c.app_id),
                ("secret", &c.app_secret),
            ],
        )
        .await;
    assert_eq!(errcode(&token), 40002);
    let stable = sim
        .post(
            "/cgi-bin/stable_token",
            json!({"grant_type": "client_credential", "appid": "wx_other", "secret": c.app_secret}),
        )
        .await;
    assert_eq!(errcode(&stable), 40013);
    let garbage = sim
        .http
        .post(sim.handle.url("/cgi-bin/stable_token"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 200, "WeChat answers errors with HTTP 200");
    assert_eq!(errcode(&garbage.json().await.unwrap()), 47001);
}

// ---------------------------------------------------------------- tokens

#[tokio::test]
async fn a_classic_token_call_invalidates_the_previous_token_after_the_overlap() {
    let sim = Sim::with(short(|c| c.classic_overlap = Duration::from_millis(700))).await;
    let first = sim.classic_token().await;
    assert_eq!(first["expires_in"], 7200);
    let first = token_of(&first);
    let second = token_of(&sim.classic_token().await);
    assert_ne!(first, second);
    assert_eq!(
        sim.token_errcode(&first).await,
        0,
        "valid during the overlap"
    );

    sleep_ms(800).await;
    assert_eq!(
        sim.token_errcode(&first).await,
        40001,
        "not latest after the overlap"
    );
    assert_eq!(sim.token_errcode(&second).await, 0);
}

#[tokio::test]
async fn a_stable_token_stays_the_same_then_renews_early_with_both_valid() {
    let sim = Sim::with(short(|c| {
        c.stable_token_ttl = Duration::from_secs(2);
        c.stable_renew_before = Duration::from_secs(1);
    }))
    .await;
    let first = sim.stable_token(false).await;
    assert_eq!(first["expires_in"], 2);
    let same = sim.stable_token(false).await;
    assert_eq!(same["access_token"], first["access_token"]);
    let first = token_of(&first);

    sleep_ms(1_300).await; // 0.7 s left: inside the renewal window
    let renewed = sim.stable_token(false).await;
    let renewed_token = token_of(&renewed);
    assert_ne!(renewed_token, first);
    assert_eq!(renewed["expires_in"], 2);
    assert_eq!(
        sim.token_errcode(&first).await,
        0,
        "the old token lives out its lifetime"
    );
    assert_eq!(sim.token_errcode(&renewed_token).await, 0);
    assert_eq!(token_of(&sim.stable_token(false).await), renewed_token);

    sleep_ms(900).await; // the first token is past its 2 s
    assert_eq!(sim.token_errcode(&first).await, 42001);
    assert_eq!(sim.token_errcode(&renewed_token).await, 0);
}

#[tokio::test]
async fn stable_and_classic_tokens_are_isolated_and_force_refresh_is_rationed() {
    let sim = Sim::start().await;
    let stable = sim.token().await;
    let classic = token_of(&sim.classic_token().await);
    sim.classic_token().await;
    assert_eq!(sim.token_errcode(&stable).await, 0);
    assert_eq!(
        sim.token().await,
        stable,
        "classic calls do not touch the stable token"
    );

    let forced = sim.stable_token(true).await;
    assert_ne!(token_of(&forced), stable);
    assert_eq!(
        sim.token_errcode(&stable).await,
        40001,
        "force refresh revokes at once"
    );
    assert_eq!(
        sim.token_errcode(&classic).await,
        0,
        "and only stable tokens"
    );
    let again = sim.stable_token(true).await;
    assert_eq!(
        errcode(&again),
        45011,
        "30 s between force refreshes: {again}"
    );
}

#[tokio::test]
async fn token_errors_are_missing_unknown_and_expired() {
    let sim = Sim::with(short(|c| c.classic_token_ttl = Duration::from_millis(600))).await;
    let missing = sim.post("/cgi-bin/message/subscribe/send", json!({})).await;
    assert_eq!(errcode(&missing), 41001);
    let unknown = sim.send("72_not_a_token", json!({})).await;
    assert_eq!(errcode(&unknown), 40001);
    assert!(
        errmsg(&unknown).starts_with("invalid credential, access_token is invalid or not latest")
    );

    let short_lived = token_of(&sim.classic_token().await);
    sleep_ms(700).await;
    let expired = sim.send(&short_lived, json!({})).await;
    assert_eq!(errcode(&expired), 42001);
    assert!(errmsg(&expired).starts_with("access_token expired"));

    let stable = sim.token().await;
    assert_eq!(
        sim.post("/sim/tokens/expire", json!({})).await["expired"],
        1
    );
    assert_eq!(sim.token_errcode(&stable).await, 42001);
    assert_ne!(
        sim.token().await,
        stable,
        "an expired stable token is replaced"
    );
}

#[tokio::test]
async fn lifetimes_can_be_changed_at_run_time() {
    let sim = Sim::start().await;
    let got = sim
        .post(
            "/sim/config",
            json!({"stable_token_ttl_secs": 60, "classic_token_ttl_secs": 30}),
        )
        .await;
    assert_eq!(got["stable_renew_before_secs"], 15.0);
    assert_eq!(sim.stable_token(false).await["expires_in"], 60);
    assert_eq!(sim.classic_token().await["expires_in"], 30);
    let bad = sim
        .http
        .post(sim.handle.url("/sim/config"))
        .json(&json!({"code_ttl_secs": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

// ---------------------------------------------------------------- subscribe messages

#[tokio::test]
async fn a_send_without_a_credit_is_refused_with_43101() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    let refused = sim.send(&token, message(USER)).await;
    assert_eq!(errcode(&refused), 43101);
    assert!(errmsg(&refused).starts_with("user refuse to accept the msg"));
    assert!(sim.get("/sim/messages", &[]).await["messages"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_send_consumes_one_credit_and_is_logged_with_its_msgid() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    assert_eq!(sim.grant(USER, DEV_TEMPLATE, 1).await["remaining"], 1);
    assert_eq!(
        sim.grant(USER, DEV_TEMPLATE, 1).await["remaining"],
        2,
        "accepts add up"
    );

    let sent = sim.send(&token, message(USER)).await;
    assert_eq!(errcode(&sent), 0, "{sent}");
    assert_eq!(sent["errmsg"], "ok");
    let msgid = sent["msgid"].as_u64().expect("msgid is a number");
    assert_eq!(sim.credits(USER, DEV_TEMPLATE).await, 1);
    assert_eq!(errcode(&sim.send(&token, message(USER)).await), 0);
    assert_eq!(errcode(&sim.send(&token, message(USER)).await), 43101);
    assert_eq!(sim.credits(USER, DEV_TEMPLATE).await, 0);

    let logged = sim.get("/sim/messages", &[("touser", USER)]).await;
    let logged = logged["messages"].as_array().unwrap();
    assert_eq!(logged.len(), 2);
    let first = &logged[0];
    assert_eq!(first["msgid"], msgid);
    assert_eq!(first["touser"], USER);
    assert_eq!(first["template_id"], DEV_TEMPLATE);
    assert_eq!(first["page"], "pages/customer/detail?id=42");
    assert_eq!(first["data"], message_data());
    assert_eq!(first["miniprogram_state"], "developer");
    assert_eq!(first["lang"], "zh_CN");
    assert!(first["received_at"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .is_ok());
    let others = sim
        .get("/sim/messages", &[("touser", "oSomeoneElse")])
        .await;
    assert!(others["messages"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_thing_over_20_characters_gets_47003_naming_the_field() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    sim.grant(USER, DEV_TEMPLATE, 1).await;
    let mut body = message(USER);
    body["data"]["thing3"]["value"] = json!("这是一个超过二十个字符的客户电话号码说明文字");
    let refused = sim.send(&token, body).await;
    assert_eq!(errcode(&refused), 47003);
    assert!(
        errmsg(&refused).starts_with("argument invalid! data.thing3.value invalid"),
        "{refused}"
    );
    assert_eq!(
        sim.credits(USER, DEV_TEMPLATE).await,
        1,
        "a refused send costs no credit"
    );

    let mut body = message(USER);
    body["miniprogram_state"] = json!("release");
    let refused = sim.send(&token, body).await;
    assert_eq!(errcode(&refused), 47003);
    assert!(errmsg(&refused).starts_with("argument invalid!"));
}

#[tokio::test]
async fn unknown_templates_and_recipients_are_refused() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    let mut body = message(USER);
    body["template_id"] = json!("not-a-template");
    assert_eq!(errcode(&sim.send(&token, body).await), 40037);
    assert_eq!(errcode(&sim.send(&token, message("")).await), 40003);

    let bad = sim
        .http
        .post(sim.handle.url("/sim/credits"))
        .json(&json!({"openid": USER, "template_id": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404, "credits only for registered templates");
}

#[tokio::test]
async fn registered_templates_are_checked_and_long_term_ones_need_no_credit() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    sim.post(
        "/sim/templates",
        json!({"template_id": "tpl-lt", "keywords": ["thing1", "amount2"], "long_term": true}),
    )
    .await;
    let body = |amount: &str| {
        json!({"touser": USER, "template_id": "tpl-lt",
               "data": {"thing1": {"value": "缴费"}, "amount2": {"value": amount}}})
    };
    assert_eq!(errcode(&sim.send(&token, body("¥12.50")).await), 0);
    assert_eq!(errcode(&sim.send(&token, body("¥12.50")).await), 0);
    let refused = sim.send(&token, body("twelve")).await;
    assert!(
        errmsg(&refused).starts_with("argument invalid! data.amount2.value invalid"),
        "{refused}"
    );

    let templates = sim.get("/sim/templates", &[]).await;
    assert_eq!(templates["templates"].as_array().unwrap().len(), 2);
    let bad = sim
        .http
        .post(sim.handle.url("/sim/templates"))
        .json(&json!({"template_id": "t", "keywords": ["colour1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

// ---------------------------------------------------------------- phone numbers

#[tokio::test]
async fn phone_codes_give_a_number_once() {
    let sim = Sim::with(short(|c| c.code_ttl = Duration::from_millis(800))).await;
    let token = sim.token().await;

    let derived = sim.phone(&token, "button-code-1").await;
    assert_eq!(errcode(&derived), 0, "{derived}");
    assert_eq!(derived["errmsg"], "ok");
    let info = &derived["phone_info"];
    let number = info["purePhoneNumber"].as_str().unwrap();
    assert!(
        number.len() == 11 && number.starts_with('1') && number.bytes().all(|b| b.is_ascii_digit()),
        "{number}"
    );
    assert!(
        (b'3'..=b'9').contains(&number.as_bytes()[1]),
        "a mainland mobile: {number}"
    );
    assert_eq!(info["phoneNumber"], number);
    assert_eq!(info["countryCode"], "86");
    assert_eq!(info["watermark"]["appid"], sim.config.app_id.as_str());
    assert!(info["watermark"]["timestamp"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(
        errcode(&sim.phone(&token, "button-code-1").await),
        40029,
        "single use"
    );

    let minted = sim
        .post("/sim/phone-codes", json!({"phone": "13912345678"}))
        .await;
    let code = minted["code"].as_str().unwrap();
    assert_eq!(
        sim.phone(&token, code).await["phone_info"]["purePhoneNumber"],
        "13912345678"
    );

    let stale = sim
        .post("/sim/phone-codes", json!({"phone": "13912345678"}))
        .await;
    sleep_ms(900).await;
    let token = sim.token().await;
    assert_eq!(
        errcode(&sim.phone(&token, stale["code"].as_str().unwrap()).await),
        40029,
        "expired"
    );
    let no_token = sim
        .post("/wxa/business/getuserphonenumber", json!({"code": "x"}))
        .await;
    assert_eq!(errcode(&no_token), 41001);
}

// ---------------------------------------------------------------- faults and counters

#[tokio::test]
async fn a_counted_fault_answers_its_errcode_then_clears() {
    let sim = Sim::start().await;
    sim.fault(json!({"endpoint": "stable_token", "errcode": -1, "count": 2}))
        .await;
    let busy = sim.stable_token(false).await;
    assert_eq!(errcode(&busy), -1);
    assert!(errmsg(&busy).starts_with("system error"));
    assert_eq!(errcode(&sim.stable_token(false).await), -1);
    assert!(sim.stable_token(false).await["access_token"].is_string());
    assert!(sim.get("/sim/faults", &[]).await["faults"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_fault_rate_affects_about_that_fraction_of_calls() {
    let sim = Sim::start().await;
    sim.fault(json!({"endpoint": "jscode2session", "errcode": 45011, "rate": 0.5}))
        .await;
    let mut refused = 0;
    for i in 0..200 {
        if errcode(&sim.login(&format!("rate-{i}")).await) == 45011 {
            refused += 1;
        }
    }
    // Binomial(200, 0.5): 100 ± 7; outside 50..150 is a > 7-sigma event.
    assert!((50..150).contains(&refused), "{refused} of 200 refused");

    let resp = sim
        .http
        .delete(sim.handle.url("/sim/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(sim.login("after-clear").await["openid"].is_string());
}

#[tokio::test]
async fn latency_delays_the_answer_after_the_work_is_done() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    sim.grant(USER, DEV_TEMPLATE, 1).await;
    sim.fault(json!({"endpoint": "subscribe_send", "latency_ms": 400}))
        .await;

    let started = Instant::now();
    assert_eq!(errcode(&sim.send(&token, message(USER)).await), 0);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // A client that gives up waiting has still sent the message, as with the real server.
    sim.grant(USER, DEV_TEMPLATE, 1).await;
    let impatient = sim
        .http
        .post(sim.handle.url(&format!(
            "/cgi-bin/message/subscribe/send?access_token={token}"
        )))
        .json(&message(USER))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(impatient.is_err(), "timed out");
    assert_eq!(
        sim.get("/sim/messages", &[]).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_quota_allows_that_many_successful_sends_then_45009() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    sim.grant(USER, DEV_TEMPLATE, 10).await;
    sim.fault(json!({"endpoint": "subscribe_send", "quota": 2}))
        .await;
    assert_eq!(
        errcode(&sim.send(&token, message("")).await),
        40003,
        "failures do not count"
    );
    assert_eq!(errcode(&sim.send(&token, message(USER)).await), 0);
    assert_eq!(errcode(&sim.send(&token, message(USER)).await), 0);
    let over = sim.send(&token, message(USER)).await;
    assert_eq!(errcode(&over), 45009);
    assert!(errmsg(&over).starts_with("reach max api daily quota limit"));
    assert_eq!(sim.credits(USER, DEV_TEMPLATE).await, 8);
    let bad = sim
        .http
        .post(sim.handle.url("/sim/faults"))
        .json(&json!({"endpoint": "sms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn calls_are_counted_per_endpoint_with_their_errcodes() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    sim.send(&token, message(USER)).await;
    sim.grant(USER, DEV_TEMPLATE, 1).await;
    sim.send(&token, message(USER)).await;
    sim.login("c").await;
    sim.login("c").await;

    let calls = sim.get("/sim/calls", &[]).await;
    assert_eq!(
        calls["subscribe_send"],
        json!({"count": 2, "errcodes": {"0": 1, "43101": 1}})
    );
    assert_eq!(
        calls["jscode2session"],
        json!({"count": 2, "errcodes": {"0": 1, "40163": 1}})
    );
    assert_eq!(calls["stable_token"]["count"], 1);
    assert_eq!(calls["token"]["count"], 0);
    assert_eq!(calls["phone_number"]["count"], 0);
}

#[tokio::test]
async fn reset_clears_state_but_keeps_config_and_the_default_template() {
    let sim = Sim::start().await;
    let token = sim.token().await;
    sim.post(
        "/sim/templates",
        json!({"template_id": "extra", "keywords": ["thing1"]}),
    )
    .await;
    sim.grant(USER, DEV_TEMPLATE, 2).await;
    sim.send(&token, message(USER)).await;
    sim.login("once").await;
    sim.fault(json!({"endpoint": "token", "errcode": -1})).await;
    sim.post("/sim/config", json!({"stable_token_ttl_secs": 60}))
        .await;

    assert_eq!(sim.post("/sim/reset", json!({})).await, Value::Null);

    assert_eq!(sim.credits(USER, DEV_TEMPLATE).await, 0);
    assert!(sim.get("/sim/messages", &[]).await["messages"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(sim.get("/sim/faults", &[]).await["faults"]
        .as_array()
        .unwrap()
        .is_empty());
    let templates = sim.get("/sim/templates", &[]).await;
    assert_eq!(templates["templates"].as_array().unwrap().len(), 1);
    assert_eq!(templates["templates"][0]["template_id"], DEV_TEMPLATE);
    assert_eq!(
        templates["templates"][0]["keywords"],
        json!(["thing1", "time2", "thing3", "thing7"])
    );
    assert_eq!(sim.get("/sim/calls", &[]).await["stable_token"]["count"], 0);
    assert_eq!(
        sim.token_errcode(&token).await,
        40001,
        "tokens are forgotten"
    );
    assert_eq!(
        sim.stable_token(false).await["expires_in"],
        7200,
        "startup lifetimes are back"
    );
    assert!(
        sim.login("once").await["openid"].is_string(),
        "codes are forgotten"
    );
}

#[tokio::test]
async fn a_spawned_simulator_stops_when_asked() {
    let sim = wechat_sim::spawn(SimConfig::default()).await.unwrap();
    let url = sim.url("/sim/health");
    assert_eq!(
        ande_wechat::http::client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    assert!(sim.base_url.starts_with("http://127.0.0.1:"));
    sim.stop().await.unwrap();
    assert!(ande_wechat::http::client().get(&url).send().await.is_err());
}

#[tokio::test]
async fn an_http_status_fault_answers_an_error_page_and_is_counted() {
    let sim = wechat_sim::spawn(wechat_sim::SimConfig::default())
        .await
        .unwrap();
    let http = ande_wechat::http::client();
    let set = http
        .post(sim.url("/sim/faults"))
        .json(&serde_json::json!({"endpoint": "stable_token", "http_status": 503, "count": 1}))
        .send()
        .await
        .unwrap();
    assert!(set.status().is_success());
    let bad = http
        .post(sim.url("/sim/faults"))
        .json(&serde_json::json!({"endpoint": "stable_token", "http_status": 404}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "only 5xx statuses");
    let body = serde_json::json!({"grant_type": "client_credential", "appid": ande_platform::config::DEFAULT_APP_ID, "secret": ande_platform::config::DEFAULT_APP_SECRET});
    let first = http
        .post(sim.url("/cgi-bin/stable_token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 503);
    assert!(first.text().await.unwrap().contains("<html>"));
    let second = http
        .post(sim.url("/cgi-bin/stable_token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200, "count 1: the fault cleared itself");
    let calls: serde_json::Value = http
        .get(sim.url("/sim/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls["stable_token"]["errcodes"]["http_503"], 1);
    assert_eq!(calls["stable_token"]["errcodes"]["0"], 1);
}
