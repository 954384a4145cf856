//! The leads service against the machine's real NATS and Postgres: every rule of the service,
//! the concurrent same-phone case, replays, undecodable events, and Postgres going away.

use std::time::Duration;

use ande_contracts::leads;
use ande_contracts::vocab::{ActionType, OutcomeKind, Vocabulary};
use ande_events::{new_meta, ActionRecorded, Event, EventKind, LeadOutcome, LeadOutcomeKind};
use ande_leads::{store, LeadsConfig};
use ande_platform::bus::Bus;
use ande_platform::config::CommonConfig;
use ande_platform::rpc::{self, RpcError};
use ande_platform::ExposeSecret;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use serde_json::json;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Env {
    common: CommonConfig,
    bus: Bus,
    db: PgPool,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A fresh database and prefix, and `processes` leads services sharing the durable consumer.
async fn start(processes: usize) -> Env {
    ande_platform::telemetry::init_for_tests();
    let common = ande_platform::testing::isolated_config().await;
    let bus = Bus::connect(&common, "test").await.unwrap();
    bus.ensure_streams(Duration::from_secs(3600)).await.unwrap();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..processes {
        let (cfg, s) = (LeadsConfig::with_common(common.clone()), stop.clone());
        tasks.push(tokio::spawn(ande_leads::run(cfg, s)));
    }
    // The service creates its schema; wait for the consumer to exist.
    let stream = bus.js.get_stream(bus.subjects.stream()).await.unwrap();
    for _ in 0..200 {
        if stream
            .consumer_info(ande_leads::consumer::DURABLE)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = PgPool::connect(common.database_url.expose_secret())
        .await
        .unwrap();
    Env {
        common,
        bus,
        db,
        stop,
        tasks,
    }
}

impl Env {
    /// Block until the leads consumer has been delivered every message of the stream and holds
    /// some unacked (it is trying them); fail the test after 20 s.
    async fn wait_delivered_and_held(&self) {
        self.wait_consumer("delivered everything and holding some", |i, last| {
            i.delivered.stream_sequence >= last && i.num_ack_pending > 0
        })
        .await
    }

    /// Block until the leads consumer's ack floor reaches the stream's last sequence; fail the
    /// test after 20 s.
    async fn wait_all_acked(&self) {
        self.wait_consumer("acked everything", |i, last| {
            i.ack_floor.stream_sequence >= last
        })
        .await
    }

    /// Poll the leads consumer's info until `done(info, the stream's last sequence)`.
    async fn wait_consumer(
        &self,
        what: &str,
        done: impl Fn(&async_nats::jetstream::consumer::Info, u64) -> bool,
    ) {
        let mut stream = self
            .bus
            .js
            .get_stream(self.bus.subjects.stream())
            .await
            .unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        for _ in 0..400 {
            let mut c = stream
                .get_consumer::<pull::Config>(ande_leads::consumer::DURABLE)
                .await
                .unwrap();
            if done(c.info().await.unwrap(), last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the leads consumer has not {what} (stream sequence {last}) after 20 s");
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }

    /// The leads schema as the service opens it, and its config: for calling `store` directly.
    async fn store(&self) -> (PgPool, LeadsConfig) {
        let pool = ande_platform::db::connect(
            &self.common.database_url,
            ande_leads::SCHEMA,
            4,
            &ande_leads::MIGRATIONS,
        )
        .await
        .unwrap();
        (pool, LeadsConfig::with_common(self.common.clone()))
    }

    async fn publish(&self, e: &ActionRecorded) {
        self.bus.publish(e).await.unwrap();
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap()
    }

    /// Poll until `sql` counts `n` (or the deadline passes), returning the last count.
    async fn wait_count(&self, sql: &'static str, n: i64) -> i64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let c = sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&self.db)
                .await
                .unwrap_or(-1);
            if c >= n || tokio::time::Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every outcome event in the stream, in order.
    async fn outcomes(&self) -> Vec<LeadOutcome> {
        self.read_all(self.bus.subjects.event(EventKind::LeadOutcome))
            .await
            .into_iter()
            .map(|p| LeadOutcome::decode_checked(&p).unwrap())
            .collect()
    }

    async fn read_all(&self, subject: String) -> Vec<bytes::Bytes> {
        let stream = self
            .bus
            .js
            .get_stream(self.bus.subjects.stream())
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut batch = consumer
            .fetch()
            .max_messages(10_000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = batch.next().await {
            out.push(m.payload.clone());
        }
        out
    }

    async fn dead_letters(&self) -> u64 {
        let mut s = self
            .bus
            .js
            .get_stream(self.bus.subjects.dlq_stream())
            .await
            .unwrap();
        s.info().await.unwrap().state.messages
    }
}

fn action(advisor: &str, action_type: &str, name: &str, phone: &str) -> ActionRecorded {
    let id = Uuid::now_v7().to_string();
    ActionRecorded {
        meta: Some(new_meta(&id, "test", chrono::Utc::now())),
        action_id: id,
        customer_id: "cust".into(),
        advisor_id: advisor.into(),
        action_type: action_type.into(),
        action_data_json: json!({"resumeId": "r-1"}).to_string(),
        customer_name: name.into(),
        customer_phone: phone.into(),
        openid: String::new(),
        client_ip: "10.0.0.1".into(),
        user_agent: "test-agent".into(),
        extra_json: "{}".into(),
    }
}

const ACTIONS: &str = "SELECT count(*) FROM leads.actions";
const PUBLISHED: &str = "SELECT count(*) FROM leads.actions WHERE outcome_published_at IS NOT NULL";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_for_new_existing_invalid_and_missing_phones() {
    let env = start(1).await;
    let first = {
        let mut a = action("adv-1", "view_resume", "", "0086 139-1234-5678");
        a.openid = "o_first".into();
        a
    };
    env.publish(&first).await;
    let second = {
        let mut a = action("adv-2", "book_service", "李四", "13912345678");
        a.openid = "o_customer".into();
        a
    };
    env.publish(&second).await;
    let invalid = action("adv-1", "view_resume", "王五", "010-66888866");
    env.publish(&invalid).await;
    let missing = action("adv-1", "contact_advisor", "赵六", "");
    env.publish(&missing).await;
    assert_eq!(env.wait_count(PUBLISHED, 4).await, 4);

    let lead = sqlx::query("SELECT * FROM leads.leads")
        .fetch_all(&env.db)
        .await
        .unwrap();
    assert_eq!(
        lead.len(),
        1,
        "one lead: the two valid numbers are the same phone"
    );
    let l = &lead[0];
    assert_eq!(l.get::<String, _>("phone"), "13912345678");
    assert_eq!(
        l.get::<Option<String>, _>("name").as_deref(),
        Some("李四"),
        "a missing name is filled later"
    );
    assert_eq!(
        l.get::<Option<String>, _>("openid").as_deref(),
        Some("o_first"),
        "the first verified action's openid stays"
    );
    assert_eq!(
        l.get::<String, _>("owner_advisor_id"),
        "adv-1",
        "the first advisor owns it"
    );
    assert_eq!(l.get::<String, _>("created_by"), "adv-1");
    assert_eq!(l.get::<String, _>("source"), "微信小程序");
    assert_eq!(l.get::<String, _>("status"), "待定");
    assert_eq!(l.get::<String, _>("level"), "B类");
    assert_eq!(
        l.get::<String, _>("remark"),
        "通过微信小程序查看简历自动创建"
    );
    assert_eq!(l.get::<i32, _>("touch_count"), 2);
    let code: String = l.get("customer_code");
    assert!(code.starts_with("KH") && code.len() == 16, "{code}");

    // Staff's values are never overwritten by a later action.
    sqlx::query("UPDATE leads.leads SET name = '李经理改的名字'")
        .execute(&env.db)
        .await
        .unwrap();
    env.publish(&action(
        "adv-3",
        "view_resume",
        "别的名字",
        "+8613912345678",
    ))
    .await;
    assert_eq!(env.wait_count(PUBLISHED, 5).await, 5);
    let name: String = sqlx::query_scalar("SELECT name FROM leads.leads")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(name, "李经理改的名字");

    let outcomes = env.outcomes().await;
    assert_eq!(outcomes.len(), 5, "exactly one outcome per action");
    let by_action = |a: &ActionRecorded| {
        outcomes
            .iter()
            .find(|o| o.action_id == a.action_id)
            .unwrap()
            .clone()
    };
    let o1 = by_action(&first);
    assert_eq!(o1.kind(), LeadOutcomeKind::Created);
    assert!(o1.is_new_customer);
    assert_eq!(o1.customer_code, code);
    assert_eq!(o1.meta.as_ref().unwrap().correlation_id, first.action_id);
    let o2 = by_action(&second);
    assert_eq!(o2.kind(), LeadOutcomeKind::Matched);
    assert!(!o2.is_new_customer);
    assert_eq!(o2.lead_id, o1.lead_id);
    // adv-2's customer is adv-1's lead: the outcome says whose, for the notifier's routing.
    assert_eq!(
        (o1.lead_owner.as_str(), o2.lead_owner.as_str()),
        ("adv-1", "adv-1")
    );
    assert_eq!(o2.advisor_id, "adv-2");
    let o3 = by_action(&invalid);
    assert_eq!(
        (o3.kind(), o3.no_lead_reason.as_str()),
        (LeadOutcomeKind::None, "invalid_phone")
    );
    assert_eq!(o3.lead_owner, "", "no lead, no owner");
    let o4 = by_action(&missing);
    assert_eq!(
        (o4.kind(), o4.no_lead_reason.as_str()),
        (LeadOutcomeKind::None, "missing_phone")
    );

    // Every action is stored with all its fields, even without a lead.
    let row = sqlx::query("SELECT * FROM leads.actions WHERE action_id = $1::uuid")
        .bind(&invalid.action_id)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(
        row.get::<serde_json::Value, _>("action_data"),
        json!({"resumeId": "r-1"})
    );
    assert_eq!(
        row.get::<Option<String>, _>("client_ip").as_deref(),
        Some("10.0.0.1")
    );
    assert_eq!(
        row.get::<Option<String>, _>("user_agent").as_deref(),
        Some("test-agent")
    );
    assert_eq!(
        row.get::<Option<String>, _>("customer_phone").as_deref(),
        Some("010-66888866")
    );
    assert_eq!(
        row.get::<Option<String>, _>("no_lead_reason").as_deref(),
        Some("invalid_phone")
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_new_phone_from_two_processes_makes_one_lead() {
    let env = start(2).await;
    let actions: Vec<_> = (0..60)
        .map(|i| action(&format!("adv-{}", i % 3), "view_resume", "", "13700001111"))
        .collect();
    let sends = actions.iter().map(|a| env.bus.publish_start(a));
    for ack in futures::future::join_all(sends).await {
        ack.unwrap().await.unwrap();
    }
    assert_eq!(env.wait_count(PUBLISHED, 60).await, 60);
    assert_eq!(env.count("SELECT count(*) FROM leads.leads").await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM leads.actions WHERE outcome_kind = 'created'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM leads.actions WHERE outcome_kind = 'matched'")
            .await,
        59
    );
    assert_eq!(
        env.count("SELECT touch_count::bigint FROM leads.leads")
            .await,
        60
    );
    let outcomes = env.outcomes().await;
    assert_eq!(outcomes.len(), 60);
    assert_eq!(outcomes.iter().filter(|o| o.is_new_customer).count(), 1);
    env.stop().await;
}

/// One action in a transaction of its own, committed.
async fn record_alone(
    pool: &PgPool,
    config: &LeadsConfig,
    act: &ActionRecorded,
    seq: u64,
) -> leads::StoredOutcome {
    let mut tx = pool.begin().await.unwrap();
    let mut r = store::record_batch(&mut tx, &[(act, seq)], config)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    r.pop().unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_action_in_two_transactions_is_stored_and_counted_once() {
    // Two workers holding the same message (redelivered after an ack timeout): the second waits
    // for the first's lock on the action, then finds it stored and answers its outcome.
    let env = start(0).await;
    let (pool, config) = env.store().await;
    let phone = "13611112222";
    record_alone(
        &pool,
        &config,
        &action("adv-a", "view_resume", "", phone),
        1,
    )
    .await;
    for round in 0..10u64 {
        let a = action("adv-a", "contact_advisor", "", phone);
        let (x, y) = tokio::join!(
            record_alone(&pool, &config, &a, 2 + round),
            record_alone(&pool, &config, &a, 2 + round)
        );
        assert_eq!(x, y, "one stored it, the other read what it stored");
        assert_eq!(x.kind, OutcomeKind::Matched);
    }
    assert_eq!(env.count(ACTIONS).await, 11);
    assert_eq!(
        env.count("SELECT touch_count::int8 FROM leads.leads").await,
        11,
        "each action touched the lead once"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_on_one_new_phone_create_once() {
    // The race itself, without the consumer's batching: two transactions, same new phone.
    let env = start(0).await;
    let (pool, config) = env.store().await;
    for round in 0..10 {
        let phone = format!("1360000{round:04}");
        let (a, b) = (
            action("adv-a", "view_resume", "", &phone),
            action("adv-b", "view_resume", "", &phone),
        );
        // One takes the row first; the other waits for it, then sees the first one's lead.
        let (ra, commit_then_b) = tokio::join!(
            record_alone(&pool, &config, &a, 1),
            record_alone(&pool, &config, &b, 2)
        );
        let kinds = [ra.kind, commit_then_b.kind];
        assert!(
            kinds.contains(&OutcomeKind::Created) && kinds.contains(&OutcomeKind::Matched),
            "{kinds:?}"
        );
        assert_eq!(ra.lead_id, commit_then_b.lead_id);
    }
    assert_eq!(env.count("SELECT count(*) FROM leads.leads").await, 10);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivery_and_replay_change_nothing_twice() {
    let env = start(1).await;
    let actions: Vec<_> = (0..25)
        .map(|i| action("adv-1", "view_resume", "客户", &format!("1580000{i:04}")))
        .collect();
    for a in &actions {
        env.publish(a).await;
    }
    assert_eq!(env.wait_count(PUBLISHED, 25).await, 25);
    let before: Vec<(String, i32)> =
        sqlx::query_as("SELECT phone, touch_count FROM leads.leads ORDER BY phone")
            .fetch_all(&env.db)
            .await
            .unwrap();

    // A replay: the same actions again under new event ids (past JetStream's duplicate window,
    // a replay tool or a retried gateway request looks like this).
    for a in &actions {
        let mut again = a.clone();
        again.meta = Some(new_meta(&a.action_id, "replay", chrono::Utc::now()));
        env.publish(&again).await;
    }
    // And the very same messages (same event id): JetStream drops them.
    for a in &actions[..5] {
        let ack = env.bus.publish(a).await.unwrap();
        assert!(ack.duplicate);
    }
    // Wait until the consumer has acked every message the stream holds (a positive signal:
    // the replay was consumed, not merely not yet delivered).
    env.wait_all_acked().await;
    let after: Vec<(String, i32)> =
        sqlx::query_as("SELECT phone, touch_count FROM leads.leads ORDER BY phone")
            .fetch_all(&env.db)
            .await
            .unwrap();
    assert_eq!(before, after, "no lead touched twice");
    assert_eq!(env.count(ACTIONS).await, 25);
    assert_eq!(env.outcomes().await.len(), 25, "no outcome emitted twice");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_event_is_dead_lettered_and_does_not_block() {
    let env = start(1).await;
    let subject = env.bus.subjects.event(EventKind::ActionRecorded);
    env.bus
        .js
        .publish(
            subject.clone(),
            bytes::Bytes::from_static(b"\xff\xfenot protobuf"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut no_id = action("adv-1", "view_resume", "", "");
    no_id.action_id = "not-a-uuid".into();
    env.publish(&no_id).await;
    let good = action("adv-1", "view_resume", "", "13800001234");
    env.publish(&good).await;
    assert_eq!(env.wait_count(PUBLISHED, 1).await, 1);
    for _ in 0..100 {
        if env.dead_letters().await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.dead_letters().await,
        2,
        "the garbage and the action without a valid id"
    );
    let dlq = env
        .bus
        .js
        .get_stream(env.bus.subjects.dlq_stream())
        .await
        .unwrap();
    let first = dlq.get_raw_message(1).await.unwrap();
    let reason = first
        .headers
        .get(ande_platform::bus::dlq_headers::REASON)
        .unwrap()
        .as_str()
        .to_string();
    assert!(reason.contains("undecodable"), "{reason}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_going_away_loses_nothing() {
    let env = start(1).await;
    for i in 0..10 {
        env.publish(&action(
            "adv-1",
            "view_resume",
            "",
            &format!("1770000{i:04}"),
        ))
        .await;
    }
    assert_eq!(env.wait_count(PUBLISHED, 10).await, 10);

    // Take the database away: refuse new connections and end the service's current ones.
    let admin = PgPool::connect(&ande_platform::testing::with_database(
        env.common.database_url.expose_secret(),
        "postgres",
    ))
    .await
    .unwrap();
    let dbname = env.common.prefix.clone();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{dbname}\" ALLOW_CONNECTIONS false"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&dbname)
        .execute(&admin)
        .await
        .unwrap();
    env.db.close().await;

    for i in 10..30 {
        env.publish(&action(
            "adv-1",
            "view_resume",
            "",
            &format!("1770000{i:04}"),
        ))
        .await;
    }
    // The consumer has taken every message during the outage (and holds them, ack pending)
    // before we check that none was dead-lettered.
    env.wait_delivered_and_held().await;
    assert_eq!(
        env.dead_letters().await,
        0,
        "an outage is not a reason to dead-letter"
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{dbname}\" ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let env = Env {
        db: PgPool::connect(env.common.database_url.expose_secret())
            .await
            .unwrap(),
        ..env
    };
    assert_eq!(
        env.wait_count(PUBLISHED, 30).await,
        30,
        "everything processed once Postgres is back"
    );
    assert_eq!(env.count(ACTIONS).await, 30);
    assert_eq!(env.count("SELECT count(*) FROM leads.leads").await, 30);
    assert_eq!(env.outcomes().await.len(), 30);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_answer_over_request_reply() {
    let env = start(1).await;
    let a = action("adv-q", "contact_advisor", "钱七", "13600009999");
    env.publish(&a).await;
    env.publish(&action("adv-other", "view_resume", "", "13600008888"))
        .await;
    assert_eq!(env.wait_count(PUBLISHED, 2).await, 2);
    let c = &env.bus.client;
    let s = &env.bus.subjects;
    let t = Duration::from_secs(2);
    let journey_of = |id| leads::ActionQuery { action_id: id };
    let a_id = Uuid::parse_str(&a.action_id).unwrap();
    let j = rpc::call::<leads::Journey>(c, s, &journey_of(a_id), t)
        .await
        .unwrap();
    let outcome = j.outcome.expect("stored with its outcome");
    assert_eq!(outcome.kind, OutcomeKind::Created);
    assert_eq!(j.action.customer_name.as_deref(), Some("钱七"));
    assert_eq!(j.action.action_type, ActionType::ContactAdvisor);
    let by_phone = leads::LeadKey::Phone("136 0000 9999".into());
    let lead = rpc::call::<leads::GetLead>(c, s, &by_phone, t)
        .await
        .unwrap();
    assert_eq!(lead.name.as_deref(), Some("钱七"));
    assert_eq!(Some(lead.id), outcome.lead_id);
    let by_id = rpc::call::<leads::GetLead>(c, s, &leads::LeadKey::Id(lead.id), t)
        .await
        .unwrap();
    assert_eq!(by_id, lead);
    let q = leads::ListQuery {
        advisor_id: Some("adv-q".into()),
        ..Default::default()
    };
    let page = rpc::call::<leads::ListLeads>(c, s, &q, t).await.unwrap();
    assert_eq!(page, vec![lead]);
    let missing = rpc::call::<leads::Journey>(c, s, &journey_of(Uuid::now_v7()), t)
        .await
        .unwrap_err();
    assert!(matches!(missing, RpcError::NotFound { .. }), "{missing:?}");
    let bad = rpc::call::<leads::GetLead>(c, s, &leads::LeadKey::Phone("12345".into()), t)
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, RpcError::Invalid { field: Some(f), .. } if f == "phone"),
        "{bad:?}"
    );
    // A request that is not the method's contract is refused as invalid, not misread.
    let raw = c
        .request(s.rpc("leads", "lead"), r#"{"id": "not-a-uuid"}"#.into())
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(reply["error"]["code"], "invalid", "{reply}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_schema_checks_the_shared_outcome_vocabulary() {
    let env = start(1).await;
    let def: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = 'leads' AND t.relname = 'actions' AND c.contype = 'c'
           AND pg_get_constraintdef(c.oid) LIKE '%outcome_kind%'",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(
        ande_contracts::vocab::check_constraint_words(&def),
        OutcomeKind::names(),
        "leads.actions.outcome_kind's CHECK lists exactly the vocabulary"
    );
    env.stop().await;
}

/// Each outcome `record_batch` answered is the one `load_outcome` reads back.
async fn assert_as_stored(pool: &PgPool, out: &[Result<leads::StoredOutcome, String>]) {
    let mut conn = pool.acquire().await.unwrap();
    for o in out.iter().flatten() {
        let stored = store::load_outcome(&mut conn, o.action_id).await.unwrap();
        assert_eq!(Some(o), stored.as_ref(), "as stored: {}", o.action_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_stored_by_the_set_based_path() {
    // record_batch directly (the consumer falls back to one by one on error, which would hide a
    // broken batch statement behind passing end results).
    let env = start(0).await;
    let (pool, config) = env.store().await;
    let a = action("adv-1", "view_resume", "", "13511112222");
    let b = action("adv-2", "book_service", "周八", "135 1111 2222");
    let c = action("adv-1", "view_resume", "", "bad");
    let mut d = action("adv-1", "view_resume", "", "");
    d.action_id = "nope".into();
    let events = [(&a, 1u64), (&b, 2), (&c, 3), (&a, 1), (&d, 4)];
    let mut tx = pool.begin().await.unwrap();
    let out = store::record_batch(&mut tx, &events, &config)
        .await
        .expect("the batch statement works");
    tx.commit().await.unwrap();
    let o: Vec<_> = out
        .iter()
        .map(|r| r.as_ref().map(|o| (o.kind, o.is_new_customer)))
        .collect();
    assert_eq!(o[0], Ok((OutcomeKind::Created, true)));
    assert_eq!(o[1], Ok((OutcomeKind::Matched, false)));
    assert_eq!(o[2], Ok((OutcomeKind::None, false)));
    assert_eq!(o[3], o[0], "a duplicate in the batch gets the same outcome");
    assert!(out[4].is_err(), "an invalid action is refused alone");
    assert_eq!(
        out[2].as_ref().unwrap().no_lead_reason.as_deref(),
        Some("invalid_phone")
    );
    let lead: (Option<String>, i32) = sqlx::query_as("SELECT name, touch_count FROM leads.leads")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(lead, (Some("周八".to_string()), 2));
    // The outcomes are built from what the statements returned: exactly what is stored.
    assert_as_stored(&pool, &out).await;
    // Again: all duplicates, nothing changes.
    let mut tx = pool.begin().await.unwrap();
    let again = store::record_batch(&mut tx, &events[..3], &config)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(again[0].as_ref().unwrap().kind, OutcomeKind::Created);
    assert_eq!(
        again[0], out[0],
        "a redelivery answers the outcome stored the first time"
    );
    let touches: i32 = sqlx::query_scalar("SELECT touch_count FROM leads.leads")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(touches, 2);
    // A session's earlier views without a phone join the lead its phone creates; an anonymous
    // action with the same phone in the same batch matches it.
    let with_session = |advisor: &str, phone: &str| {
        let mut a = action(advisor, "contact_advisor", "李四", phone);
        a.openid = "o_batch".into();
        a
    };
    let (e1, e2) = (with_session("adv-1", ""), with_session("adv-2", ""));
    let mut tx = pool.begin().await.unwrap();
    store::record_batch(&mut tx, &[(&e1, 10), (&e2, 11)], &config)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let phone = with_session("adv-3", "13700001111");
    let anonymous = action("adv-3", "view_resume", "", "13700001111");
    let mut tx = pool.begin().await.unwrap();
    let out = store::record_batch(&mut tx, &[(&phone, 12), (&anonymous, 13)], &config)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let first = out[0].as_ref().unwrap();
    let ids: Vec<String> = first.linked_actions.iter().map(Uuid::to_string).collect();
    assert_eq!(ids, [e1.action_id.clone(), e2.action_id.clone()]);
    assert_eq!(first.linked_advisors, 2);
    assert_eq!(out[1].as_ref().unwrap().kind, OutcomeKind::Matched);
    assert_as_stored(&pool, &out).await;
    // A redelivered action in a batch that changes its lead (the first verified action names it
    // and takes it over) is answered with the lead as the batch left it.
    let early = action("adv-1", "view_resume", "", "13700002222");
    record_alone(&pool, &config, &early, 14).await;
    let mut verified = action("adv-2", "book_service", "赵六", "13700002222");
    verified.openid = "o_verified".into();
    let mut tx = pool.begin().await.unwrap();
    let out = store::record_batch(&mut tx, &[(&early, 14), (&verified, 15)], &config)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let redelivered = out[0].as_ref().unwrap();
    assert_eq!(redelivered.lead_owner.as_deref(), Some("adv-2"));
    assert_eq!(redelivered.customer_name.as_deref(), Some("赵六"));
    assert_as_stored(&pool, &out).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customer_codes_stay_unique_past_a_million() {
    let env = start(1).await;
    sqlx::query("SELECT setval('leads.customer_code_seq', 999998)")
        .execute(&env.db)
        .await
        .unwrap();
    for i in 0..3 {
        env.publish(&action(
            "adv-1",
            "view_resume",
            "",
            &format!("1880000{i:04}"),
        ))
        .await;
    }
    assert_eq!(env.wait_count(PUBLISHED, 3).await, 3);
    let codes: Vec<String> = sqlx::query_scalar(
        "SELECT customer_code FROM leads.leads ORDER BY length(customer_code), customer_code",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(codes.len(), 3, "every lead created: {codes:?}");
    assert!(
        codes[0].ends_with("999999")
            && codes[1].ends_with("1000000")
            && codes[2].ends_with("1000001"),
        "{codes:?}"
    );
    assert_eq!(env.dead_letters().await, 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_actions_never_change_a_lead_and_a_verified_one_corrects_theirs() {
    let env = start(1).await;
    let verified = |advisor: &str, name: &str, openid: &str| {
        let mut a = action(advisor, "book_service", name, "13700001111");
        a.openid = openid.into();
        a
    };
    let lead = || async {
        sqlx::query("SELECT name, openid, owner_advisor_id, verified FROM leads.leads WHERE phone = '13700001111'")
            .fetch_one(&env.db)
            .await
            .unwrap()
    };
    let fields = |r: &sqlx::postgres::PgRow| {
        (
            r.get::<Option<String>, _>("name"),
            r.get::<Option<String>, _>("openid"),
            r.get::<String, _>("owner_advisor_id"),
            r.get::<bool, _>("verified"),
        )
    };
    // A rival pre-claims the number anonymously: the lead exists, marked unverified.
    let claim = action("adv-rival", "view_resume", "冒名", "13700001111");
    env.publish(&claim).await;
    env.wait_count(PUBLISHED, 1).await;
    assert_eq!(
        fields(&lead().await),
        (Some("冒名".into()), None, "adv-rival".into(), false)
    );
    // More anonymous actions change nothing.
    env.publish(&action("adv-x", "view_resume", "别人", "13700001111"))
        .await;
    env.wait_count(PUBLISHED, 2).await;
    assert_eq!(fields(&lead().await).2, "adv-rival");
    assert_eq!(fields(&lead().await).0.as_deref(), Some("冒名"));
    // The real customer, with a session: their name, their openid, their advisor.
    let real = verified("adv-real", "真名", "o_real_customer");
    env.publish(&real).await;
    env.wait_count(PUBLISHED, 3).await;
    assert_eq!(
        fields(&lead().await),
        (
            Some("真名".into()),
            Some("o_real_customer".into()),
            "adv-real".into(),
            true
        )
    );
    // Once verified, anonymous actions and later verified ones keep what it says.
    env.publish(&action("adv-rival", "view_resume", "再冒名", "13700001111"))
        .await;
    env.publish(&verified("adv-other", "另一个", "o_someone"))
        .await;
    env.wait_count(PUBLISHED, 5).await;
    assert_eq!(
        fields(&lead().await),
        (
            Some("真名".into()),
            Some("o_real_customer".into()),
            "adv-real".into(),
            true
        )
    );
    // Outcomes say which actions were anonymous (the notifier budgets those).
    let outcomes = env.outcomes().await;
    let of = |a: &ActionRecorded| {
        outcomes
            .iter()
            .find(|o| o.action_id == a.action_id)
            .unwrap()
    };
    assert!(of(&claim).anonymous);
    assert!(!of(&real).anonymous);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_actions_are_forgotten_and_their_leads_kept() {
    let env = start(1).await;
    let mut old = action("adv-1", "view_resume", "老客户", "13700002222");
    let long_ago = chrono::Utc::now() - chrono::Duration::days(400);
    old.meta = Some(new_meta(&old.action_id, "test", long_ago));
    env.publish(&old).await;
    let recent = action("adv-1", "view_resume", "新客户", "13700003333");
    env.publish(&recent).await;
    assert_eq!(env.wait_count(PUBLISHED, 2).await, 2);

    let (pool, _) = env.store().await;
    let done = tokio_util::sync::CancellationToken::new();
    done.cancel(); // one pass, then return
    ande_leads::purge_old_actions(pool, Duration::from_secs(365 * 86_400), done).await;
    let left: Vec<String> = sqlx::query_scalar("SELECT action_id::text FROM leads.actions")
        .fetch_all(&env.db)
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![recent.action_id.clone()],
        "the old action is gone"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM leads.leads").await,
        2,
        "both leads stay"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_browsing_of_the_same_session_joins_the_lead_once() {
    let env = start(1).await;
    let with_session = |advisor: &str, phone: &str, openid: &str| {
        let mut a = action(advisor, "view_resume", "王五", phone);
        a.openid = openid.into();
        a
    };
    // The customer browses four resumes of three advisors with their session, no phone; a
    // stranger browses too; one anonymous view (no session) is not theirs to link.
    let earlier: Vec<ActionRecorded> = ["adv-1", "adv-2", "adv-2", "adv-3"]
        .iter()
        .map(|a| with_session(a, "", "o_browser"))
        .collect();
    for a in &earlier {
        env.publish(a).await;
    }
    env.publish(&with_session("adv-1", "", "o_stranger")).await;
    env.publish(&action("adv-1", "view_resume", "", "")).await;
    env.wait_count(PUBLISHED, 6).await;

    // Then they leave their phone: the earlier four join the new lead, in one outcome event.
    let phone_action = with_session("adv-4", "13600002222", "o_browser");
    env.publish(&phone_action).await;
    env.wait_count(PUBLISHED, 7).await;
    let outcome = env
        .outcomes()
        .await
        .into_iter()
        .find(|o| o.action_id == phone_action.action_id)
        .unwrap();
    let ids: Vec<String> = earlier.iter().map(|a| a.action_id.clone()).collect();
    assert_eq!(outcome.linked_action_ids, ids, "oldest first");
    assert_eq!(outcome.linked_advisors, 3);
    let linked = env
        .count("SELECT count(*) FROM leads.actions a JOIN leads.leads l ON l.id = a.linked_lead_id WHERE l.phone = '13600002222'")
        .await;
    assert_eq!(
        linked, 4,
        "the stranger's and the anonymous view stay apart"
    );

    // Redelivered, the action links nothing again and its outcome is the same event.
    env.bus.publish(&phone_action).await.unwrap();
    // Someone else typing the same number with their own session links none of theirs.
    env.publish(&with_session("adv-1", "13600002222", "o_stranger"))
        .await;
    // A later view by the customer, with the phone again: nothing earlier is left to link.
    env.publish(&with_session("adv-5", "13600002222", "o_browser"))
        .await;
    env.wait_count(PUBLISHED, 9).await;
    let all = env.outcomes().await;
    let later: Vec<&LeadOutcome> = all
        .iter()
        .filter(|o| o.customer_phone == "13600002222" && o.action_id != phone_action.action_id)
        .collect();
    assert_eq!(later.len(), 2);
    assert!(later
        .iter()
        .all(|o| o.linked_action_ids.is_empty() && o.linked_advisors == 0));
    assert_eq!(
        all.iter()
            .filter(|o| o.action_id == phone_action.action_id)
            .count(),
        1,
        "one outcome event for the linking"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM leads.actions WHERE linked_lead_id IS NOT NULL")
            .await,
        4
    );
    env.stop().await;
}
