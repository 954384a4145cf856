//! The notifier's rules (issue 5), each checked against the machine's real NATS and Postgres and
//! the WeChat simulator. The notifier is driven only through its real inputs: `SubscriptionChanged`
//! and `LeadOutcome` events on the bus and its request/reply subjects. What it did is read from
//! the simulator (`/sim/messages`, `/sim/calls`) and from the notifier's own tables.
//!
//! Every test has its own simulator, database and subject prefix, so they run in parallel.
//! Timings (retry backoff, polling, sweep) are shortened through `NotifierConfig`; waits poll with
//! a deadline. Set `TEST_LOG=1` to see the services' logs.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use ande_contracts::leads::ActionQuery;
use ande_contracts::notifier::{
    DigestQuery, DirectSend, GetDigest, Journey, Resume, ResumeRequest, Send,
};
use ande_contracts::vocab::{NotificationKind, NotificationState};
use ande_events::{
    new_meta, to_timestamp, Event, LeadOutcome, LeadOutcomeKind, SubscriptionChanged,
    SubscriptionStatus,
};
use ande_notifier::consumers::{OUTCOMES_DURABLE, SUBSCRIPTIONS_DURABLE, WECHAT_DURABLE};
use ande_notifier::NotifierConfig;
use ande_platform::bus::Bus;
use ande_platform::config::CommonConfig;
use ande_platform::rpc::{self, RpcError};
use ande_platform::{CancellationToken, ExposeSecret};
use ande_wechat::{keywords, SubscribeMessage, DEV_TEMPLATE_ID};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Generous: two cores are shared with other builds and tests. Waits end as soon as the
/// condition holds, so this bounds only a failing test.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(40);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const T: &str = DEV_TEMPLATE_ID;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct Harness {
    sim: wechat_sim::SimHandle,
    common: CommonConfig,
    bus: Bus,
    db: PgPool,
    http: reqwest::Client,
    stop: CancellationToken,
    processes: Vec<JoinHandle<()>>,
    /// Why a notifier process stopped, if one did.
    stopped: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The notifier's defaults with test-sized timings.
