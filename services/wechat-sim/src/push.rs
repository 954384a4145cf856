//! WeChat's message push, as the simulator does it: when a user accepts a template (`POST
//! /sim/credits`), turns one off (`POST /sim/subscriptions/off`) or a message was sent, the
//! simulator posts the subscription event to the configured URL exactly as WeChat documents it:
//! signed with the push Token, encrypted in safe mode when an EncodingAESKey is set, JSON or XML,
//! `List` an object for one item. An answer other than HTTP 200 with `success` or an empty body
//! within 5 s is retried, up to three times (WeChat's rule); what happened to each push is kept
//! for tests (`GET /sim/pushes`).
//!
//! The target comes from `WECHAT_SIM_PUSH_URL`, `WECHAT_SIM_PUSH_TOKEN`,
//! `WECHAT_SIM_PUSH_AES_KEY` and `WECHAT_SIM_PUSH_FORMAT`, or at run time from `POST
//! /sim/push-target` (a test learns the gateway's address after starting the simulator).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ande_wechat::push::{self, AesKey, Format, Push, PushItem};
use rand::Rng;
use serde::Serialize;

/// WeChat waits this long for an answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Retries after the first attempt.
pub const RETRIES: u32 = 3;
/// The original id (`gh_…`) the simulated mini-program pushes from.
pub const TO_USER: &str = "gh_ande_simulator";

/// Where pushes go.
#[derive(Clone)]
pub struct PushTarget {
    pub url: String,
    pub token: String,
    pub aes_key: Option<AesKey>,
    pub format: Format,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("url", &self.url)
            .field("safe_mode", &self.aes_key.is_some())
            .field("format", &self.format)
            .finish()
    }
}

/// One push and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct PushRecord {
    pub event: String,
    pub openid: String,
    pub template_id: String,
    pub create_time: i64,
    /// Attempts made so far (1 + retries).
    pub attempts: u32,
    /// The endpoint answered 200 with `success` or nothing.
    pub delivered: bool,
    /// The last answer: `200 success`, `503`, `timeout`, `connect error`…
    pub last_answer: String,
}

/// The last CreateTime per (user, event, template).
type LastTimes = std::collections::HashMap<(String, String, String), i64>;

/// Sends the pushes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pusher {
    app_id: String,
    target: Arc<Mutex<Option<PushTarget>>>,
    records: Arc<Mutex<Vec<PushRecord>>>,
    /// The last CreateTime per (user, event, template): see [`Pusher::create_time`].
    last_time: Arc<Mutex<LastTimes>>,
    retry_after: Duration,
    client: reqwest::Client,
}

impl Pusher {
    pub fn new(app_id: &str, target: Option<PushTarget>) -> Self {
        Self {
            app_id: app_id.to_string(),
            target: Arc::new(Mutex::new(target)),
            records: Arc::default(),
            last_time: Arc::default(),
            retry_after: Duration::from_millis(500),
            client: ande_wechat::http::builder()
                .timeout(ANSWER_WITHIN)
                .build()
                .expect("a plain HTTP client"),
        }
    }

    pub fn set_target(&self, target: Option<PushTarget>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    pub fn target(&self) -> Option<PushTarget> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn records(&self) -> Vec<PushRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn forget(&self) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.last_time
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// WeChat identifies a push by sender, second and content, so two equal pushes in one second
    /// would be one. A person cannot answer two popups (or turn a switch twice) within a second;
    /// scripted tests can, so the simulator dates such a push a second after the previous one.
    fn create_time(&self, openid: &str, event: &str, template_id: &str) -> i64 {
        let now = chrono::Utc::now().timestamp();
        let mut last = self.last_time.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            openid.to_string(),
            event.to_string(),
            template_id.to_string(),
        );
        let t = last.get(&key).map_or(now, |prev| now.max(prev + 1));
        last.insert(key, t);
        t
    }

