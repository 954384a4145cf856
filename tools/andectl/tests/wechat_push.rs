//! WeChat's message push, end to end on real NATS and Postgres: the simulator pushes
//! subscription events to the gateway's `/api/wechat/events` exactly as WeChat does (signed, in
//! safe mode encrypted, JSON or XML), the gateway verifies and publishes them, the notifier
//! applies each once. Forged, stale and replayed pushes change nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ande_notifier::config::CreditSource;
use ande_wechat::push::{self, AesKey, Format, Push, PushItem};
use andectl::stack::SimPush;
use andectl::testing::{self as common, TestStack};
use serde_json::{json, Value};

const TEMPLATE: &str = ande_wechat::DEV_TEMPLATE_ID;
const TOKEN: &str = "push-token-for-tests";
const AES_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";

async fn start(safe: bool, format: Format) -> TestStack {
    common::start_with(|o| {
        o.push = Some(SimPush {
            token: TOKEN.into(),
            encoding_aes_key: safe.then(|| AES_KEY.to_string()),
            format,
        });
        o.notifier.credit_source = CreditSource::Events;
    })
    .await
}

async fn get(t: &TestStack, url: &str) -> Value {
    t.http.get(url).send().await.unwrap().json().await.unwrap()
}

/// The simulator's pushes once `n` of them were answered `success`.
async fn delivered_pushes(t: &TestStack, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = get(t, &t.sim("/sim/pushes")).await;
        let all = v["pushes"].as_array().cloned().unwrap_or_default();
        if all.iter().filter(|p| p["delivered"] == true).count() >= n
            || tokio::time::Instant::now() > deadline
        {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn credits(t: &TestStack, advisor: &str, openid: &str, template: &str) -> i32 {
    sqlx::query_scalar(
        "SELECT credits FROM notifier.subscriptions WHERE advisor_id = $1 AND openid = $2 AND template_id = $3",
    )
    .bind(advisor)
    .bind(openid)
    .bind(template)
    .fetch_optional(&t.db().await)
    .await
    .unwrap()
    .unwrap_or(0)
}

async fn action(t: &TestStack, advisor: &str, phone: &str) -> String {
    let (status, body) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "c", "advisorId": advisor, "actionType": "view_resume",
                   "customerName": "李四", "customerPhone": phone}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["data"]["actionId"].as_str().unwrap().to_string()
}

async fn accept_in_wechat(t: &TestStack, openid: &str, template: &str) {
    let r = t
        .http
        .post(t.sim("/sim/credits"))
        .json(&json!({"openid": openid, "template_id": template, "count": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// The accept, the message it pays for, and WeChat's report that the message arrived.
async fn accept_send_and_report(t: &TestStack, advisor: &str, openid: &str, phone: &str) {
    t.bind(advisor, openid).await;
    let before = get(t, &t.sim("/sim/pushes")).await["pushes"]
        .as_array()
        .map_or(0, Vec::len);
    accept_in_wechat(t, openid, TEMPLATE).await;
    delivered_pushes(t, before + 1).await;
    until("the pushed accept to be a credit", || async {
        credits(t, advisor, openid, TEMPLATE).await == 1
    })
    .await;
    let action_id = action(t, advisor, phone).await;
    let messages = t.wait_messages(openid, 1).await;
    assert_eq!(messages.len(), 1, "the pushed accept paid for the message");
    let msgid = messages[0]["msgid"].to_string();
    let db = t.db().await;
    until("the sent event in the delivery log", || async {
        let row: Option<(Option<uuid::Uuid>, i64)> = sqlx::query_as(
            "SELECT action_id, errcode FROM notifier.deliveries WHERE event = 'wechat_delivered' AND msgid = $1",
        )
        .bind(&msgid)
        .fetch_optional(&db)
        .await
        .unwrap();
        row.is_some_and(|(a, code)| a.map(|a| a.to_string()) == Some(action_id.clone()) && code == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_accept_pays_for_the_next_message_in_safe_mode_json_and_xml() {
    let t = start(true, Format::Json).await;
    accept_send_and_report(&t, "adv-j", "o_push_json", "13900000001").await;
    let r = t
        .http
        .post(t.sim("/sim/push-target"))
        .json(&json!({"url": t.api("/api/wechat/events"), "token": TOKEN, "aes_key": AES_KEY, "format": "xml"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    accept_send_and_report(&t, "adv-x", "o_push_xml", "13900000002").await;
    // Each push was answered `success` at the first attempt.
    for p in get(&t, &t.sim("/sim/pushes")).await["pushes"]
        .as_array()
        .unwrap()
    {
        assert_eq!(p["attempts"], 1, "{p}");
        assert_eq!(p["last_answer"], "200 success", "{p}");
    }
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_accept_pays_for_the_next_message_in_plaintext_json_and_xml() {
    let t = start(false, Format::Xml).await;
    accept_send_and_report(&t, "adv-px", "o_plain_xml", "13900000003").await;
    let r = t
        .http
        .post(t.sim("/sim/push-target"))
        .json(&json!({"url": t.api("/api/wechat/events"), "token": TOKEN, "format": "json"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    accept_send_and_report(&t, "adv-pj", "o_plain_json", "13900000004").await;
    t.stack.stop().await.unwrap();
}

/// A push signed (and sealed) as WeChat would, posted by the test.
struct Forger<'a> {
    t: &'a TestStack,
    token: &'a str,
    key: Option<AesKey>,
}

impl Forger<'_> {
    fn now() -> String {
        chrono::Utc::now().timestamp().to_string()
    }

    /// Post `p` rendered as `format`, sealed with the forger's key (if any), signed with its
    /// token at `timestamp`; `tamper` may change the query before it is sent.
    async fn post(
        &self,
        p: &Push,
        format: Format,
        timestamp: &str,
        tamper: impl FnOnce(&mut Vec<(&'static str, String)>),
    ) -> u16 {
        let nonce = rand_nonce();
        let mut query = vec![
            (
                "signature",
                push::signature(&[self.token, timestamp, &nonce]),
            ),
            ("timestamp", timestamp.to_string()),
            ("nonce", nonce.clone()),
        ];
        let body = match &self.key {
            None => p.render(format),
            Some(key) => {
                let sealed = key.encrypt(
                    &p.render(format),
                    ande_platform::config::DEFAULT_APP_ID,
                    [9; 16],
                );
                query.push(("encrypt_type", "aes".into()));
                query.push((
                    "msg_signature",
                    push::signature(&[self.token, timestamp, &nonce, &sealed]),
                ));
                push::sealed_body(format, "gh_x", &sealed)
            }
        };
        tamper(&mut query);
        self.t
            .http
            .post(self.t.api("/api/wechat/events"))
            .query(&query)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn rand_nonce() -> String {
    uuid::Uuid::now_v7().simple().to_string()[..10].to_string()
}

fn popup(openid: &str, templates: &[&str], create_time: i64) -> Push {
    Push {
        to_user: "gh_x".into(),
        from_user: openid.into(),
        create_time,
        msg_type: "event".into(),
        event: push::POPUP_EVENT.into(),
        items: templates
            .iter()
            .map(|t| PushItem::Popup {
                template_id: (*t).into(),
                status: "accept".into(),
                scene: "0".into(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_stale_and_replayed_pushes_change_nothing() {
    let t = start(true, Format::Json).await;
    t.bind("adv-f", "o_forged").await;
    let now: i64 = Forger::now().parse().unwrap();
    let p = popup("o_forged", &[TEMPLATE], now);
    let real = Forger {
        t: &t,
        token: TOKEN,
        key: Some(AesKey::from_encoding_key(AES_KEY).unwrap()),
    };
    let wrong_token = Forger {
        t: &t,
        token: "not-our-token",
        key: Some(AesKey::from_encoding_key(AES_KEY).unwrap()),
    };
    let wrong_key = Forger {
        t: &t,
        token: TOKEN,
        key: Some(AesKey::from_encoding_key(&AES_KEY.replace('k', "j")).unwrap()),
    };
    let plaintext = Forger {
        t: &t,
        token: TOKEN,
        key: None,
    };
    let ts = Forger::now();
    assert_eq!(wrong_token.post(&p, Format::Json, &ts, |_| {}).await, 401);
    // A good `signature` but a `msg_signature` over another body.
    let bad_msg_sig = real
        .post(&p, Format::Xml, &ts, |q| {
            for (k, v) in q.iter_mut() {
                if *k == "msg_signature" {
                    *v = push::signature(&[TOKEN, "1", "2", "3"]);
                }
            }
        })
        .await;
    assert_eq!(bad_msg_sig, 401);
    // Signed with our token but sealed with another key: refused at decryption.
    assert_eq!(wrong_key.post(&p, Format::Json, &ts, |_| {}).await, 401);
    // Safe mode takes no plaintext, even correctly signed.
    assert_eq!(plaintext.post(&p, Format::Json, &ts, |_| {}).await, 400);
    // A signature from ten minutes ago is not taken.
    let stale = (now - 600).to_string();
    assert_eq!(real.post(&p, Format::Json, &stale, |_| {}).await, 401);
    // Nothing above reached the stream or the ledger.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = t.db().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier.wechat_push_events")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(applied, 0);
    assert_eq!(credits(&t, "adv-f", "o_forged", TEMPLATE).await, 0);

    // The genuine push, then the same push retried (new nonce, new signature) and replayed in
    // the other format: one credit.
    assert_eq!(real.post(&p, Format::Json, &ts, |_| {}).await, 200);
    assert_eq!(
        real.post(&p, Format::Json, &Forger::now(), |_| {}).await,
        200
    );
    assert_eq!(
        real.post(&p, Format::Xml, &Forger::now(), |_| {}).await,
        200
    );
    until("the accept to be applied", || async {
        credits(&t, "adv-f", "o_forged", TEMPLATE).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(credits(&t, "adv-f", "o_forged", TEMPLATE).await, 1);

    // One push holding two templates (`List` as an array): both credited, once each.
    let two = popup("o_forged", &["tpl-a", "tpl-b"], now + 1);
    assert_eq!(
        real.post(&two, Format::Json, &Forger::now(), |_| {}).await,
        200
    );
    assert_eq!(
        real.post(&two, Format::Xml, &Forger::now(), |_| {}).await,
        200
    );
    until("both templates credited", || async {
        credits(&t, "adv-f", "o_forged", "tpl-a").await == 1
            && credits(&t, "adv-f", "o_forged", "tpl-b").await == 1
    })
    .await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier.wechat_push_events")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(applied, 3, "three items applied once each");

    // The URL check answers echostr only under our signature.
    let ts = Forger::now();
    let sig = push::signature(&[TOKEN, &ts, "n1"]);
    let check = |sig: String| {
        t.http
            .get(t.api("/api/wechat/events"))
            .query(&[
                ("signature", sig),
                ("timestamp", ts.clone()),
                ("nonce", "n1".into()),
                ("echostr", "hello-wechat".into()),
            ])
            .send()
    };
    let ok = check(sig).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "hello-wechat");
    assert_eq!(check("0".repeat(40)).await.unwrap().status(), 401);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_template_turned_off_stops_sends_and_client_reports_add_no_credit() {
    let t = start(true, Format::Xml).await;
    t.bind("adv-o", "o_turns_off").await;
    accept_in_wechat(&t, "o_turns_off", TEMPLATE).await;
    until("the pushed accept", || async {
        credits(&t, "adv-o", "o_turns_off", TEMPLATE).await == 1
    })
    .await;
    let r = t
        .http
        .post(t.sim("/sim/subscriptions/off"))
        .json(&json!({"openid": "o_turns_off", "template_id": TEMPLATE}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    until("the change event to zero the credits", || async {
        credits(&t, "adv-o", "o_turns_off", TEMPLATE).await == 0
    })
    .await;

    // With credits from WeChat's events, the mini-program's report is recorded, adds none.
    let token = t.session("o_turns_off").await;
    let r = t
        .http
        .post(t.api("/api/advisor/subscribe"))
        .bearer_auth(token)
        .json(&json!({"advisorId": "adv-o", "templateId": TEMPLATE, "subscribed": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let db = t.db().await;
    until("the client's report to be recorded", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM notifier.subscription_events WHERE openid = 'o_turns_off' AND source = 'miniprogram'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
            == 1
    })
    .await;
    assert_eq!(credits(&t, "adv-o", "o_turns_off", TEMPLATE).await, 0);

    // So the next action waits, and nothing is sent.
    action(&t, "adv-o", "13900000005").await;
    until("the notification to wait for a credit", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM notifier.notifications WHERE advisor_id = 'adv-o' AND state = 'waiting_credit'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
            == 1
    })
    .await;
    assert!(t.messages("o_turns_off").await.is_empty());
    // The advisor accepts again in WeChat: the waiting notification goes.
    accept_in_wechat(&t, "o_turns_off", TEMPLATE).await;
    assert_eq!(t.wait_messages("o_turns_off", 1).await.len(), 1);
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_not_answered_success_is_retried_and_applied_once() {
    let t = start(false, Format::Json).await;
    t.bind("adv-r", "o_retried").await;
    // A proxy in front of the gateway that passes every push on but loses the first answer,
    // as a timeout would: WeChat pushes again, the gateway sees the same item twice.
    let gateway = t.api("/api/wechat/events");
    let seen = Arc::new(AtomicUsize::new(0));
    let proxy = {
        let seen = seen.clone();
        let http = t.http.clone();
        axum::Router::new().route(
            "/push",
            axum::routing::post(move |q: axum::extract::RawQuery, body: axum::body::Bytes| {
                let (seen, http, gateway) = (seen.clone(), http.clone(), gateway.clone());
                async move {
                    let url = format!("{gateway}?{}", q.0.unwrap_or_default());
                    let r = http.post(url).body(body).send().await.unwrap();
                    let answer = r.text().await.unwrap();
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new())
                    } else {
                        (axum::http::StatusCode::OK, answer)
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, proxy).await });
    let r = t
        .http
        .post(t.sim("/sim/push-target"))
        .json(&json!({"url": proxy_url, "token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    accept_in_wechat(&t, "o_retried", TEMPLATE).await;
    let pushes = delivered_pushes(&t, 1).await;
    assert_eq!(pushes[0]["attempts"], 2, "{pushes:?}");
    assert_eq!(pushes[0]["delivered"], true);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    until("the accept", || async {
        credits(&t, "adv-r", "o_retried", TEMPLATE).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        credits(&t, "adv-r", "o_retried", TEMPLATE).await,
        1,
        "the retried push is the same event"
    );
    t.stack.stop().await.unwrap();
}
