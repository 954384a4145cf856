//! The operator's commands against a real stack on real NATS and Postgres: replay changes nothing
//! twice, dead letters are listed, shown and processed once the cause is fixed, events are read
//! back decoded; and the binary itself: `up` until SIGTERM, `status`, `user add/passwd`, exit codes.

use andectl::testing as common;
use andectl::testing::free_port;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ande_events::EventKind;
use ande_platform::bus::Bus;
use ande_platform::ExposeSecret;
use andectl::events::{count, Scan, ShowQuery, Start, TailOptions};
use andectl::replay::{Outcome, ReplayArgs};
use serde_json::{json, Value};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_andectl");

/// Whole stacks running at once in this file: each can hold ~30 Postgres connections, and the
/// machine's Postgres (max_connections 100) is shared with every other test binary.
static STACKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn bus(t: &common::TestStack) -> Bus {
    Bus::connect(&t.stack.common, "operations-test")
        .await
        .expect("NATS")
}

/// Poll `f` until it returns `Some`, failing the test after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scalar(db: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(db)
        .await
        .unwrap()
}

fn action(i: usize) -> Value {
    // Phones repeat every 50 actions (so leads are created, then matched); every tenth action
    // has none (no lead), which leaves 45 distinct phones.
    let mut a = json!({"customerId": format!("cust-{i}"), "advisorId": format!("adv-{}", i % 7), "actionType": "view_resume",
                       "actionData": {"resumeId": format!("r-{i}")}, "customerName": format!("客户{i}")});
    match i % 10 {
        0 => {}
        _ => a["customerPhone"] = json!(format!("138 0013 8{:03}", i % 50)),
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_200_actions_through_leads_duplicates_nothing() {
    let _stack = STACKS.acquire().await.unwrap();
    let t = common::start_with(|o| o.gateway.rate_per_ip = 100_000).await;
    let bus = bus(&t).await;
    let db = t.db().await;
    let subjects = bus.subjects.clone();
    const N: usize = 200;
    for chunk in (0..N).collect::<Vec<_>>().chunks(20) {
        let posts = chunk
            .iter()
            .map(|i| t.post("/api/customer/action", action(*i)));
        for (status, body) in futures::future::join_all(posts).await {
            assert_eq!(status, 201, "{body}");
        }
    }
    let stream = andectl::conn::events_stream(&bus).await.unwrap();
    let outcome_subject = subjects.event(EventKind::LeadOutcome);
    eventually(
        60,
        "leads to process 200 actions and publish 200 outcomes",
        || async {
            let actions = scalar(
                &db,
                "SELECT count(*) FROM leads.actions WHERE outcome_published_at IS NOT NULL",
            )
            .await;
            let outcomes = count(&stream, &outcome_subject, Start::All).await.unwrap();
            (actions == N as i64 && outcomes == N as u64).then_some(())
        },
    )
    .await;
    let snapshot = |db: sqlx::PgPool| async move {
        (
            scalar(&db, "SELECT count(*) FROM leads.actions").await,
            scalar(&db, "SELECT count(*) FROM leads.leads").await,
            scalar(
                &db,
                "SELECT COALESCE(sum(touch_count), 0)::bigint FROM leads.leads",
            )
            .await,
        )
    };
    let before = snapshot(db.clone()).await;
    assert_eq!(before.0, N as i64);
    assert_eq!(before.1, 45, "one lead per distinct phone");
    let consumer_before = stream.consumer_info("leads").await.unwrap();

    // A dry run lists the range and changes nothing.
    let mut args = ReplayArgs {
        consumer: "leads".into(),
        from: Start::Seq(1),
        dry_run: true,
        into_prefix: None,
        allow_skip: false,
        wait: true,
        timeout: Duration::from_secs(120),
    };
    let mut out = Vec::new();
    let Outcome::DryRun(plan) = andectl::replay::replay(&bus, &t.stack.common, &args, &mut out)
        .await
        .unwrap()
    else {
        panic!("a dry run")
    };
    let text = String::from_utf8(out).unwrap();
    assert_eq!(plan.count, N as u64, "{text}");
    assert_eq!(
        text.matches("ActionRecorded").count(),
        N,
        "one line per event: {text}"
    );
    assert!(text.contains("dry run: nothing changed."));
    assert_eq!(
        stream.consumer_info("leads").await.unwrap().created,
        consumer_before.created,
        "the consumer is untouched"
    );

    // The replay proper: the consumer is reset and the running leads service works through
    // every event again.
    args.dry_run = false;
    let mut out = Vec::new();
    let outcome = andectl::replay::replay(&bus, &t.stack.common, &args, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let Outcome::Replayed(_, summary) = outcome else {
        panic!("a replay: {text}")
    };
    assert!(summary.completed, "{text}");
    assert_eq!(summary.count, N as u64);
    assert_eq!(summary.new_dead_letters, 0, "{text}");
    assert!(text.contains("replayed 200 events through leads"), "{text}");
    let consumer_after = stream.consumer_info("leads").await.unwrap();
    assert!(
        consumer_after.created > consumer_before.created,
        "the consumer was re-created"
    );
    assert!(
        consumer_after.delivered.consumer_sequence >= N as u64,
        "the new consumer delivered every event again: {consumer_after:?}"
    );
    assert_eq!(
        (consumer_after.num_pending, consumer_after.num_ack_pending),
        (0, 0)
    );
    assert_eq!(
        consumer_after.config.filter_subject,
        subjects.event(EventKind::ActionRecorded)
    );
    assert_eq!(
        consumer_after.config.max_deliver, consumer_before.config.max_deliver,
        "same settings"
    );
    assert_eq!(
        consumer_after.config.ack_wait,
        consumer_before.config.ack_wait
    );

    assert_eq!(
        snapshot(db.clone()).await,
        before,
        "no action, lead or touch counted twice"
    );
    assert_eq!(
        count(&stream, &outcome_subject, Start::All).await.unwrap(),
        N as u64,
        "no second outcome"
    );

    // The service still consumes after the reset.
    let (status, body) = t.post("/api/customer/action", action(1000)).await;
    assert_eq!(status, 201, "{body}");
    eventually(20, "the next action to be stored", || async {
        (scalar(&db, "SELECT count(*) FROM leads.actions").await == N as i64 + 1).then_some(())
    })
    .await;

    // --into-prefix copies the range into a scratch environment and leaves this one alone.
    let scratch = format!("{}_scratch", subjects.prefix());
    args.into_prefix = Some(scratch.clone());
    let created = stream.consumer_info("leads").await.unwrap().created;
    let mut out = Vec::new();
    let Outcome::Copied(_, copy) = andectl::replay::replay(&bus, &t.stack.common, &args, &mut out)
        .await
        .unwrap()
    else {
        panic!("a copy")
    };
    assert_eq!(copy.copied, N as u64 + 1);
    let scratch_subjects = ande_events::Subjects::new(&scratch).unwrap();
    let scratch_stream = bus
        .js
        .get_stream(scratch_subjects.stream())
        .await
        .expect("scratch stream created");
    assert_eq!(
        count(
            &scratch_stream,
            &scratch_subjects.event(EventKind::ActionRecorded),
            Start::All
        )
        .await
        .unwrap(),
        N as u64 + 1
    );
    let mut scan = Scan::open(&scratch_stream, &scratch_subjects.all_events(), Start::All)
        .await
        .unwrap();
    let first = scan.next().await.unwrap().expect("a copied event");
    scan.close().await;
    assert!(first
        .header("Ande-Copied-From")
        .is_some_and(|h| h.starts_with(&subjects.stream())));
    assert!(
        first.event_json().unwrap()["actionId"].is_string(),
        "the payload is intact"
    );
    assert_eq!(
        stream.consumer_info("leads").await.unwrap().created,
        created,
        "production's consumer untouched"
    );
    for s in [scratch_subjects.stream(), scratch_subjects.dlq_stream()] {
        bus.js.delete_stream(s).await.unwrap();
    }
    t.stack.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_is_listed_shown_and_processed_once_its_cause_is_fixed() {
    let _stack = STACKS.acquire().await.unwrap();
    let t = common::start().await;
    let bus = bus(&t).await;
    let db = t.db().await;
    // A bug in waiting: leads cannot store this customer's actions (a permanent error, so the
    // action is dead-lettered rather than retried).
    sqlx::query(
        "CREATE FUNCTION leads.simulated_bug() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.customer_id = 'cust-broken' THEN RAISE EXCEPTION 'simulated bug for %', NEW.customer_id; END IF; RETURN NEW; END $$",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER simulated_bug BEFORE INSERT ON leads.actions FOR EACH ROW EXECUTE FUNCTION leads.simulated_bug()")
        .execute(&db)
        .await
        .unwrap();
    let (status, body) = t
        .post("/api/customer/action", json!({"customerId": "cust-broken", "advisorId": "adv-1", "actionType": "contact_advisor", "customerPhone": "13900139000"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let action_id = body["data"]["actionId"].as_str().unwrap().to_string();
    // And a message that is not an event at all.
    bus.js
        .publish(
            bus.subjects.event(EventKind::ActionRecorded),
            b"\xff\x00 not protobuf".to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let letters = eventually(30, "two dead letters", || async {
        let l = andectl::dlq::list(&bus, None).await.unwrap();
        (l.len() == 2).then_some(l)
    })
    .await;
    let broken = letters
        .iter()
        .find(|d| d.msg.correlation_id().as_deref() == Some(action_id.as_str()))
        .expect("the action's dead letter");
    let garbage = letters.iter().find(|d| d.seq() != broken.seq()).unwrap();
    assert_eq!(broken.consumer, "leads");
    assert!(
        broken.reason.contains("simulated bug for cust-broken"),
        "{}",
        broken.reason
    );
    assert_eq!(
        broken.original_subject,
        bus.subjects.event(EventKind::ActionRecorded)
    );
    assert_eq!(broken.deliveries, Some(1));
    assert!(broken.original_seq.is_some());
    assert!(garbage.reason.contains("undecodable"), "{}", garbage.reason);

    let mut table = Vec::new();
    andectl::dlq::print_table(&letters, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("simulated bug")
            && table.contains(&action_id)
            && table.contains("2 dead letter(s)"),
        "{table}"
    );

    let shown = andectl::dlq::get(&bus, broken.seq())
        .await
        .unwrap()
        .to_json();
    assert_eq!(shown["event"]["customerId"], "cust-broken");
    assert_eq!(shown["event"]["actionId"], action_id.as_str());
    assert_eq!(shown["type"], "ActionRecorded");
    let shown_garbage = andectl::dlq::get(&bus, garbage.seq())
        .await
        .unwrap()
        .to_json();
    assert!(
        shown_garbage["decodeError"].is_string()
            && shown_garbage["payloadHex"]
                .as_str()
                .unwrap()
                .starts_with("ff00"),
        "{shown_garbage}"
    );

    // The garbage is purged; retrying it would only dead-letter it again.
    andectl::dlq::purge(&bus, garbage.seq()).await.unwrap();
    assert!(
        andectl::dlq::purge(&bus, garbage.seq()).await.is_err(),
        "gone"
    );

    // Fix the cause, then retry (retrying first would only dead-letter the event again).
    sqlx::query("DROP TRIGGER simulated_bug ON leads.actions")
        .execute(&db)
        .await
        .unwrap();
    let retried = andectl::dlq::retry(&bus, broken.seq()).await.unwrap();
    assert_eq!(
        retried.subject,
        bus.subjects.event(EventKind::ActionRecorded)
    );
    assert!(
        retried
            .msg_id
            .ends_with(&format!("-retry-{}", broken.seq())),
        "{}",
        retried.msg_id
    );
    assert!(
        andectl::dlq::list(&bus, None).await.unwrap().is_empty(),
        "the dead letter is deleted"
    );
    assert!(
        andectl::dlq::retry(&bus, broken.seq()).await.is_err(),
        "and cannot be retried twice"
    );

    let sql = format!("SELECT count(*) FROM leads.actions WHERE action_id = '{action_id}' AND outcome_published_at IS NOT NULL");
    eventually(
        20,
        "the retried action to be stored and its outcome published",
        || async { (scalar(&db, &sql).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM leads.leads WHERE phone = '13900139000'"
        )
        .await,
        1
    );

    // Its whole story, from the event log: recorded twice (original, retry), one outcome.
    let mut out = Vec::new();
    andectl::events::show(&bus, &ShowQuery::Action(action_id.clone()), &mut out)
        .await
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["ActionRecorded", "ActionRecorded", "LeadOutcome"],
        "{lines:?}"
    );
    assert_eq!(
        lines[1]["headers"]["Nats-Msg-Id"],
        retried.msg_id.as_str(),
        "{lines:#?}"
    );
    assert_eq!(lines[2]["event"]["kind"], "created");
    assert!(
        andectl::dlq::list(&bus, None).await.unwrap().is_empty(),
        "processed, not dead-lettered again"
    );
    t.stack.stop().await.unwrap();
}

/// Collects what `tail` writes, line by line.
struct Lines(tokio::sync::mpsc::UnboundedSender<String>, Vec<u8>);
impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        while let Some(i) = self.1.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.1.drain(..=i).collect();
            let _ = self
                .0
                .send(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_tailed_and_shown_decoded() {
    let _stack = STACKS.acquire().await.unwrap();
    let t = common::start().await;
    let bus = bus(&t).await;
    // Something before the tail starts, which it must not print.
    let (status, _) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "c-0", "advisorId": "adv-1", "actionType": "view_resume"}),
        )
        .await;
    assert_eq!(status, 201);
    let stream = andectl::conn::events_stream(&bus).await.unwrap();
    let outcomes = bus.subjects.event(EventKind::LeadOutcome);
    eventually(15, "the first action's outcome", || async {
        (count(&stream, &outcomes, Start::All).await.unwrap() == 1).then_some(())
    })
    .await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let tail = {
        let (bus, stop) = (bus.clone(), stop.clone());
        tokio::spawn(async move {
            let opts = TailOptions {
                subject: None,
                correlation: None,
                since: None,
            };
            andectl::events::tail(&bus, &opts, &mut Lines(tx, Vec::new()), stop).await
        })
    };
    // The tail's consumer exists once the stream has one more consumer than the services'.
    let services = andectl::replay::CONSUMER_NAMES.len();
    eventually(10, "the tail's consumer", || async {
        (stream.get_info().await.unwrap().state.consumer_count > services).then_some(())
    })
    .await;

    let (status, body) = t
        .post("/api/customer/action", json!({"customerId": "c-1", "advisorId": "adv-1", "actionType": "view_resume", "customerPhone": "13700137000", "customerName": "李四"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let action_id = body["data"]["actionId"].as_str().unwrap().to_string();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("a tailed line in time")
            .expect("tail running");
        lines.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert_eq!(lines[0]["type"], "ActionRecorded", "{lines:?}");
    assert_eq!(lines[0]["event"]["actionId"], action_id.as_str());
    assert_eq!(lines[0]["event"]["customerName"], "李四");
    assert_eq!(
        lines[0]["event"]["meta"]["correlationId"],
        action_id.as_str()
    );
    assert!(lines[0]["headers"]["Nats-Msg-Id"].is_string(), "{lines:?}");
    assert_eq!(lines[1]["type"], "LeadOutcome");
    assert_eq!(lines[1]["event"]["kind"], "created");
    assert_eq!(lines[1]["event"]["customerPhone"], "13700137000");
    assert!(
        lines[0]["seq"].as_u64().unwrap() > 1,
        "the earlier event was not printed"
    );
    stop.cancel();
    assert_eq!(tail.await.unwrap().unwrap(), 2);

    // From a time in the past, only one action's events, only outcomes.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let tail = {
        let (bus, stop) = (bus.clone(), stop.clone());
        let opts = TailOptions {
            subject: Some("outcome".into()),
            correlation: Some(action_id.clone()),
            since: Some(chrono::Utc::now() - chrono::Duration::minutes(5)),
        };
        tokio::spawn(async move {
            andectl::events::tail(&bus, &opts, &mut Lines(tx, Vec::new()), stop).await
        })
    };
    let line = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a line in time")
        .unwrap();
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (line["type"].as_str(), line["event"]["actionId"].as_str()),
        (Some("LeadOutcome"), Some(action_id.as_str()))
    );
    // The first action's outcome came before this one (ordered delivery) and was left out.
    stop.cancel();
    assert_eq!(
        tail.await.unwrap().unwrap(),
        1,
        "the other action's outcome was filtered out"
    );

    let mut out = Vec::new();
    andectl::events::show(&bus, &ShowQuery::Seq(1), &mut out)
        .await
        .unwrap();
    let first: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["event"]["customerId"], "c-0");
    assert!(
        andectl::events::show(&bus, &ShowQuery::Seq(10_000), &mut Vec::new())
            .await
            .is_err()
    );

    let mut out = Vec::new();
    let since = chrono::Utc::now() - chrono::Duration::minutes(5);
    let n = andectl::events::show(&bus, &ShowQuery::Range { since, until: None }, &mut out)
        .await
        .unwrap();
    assert_eq!(
        n,
        4,
        "two actions and two outcomes: {}",
        String::from_utf8_lossy(&out)
    );
    let n = andectl::events::show(
        &bus,
        &ShowQuery::Range {
            since,
            until: Some(since),
        },
        &mut Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(n, 0, "nothing before the range's end");
    t.stack.stop().await.unwrap();
}

/// The binary with this test's NATS, database and prefix, and nothing else of ours inherited.
fn andectl(common: &ande_platform::config::CommonConfig) -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "WECHAT_API_BASE",
        "API_HOST",
        "API_PORT",
        "WECHAT_SIM_ADDR",
        "LOG_FORMAT",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_USERNAME",
        "DB_PASSWORD",
    ] {
        c.env_remove(var);
    }
    c.env("NATS_URL", &common.nats_url)
        .env("DATABASE_URL", common.database_url.expose_secret())
        .env("ANDE_PREFIX", &common.prefix);
    c
}

fn run_with_stdin(c: &mut Command, stdin: &str) -> Output {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_until_sigterm_and_status_sees_it() {
    let _stack = STACKS.acquire().await.unwrap();
    let common = ande_platform::testing::isolated_config().await;
    let (api_port, sim_port) = (free_port(), free_port());
    let log = std::env::temp_dir().join(format!("andectl-up-{}.log", common.prefix));
    let mut child = andectl(&common)
        .arg("up")
        .env("API_PORT", api_port.to_string())
        .env("WECHAT_SIM_ADDR", format!("127.0.0.1:{sim_port}"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = ande_wechat::http::client();
    let ready = format!("http://127.0.0.1:{api_port}/api/health/ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(&ready).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "andectl up exited early ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "not ready within 60s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The walkthrough follows readiness by a moment.
    let walkthrough = eventually(10, "the walkthrough", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("Ctrl-C stops everything.").then_some(text)
    })
    .await;
    assert!(
        walkthrough.contains("Ande stack is up")
            && walkthrough.contains(&format!("http://127.0.0.1:{api_port}")),
        "{walkthrough}"
    );

    // `status` against the running stack: everything answers.
    let status = andectl(&common)
        .args(["status", "--json"])
        .env("API_PORT", api_port.to_string())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
    assert!(
        status.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(report["services"]["gateway"]["status"], "ok", "{report}");
    assert_eq!(report["services"]["leads"]["status"], "ok", "{report}");
    assert_eq!(report["services"]["notifier"]["status"], "ok", "{report}");
    assert_eq!(
        report["stream"]["consumers"]["leads"]["pending"], 0,
        "{report}"
    );
    assert_eq!(report["deadLetters"]["messages"], 0, "{report}");
    let text = andectl(&common)
        .arg("status")
        .env("API_PORT", api_port.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("notifier-outcomes") && text.trim_end().ends_with("healthy"),
        "{text}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("andectl up did not stop within 10s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopped."));
    let _ = std::fs::remove_file(&log);

    // With nothing running, status says so and exits 1.
    let down = andectl(&common)
        .arg("status")
        .env("API_PORT", api_port.to_string())
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stdout).contains("NOT healthy"));
}

#[tokio::test]
async fn staff_users_are_added_and_their_passwords_changed_through_the_binary() {
    let common = ande_platform::testing::isolated_config().await;
    let add = |stdin: &str| run_with_stdin(andectl(&common).args(["user", "add", "alice"]), stdin);
    // The policy: long enough, varied enough, not the username.
    for weak in ["short-pw\n", "aaaaaaaaaaaaaaaa\n", "my-name-is-alice!\n"] {
        let refused = add(weak);
        assert_eq!(refused.status.code(), Some(1), "{weak}");
    }
    let ok = add("first-pass-2026\n");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("staff user alice created"));

    let again = add("other-pass-2026\n");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let pool = andectl::conn::gateway_db(&common).await.unwrap();
    let login = |pw: &str| {
        ande_gateway::auth::check_login(
            &pool,
            "alice",
            ande_platform::SecretString::from(pw.to_string()),
        )
    };
    let first = login("first-pass-2026").await.unwrap();
    assert!(first.is_some(), "the first add's password stands");

    let empty = run_with_stdin(andectl(&common).args(["user", "passwd", "alice"]), "\n");
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty password"));
    assert!(login("first-pass-2026").await.unwrap().is_some());

    let changed = run_with_stdin(
        andectl(&common).args(["user", "passwd", "alice"]),
        "second pass 2026\n",
    );
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    let second = login("second pass 2026").await.unwrap();
    assert!(second.is_some());
    assert_ne!(second, first, "a new password is a new token version");
    assert!(login("first-pass-2026").await.unwrap().is_none());

    // ls, disable, enable.
    let ls = andectl(&common).args(["user", "ls"]).output().unwrap();
    let listed = String::from_utf8_lossy(&ls.stdout).to_string();
    assert!(
        listed.contains("\"username\":\"alice\"") && listed.contains("\"disabled\":false"),
        "{listed}"
    );
    assert!(!listed.contains("hash"), "{listed}");
    let off = andectl(&common)
        .args(["user", "disable", "alice"])
        .output()
        .unwrap();
    assert!(off.status.success());
    assert!(
        login("second pass 2026").await.unwrap().is_none(),
        "a disabled account cannot log in"
    );
    let on = andectl(&common)
        .args(["user", "enable", "alice"])
        .output()
        .unwrap();
    assert!(on.status.success());
    assert!(login("second pass 2026").await.unwrap().is_some());

    let nobody = run_with_stdin(
        andectl(&common).args(["user", "passwd", "bob"]),
        "long enough pw 1\n",
    );
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no staff user \"bob\""));
    assert!(!ande_gateway::auth::staff_exists(&pool, "bob")
        .await
        .unwrap());
    let ghost = andectl(&common)
        .args(["user", "disable", "bob"])
        .output()
        .unwrap();
    assert_eq!(ghost.status.code(), Some(1));
}

#[test]
fn unreachable_dependencies_and_bad_usage_have_their_own_exit_codes() {
    let common =
        ande_platform::config::CommonConfig::from_env(&ande_platform::config::Env::default())
            .unwrap();
    let no_nats = andectl(&common)
        .args(["events", "show", "--seq", "1"])
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(
        no_nats.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&no_nats.stderr)
    );
    assert!(String::from_utf8_lossy(&no_nats.stderr)
        .contains("cannot reach NATS at nats://127.0.0.1:1"));
    for args in [
        &["status"][..],
        &["dlq", "ls"],
        &["replay", "--consumer", "leads", "--from-seq", "1"],
    ] {
        let out = andectl(&common)
            .args(args)
            .env("NATS_URL", "nats://127.0.0.1:1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}");
    }

    let no_pg = run_with_stdin(
        andectl(&common)
            .args(["user", "add", "carol"])
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres"),
        "pw\n",
    );
    assert_eq!(
        no_pg.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&no_pg.stderr)
    );
    assert!(String::from_utf8_lossy(&no_pg.stderr).contains("cannot reach Postgres"));

    for args in [
        &["replay", "--consumer", "leads"][..],
        &["replay", "--consumer", "nobody", "--from-seq", "1"],
        &["dlq", "retry"],
        &["events", "show", "--until", "1h"],
        &["frobnicate"],
    ] {
        let out = andectl(&common).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A scan reads exactly the range and stops at the stream's end even while events arrive.
#[tokio::test]
async fn a_scan_reads_its_range_and_stops() {
    let common = ande_platform::testing::isolated_config().await;
    let bus = Bus::connect(&common, "scan-test").await.unwrap();
    bus.ensure_streams(Duration::from_secs(3600)).await.unwrap();
    for i in 0..5 {
        let ev = ande_events::ActionRecorded {
            meta: Some(ande_events::new_meta(
                &format!("a{i}"),
                "test",
                chrono::Utc::now(),
            )),
            action_id: format!("a{i}"),
            ..Default::default()
        };
        bus.publish(&ev).await.unwrap();
    }
    let stream = andectl::conn::events_stream(&bus).await.unwrap();
    let filter = bus.subjects.all_events();
    assert_eq!(count(&stream, &filter, Start::All).await.unwrap(), 5);
    assert_eq!(count(&stream, &filter, Start::Seq(4)).await.unwrap(), 2);
    assert_eq!(count(&stream, &filter, Start::Seq(99)).await.unwrap(), 0);
    let mut scan = Scan::open(&stream, &filter, Start::Seq(2)).await.unwrap();
    let mut seqs = Vec::new();
    while let Some(m) = scan.next().await.unwrap() {
        seqs.push(m.seq);
    }
    scan.close().await;
    assert_eq!(seqs, [2, 3, 4, 5]);
    for s in [bus.subjects.stream(), bus.subjects.dlq_stream()] {
        bus.js.delete_stream(s).await.unwrap();
    }
}

/// Replay refuses to start past events its consumer has not processed, unless told to; a reset
/// without waiting leaves the consumer positioned at the start, with its service's settings.
#[tokio::test]
async fn replay_refuses_to_skip_unprocessed_events() {
    let common = ande_platform::testing::isolated_config().await;
    let bus = Bus::connect(&common, "skip-test").await.unwrap();
    bus.ensure_streams(Duration::from_secs(3600)).await.unwrap();
    for i in 0..5 {
        let ev = ande_events::ActionRecorded {
            meta: Some(ande_events::new_meta(
                &format!("a{i}"),
                "test",
                chrono::Utc::now(),
            )),
            action_id: format!("a{i}"),
            ..Default::default()
        };
        bus.publish(&ev).await.unwrap();
    }
    // The leads consumer exists (as its service creates it) but nothing has been processed.
    let spec =
        ande_leads::consumer_spec(&bus, &ande_leads::LeadsConfig::with_common(common.clone()));
    ande_platform::consumer::ensure_consumer(&bus, &spec)
        .await
        .unwrap();
    let mut args = ReplayArgs {
        consumer: "leads".into(),
        from: Start::Seq(3),
        dry_run: false,
        into_prefix: None,
        allow_skip: false,
        wait: false,
        timeout: Duration::from_secs(10),
    };
    let err = andectl::replay::replay(&bus, &common, &args, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("would skip 2 unprocessed event(s)"),
        "{err:#}"
    );
    let stream = andectl::conn::events_stream(&bus).await.unwrap();
    assert_eq!(
        stream.consumer_info("leads").await.unwrap().num_pending,
        5,
        "untouched"
    );

    args.allow_skip = true;
    let Outcome::Replayed(plan, summary) =
        andectl::replay::replay(&bus, &common, &args, &mut Vec::new())
            .await
            .unwrap()
    else {
        panic!("a replay")
    };
    assert_eq!(
        (plan.count, plan.would_skip, summary.completed),
        (3, 2, false)
    );
    let info = stream.consumer_info("leads").await.unwrap();
    assert_eq!(info.num_pending, 3, "positioned at sequence 3");
    assert_eq!(
        info.config.max_deliver,
        ande_platform::consumer::server_config(&spec).max_deliver
    );
    assert_eq!(info.config.max_ack_pending, spec.max_ack_pending);

    // A consumer that does not exist yet is created from its service's spec, starting at the time.
    args.consumer = "notifier-subscriptions".into();
    args.from = Start::Time(chrono::Utc::now() - chrono::Duration::minutes(10));
    andectl::replay::replay(&bus, &common, &args, &mut Vec::new())
        .await
        .unwrap();
    let info = stream
        .consumer_info("notifier-subscriptions")
        .await
        .unwrap();
    assert_eq!(
        info.config.filter_subject,
        bus.subjects.event(EventKind::SubscriptionChanged)
    );
    assert!(matches!(
        info.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartTime { .. }
    ));
    for s in [bus.subjects.stream(), bus.subjects.dlq_stream()] {
        bus.js.delete_stream(s).await.unwrap();
    }
}

/// A start past the end of the stream (a local time typed as UTC, a sequence too far) would make
/// the consumer skip everything published until then: refused unless told to.
#[tokio::test]
async fn replay_refuses_a_start_in_the_future() {
    let common = ande_platform::testing::isolated_config().await;
    let bus = Bus::connect(&common, "future-test").await.unwrap();
    bus.ensure_streams(Duration::from_secs(3600)).await.unwrap();
    let spec =
        ande_leads::consumer_spec(&bus, &ande_leads::LeadsConfig::with_common(common.clone()));
    ande_platform::consumer::ensure_consumer(&bus, &spec)
        .await
        .unwrap();
    for from in [
        Start::Time(chrono::Utc::now() + chrono::Duration::hours(8)),
        Start::Seq(1_000),
    ] {
        let args = ReplayArgs {
            consumer: "leads".into(),
            from,
            dry_run: false,
            into_prefix: None,
            allow_skip: false,
            wait: false,
            timeout: Duration::from_secs(10),
        };
        let err = andectl::replay::replay(&bus, &common, &args, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("would skip every event published until then"),
            "{err:#}"
        );
    }
    for s in [bus.subjects.stream(), bus.subjects.dlq_stream()] {
        bus.js.delete_stream(s).await.unwrap();
    }
}

#[tokio::test]
async fn advisors_are_bound_listed_paired_and_unbound_through_the_binary() {
    let common = ande_platform::testing::isolated_config().await;
    let run = |args: &[&str]| andectl(&common).args(args).output().unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();

    let bound = run(&["advisor", "bind", "adv-9", "o_adv_9"]);
    assert!(
        bound.status.success(),
        "{}",
        String::from_utf8_lossy(&bound.stderr)
    );
    let b: serde_json::Value = serde_json::from_str(text(&bound).trim()).unwrap();
    assert_eq!(b["advisorId"], "adv-9");
    assert_eq!(b["openid"], "o_adv_9");
    assert!(b["boundBy"].as_str().unwrap().starts_with("andectl:"));

    run(&["advisor", "bind", "adv-8", "o_adv_8"]);
    let all = text(&run(&["advisor", "ls"]));
    assert_eq!(all.lines().count(), 2, "{all}");
    let one = text(&run(&["advisor", "ls", "adv-9"]));
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.contains("o_adv_9"));

    let paired = run(&["advisor", "pair", "adv-7"]);
    assert!(paired.status.success());
    let line = text(&paired);
    let code = line
        .split_whitespace()
        .find(|w| w.len() == 11 && w.as_bytes()[5] == b'-')
        .unwrap_or_else(|| panic!("a code in {line}"));
    let pool = andectl::conn::notifier_db(&common).await.unwrap();
    let redeemed = ande_notifier::bindings::redeem(
        &pool,
        ande_contracts::notifier::RedeemRequest {
            code: code.to_lowercase(),
            openid: "o_adv_7".into(),
        },
    )
    .await
    .map_err(ande_platform::rpc::RpcError::from)
    .unwrap();
    assert_eq!(redeemed.advisor_id, "adv-7");
    assert_eq!(redeemed.bound_by, "pairing");

    let unbound = run(&["advisor", "unbind", "adv-9", "o_adv_9"]);
    assert!(unbound.status.success());
    let again = run(&["advisor", "unbind", "adv-9", "o_adv_9"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no such binding"));
    let left = text(&run(&["advisor", "ls"]));
    assert!(
        !left.contains("o_adv_9") && left.contains("o_adv_7"),
        "{left}"
    );
    let bad = run(&["advisor", "bind", "adv-9", " spaced "]);
    assert!(!bad.status.success());
}

/// The queue through the binary: a notification WeChat refused for good is listed as failed and
/// counted by `status`; while sending is paused a retry queues it (and nothing is sent); a retry
/// of what is not failed is refused; resuming sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_notifications_are_listed_retried_and_sending_paused_through_the_binary() {
    let _stack = STACKS.acquire().await.unwrap();
    let t = common::start().await;
    let common = t.stack.common.clone();
    let run = |args: &[&str]| andectl(&common).args(args).output().unwrap();
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).to_string();
    let (advisor, openid) = ("adv-ops", "o_advisor_ops");
    t.advisor_accepts(advisor, openid, ande_wechat::DEV_TEMPLATE_ID)
        .await;
    t.sim_fault(json!({"endpoint": "subscribe_send", "errcode": 40003, "count": 1}))
        .await;
    let (status, body) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "cust-ops", "advisorId": advisor, "actionType": "view_resume",
                   "actionData": {"resumeId": "r-1"}, "customerName": "张三", "customerPhone": "13800138000"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let failed = eventually(30, "the notification to fail", || async {
        let o = run(&["notifier", "ls", "--state", "failed"]);
        let line = text(&o);
        (!line.trim().is_empty()).then_some(line)
    })
    .await;
    let n: Value = serde_json::from_str(failed.trim()).unwrap();
    assert_eq!(
        (n["advisorId"].as_str(), n["errcode"].as_i64()),
        (Some(advisor), Some(40003))
    );
    let id = n["id"].as_str().unwrap().to_string();
    assert!(text(&run(&[
        "notifier",
        "ls",
        "--state",
        "failed",
        "--advisor",
        "adv-other"
    ]))
    .is_empty());

    let paused = run(&["notifier", "pause", "--reason", "maintenance"]);
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    assert_eq!(text(&paused).trim(), "paused until resumed (maintenance)");
    let status = text(&run(&["status"]));
    assert!(status.contains("failed 1"), "{status}");
    assert!(
        status.contains("paused until resumed (maintenance)"),
        "{status}"
    );
    let report: Value = serde_json::from_str(&text(&run(&["status", "--json"]))).unwrap();
    assert_eq!(report["notifications"]["byState"]["failed"], 1, "{report}");

    let retried = run(&["notifier", "retry", &id]);
    assert_eq!(
        text(&retried).trim(),
        "1 failed notification(s) queued again"
    );
    let again = run(&["notifier", "retry", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("only failed ones are retried"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let queued = text(&run(&["notifier", "ls", "--state", "queued"]));
    assert!(queued.contains(&id), "{queued}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        t.messages(openid).await.is_empty(),
        "nothing is sent while paused"
    );

    let resumed = run(&["notifier", "resume"]);
    assert!(resumed.status.success());
    assert_eq!(t.wait_messages(openid, 1).await.len(), 1);
    let none = run(&["notifier", "retry", "--all-failed"]);
    assert_eq!(text(&none).trim(), "0 failed notification(s) queued again");
    let bad = run(&["notifier", "ls", "--state", "lost"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    t.stack.stop().await.unwrap();
}