    /// `count` accepts of a template in the popup, one push each.
    pub fn accepted(&self, openid: &str, template_id: &str, count: u64) {
        for _ in 0..count.min(100) {
            let item = PushItem::Popup {
                template_id: template_id.into(),
                status: "accept".into(),
                scene: "0".into(),
            };
            let at = self.create_time(openid, push::POPUP_EVENT, template_id);
            self.send(openid, at, push::POPUP_EVENT, item);
        }
    }

    /// The user turned the template off in the mini-program's settings.
    pub fn turned_off(&self, openid: &str, template_id: &str) {
        let item = PushItem::Change {
            template_id: template_id.into(),
            status: "reject".into(),
        };
        let at = self.create_time(openid, push::CHANGE_EVENT, template_id);
        self.send(openid, at, push::CHANGE_EVENT, item);
    }

    /// A message WeChat accepted reached the user.
    pub fn sent(&self, openid: &str, template_id: &str, msgid: u64) {
        let item = PushItem::Sent {
            template_id: template_id.into(),
            msg_id: msgid.to_string(),
            error_code: 0,
            error_status: "success".into(),
        };
        self.send(
            openid,
            chrono::Utc::now().timestamp(),
            push::SENT_EVENT,
            item,
        );
    }

    fn send(&self, openid: &str, create_time: i64, event: &str, item: PushItem) {
        let Some(target) = self.target() else {
            return;
        };
        let p = Push {
            to_user: TO_USER.into(),
            from_user: openid.into(),
            create_time,
            msg_type: "event".into(),
            event: event.into(),
            items: vec![item.clone()],
        };
        let index = {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            records.push(PushRecord {
                event: event.into(),
                openid: openid.into(),
                template_id: item.template_id().into(),
                create_time,
                attempts: 0,
                delivered: false,
                last_answer: String::new(),
            });
            records.len() - 1
        };
        let this = self.clone();
        tokio::spawn(async move { this.deliver(target, p, index).await });
    }

    /// The first attempt and up to [`RETRIES`] more, each signed afresh.
    async fn deliver(&self, target: PushTarget, p: Push, index: usize) {
        for attempt in 1..=1 + RETRIES {
            let answer = self.attempt(&target, &p).await;
            let delivered = answer == "200 success" || answer == "200 ";
            {
                let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(r) = records.get_mut(index) {
                    r.attempts = attempt;
                    r.delivered = delivered;
                    r.last_answer = answer.clone();
                }
            }
            tracing::debug!(event = %p.event, attempt, %answer, "pushed");
            if delivered {
                return;
            }
            tokio::time::sleep(self.retry_after).await;
        }
    }

    async fn attempt(&self, target: &PushTarget, p: &Push) -> String {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let nonce = rand::thread_rng()
            .gen_range(100_000_000u64..999_999_999)
            .to_string();
        let signature = push::signature(&[&target.token, &timestamp, &nonce]);
        let plain = p.render(target.format);
        let mut query = vec![
            ("signature", signature),
            ("timestamp", timestamp.clone()),
            ("nonce", nonce.clone()),
            ("openid", p.from_user.clone()),
        ];
        let body = match &target.aes_key {
            None => plain,
            Some(key) => {
                let encrypted = key.encrypt(&plain, &self.app_id, rand::random());
                let msg_signature =
                    push::signature(&[&target.token, &timestamp, &nonce, &encrypted]);
                query.push(("encrypt_type", "aes".into()));
                query.push(("msg_signature", msg_signature));
                push::sealed_body(target.format, TO_USER, &encrypted)
            }
        };
        let content_type = match target.format {
            Format::Json => "application/json",
            Format::Xml => "text/xml",
        };
        let sent = self
            .client
            .post(&target.url)
            .query(&query)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                format!(
                    "{status} {}",
                    text.trim().chars().take(64).collect::<String>()
                )
            }
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "connect error".into(),
        }
    }
}