fn fast(mut c: NotifierConfig) -> NotifierConfig {
    c.retry_backoff = Duration::from_millis(50);
    c.poll_every = Duration::from_millis(50);
    c.sweep_every = Duration::from_millis(200);
    c.wechat.timeout = Duration::from_secs(3);
    c
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(1, |_| {}).await
    }

    /// `processes` notifiers sharing the database, the durable consumers and the simulator.
    async fn start_with(processes: usize, adjust: impl Fn(&mut NotifierConfig)) -> Self {
        Self::start_full(wechat_sim::SimConfig::default(), processes, adjust).await
    }

    async fn start_full(
        sim: wechat_sim::SimConfig,
        processes: usize,
        adjust: impl Fn(&mut NotifierConfig),
    ) -> Self {
        ande_platform::telemetry::init_for_tests();
        let sim = wechat_sim::spawn(sim).await.expect("simulator starts");
        let common = ande_platform::testing::isolated_config().await;
        let bus = Bus::connect(&common, "test")
            .await
            .expect("NATS must run for this test");
        bus.ensure_streams(common.event_max_age).await.unwrap();
        // Small: many tests share one Postgres (100 connections by default).
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(common.database_url.expose_secret())
            .await
            .unwrap();
        let mut h = Self {
            sim,
            common,
            bus,
            db,
            http: ande_wechat::http::client(),
            stop: CancellationToken::new(),
            processes: Vec::new(),
            stopped: Default::default(),
        };
        for _ in 0..processes {
            h.spawn_notifier(&adjust);
        }
        if processes > 0 {
            h.migrated().await;
        }
        h
    }

    /// Every migration applied (each runs in its own transaction, so one table existing says
    /// nothing about the later ones).
    async fn migrated(&self) {
        let all = ande_notifier::MIGRATIONS.iter().count() as i64;
        self.until("the notifier schema to be migrated", || async {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT count(*) FROM notifier._sqlx_migrations WHERE success")
                    .fetch_optional(&self.db)
                    .await
                    .ok()
                    .flatten();
            applied.filter(|n| *n == all).map(|_| ())
        })
        .await;
    }

    fn config(&self, adjust: impl Fn(&mut NotifierConfig)) -> NotifierConfig {
        let mut c = fast(NotifierConfig::with_common(
            self.common.clone(),
            &self.sim.base_url,
        ));
        adjust(&mut c);
        c
    }

    fn spawn_notifier(&mut self, adjust: impl Fn(&mut NotifierConfig)) {
        let c = self.config(adjust);
        let (stop, stopped) = (self.stop.clone(), self.stopped.clone());
        self.processes.push(tokio::spawn(async move {
            let result = ande_notifier::run(c, stop).await;
            *stopped.lock().unwrap() = Some(format!("{result:?}"));
        }));
    }

    /// Poll `check` until it gives a value; panics after the deadline or if a notifier stopped.
    async fn until<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        self.until_within(DEADLINE, what, check).await
    }

    /// [`Self::until`] for the bulk tests (thousands of notifications in a debug build).
    async fn until_long<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        self.until_within(DEADLINE * 6, what, check).await
    }

    async fn until_within<T, F, Fut>(&self, within: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.processes.iter().any(|p| p.is_finished()) {
                let why = self.stopped.lock().unwrap().clone();
                panic!("a notifier process stopped while waiting for {what}: {why:?}");
            }
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    // --- inputs ------------------------------------------------------------------------------

    async fn publish<E: Event>(&self, event: &E) {
        self.bus
            .publish(event)
            .await
            .expect("JetStream stores the event");
    }

    /// Publish the same bytes under another `Nats-Msg-Id`: JetStream stores it again, so the
    /// consumer sees a second delivery of the very same event (what a redelivery or a replay
    /// tool does), rather than JetStream's duplicate window hiding it.
    async fn publish_again<E: Event>(&self, event: &E) {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", Uuid::now_v7().to_string().as_str());
        self.bus
            .js
            .publish_with_headers(
                self.bus.subjects.event(E::KIND),
                h,
                event.encode_to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    fn subscription(
        advisor: &str,
        openid: &str,
        template: &str,
        status: SubscriptionStatus,
    ) -> SubscriptionChanged {
        SubscriptionChanged {
            meta: Some(new_meta(&Uuid::now_v7().to_string(), "test", Utc::now())),
            advisor_id: advisor.into(),
            openid: openid.into(),
            template_id: template.into(),
            status: status as i32,
            source: "miniprogram".into(),
        }
    }

    /// `n` accepts of the default template: `n` credits in our count, none yet inside WeChat.
    async fn accept_ours(&self, advisor: &str, openid: &str, n: usize) {
        self.accept_template(advisor, openid, T, n).await
    }

    /// Publish `n` accepts and wait until the notifier has applied them. (Outcomes and
    /// subscription changes have separate consumers, so an outcome published right after an
    /// accept could otherwise be handled first.)
    async fn accept_template(&self, advisor: &str, openid: &str, template: &str, n: usize) {
        self.bind(advisor, openid).await;
        let accepts = || async {
            sqlx::query_scalar::<_, i32>("SELECT accepts FROM notifier.subscriptions WHERE advisor_id = $1 AND openid = $2 AND template_id = $3")
                .bind(advisor)
                .bind(openid)
                .bind(template)
                .fetch_optional(&self.db)
                .await
                .unwrap()
                .unwrap_or(0)
        };
        let before = accepts().await;
        for _ in 0..n {
            self.publish(&Self::subscription(
                advisor,
                openid,
                template,
                SubscriptionStatus::Accept,
            ))
            .await;
        }
        let want = before + n as i32;
        self.until(
            &format!("{n} accepts of {advisor} to be applied"),
            || async { (accepts().await == want).then_some(()) },
        )
        .await
    }

    /// Bind `openid` to `advisor` (only bound openids receive an advisor's notifications).
    async fn bind(&self, advisor: &str, openid: &str) {
        self.migrated().await;
        sqlx::query("INSERT INTO notifier.advisor_bindings (advisor_id, openid, bound_by) VALUES ($1, $2, 'test') ON CONFLICT DO NOTHING")
            .bind(advisor)
            .bind(openid)
            .execute(&self.db)
            .await
            .unwrap();
    }

    /// `n` accepts as the advisor's phone does them: WeChat counts them, and so do we.
    async fn accept(&self, advisor: &str, openid: &str, n: usize) {
        self.grant(openid, T, n).await;
        self.accept_ours(advisor, openid, n).await;
    }

    /// Credits inside WeChat only.
    async fn grant(&self, openid: &str, template: &str, n: usize) {
        self.sim_post(
            "/sim/credits",
            json!({"openid": openid, "template_id": template, "count": n}),
        )
        .await;
    }

    /// An outcome for `advisor` as leads publishes it: a new customer with a lead.
    fn outcome(advisor: &str) -> LeadOutcome {
        let action_id = Uuid::now_v7().to_string();
        LeadOutcome {
            meta: Some(new_meta(&action_id, "leads", Utc::now())),
            action_id,
            advisor_id: advisor.into(),
            customer_id: format!("cust-{}", Uuid::now_v7().simple()),
            action_type: "view_resume".into(),
            kind: LeadOutcomeKind::Created as i32,
            no_lead_reason: String::new(),
            lead_id: format!("lead-{}", Uuid::now_v7().simple()),
            customer_code: "KH0001".into(),
            is_new_customer: true,
            customer_name: "张三".into(),
            customer_phone: "13800138000".into(),
            action_at: Some(to_timestamp(Utc::now())),
            anonymous: false,
            lead_owner: advisor.into(),
            ..Default::default()
        }
    }

    /// Publish many events with their acks in flight together (one at a time takes long).
    async fn publish_all<E: Event>(&self, events: &[E]) {
        for chunk in events.chunks(500) {
            let mut acks = Vec::new();
            for e in chunk {
                acks.push(self.bus.publish_start(e).await.expect("published"));
            }
            for ack in acks {
                ack.await.expect("JetStream stores the event");
            }
        }
    }

    /// Publish `n` outcomes for `advisor`; returns their action ids.
    async fn outcomes(&self, advisor: &str, n: usize) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let o = Self::outcome(advisor);
            self.publish(&o).await;
            ids.push(o.action_id.parse().unwrap());
        }
        ids
    }

    /// Block until the `control` table (the pause switch every claim reads) has been scanned `n`
    /// more times than when this is called; statistics reach the view within about a second.
    async fn wait_control_reads(&self, n: i64) {
        let reads = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0) FROM pg_stat_user_tables
                 WHERE schemaname = 'notifier' AND relname = 'control'",
            )
            .fetch_one(&self.db)
            .await
            .unwrap()
        };
        let start = reads().await;
        for _ in 0..200 {
            if reads().await >= start + n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the workers did not read the pause switch {n} times in 10 s");
    }

    /// A request/reply call; while the notifier has not yet subscribed its methods (just
    /// started), "no responders" is retried for a few seconds.
    async fn rpc<M: rpc::Method>(&self, req: &M::Request) -> Result<M::Reply, RpcError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = rpc::call::<M>(&self.bus.client, &self.bus.subjects, req, RPC_TIMEOUT).await;
            let starting = matches!(
                &r,
                Err(RpcError::Unavailable {
                    cause: ande_contracts::Unavailable::NoResponders,
                    ..
                })
            );
            if !starting || tokio::time::Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // --- the simulator -----------------------------------------------------------------------

    async fn sim_post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(self.sim.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn sim_get(&self, path: &str) -> Value {
        self.http
            .get(self.sim.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn fault(&self, spec: Value) {
        self.sim_post("/sim/faults", spec).await;
    }

    async fn clear_faults(&self) {
        let r = self
            .http
            .delete(self.sim.url("/sim/faults"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    async fn messages(&self, touser: &str) -> Vec<Value> {
        let v = self
            .sim_get(&format!("/sim/messages?touser={touser}"))
            .await;
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_messages(&self, touser: &str, n: usize) -> Vec<Value> {
        self.until(&format!("{n} messages to {touser}"), || async {
            let m = self.messages(touser).await;
            (m.len() >= n).then_some(m)
        })
        .await
    }

    /// `{errcode: count}` of one endpoint's calls at the simulator.
    async fn calls(&self, endpoint: &str) -> (u64, BTreeMap<String, u64>) {
        let v = self.sim_get("/sim/calls").await;
        let e = &v[endpoint];
        let codes = e["errcodes"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        (e["count"].as_u64().unwrap_or(0), codes)
    }

    async fn sim_credits(&self, openid: &str) -> u64 {
        self.sim_get(&format!("/sim/credits?openid={openid}&template_id={T}"))
            .await["remaining"]
            .as_u64()
            .unwrap()
    }

    // --- the notifier's tables ---------------------------------------------------------------

    async fn notification(&self, action_id: Uuid) -> Option<Note> {
        sqlx::query_as("SELECT id, state, attempts, errcode, errmsg, msgid, kind, digest_id, next_attempt_at FROM notifier.notifications WHERE action_id = $1")
            .bind(action_id)
            .fetch_optional(&self.db)
            .await
            .unwrap()
    }

    async fn wait_state(&self, action_id: Uuid, state: &str) -> Note {
        self.until(
            &format!("notification of {action_id} to be {state}"),
            || async {
                self.notification(action_id)
                    .await
                    .filter(|n| n.state == state)
            },
        )
        .await
    }

    async fn states(&self, advisor: &str) -> BTreeMap<String, i64> {
        sqlx::query("SELECT state, count(*) AS n FROM notifier.notifications WHERE advisor_id = $1 GROUP BY state")
            .bind(advisor)
            .fetch_all(&self.db)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("state"), r.get("n")))
            .collect()
    }

    async fn credits(&self, advisor: &str, openid: &str) -> i32 {
        sqlx::query_scalar("SELECT credits FROM notifier.subscriptions WHERE advisor_id = $1 AND openid = $2 AND template_id = $3")
            .bind(advisor)
            .bind(openid)
            .bind(T)
            .fetch_optional(&self.db)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    async fn wait_credits(&self, advisor: &str, openid: &str, n: i32) {
        self.until(&format!("{advisor} to have {n} credits"), || async {
            (self.credits(advisor, openid).await == n).then_some(())
        })
        .await
    }

    /// The delivery log of an action's notification, in order.
    async fn log(&self, action_id: Uuid) -> Vec<(String, Option<i64>)> {
        sqlx::query(
            "SELECT event, errcode FROM notifier.deliveries WHERE action_id = $1 ORDER BY id",
        )
        .bind(action_id)
        .fetch_all(&self.db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("event"), r.get("errcode")))
        .collect()
    }

    fn events(log: &[(String, Option<i64>)]) -> Vec<&str> {
        log.iter().map(|(e, _)| e.as_str()).collect()
    }

    /// Both durable consumers have nothing pending or unacknowledged: every published event
    /// has been handled and its effects committed.
    async fn drained(&self) {
        self.until("the notifier's consumers to drain", || async {
            let stream = self
                .bus
                .js
                .get_stream(self.bus.subjects.stream())
                .await
                .ok()?;
            for durable in [OUTCOMES_DURABLE, SUBSCRIPTIONS_DURABLE, WECHAT_DURABLE] {
                let mut c: async_nats::jetstream::consumer::PullConsumer =
                    stream.get_consumer(durable).await.ok()?;
                let info = c.info().await.ok()?;
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// Nothing queued or in flight: every notification is in a final or waiting state.
    async fn settled(&self) {
        self.drained().await;
        self.until("the queue to settle", || async {
            let busy: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM notifier.notifications WHERE state IN ('queued', 'sending')",
            )
            .fetch_one(&self.db)
            .await
            .ok()?;
            (busy == 0).then_some(())
        })
        .await;
    }
}

#[derive(Debug, sqlx::FromRow)]
#[allow(dead_code)]
struct Note {
    id: Uuid,
    state: String,
    attempts: i32,
    errcode: Option<i64>,
    errmsg: Option<String>,
    msgid: Option<String>,
    kind: String,
    digest_id: Option<Uuid>,
    next_attempt_at: DateTime<Utc>,
}

fn value<'a>(message: &'a Value, keyword: &str) -> &'a str {
    message["data"][keyword]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no {keyword} in {message}"))
}

fn by_page<'a>(messages: &'a [Value], page: &str) -> &'a Value {
    let found: Vec<&Value> = messages.iter().filter(|m| m["page"] == page).collect();
    assert_eq!(
        found.len(),
        1,
        "one message with page {page} in {messages:#?}"
    );
    found[0]
}

// ---------------------------------------------------------------------------------------------
// Message content
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_the_seed_texts_beijing_time_customer_and_the_lead_page() {
    let h = Harness::start_with(1, |c| {
        c.miniprogram_state = "trial".into();
        c.lang = "zh_TW".into();
    })
    .await;
    let openid = "oAdvisorContent0000000000001";
    h.accept("adv-content", openid, 4).await;
    // 16:05 UTC on the 25th is 00:05 on the 26th in Beijing.
    let at = Utc.with_ymd_and_hms(2026, 11, 25, 16, 5, 0).unwrap();
    let long_name = "欧阳娜娜的表姐妹欧阳娜娜的表姐妹欧阳娜娜的"; // 22 characters
    assert!(long_name.chars().count() > 20);
    let cases = [
        (
            "view_resume",
            true,
            "新客户查看了您的简历",
            "张三",
            "13800138000",
            "lead-1",
        ),
        (
            "contact_advisor",
            false,
            "客户想要联系您",
            "李四",
            "13900139000",
            "lead-2",
        ),
        (
            "book_service",
            true,
            "新客户预约了您的服务",
            long_name,
            "13700137000",
            "lead-3",
        ),
        ("share_resume", false, "客户进行了操作", "", "", ""),
    ];
    for (action, new, _, name, phone, lead) in cases {
        let mut o = Harness::outcome("adv-content");
        o.action_type = action.into();
        o.is_new_customer = new;
        o.customer_name = name.into();
        o.customer_phone = phone.into();
        o.lead_id = lead.into();
        if lead.is_empty() {
            o.kind = LeadOutcomeKind::None as i32;
            o.no_lead_reason = "missing_phone".into();
            o.customer_id = "cust 9".into();
        }
        o.action_at = Some(to_timestamp(at));
        h.publish(&o).await;
    }
    let messages = h.wait_messages(openid, 4).await;
    assert_eq!(messages.len(), 4);
    for (_, _, text, name, phone, lead) in cases {
        // With no lead the page opens the customer (its id URL-encoded).
        let page = if lead.is_empty() {
            "pages/customer/detail?id=cust%209".to_string()
        } else {
            format!("pages/customer/detail?id={lead}")
        };
        let m = by_page(&messages, &page);
        assert_eq!(m["template_id"], T);
        assert_eq!(m["miniprogram_state"], "trial");
        assert_eq!(m["lang"], "zh_TW");
        assert_eq!(value(m, "thing1"), text);
        assert_eq!(
            value(m, "time2"),
            "2026年11月26日 00:05",
            "action time in Asia/Shanghai"
        );
        assert_eq!(
            value(m, "thing3"),
            if phone.is_empty() {
                keywords::PLACEHOLDER
            } else {
                phone
            }
        );
        let shown = value(m, "thing7");
        if name == long_name {
            assert_eq!(
                shown.chars().count(),
                20,
                "a thing is at most 20 characters: {shown}"
            );
            assert!(shown.ends_with('…'), "{shown}");
            assert!(
                long_name.starts_with(shown.trim_end_matches('…')),
                "{shown}"
            );
        } else {
            assert_eq!(
                shown,
                if name.is_empty() {
                    keywords::PLACEHOLDER
                } else {
                    name
                }
            );
        }
        for (k, v) in m["data"].as_object().unwrap() {
            keywords::validate(k, v["value"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    }
    // WeChat refused nothing.
    let (_, codes) = h.calls("subscribe_send").await;
    assert_eq!(codes, BTreeMap::from([("0".to_string(), 4)]));
}

// ---------------------------------------------------------------------------------------------
// Subscriptions and credits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_adds_a_credit_and_only_an_accepted_send_consumes_one() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-credit", "oAdvisorCredit00000000000001");
    h.accept(adv, openid, 2).await;
    h.wait_credits(adv, openid, 2).await;

    // WeChat refuses the first send: the credit stays.
    h.fault(json!({"endpoint": "subscribe_send", "errcode": 48001, "count": 1}))
        .await;
    let first = h.outcomes(adv, 1).await[0];
    let n = h.wait_state(first, "failed").await;
    assert_eq!(n.errcode, Some(48001));
    assert_eq!(
        h.credits(adv, openid).await,
        2,
        "a refused send consumes no credit"
    );

    // The next one is accepted: one credit consumed, here and inside WeChat.
    let second = h.outcomes(adv, 1).await[0];
    h.wait_state(second, "sent").await;
    assert_eq!(h.credits(adv, openid).await, 1);
    assert_eq!(
        h.sim_credits(openid).await,
        1,
        "our count agrees with WeChat's"
    );

    // reject and filter are recorded and leave earlier credits usable; ban ends them.
    for (status, name) in [
        (SubscriptionStatus::Reject, "reject"),
        (SubscriptionStatus::Filter, "filter"),
    ] {
        h.publish(&Harness::subscription(adv, openid, T, status))
            .await;
        h.until(&format!("{name} to be recorded"), || async {
            let s: String = sqlx::query_scalar(
                "SELECT last_status FROM notifier.subscriptions WHERE advisor_id = $1",
            )
            .bind(adv)
            .fetch_one(&h.db)
            .await
            .ok()?;
            (s == name).then_some(())
        })
        .await;
        assert_eq!(h.credits(adv, openid).await, 1, "{name} keeps the credit");
    }
    h.publish(&Harness::subscription(
        adv,
        openid,
        T,
        SubscriptionStatus::Ban,
    ))
    .await;
    h.wait_credits(adv, openid, 0).await;
    let row = sqlx::query(
        "SELECT accepts, rejects, last_status FROM notifier.subscriptions WHERE advisor_id = $1",
    )
    .bind(adv)
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(
        (
            row.get::<i32, _>("accepts"),
            row.get::<i32, _>("rejects"),
            row.get::<String, _>("last_status")
        ),
        (2, 3, "ban".into())
    );
    let logged: Vec<String> = sqlx::query_scalar("SELECT event FROM notifier.deliveries WHERE advisor_id = $1 AND event LIKE 'subscription_%' ORDER BY id")
        .bind(adv)
        .fetch_all(&h.db)
        .await
        .unwrap();
    assert_eq!(
        logged,
        [
            "subscription_accept",
            "subscription_accept",
            "subscription_reject",
            "subscription_filter",
            "subscription_ban"
        ]
    );

    // Banned: nothing is sent even though WeChat still holds a credit.
    let third = h.outcomes(adv, 1).await[0];
    h.wait_state(third, "waiting_credit").await;
    h.settled().await;
    assert_eq!(h.messages(openid).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_credit_the_notification_waits_and_the_next_accept_releases_it() {
    // No periodic sweep within the test: the accept itself must wake the release.
    let h = Harness::start_with(1, |c| c.sweep_every = Duration::from_secs(600)).await;
    let (adv, openid) = ("adv-wait", "oAdvisorWait0000000000000001");
    let mut o = Harness::outcome(adv);
    o.action_type = "contact_advisor".into();
    h.publish(&o).await;
    let action: Uuid = o.action_id.parse().unwrap();
    h.wait_state(action, "waiting_credit").await;
    assert_eq!(
        Harness::events(&h.log(action).await),
        ["queued", "no_subscription"]
    );
    assert_eq!(
        h.calls("subscribe_send").await.0,
        0,
        "nothing was sent without a subscription"
    );

    let accepted = tokio::time::Instant::now();
    h.accept(adv, openid, 1).await;
    let n = h.wait_state(action, "sent").await;
    eprintln!(
        "measured: accept to released message {:?}",
        accepted.elapsed()
    );
    let m = h.wait_messages(openid, 1).await;
    assert_eq!(m.len(), 1);
    // Released alone, it is the original message, not a digest.
    assert_eq!(value(&m[0], "thing1"), "新客户想要联系您");
    assert_eq!(
        m[0]["page"],
        format!("pages/customer/detail?id={}", o.lead_id)
    );
    assert_eq!(n.msgid.as_deref(), Some(m[0]["msgid"].to_string().as_str()));
    assert_eq!(
        Harness::events(&h.log(action).await),
        ["queued", "no_subscription", "released_on_credit", "sent"]
    );
    assert_eq!(h.credits(adv, openid).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_waiting_notifications_become_one_digest_that_counts_them() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-digest", "oAdvisorDigest00000000000001");
    let actions = h.outcomes(adv, 3).await;
    for a in &actions {
        h.wait_state(*a, "waiting_credit").await;
    }
    h.accept(adv, openid, 1).await;
    let m = h.wait_messages(openid, 1).await;
    h.settled().await;
    let m2 = h.messages(openid).await;
    assert_eq!(
        m2.len(),
        1,
        "one message for three waiting actions: {m2:#?}"
    );
    assert_eq!(value(&m[0], "thing1"), "3条客户动态等您查看");
    let page = m[0]["page"].as_str().unwrap();
    let digest_id = page
        .strip_prefix("pages/customer/pending?digest=")
        .unwrap_or_else(|| panic!("digest page: {page}"));
    for (k, v) in m[0]["data"].as_object().unwrap() {
        keywords::validate(k, v["value"].as_str().unwrap()).unwrap();
    }

    for a in &actions {
        let n = h.notification(*a).await.unwrap();
        assert_eq!(n.state, "digested");
        assert_eq!(
            n.digest_id.map(|d| d.to_string()).as_deref(),
            Some(digest_id)
        );
    }
    // The page the digest opens lists the three.
    let q = DigestQuery {
        digest_id: digest_id.parse().unwrap(),
    };
    let d = h.rpc::<GetDigest>(&q).await.unwrap();
    let listed: BTreeSet<Uuid> = d.notifications.iter().map(|n| n.action_id).collect();
    assert_eq!(listed, actions.iter().copied().collect());
    // Each action's journey leads to the digest and WeChat's msgid.
    let j = h.rpc::<Journey>(&about(actions[1])).await.unwrap();
    assert_eq!(j.notifications.len(), 2, "{j:#?}");
    let digest = j
        .notifications
        .iter()
        .find(|n| n.kind == NotificationKind::Digest)
        .unwrap();
    assert_eq!(digest.state, NotificationState::Sent);
    assert_eq!(digest.msgid, Some(m[0]["msgid"].to_string()));
    let events: Vec<&str> = j.log.iter().map(|e| e.event.as_str()).collect();
    assert!(
        events.contains(&"folded_into_digest") && events.contains(&"sent"),
        "{events:?}"
    );
    assert_eq!(h.credits(adv, openid).await, 0);
}

/// A digest that itself found no credit at WeChat (43101) and waits again, joined by another
/// action: the next digest counts every action, not the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_that_waits_again_is_counted_by_its_actions() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-redigest", "oAdvisorRedigest000000000001");
    let mut actions = h.outcomes(adv, 2).await;
    for a in &actions {
        h.wait_state(*a, "waiting_credit").await;
    }
    // Our count says one credit, WeChat has none: the digest is refused with 43101 and waits.
    h.accept_ours(adv, openid, 1).await;
    h.until("the first digest to be refused", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE kind = 'digest' AND state = 'waiting_credit' AND errcode = 43101")
            .fetch_one(&h.db)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    actions.extend(h.outcomes(adv, 1).await);
    h.wait_state(actions[2], "waiting_credit").await;

    h.accept(adv, openid, 1).await;
    let m = h.wait_messages(openid, 1).await;
    h.settled().await;
    assert_eq!(h.messages(openid).await.len(), 1);
    assert_eq!(
        value(&m[0], "thing1"),
        "3条客户动态等您查看",
        "three customer actions wait, in two rows"
    );
    let digest_id = m[0]["page"]
        .as_str()
        .unwrap()
        .rsplit('=')
        .next()
        .unwrap()
        .to_string();
    let q = DigestQuery {
        digest_id: digest_id.parse().unwrap(),
    };
    let d = h.rpc::<GetDigest>(&q).await.unwrap();
    let listed: BTreeSet<Uuid> = d
        .notifications
        .iter()
        .filter(|n| n.kind == NotificationKind::Action)
        .map(|n| n.action_id)
        .collect();
    assert_eq!(
        listed,
        actions.iter().copied().collect(),
        "the digest's page lists every action: {d:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_per_advisor() {
    let h = Harness::start_with(1, |c| c.max_waiting = 3).await;
    let (adv, openid) = ("adv-bounded", "oAdvisorBounded0000000000001");
    h.outcomes(adv, 8).await;
    h.settled().await;
    let states = h.states(adv).await;
    assert_eq!(
        states,
        BTreeMap::from([
            ("waiting_credit".to_string(), 3),
            ("dropped".to_string(), 5)
        ])
    );
    let dropped: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier.deliveries WHERE advisor_id = $1 AND event = 'dropped_too_many_waiting'")
        .bind(adv)
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(dropped, 5, "every drop is in the delivery log");
    // Another advisor is not affected by this one's backlog.
    h.accept("adv-other", "oAdvisorOther000000000000001", 1)
        .await;
    let other = h.outcomes("adv-other", 1).await[0];
    h.wait_state(other, "sent").await;

    h.accept(adv, openid, 1).await;
    let m = h.wait_messages(openid, 1).await;
    assert_eq!(value(&m[0], "thing1"), "3条客户动态等您查看");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_43101_sets_the_credit_to_zero_and_the_notification_waits() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-43101", "oAdvisor43101000000000000001");
    // We counted three accepts, but WeChat holds none (the advisor cancelled, or a count drifted).
    h.accept_ours(adv, openid, 3).await;
    h.wait_credits(adv, openid, 3).await;
    let action = h.outcomes(adv, 1).await[0];
    let n = h.wait_state(action, "waiting_credit").await;
    assert_eq!(n.errcode, Some(43101));
    assert_eq!(
        h.credits(adv, openid).await,
        0,
        "43101 sets the count to zero"
    );
    assert_eq!(
        Harness::events(&h.log(action).await),
        ["queued", "no_credit_at_wechat"]
    );

    // Traffic, counted for operators.
    let q = h
        .rpc::<ande_contracts::notifier::QueueStatus>(&Default::default())
        .await
        .unwrap();
    assert_eq!(q.no_credit_last_hour, 1);
    // The next accept releases it.
    h.accept(adv, openid, 1).await;
    h.wait_state(action, "sent").await;
    assert_eq!(h.wait_messages(openid, 1).await.len(), 1);
    assert_eq!(h.credits(adv, openid).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_term_template_needs_no_credit() {
    const LT: &str = "ande-long-term";
    let h = Harness::start_with(1, |c| {
        c.template_id = LT.into();
        c.long_term_templates = vec![LT.into()];
    })
    .await;
    h.sim_post("/sim/templates", json!({"template_id": LT, "keywords": ["thing1", "time2", "thing3", "thing7"], "long_term": true})).await;
    let (adv, openid) = ("adv-lt", "oAdvisorLongTerm000000000001");
    h.accept_template(adv, openid, LT, 1).await;
    let actions = h.outcomes(adv, 3).await;
    for a in &actions {
        h.wait_state(*a, "sent").await;
    }
    assert_eq!(h.messages(openid).await.len(), 3);
    let (credits, long_term): (i32, bool) = sqlx::query_as(
        "SELECT credits, long_term FROM notifier.subscriptions WHERE advisor_id = $1",
    )
    .bind(adv)
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert!(long_term);
    assert_eq!(credits, 1, "long-term sends leave the count alone");
}

// ---------------------------------------------------------------------------------------------
// Once per action and advisor
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_replayed_events_send_once_and_credit_once() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-once", "oAdvisorOnce0000000000000001");
    // WeChat would accept three messages: a duplicate would show.
    h.grant(openid, T, 3).await;
    // One accept, delivered twice: one credit.
    let accept = Harness::subscription(adv, openid, T, SubscriptionStatus::Accept);
    h.bind(adv, openid).await;
    h.publish(&accept).await;
    h.publish_again(&accept).await;
    h.drained().await;
    assert_eq!(h.credits(adv, openid).await, 1);

    let o = Harness::outcome(adv);
    h.publish(&o).await; // stored
    h.publish(&o).await; // the same event id within the duplicate window: dropped by JetStream
    h.publish_again(&o).await; // the same event delivered again (redelivery)
    let mut replayed = o.clone();
    replayed.meta = Some(new_meta(&o.action_id, "leads", Utc::now())); // re-emitted: a new event id
    h.publish(&replayed).await;
    let action: Uuid = o.action_id.parse().unwrap();
    h.wait_state(action, "sent").await;
    h.settled().await;

    assert_eq!(
        h.messages(openid).await.len(),
        1,
        "one message for one action"
    );
    assert_eq!(h.calls("subscribe_send").await.0, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier.notifications")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(Harness::events(&h.log(action).await), ["queued", "sent"]);
    assert_eq!(h.credits(adv, openid).await, 0);
    // A replay after the credit is gone creates nothing that waits either.
    h.publish_again(&o).await;
    h.settled().await;
    assert_eq!(
        h.states(adv).await,
        BTreeMap::from([("sent".to_string(), 1)])
    );

    // A replay as `andectl replay` does it: both durables reset to the start of the log while
    // the notifier runs. Every event is delivered again and changes nothing.
    let stream = h.bus.js.get_stream(h.bus.subjects.stream()).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let (outcomes, subscriptions, pushes) = ande_notifier::consumer_specs(&h.bus);
    for spec in [outcomes, subscriptions, pushes] {
        stream.delete_consumer(&spec.durable).await.unwrap();
        ande_platform::consumer::ensure_consumer(&h.bus, &spec)
            .await
            .unwrap();
    }
    h.until("the replay to be consumed", || async {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(OUTCOMES_DURABLE).await.ok()?;
        let info = c.info().await.ok()?;
        (info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0).then_some(())
    })
    .await;
    h.settled().await;
    assert_eq!(
        h.messages(openid).await.len(),
        1,
        "nothing sent again by the replay"
    );
    assert_eq!(
        h.credits(adv, openid).await,
        0,
        "the replayed accept added no credit"
    );
    assert_eq!(
        h.states(adv).await,
        BTreeMap::from([("sent".to_string(), 1)])
    );
}

/// A process that dies after claiming a notification leaves it `sending`; another process
/// re-queues it after `stale_after` and sends it. Here the first process died before WeChat saw
/// the message (it was still getting a token), so the advisor gets it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_crashing_mid_send_is_recovered_by_another() {
    let mut h = Harness::start_with(0, |_| {}).await;
    let (adv, openid) = ("adv-crash", "oAdvisorCrash000000000000001");

    // Process A, in a runtime of its own that we can kill: its token request will hang.
    let a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    a.spawn(ande_notifier::run(
        h.config(|c| c.wechat.timeout = Duration::from_secs(20)),
        CancellationToken::new(),
    ));
    h.migrated().await;
    h.accept(adv, openid, 1).await;
    h.fault(json!({"endpoint": "stable_token", "latency_ms": 5000, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    h.wait_state(action, "sending").await;
    h.until("A to ask for a token", || async {
        (h.calls("stable_token").await.0 == 1).then_some(())
    })
    .await;
    assert_eq!(h.credits(adv, openid).await, 0, "A reserved the credit");
    a.shutdown_background(); // the crash: every task of A stops where it is

    // Process B recovers it.
    h.spawn_notifier(|c| {
        c.wechat.timeout = Duration::from_millis(500);
        c.stale_after = Duration::from_secs(1);
    });
    h.wait_state(action, "sent").await;
    h.settled().await;
    assert_eq!(h.messages(openid).await.len(), 1, "sent once");
    let events = Harness::events(&h.log(action).await).join(",");
    assert_eq!(events, "queued,requeued_after_crash,sent");
    assert_eq!(
        h.credits(adv, openid).await,
        0,
        "the credit A reserved was given back, then spent once"
    );
    assert_eq!(h.sim_credits(openid).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_abandoned_on_every_attempt_is_failed_not_requeued_forever() {
    let mut h = Harness::start_with(0, |_| {}).await;
    let (adv, openid) = ("adv-crashloop", "oAdvisorCrashLoop00000000001");
    let a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    a.spawn(ande_notifier::run(
        h.config(|c| c.wechat.timeout = Duration::from_secs(20)),
        CancellationToken::new(),
    ));
    h.migrated().await;
    h.accept(adv, openid, 1).await;
    h.fault(json!({"endpoint": "stable_token", "latency_ms": 5000, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    h.wait_state(action, "sending").await;
    a.shutdown_background();

    // The recovering process allows one attempt: the abandoned one was it.
    h.spawn_notifier(|c| {
        c.max_attempts = 1;
        c.stale_after = Duration::from_secs(1);
    });
    let n = h.wait_state(action, "failed").await;
    assert_eq!(n.attempts, 1);
    let events = Harness::events(&h.log(action).await).join(",");
    assert_eq!(events, "queued,failed_after_crashes");
    assert_eq!(
        h.credits(adv, openid).await,
        1,
        "the reserved credit was given back"
    );
    assert!(h.messages(openid).await.is_empty());
}

/// The other crash: the process dies while WeChat has the message (its answer is held back).
/// The outcome is unknown, so the recovering process sends it again: the advisor gets it twice,
/// the documented exception to "once". Our count then says one credit more than WeChat holds;
/// the next send meets 43101, which sets it to zero, and that notification waits for an accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_wechat_has_the_message_sends_it_again_and_the_count_self_corrects() {
    let mut h = Harness::start_with(0, |_| {}).await;
    let (adv, openid) = ("adv-crash2", "oAdvisorCrashTwo000000000001");
    let a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    a.spawn(ande_notifier::run(
        h.config(|c| c.wechat.timeout = Duration::from_secs(20)),
        CancellationToken::new(),
    ));
    h.migrated().await;
    h.accept(adv, openid, 2).await;
    h.fault(json!({"endpoint": "subscribe_send", "latency_ms": 5000, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    h.wait_messages(openid, 1).await; // WeChat has it; A waits for the answer
    a.shutdown_background();

    h.spawn_notifier(|c| {
        c.wechat.timeout = Duration::from_millis(500);
        c.stale_after = Duration::from_secs(1);
    });
    h.wait_state(action, "sent").await;
    h.settled().await;
    assert_eq!(
        h.messages(openid).await.len(),
        2,
        "sent again: the outcome was unknown"
    );
    assert_eq!(
        Harness::events(&h.log(action).await).join(","),
        "queued,requeued_after_crash,sent"
    );
    assert_eq!(h.sim_credits(openid).await, 0);
    assert_eq!(
        h.credits(adv, openid).await,
        1,
        "one more than WeChat holds"
    );

    let next = h.outcomes(adv, 1).await[0];
    let n = h.wait_state(next, "waiting_credit").await;
    assert_eq!(n.errcode, Some(43101));
    assert_eq!(
        h.credits(adv, openid).await,
        0,
        "corrected by WeChat's 43101"
    );
    h.accept(adv, openid, 1).await;
    h.wait_state(next, "sent").await;
    assert_eq!(h.messages(openid).await.len(), 3);
}

/// A send whose answer comes after another process presumed it abandoned (its `stale_after`
/// shorter than this one's WeChat timeout) and sent it again. WeChat received it twice (the
/// documented cost of not knowing), but the late answer must not overwrite the row as if it
/// owned it, and the credit count must match what WeChat spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_to_a_presumed_abandoned_send_keeps_the_count_right() {
    let mut h = Harness::start_with(0, |_| {}).await;
    let (adv, openid) = ("adv-late", "oAdvisorLate0000000000000001");
    // A: a long WeChat timeout and a slow answer.
    h.spawn_notifier(|c| c.wechat.timeout = Duration::from_secs(20));
    h.migrated().await;
    h.accept(adv, openid, 2).await;
    h.fault(json!({"endpoint": "subscribe_send", "latency_ms": 3000, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    h.wait_state(action, "sending").await;
    // B: presumes sends older than a second abandoned.
    h.spawn_notifier(|c| {
        c.wechat.timeout = Duration::from_millis(400);
        c.stale_after = Duration::from_secs(1);
    });
    h.wait_messages(openid, 2).await;
    h.until("A's late answer to be recorded", || async {
        let log = h.log(action).await;
        log.iter()
            .any(|(e, _)| e.starts_with("late_"))
            .then_some(())
    })
    .await;
    h.settled().await;
    let n = h.notification(action).await.unwrap();
    assert_eq!(n.state, "sent");
    assert_eq!(h.messages(openid).await.len(), 2);
    assert_eq!(h.sim_credits(openid).await, 0);
    assert_eq!(
        h.credits(adv, openid).await,
        0,
        "two sends accepted by WeChat, two credits spent"
    );
}

/// The same, but the attempt made meanwhile is refused: the late "ok" is then the truth, so the
/// notification is recorded as sent (once at WeChat) and nobody sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ok_after_a_refused_second_attempt_marks_the_notification_sent() {
    let mut h = Harness::start_with(0, |_| {}).await;
    let (adv, openid) = ("adv-late-ok", "oAdvisorLateOk00000000000001");
    h.spawn_notifier(|c| c.wechat.timeout = Duration::from_secs(20));
    h.migrated().await;
    h.accept(adv, openid, 2).await;
    h.fault(json!({"endpoint": "subscribe_send", "latency_ms": 3000, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    h.wait_state(action, "sending").await;
    h.wait_messages(openid, 1).await; // WeChat has it; the answer is held back
    h.fault(json!({"endpoint": "subscribe_send", "errcode": 48001, "count": 1}))
        .await;
    h.spawn_notifier(|c| {
        c.wechat.timeout = Duration::from_millis(400);
        c.stale_after = Duration::from_secs(1);
    });
    h.wait_state(action, "failed").await;
    let n = h.wait_state(action, "sent").await;
    h.settled().await;
    assert_eq!(
        Harness::events(&h.log(action).await).join(","),
        "queued,requeued_after_crash,failed,sent"
    );
    assert!(n.msgid.is_some());
    assert_eq!(h.messages(openid).await.len(), 1);
    assert_eq!(h.sim_credits(openid).await, 1);
    assert_eq!(
        h.credits(adv, openid).await,
        1,
        "one send accepted, one credit spent"
    );
}

// ---------------------------------------------------------------------------------------------
// Retries and refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_minute_quota_are_retried_with_backoff_for_the_retry_budget() {
    let budget = Duration::from_millis(1500);
    let h = Harness::start_with(1, |c| c.retry_for = budget).await;
    let (adv, openid) = ("adv-retry", "oAdvisorRetry000000000000001");
    h.accept(adv, openid, 3).await;
    h.wait_credits(adv, openid, 3).await;

    h.fault(json!({"endpoint": "subscribe_send", "errcode": -1, "count": 2}))
        .await;
    let busy = h.outcomes(adv, 1).await[0];
    let n = h.wait_state(busy, "sent").await;
    assert_eq!(n.attempts, 3);
    assert_eq!(
        h.log(busy).await,
        [
            ("queued".into(), None),
            ("retry".into(), Some(-1)),
            ("retry".into(), Some(-1)),
            ("sent".into(), Some(0))
        ]
    );
    // The second retry waited about twice as long as the first (50 ms, 100 ms, ±20 %).
    let gaps: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM (detail::timestamptz - at))::float8 FROM notifier.deliveries WHERE action_id = $1 AND event = 'retry' ORDER BY id",
    )
    .bind(busy)
    .fetch_all(&h.db)
    .await
    .unwrap();
    assert!(
        (0.035..0.2).contains(&gaps[0]) && (0.075..0.3).contains(&gaps[1]),
        "backoff {gaps:?}"
    );

    h.fault(json!({"endpoint": "subscribe_send", "errcode": 45011, "count": 1}))
        .await;
    let minute = h.outcomes(adv, 1).await[0];
    assert_eq!(h.wait_state(minute, "sent").await.attempts, 2);

    // Busy for good: retried until the budget is spent, then failed; the credit kept.
    h.fault(json!({"endpoint": "subscribe_send", "errcode": -1}))
        .await;
    let stuck = h.outcomes(adv, 1).await[0];
    let n = h.wait_state(stuck, "failed").await;
    assert_eq!(n.errcode, Some(-1));
    assert!(n.attempts >= 4, "retried within the budget: {}", n.attempts);
    let span: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM (max(at) - min(at)))::float8 FROM notifier.deliveries WHERE action_id = $1 AND event IN ('retry', 'failed')",
    )
    .bind(stuck)
    .fetch_one(&h.db)
    .await
    .unwrap();
    // At the first failure after the budget: at most one (doubling) backoff later.
    assert!(
        span >= budget.as_secs_f64() && span < budget.as_secs_f64() * 3.0,
        "failed once the budget was spent, {span} s after the first failure"
    );
    h.clear_faults().await;

    let (count, codes) = h.calls("subscribe_send").await;
    let stuck_calls = n.attempts as u64;
    assert_eq!(count, 5 + stuck_calls);
    assert_eq!(
        codes,
        BTreeMap::from([
            ("-1".to_string(), 2 + stuck_calls),
            ("45011".to_string(), 1),
            ("0".to_string(), 2)
        ])
    );
    assert_eq!(h.messages(openid).await.len(), 2);
    assert_eq!(h.credits(adv, openid).await, 1);
}

/// The outage the issue measured: WeChat answers -1 to every send for longer than six attempts
/// take (the old limit). With a time budget nothing fails; every notification goes out once
/// WeChat is back, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_outage_fails_no_notification() {
    let h = Harness::start_with(1, |c| c.retry_backoff = Duration::from_millis(20)).await;
    let advisors: Vec<(String, String)> = (0..5)
        .map(|i| (format!("adv-outage-{i}"), format!("oAdvisorOutage{i:014}")))
        .collect();
    for (adv, openid) in &advisors {
        h.accept(adv, openid, 4).await;
    }
    h.fault(json!({"endpoint": "subscribe_send", "errcode": -1}))
        .await;
    let mut actions = Vec::new();
    for (adv, _) in &advisors {
        actions.extend(h.outcomes(adv, 4).await);
    }
    // Until some notification has failed more often than the old limit of 6 attempts allowed.
    h.until("a notification to be retried beyond 6 attempts", || async {
        let most: Option<i32> = sqlx::query_scalar(
            "SELECT max(attempts) FROM notifier.notifications WHERE state IN ('queued', 'sending')",
        )
        .fetch_one(&h.db)
        .await
        .ok()?;
        most.filter(|m| *m > 7).map(|_| ())
    })
    .await;
    h.clear_faults().await;
    for a in &actions {
        h.wait_state(*a, "sent").await;
    }
    h.settled().await;
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE state = 'failed'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(failed, 0);
    let (_, codes) = h.calls("subscribe_send").await;
    assert_eq!(codes.get("0"), Some(&20), "each sent once: {codes:?}");
    for (adv, openid) in &advisors {
        assert_eq!(h.messages(openid).await.len(), 4);
        assert_eq!(h.credits(adv, openid).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_5xx_from_wechat_is_retried() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-5xx", "oAdvisor5xx00000000000000001");
    h.accept(adv, openid, 1).await;
    h.wait_credits(adv, openid, 1).await;
    h.fault(json!({"endpoint": "subscribe_send", "http_status": 502, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    let n = h.wait_state(action, "sent").await;
    assert_eq!(n.attempts, 2);
    assert_eq!(
        Harness::events(&h.log(action).await),
        ["queued", "retry", "sent"]
    );
    let (_, codes) = h.calls("subscribe_send").await;
    assert_eq!(
        codes,
        BTreeMap::from([("http_502".to_string(), 1), ("0".to_string(), 1)])
    );
    assert_eq!(h.messages(openid).await.len(), 1);
    assert_eq!(h.credits(adv, openid).await, 0, "the credit was used once");
}

/// A send that times out may have reached WeChat; we retry rather than lose it, so the advisor
/// can receive it twice. That is the one documented exception to "once".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_send_is_retried() {
    let h = Harness::start_with(1, |c| c.wechat.timeout = Duration::from_millis(500)).await;
    let (adv, openid) = ("adv-timeout", "oAdvisorTimeout0000000000001");
    h.accept_ours(adv, openid, 1).await;
    h.grant(openid, T, 2).await;
    h.fault(json!({"endpoint": "subscribe_send", "latency_ms": 1500, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    let n = h.wait_state(action, "sent").await;
    assert_eq!(n.attempts, 2);
    let log = h.log(action).await;
    assert_eq!(Harness::events(&log), ["queued", "retry", "sent"]);
    let errmsg: String = sqlx::query_scalar(
        "SELECT errmsg FROM notifier.deliveries WHERE action_id = $1 AND event = 'retry'",
    )
    .bind(action)
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert!(errmsg.contains("timed out"), "{errmsg}");
    h.settled().await;
    assert_eq!(
        h.messages(openid).await.len(),
        2,
        "the timed-out attempt had gone through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_cannot_succeed_are_failed_at_once_with_the_errcode() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-refused", "oAdvisorRefused0000000000001");
    let codes = [40003, 40037, 47003, 41030, 48001];
    h.accept(adv, openid, codes.len()).await;
    h.wait_credits(adv, openid, codes.len() as i32).await;
    for code in codes {
        h.fault(json!({"endpoint": "subscribe_send", "errcode": code, "count": 1}))
            .await;
        let action = h.outcomes(adv, 1).await[0];
        let n = h.wait_state(action, "failed").await;
        assert_eq!((n.errcode, n.attempts), (Some(code), 1), "{code}");
        assert!(
            n.errmsg.as_deref().unwrap_or("").contains("rid:"),
            "WeChat's errmsg is kept: {:?}",
            n.errmsg
        );
        assert_eq!(
            h.log(action).await,
            [("queued".into(), None), ("failed".into(), Some(code))]
        );
    }
    // And a real one, not injected: an openid WeChat does not know the shape of.
    let bad = "not an openid!";
    h.accept_ours("adv-bad-openid", bad, 1).await;
    let action = h.outcomes("adv-bad-openid", 1).await[0];
    assert_eq!(h.wait_state(action, "failed").await.errcode, Some(40003));

    h.settled().await;
    let (count, _) = h.calls("subscribe_send").await;
    assert_eq!(count, codes.len() as u64 + 1, "no retries");
    assert_eq!(h.messages(openid).await.len(), 0);
    assert_eq!(
        h.credits(adv, openid).await,
        codes.len() as i32,
        "no credit spent on a refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_quota_pauses_sending_and_keeps_the_backlog_until_resumed() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-quota", "oAdvisorQuota000000000000001");
    h.accept(adv, openid, 3).await;
    h.wait_credits(adv, openid, 3).await;
    h.fault(json!({"endpoint": "subscribe_send", "quota": 1}))
        .await;
    let first = h.outcomes(adv, 1).await[0];
    h.wait_state(first, "sent").await;

    let before = ande_notifier::dispatch::next_quota_reset(Utc::now());
    let second = h.outcomes(adv, 1).await[0];
    h.until("the 45009 to be recorded", || async {
        h.notification(second)
            .await
            .filter(|n| n.errcode == Some(45009) && n.state == "queued")
    })
    .await;
    let after = ande_notifier::dispatch::next_quota_reset(Utc::now());
    let paused: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT paused_until FROM notifier.control WHERE key = 'sending'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    let paused = paused.expect("paused");
    assert!(
        paused == before || paused == after,
        "paused until Beijing midnight, got {paused}"
    );
    assert_eq!(
        h.notification(second).await.unwrap().next_attempt_at,
        paused
    );

    // The backlog grows but nothing is sent while paused.
    let third = h.outcomes(adv, 1).await[0];
    h.drained().await;
    h.wait_state(third, "queued").await;
    let calls = h.calls("subscribe_send").await.0;
    // Positive signal that workers looked while paused: the pause switch was read again and
    // again (Postgres counts each scan of the `control` table).
    h.wait_control_reads(8).await;
    assert_eq!(
        h.calls("subscribe_send").await.0,
        calls,
        "no send while paused"
    );
    assert_eq!(
        h.credits(adv, openid).await,
        2,
        "the refused send kept its credit"
    );

    // The operator resumes (the quota was raised).
    h.clear_faults().await;
    h.rpc::<Resume>(&ResumeRequest::default()).await.unwrap();
    h.wait_state(second, "sent").await;
    h.wait_state(third, "sent").await;
    assert_eq!(h.messages(openid).await.len(), 3);
    assert_eq!(h.credits(adv, openid).await, 0);
    let log = Harness::events(&h.log(second).await).join(",");
    assert_eq!(log, "queued,paused_daily_quota,sent");
}

// ---------------------------------------------------------------------------------------------
// Scale-out and tokens
// ---------------------------------------------------------------------------------------------

/// The scale-out guarantee at the batched rate: three processes share 10,000 notifications
/// over 500 advisors, WeChat answering after 20 ms, and each is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_send_10000_notifications_each_exactly_once_without_40001() {
    // Classic tokens that die the moment another is issued: a process using them would make
    // the others see 40001. Stable tokens are unaffected.
    let sim = wechat_sim::SimConfig {
        classic_overlap: Duration::ZERO,
        ..Default::default()
    };
    let h = Harness::start_full(sim, 3, |_| {}).await;
    h.fault(json!({"endpoint": "subscribe_send", "latency_ms": 20}))
        .await;
    let (advisors, per_advisor) = (500, 20);
    let total = advisors * per_advisor;
    let names: Vec<(String, String)> = (0..advisors)
        .map(|i| (format!("adv-scale-{i}"), format!("oAdvisorScale{i:015}")))
        .collect();
    let mut accepts = Vec::new();
    for (adv, openid) in &names {
        h.bind(adv, openid).await;
        h.grant(openid, T, per_advisor).await;
        for _ in 0..per_advisor {
            accepts.push(Harness::subscription(
                adv,
                openid,
                T,
                SubscriptionStatus::Accept,
            ));
        }
    }
    h.publish_all(&accepts).await;
    h.until_long("every accept to be applied", || async {
        let applied: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(accepts), 0)::int8 FROM notifier.subscriptions",
        )
        .fetch_one(&h.db)
        .await
        .ok()?;
        (applied as usize == total).then_some(())
    })
    .await;
    let outcomes: Vec<LeadOutcome> = (0..per_advisor)
        .flat_map(|_| names.iter().map(|(adv, _)| Harness::outcome(adv)))
        .collect();
    let started = tokio::time::Instant::now();
    h.publish_all(&outcomes).await;
    h.until_long("every notification to be sent", || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE state = 'sent'")
                .fetch_one(&h.db)
                .await
                .ok()?;
        (sent as usize == total).then_some(())
    })
    .await;
    let took = started.elapsed();
    h.settled().await;

    let all = h.sim_get("/sim/messages").await["messages"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(all.len(), total, "each notification sent once");
    let pages: BTreeSet<&str> = all.iter().map(|m| m["page"].as_str().unwrap()).collect();
    assert_eq!(pages.len(), total, "no notification sent twice");
    let (count, codes) = h.calls("subscribe_send").await;
    assert_eq!(
        (count, codes),
        (
            total as u64,
            BTreeMap::from([("0".to_string(), total as u64)])
        )
    );
    let (fetches, token_codes) = h.calls("stable_token").await;
    assert!(
        (1..=3).contains(&fetches),
        "at most one token request per process, got {fetches}"
    );
    assert_eq!(token_codes.keys().collect::<Vec<_>>(), ["0"]);
    assert_eq!(
        h.calls("token").await.0,
        0,
        "the classic endpoint, which invalidates others' tokens, is never used"
    );
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT attempts FROM notifier.notifications")
            .fetch_all(&h.db)
            .await
            .unwrap();
    assert_eq!(attempts, [1]);
    let left: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(credits), 0)::int8 FROM notifier.subscriptions")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(left, 0, "every credit spent once");
    eprintln!("measured: three processes (debug build) sent {total} notifications in {took:?} with {fetches} token requests");
}

/// SIGTERM in the middle of a burst: claiming stops, sends in flight finish and are recorded
/// (a claimed send not yet started would be handed back), nothing is left `sending`, and every
/// message WeChat took is recorded `sent`, so the next process sends nothing twice. Within the
/// grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_hands_back_what_was_not_sent_and_leaves_nothing_sending() {
    let mut h = Harness::start_with(0, |_| {}).await;
    let grace = Duration::from_secs(4);
    let stop = CancellationToken::new();
    let config = h.config(|c| c.shutdown_grace = grace);
    let first = tokio::spawn(ande_notifier::run(config, stop.clone()));
    h.migrated().await;
    // Slow answers: at any moment many sends are in flight and more are claimed behind them.
    h.fault(json!({"endpoint": "subscribe_send", "latency_ms": 300}))
        .await;
    let names: Vec<(String, String)> = (0..40)
        .map(|i| (format!("adv-term-{i}"), format!("oAdvisorTerm{i:016}")))
        .collect();
    for (adv, openid) in &names {
        h.accept(adv, openid, 10).await;
    }
    let outcomes: Vec<LeadOutcome> = (0..10)
        .flat_map(|_| names.iter().map(|(adv, _)| Harness::outcome(adv)))
        .collect();
    h.publish_all(&outcomes).await;
    h.until("some sends to be done and more in flight", || async {
        let sent = h.sim_get("/sim/calls").await["subscribe_send"]["count"].as_u64()?;
        (sent >= 20).then_some(())
    })
    .await;
    let asked = tokio::time::Instant::now();
    stop.cancel();
    first.await.unwrap().expect("a clean exit");
    let took = asked.elapsed();
    assert!(took < grace, "stopped within the grace: {took:?}");

    let sending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE state = 'sending'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(sending, 0, "nothing left sending");
    // A claim committed as the signal came is handed back unsent rather than started.
    let handed_back: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifier.deliveries WHERE event = 'handed_back'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    eprintln!("measured: SIGTERM took {took:?}; {handed_back} claimed sends handed back");
    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE state = 'sent'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    let delivered = h.sim_get("/sim/messages").await["messages"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        delivered as i64, sent,
        "every message WeChat took is recorded sent, and only those"
    );
    assert!(sent < 400, "stopped mid-burst");

    // The next process sends the rest, and nothing twice.
    h.clear_faults().await;
    h.spawn_notifier(|_| {});
    h.until_long("the rest to be sent", || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE state = 'sent'")
                .fetch_one(&h.db)
                .await
                .ok()?;
        (sent == 400).then_some(())
    })
    .await;
    let all = h.sim_get("/sim/messages").await["messages"]
        .as_array()
        .cloned()
        .unwrap();
    let pages: BTreeSet<&str> = all.iter().map(|m| m["page"].as_str().unwrap()).collect();
    assert_eq!(
        (all.len(), pages.len()),
        (400, 400),
        "each sent exactly once"
    );
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT attempts FROM notifier.notifications")
            .fetch_all(&h.db)
            .await
            .unwrap();
    assert_eq!(attempts, [1], "a hand-back is not an attempt");
    for (adv, openid) in &names {
        assert_eq!(h.credits(adv, openid).await, 0, "{adv}: credits exact");
    }
}

/// An advisor's messages go out one after another, in order: while one is in flight, the
/// claim leaves that advisor's next one queued (and serves other advisors meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisors_messages_go_out_in_order_while_others_proceed() {
    let h = Harness::start().await;
    let (a, a_openid) = ("adv-order-a", "oAdvisorOrderA00000000000001");
    let (b, b_openid) = ("adv-order-b", "oAdvisorOrderB00000000000001");
    h.accept(a, a_openid, 2).await;
    h.accept(b, b_openid, 1).await;
    h.fault(json!({"endpoint": "subscribe_send", "latency_ms": 1500, "count": 1}))
        .await;
    let first = h.outcomes(a, 1).await[0];
    h.wait_state(first, "sending").await;
    let second = h.outcomes(a, 1).await[0];
    let other = h.outcomes(b, 1).await[0];
    h.wait_state(other, "sent").await;
    assert_eq!(
        h.notification(second).await.unwrap().state,
        "queued",
        "the advisor's next message waits for the one in flight"
    );
    h.wait_state(second, "sent").await;
    let pages: Vec<String> = h
        .messages(a_openid)
        .await
        .iter()
        .map(|m| m["page"].as_str().unwrap().to_string())
        .collect();
    let db = &h.db;
    let page_of = |action: Uuid| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT page FROM notifier.notifications WHERE action_id = $1",
        )
        .bind(action)
        .fetch_one(db)
        .await
        .unwrap()
    };
    assert_eq!(pages, [page_of(first).await, page_of(second).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_mid_run_is_replaced_and_no_send_fails() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-token", "oAdvisorToken000000000000001");
    h.accept(adv, openid, 10).await;
    let batch = h.outcomes(adv, 5).await;
    for a in &batch {
        h.wait_state(*a, "sent").await;
    }
    let expired = h.sim_post("/sim/tokens/expire", json!({})).await;
    assert!(expired["expired"].as_u64().unwrap() >= 1);
    let batch = h.outcomes(adv, 5).await;
    for a in &batch {
        // The client refreshed and retried inside the one attempt.
        assert_eq!(h.wait_state(*a, "sent").await.attempts, 1);
    }
    let (_, codes) = h.calls("subscribe_send").await;
    assert!(
        codes.get("42001").is_some_and(|n| *n >= 1),
        "the expired token was used and refused: {codes:?}"
    );
    assert_eq!(codes.get("0"), Some(&10));
    assert_eq!(
        h.calls("stable_token").await.0,
        2,
        "one new token for all workers"
    );
    assert_eq!(h.messages(openid).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_roll_over_while_sending() {
    // Tokens live 3 s (renewed in their last 0.75 s).
    let sim = wechat_sim::SimConfig {
        stable_token_ttl: Duration::from_secs(3),
        stable_renew_before: Duration::from_millis(750),
        ..Default::default()
    };
    let h = Harness::start_full(sim, 1, |_| {}).await;
    let (adv, openid) = ("adv-rollover", "oAdvisorRollover000000000001");
    h.accept(adv, openid, 20).await;
    let started = tokio::time::Instant::now();
    let mut actions = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        actions.extend(h.outcomes(adv, 2).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for a in &actions {
        assert_eq!(
            h.wait_state(*a, "sent").await.attempts,
            1,
            "no send needed a second attempt"
        );
    }
    let (_, codes) = h.calls("subscribe_send").await;
    assert_eq!(codes.get("0").copied(), Some(actions.len() as u64));
    assert!(
        h.calls("stable_token").await.0 >= 2,
        "the token was renewed"
    );
}

// ---------------------------------------------------------------------------------------------
// Request/reply: journey and direct send
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_of_an_action_shows_every_decision_and_attempt() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-journey", "oAdvisorJourney0000000000001");
    h.accept(adv, openid, 1).await;
    h.fault(json!({"endpoint": "subscribe_send", "errcode": -1, "count": 1}))
        .await;
    let action = h.outcomes(adv, 1).await[0];
    h.wait_state(action, "sent").await;
    let m = h.wait_messages(openid, 1).await;

    let j = h.rpc::<Journey>(&about(action)).await.unwrap();
    let notes = &j.notifications;
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].state, NotificationState::Sent);
    assert_eq!(notes[0].attempts, 2);
    assert_eq!(notes[0].openid.as_deref(), Some(openid));
    assert_eq!(notes[0].msgid, Some(m[0]["msgid"].to_string()));
    let log: Vec<(&str, Option<i64>)> = j
        .log
        .iter()
        .map(|e| (e.event.as_str(), e.errcode))
        .collect();
    assert_eq!(
        log,
        [("queued", None), ("retry", Some(-1)), ("sent", Some(0))]
    );
    assert!(
        j.log[1]
            .errmsg
            .as_deref()
            .unwrap()
            .starts_with("WeChat API error -1"),
        "{j:#?}"
    );
    assert_eq!(j.log[2].msgid, Some(m[0]["msgid"].to_string()));

    // Unknown actions have an empty journey; a malformed id is refused.
    let empty = h.rpc::<Journey>(&about(Uuid::now_v7())).await.unwrap();
    assert!(empty.notifications.is_empty() && empty.log.is_empty());
    let raw = h
        .bus
        .client
        .request(
            h.bus.subjects.rpc("notifier", "journey"),
            r#"{"actionId": "nope"}"#.into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(reply["error"]["code"], "invalid", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_send_goes_through_the_notifiers_token_and_credits() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-direct", "oAdvisorDirect00000000000001");
    h.accept_ours(adv, openid, 2).await;
    h.grant(openid, T, 1).await;
    h.wait_credits(adv, openid, 2).await;
    let wx = SubscribeMessage::new(openid, T)
        .page("pages/customer/detail?id=staff-1")
        .fitted_field("thing1", "请尽快联系客户")
        .field("time2", keywords::format_time(Utc::now()))
        .fitted_field("thing3", "13800138000")
        .fitted_field("thing7", "王五");
    let direct = |m: &SubscribeMessage| DirectSend {
        touser: m.touser.clone(),
        template_id: m.template_id.clone(),
        page: m.page.clone(),
        data: m.data.clone(),
        miniprogram_state: None,
        lang: None,
        idempotency: None,
    };
    let msg = direct(&wx);

    let ok = h.rpc::<Send>(&msg).await.unwrap();
    let m = h.wait_messages(openid, 1).await;
    assert_eq!(ok.msgid, m[0]["msgid"].to_string());
    assert_eq!(m[0]["page"], "pages/customer/detail?id=staff-1");
    assert_eq!(
        h.credits(adv, openid).await,
        1,
        "an accepted direct send uses a counted credit"
    );

    // WeChat's refusal comes back as WeChat gave it, and 43101 corrects our count.
    let refused = h.rpc::<Send>(&msg).await.unwrap_err();
    let RpcError::WechatRefused { errcode, errmsg } = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(errcode, 43101);
    assert!(errmsg.contains("rid:"), "{errmsg}");
    assert_eq!(h.credits(adv, openid).await, 0);

    // Values that break WeChat's limits are refused before WeChat is called.
    let calls = h.calls("subscribe_send").await.0;
    let too_long = direct(&wx.clone().field(
        "thing1",
        "这是一段超过二十个字符的文字内容用于测试校验是否生效",
    ));
    let err = h.rpc::<Send>(&too_long).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Invalid { field: Some(f), .. } if f == "data.thing1.value"),
        "{err:?}"
    );
    let err = h
        .rpc::<Send>(&direct(&SubscribeMessage::new("", T)))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Invalid { .. }), "{err:?}");
    assert_eq!(h.calls("subscribe_send").await.0, calls);

    let logged: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT errcode FROM notifier.deliveries WHERE event = 'direct_send' ORDER BY id",
    )
    .fetch_all(&h.db)
    .await
    .unwrap();
    assert_eq!(logged, [Some(0), Some(43101)]);

    // The daily quota is the app's: a direct send that meets it pauses the queue too.
    h.fault(json!({"endpoint": "subscribe_send", "errcode": 45009, "count": 1}))
        .await;
    let quota = h.rpc::<Send>(&msg).await.unwrap_err();
    assert!(
        matches!(quota, RpcError::WechatRefused { errcode: 45009, .. }),
        "{quota:?}"
    );
    let paused: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT paused_until FROM notifier.control WHERE key = 'sending'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert!(paused.is_some_and(|p| p > Utc::now()), "{paused:?}");
}

/// The query of a `journey` method.
fn about(action_id: Uuid) -> ActionQuery {
    ActionQuery { action_id }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_checks_the_shared_vocabularies() {
    use ande_contracts::vocab::{check_constraint_words, Vocabulary};
    let h = Harness::start().await;
    let check = |column: &'static str| {
        let db = h.db.clone();
        async move {
            let def: String = sqlx::query_scalar(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
                 JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                 WHERE n.nspname = 'notifier' AND t.relname = 'notifications' AND c.contype = 'c'
                   AND pg_get_constraintdef(c.oid) LIKE '%(' || $1 || ' %'",
            )
            .bind(column)
            .fetch_one(&db)
            .await
            .unwrap();
            check_constraint_words(&def)
        }
    };
    assert_eq!(check("state").await, NotificationState::names());
    assert_eq!(check("kind").await, NotificationKind::names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_notifications_spend_at_most_their_budget_and_never_hold_up_a_verified_one() {
    let h = Harness::start_with(1, |c| {
        c.anonymous_per_hour = 3;
        c.max_waiting = 5;
    })
    .await;
    let (adv, openid) = ("adv-budget", "oAdvisorBudget00000000000001");
    h.accept(adv, openid, 40).await;
    // A flood of anonymous actions for one advisor.
    for _ in 0..20 {
        let mut o = Harness::outcome(adv);
        o.anonymous = true;
        h.publish(&o).await;
    }
    h.settled().await;
    let states = h.states(adv).await;
    assert_eq!(states.get("sent"), Some(&3), "the budget: {states:?}");
    assert_eq!(
        states.get("waiting_credit"),
        Some(&5),
        "folded, bounded: {states:?}"
    );
    assert_eq!(states.get("dropped"), Some(&12), "{states:?}");
    assert_eq!(h.credits(adv, openid).await, 37);

    // A verified customer's notification goes out at once, as a single of its own.
    let verified = Harness::outcome(adv);
    let id: Uuid = verified.action_id.parse().unwrap();
    let t = std::time::Instant::now();
    h.publish(&verified).await;
    h.wait_state(id, "sent").await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    h.settled().await;
    // The waiting anonymous ones did not ride along: the budget is spent, they keep waiting
    // (the sweep that released the verified credit saw them and left them).
    let states = h.states(adv).await;
    assert_eq!(states.get("sent"), Some(&4), "{states:?}");
    assert_eq!(states.get("waiting_credit"), Some(&5), "{states:?}");
    assert_eq!(h.wait_messages(openid, 4).await.len(), 4);
    assert_eq!(h.credits(adv, openid).await, 36);

    // Without credit a verified notification waits too, and the next accept sends one digest
    // that carries it and the anonymous ones.
    sqlx::query("UPDATE notifier.subscriptions SET credits = 0 WHERE advisor_id = $1")
        .bind(adv)
        .execute(&h.db)
        .await
        .unwrap();
    let late = Harness::outcome(adv);
    let late_id: Uuid = late.action_id.parse().unwrap();
    h.publish(&late).await;
    h.wait_state(late_id, "waiting_credit").await;
    h.accept(adv, openid, 1).await;
    h.wait_state(late_id, "digested").await;
    let messages = h.wait_messages(openid, 5).await;
    assert_eq!(messages.len(), 5);
    let states = h.states(adv).await;
    assert_eq!(states.get("waiting_credit"), None, "{states:?}");
    assert_eq!(states.get("digested"), Some(&6), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_notifications_and_their_log_are_forgotten_after_the_retention_age() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-old", "oAdvisorOld00000000000000001");
    h.accept(adv, openid, 1).await;
    let ids = h.outcomes(adv, 2).await; // one is sent, one waits for credit
    h.wait_state(ids[0], "sent").await;
    h.wait_state(ids[1], "waiting_credit").await;
    sqlx::query("UPDATE notifier.notifications SET created_at = now() - interval '100 days' WHERE advisor_id = $1")
        .bind(adv)
        .execute(&h.db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE notifier.deliveries SET at = now() - interval '100 days' WHERE advisor_id = $1",
    )
    .bind(adv)
    .execute(&h.db)
    .await
    .unwrap();
    let pool = ande_platform::db::connect(
        &h.common.database_url,
        ande_notifier::SCHEMA,
        2,
        &ande_notifier::MIGRATIONS,
    )
    .await
    .unwrap();
    let done = tokio_util::sync::CancellationToken::new();
    done.cancel();
    ande_notifier::purge_old_records(pool, Default::default(), done).await;
    let states = h.states(adv).await;
    assert_eq!(states.get("sent"), None, "{states:?}");
    assert_eq!(
        states.get("waiting_credit"),
        Some(&1),
        "waiting work is never purged: {states:?}"
    );
    let log: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifier.deliveries WHERE advisor_id = $1")
            .bind(adv)
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(log, 0);
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// A customer who is advisor A's lead acts on advisor B's resume. By `NOTIFIER_FOREIGN_LEAD`: A
/// hears that their customer is active (`owner`, the default: B, a competitor, never gets the
/// phone); A, and B without the customer's phone and name (`both`); only B, as the original
/// system did (`viewed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_leads_action_reaches_its_owner_as_configured() {
    use ande_notifier::config::ForeignLead;
    let (a, a_openid) = ("adv-owner", "oAdvisorOwner000000000000001");
    let (b, b_openid) = ("adv-viewed", "oAdvisorViewed00000000000001");
    assert_eq!(
        NotifierConfig::with_common(ande_platform::testing::isolated_config().await, "http://x")
            .foreign_lead,
        ForeignLead::Owner,
        "owner is the default"
    );
    for mode in [ForeignLead::Owner, ForeignLead::Both, ForeignLead::Viewed] {
        let h = Harness::start_with(1, |c| c.foreign_lead = mode).await;
        h.accept(a, a_openid, 1).await;
        h.accept(b, b_openid, 1).await;
        let mut o = Harness::outcome(b);
        o.lead_owner = a.into();
        o.is_new_customer = false;
        o.kind = LeadOutcomeKind::Matched as i32;
        h.publish(&o).await;
        h.settled().await;
        let (to_a, to_b) = (h.messages(a_openid).await, h.messages(b_openid).await);
        let owner_heard = |m: &[Value]| {
            assert_eq!(m.len(), 1, "{mode:?}: the owner gets one message");
            assert_eq!(value(&m[0], "thing1"), "您的客户查看了其他顾问简历");
            assert_eq!(value(&m[0], "thing3"), "13800138000");
            assert_eq!(value(&m[0], "thing7"), "张三");
            assert!(m[0]["page"].as_str().unwrap().contains(&o.lead_id));
        };
        match mode {
            ForeignLead::Owner => {
                owner_heard(&to_a);
                assert!(to_b.is_empty(), "the viewed advisor hears nothing");
            }
            ForeignLead::Both => {
                owner_heard(&to_a);
                assert_eq!(to_b.len(), 1);
                assert_eq!(value(&to_b[0], "thing1"), "客户查看了您的简历");
                assert_eq!(value(&to_b[0], "thing3"), keywords::PLACEHOLDER, "no phone");
                assert_eq!(value(&to_b[0], "thing7"), keywords::PLACEHOLDER, "no name");
                let page = to_b[0]["page"].as_str().unwrap();
                assert!(
                    !page.contains(&o.lead_id) && page.contains(&o.customer_id),
                    "{page}"
                );
            }
            ForeignLead::Viewed => {
                assert!(to_a.is_empty(), "the owner hears nothing");
                assert_eq!(to_b.len(), 1);
                assert_eq!(value(&to_b[0], "thing3"), "13800138000");
            }
        }
        // A replay sends nothing more.
        h.publish_again(&o).await;
        h.settled().await;
        assert_eq!(
            h.messages(a_openid).await.len() + h.messages(b_openid).await.len(),
            to_a.len() + to_b.len(),
            "{mode:?}: once per (action, advisor)"
        );
    }
}

/// Credits are scarce: one booking waits among five views and one credit arrives. The booking
/// goes on its own; the views become one digest, which waits for the next credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_scarce_credits_the_most_valuable_goes_alone_and_the_rest_as_a_digest() {
    let h = Harness::start().await;
    let (adv, openid) = ("adv-priority", "oAdvisorPriority000000000001");
    h.bind(adv, openid).await;
    let mut booking = Harness::outcome(adv);
    booking.action_type = "book_service".into();
    let views_before = h.outcomes(adv, 3).await;
    h.publish(&booking).await;
    let views_after = h.outcomes(adv, 2).await;
    h.settled().await;
    assert_eq!(
        h.states(adv).await,
        BTreeMap::from([("waiting_credit".to_string(), 6)])
    );

    h.accept(adv, openid, 1).await;
    let first = h.wait_messages(openid, 1).await;
    assert_eq!(
        value(&first[0], "thing1"),
        "新客户预约了您的服务",
        "the booking goes alone"
    );
    h.settled().await;
    assert_eq!(h.messages(openid).await.len(), 1);
    let booking_id: Uuid = booking.action_id.parse().unwrap();
    let events = Harness::events(&h.log(booking_id).await).join(",");
    assert_eq!(
        events,
        "queued,no_subscription,released_first_by_priority,sent"
    );
    for v in views_before.iter().chain(&views_after) {
        let n = h.notification(*v).await.unwrap();
        assert_eq!(n.state, "digested", "every view is in the digest");
    }

    h.accept(adv, openid, 1).await;
    let both = h.wait_messages(openid, 2).await;
    assert_eq!(value(&both[1], "thing1"), "5条客户动态等您查看");
    assert_eq!(h.credits(adv, openid).await, 0);
}

/// Quiet hours (22:00-08:00 Beijing time), with the notifier's clock moved by the test: at
/// 23:00 a booking (urgent) goes out and two views wait; at 08:01 the views go out as one digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_quiet_hours_only_urgent_messages_go_and_the_rest_follow_as_a_digest() {
    use ande_notifier::config::{Clock, QuietHours};
    use std::sync::{Arc, Mutex};
    let night = Utc.with_ymd_and_hms(2026, 12, 2, 15, 0, 0).unwrap(); // 23:00 in Beijing
    let now = Arc::new(Mutex::new(night));
    let hand = now.clone();
    let h = Harness::start_with(1, move |c| {
        let hand = hand.clone();
        c.quiet_hours = Some(QuietHours::parse("22:00-08:00").unwrap());
        c.clock = Clock::from_fn(move || *hand.lock().unwrap());
    })
    .await;
    let (adv, openid) = ("adv-quiet", "oAdvisorQuiet000000000000001");
    h.accept(adv, openid, 5).await;
    let views = h.outcomes(adv, 2).await;
    let mut booking = Harness::outcome(adv);
    booking.action_type = "book_service".into();
    h.publish(&booking).await;
    let first = h.wait_messages(openid, 1).await;
    assert_eq!(
        value(&first[0], "thing1"),
        "新客户预约了您的服务",
        "urgent: sent at night"
    );
    for v in &views {
        h.wait_state(*v, "waiting_credit").await;
        assert_eq!(
            Harness::events(&h.log(*v).await),
            ["queued", "held_for_quiet_hours"]
        );
    }
    h.settled().await;
    tokio::time::sleep(Duration::from_millis(500)).await; // sweeps run; nothing is released
    assert_eq!(
        h.messages(openid).await.len(),
        1,
        "the views wait for the morning"
    );

    *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 3, 0, 1, 0).unwrap(); // 08:01
    let both = h.wait_messages(openid, 2).await;
    assert_eq!(
        value(&both[1], "thing1"),
        "2条客户动态等您查看",
        "one digest in the morning"
    );
    h.settled().await;
    assert_eq!(h.messages(openid).await.len(), 2);
    assert_eq!(h.credits(adv, openid).await, 3);
}

/// The issue's acceptance run, real time: WeChat answers -1 to every send for five minutes,
/// with the default retry settings (2 s doubling to 5 minutes, for an hour). No notification
/// fails and each is sent once WeChat is back. Takes up to 12 minutes, so it is not in the
/// default run: `cargo test -p ande-notifier --test notifier_rules -- --ignored five_minute`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real time: 5-minute outage, up to 12 minutes"]
async fn a_five_minute_wechat_outage_with_default_retries_fails_nothing() {
    let h = Harness::start_with(1, |c| {
        c.retry_backoff = ande_notifier::config::DEFAULT_RETRY_BACKOFF;
        c.retry_for = ande_notifier::config::DEFAULT_RETRY_FOR;
    })
    .await;
    let (adv, openid) = ("adv-outage5", "oAdvisorOutageFive0000000001");
    h.accept(adv, openid, 20).await;
    h.fault(json!({"endpoint": "subscribe_send", "errcode": -1}))
        .await;
    h.outcomes(adv, 20).await;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(300)).await;
    let failed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM notifier.notifications WHERE state = 'failed'",
        )
        .fetch_one(&h.db)
        .await
        .unwrap()
    };
    assert_eq!(failed().await, 0, "nothing failed during the outage");
    h.clear_faults().await;
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(720) {
        sent = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM notifier.notifications WHERE state = 'sent'",
        )
        .fetch_one(&h.db)
        .await
        .unwrap();
        if sent == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(sent, 20, "every notification sent once WeChat was back");
    assert_eq!(failed().await, 0);
    assert_eq!(h.messages(openid).await.len(), 20, "each once");
    let most: i32 = sqlx::query_scalar("SELECT max(attempts) FROM notifier.notifications")
        .fetch_one(&h.db)
        .await
        .unwrap();
    eprintln!(
        "measured: 20 notifications through a 5-minute outage, all sent {:?} after it began, at most {most} attempts each",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisors_own_quiet_hours_replace_the_deployments() {
    use ande_contracts::notifier::{AdvisorSettingsChange, SetAdvisorSettings};
    use ande_notifier::config::{Clock, QuietHours};
    use std::sync::{Arc, Mutex};
    let night = Utc.with_ymd_and_hms(2026, 12, 2, 15, 0, 0).unwrap(); // 23:00 in Beijing
    let now = Arc::new(Mutex::new(night));
    let hand = now.clone();
    let h = Harness::start_with(1, move |c| {
        let hand = hand.clone();
        c.quiet_hours = Some(QuietHours::parse("22:00-08:00").unwrap());
        c.clock = Clock::from_fn(move || *hand.lock().unwrap());
    })
    .await;
    let set = |advisor: &str, window: Option<&str>| AdvisorSettingsChange {
        advisor_id: advisor.into(),
        quiet_hours: window.map(String::from),
        updated_by: "staff:test".into(),
    };
    // Nonsense is refused and changes nothing.
    let bad = h
        .rpc::<SetAdvisorSettings>(&set("adv-early", Some("25:00-07:00")))
        .await;
    assert!(matches!(bad, Err(RpcError::Invalid { .. })), "{bad:?}");
    let owl = h
        .rpc::<SetAdvisorSettings>(&set("adv-owl", Some("off")))
        .await
        .unwrap();
    assert_eq!(owl.quiet_hours.as_deref(), Some("off"));
    h.rpc::<SetAdvisorSettings>(&set("adv-early", Some("20:00-6:00")))
        .await
        .unwrap();
    let accounts = [
        ("adv-owl", "oAdvisorOwl00000000000000001"),
        ("adv-early", "oAdvisorEarly000000000000001"),
        ("adv-usual", "oAdvisorUsual000000000000001"),
    ];
    for (adv, openid) in accounts {
        h.accept(adv, openid, 5).await;
        h.outcomes(adv, 2).await;
    }
    // 23:00: the night owl's go at once (one, then the next: in order).
    assert_eq!(h.wait_messages(accounts[0].1, 2).await.len(), 2);
    h.settled().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.messages(accounts[1].1).await.is_empty());
    assert!(h.messages(accounts[2].1).await.is_empty());

    // 06:30: the early advisor's window is over (one digest), the deployment's is not.
    *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 2, 22, 30, 0).unwrap();
    let early = h.wait_messages(accounts[1].1, 1).await;
    assert_eq!(value(&early[0], "thing1"), "2条客户动态等您查看");
    h.settled().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.messages(accounts[2].1).await.is_empty());

    // Back to the deployment's window: null.
    h.rpc::<SetAdvisorSettings>(&set("adv-early", None))
        .await
        .unwrap();
    h.outcomes("adv-early", 1).await;
    h.settled().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.messages(accounts[1].1).await.len(), 1, "held again");
    *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 12, 3, 0, 1, 0).unwrap(); // 08:01
    assert_eq!(h.wait_messages(accounts[2].1, 1).await.len(), 1);
    assert_eq!(h.wait_messages(accounts[1].1, 2).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_cap_holds_single_messages_and_releases_them_as_a_digest() {
    let h = Harness::start_with(1, |c| c.max_singles_per_hour = 2).await;
    let (adv, openid) = ("adv-capped", "oAdvisorCapped00000000000001");
    h.accept(adv, openid, 10).await;
    let first = h.outcomes(adv, 2).await;
    assert_eq!(h.wait_messages(openid, 2).await.len(), 2);
    for a in &first {
        h.wait_state(*a, "sent").await;
    }
    let later = h.outcomes(adv, 3).await;
    for a in &later {
        h.wait_state(*a, "waiting_credit").await;
        assert_eq!(
            Harness::events(&h.log(*a).await),
            ["queued", "held_for_hourly_cap"]
        );
    }
    h.settled().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.messages(openid).await.len(), 2, "the cap holds");

    // An hour later (the two singles' claims aged by hand): the three go as one digest.
    sqlx::query(
        "UPDATE notifier.notifications SET claimed_at = claimed_at - interval '61 minutes' WHERE advisor_id = $1 AND state = 'sent'",
    )
    .bind(adv)
    .execute(&h.db)
    .await
    .unwrap();
    let all = h.wait_messages(openid, 3).await;
    assert_eq!(value(&all[2], "thing1"), "3条客户动态等您查看");
    h.settled().await;
    assert_eq!(h.messages(openid).await.len(), 3);
    assert_eq!(h.credits(adv, openid).await, 7);
}
