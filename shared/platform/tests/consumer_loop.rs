//! The shared consumer loop against the real NATS: what it acks, retries and dead-letters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ande_events::{new_meta, ActionRecorded, EventKind};
use ande_platform::bus::Bus;
use ande_platform::consumer::{self, ConsumerSpec, Delivery, Disposition, Handler};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Records what it was given; answers with a fixed disposition.
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
    answer: Disposition,
}

impl Handler for Recorder {
    type Event = ActionRecorded;
    async fn handle(&self, batch: &[Delivery<ActionRecorded>]) -> anyhow::Result<Vec<Disposition>> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(batch.iter().map(|d| d.event.action_id.clone()));
        Ok(batch.iter().map(|_| self.answer.clone()).collect())
    }
}

async fn bus() -> Bus {
    use ande_platform::config::{CommonConfig, Env, NATS_URL};
    // Only NATS is used here: the machine's, or the one NATS_URL names.
    let process = Env::from_process();
    let nats = process.get(NATS_URL).map(|v| (NATS_URL, v.to_string()));
    let mut common = CommonConfig::from_env(&Env::from_pairs(nats)).unwrap();
    common.prefix = format!("t_{}", uuid::Uuid::now_v7().simple());
    let bus = Bus::connect(&common, "test").await.unwrap();
    bus.ensure_streams(Duration::from_secs(600)).await.unwrap();
    bus
}

fn event(id: &str) -> ActionRecorded {
    ActionRecorded {
        meta: Some(new_meta(id, "test", chrono::Utc::now())),
        action_id: id.into(),
        ..Default::default()
    }
}

async fn dead_letters(bus: &Bus) -> u64 {
    let mut s = bus.js.get_stream(bus.subjects.dlq_stream()).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Why the first dead letter was set aside.
async fn first_dead_letter_reason(bus: &Bus) -> String {
    let dlq = bus.js.get_stream(bus.subjects.dlq_stream()).await.unwrap();
    let m = dlq.get_raw_message(1).await.unwrap();
    m.headers
        .get(ande_platform::bus::dlq_headers::REASON)
        .unwrap()
        .as_str()
        .to_string()
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_coming_back_unsettled_is_dead_lettered_not_processed_again() {
    let bus = bus().await;
    let mut spec = ConsumerSpec::new("poison", bus.subjects.event(EventKind::ActionRecorded));
    spec.max_deliver = 3;
    spec.ack_wait = Duration::from_millis(300);
    bus.publish(&event("a1")).await.unwrap();
    // A consumer that "crashes" on it three times: takes it and never settles it.
    let c = consumer::ensure_consumer(&bus, &spec).await.unwrap();
    for _ in 0..3 {
        let mut b = c
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        assert!(b.next().await.is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // The real loop gets its fourth delivery and dead-letters it without handling it.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        bus.clone(),
        spec,
        Arc::new(Recorder {
            seen: seen.clone(),
            answer: Disposition::Ack,
        }),
        stop.clone(),
    ));
    for _ in 0..100 {
        if dead_letters(&bus).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead_letters(&bus).await, 1);
    assert!(
        seen.lock().unwrap().is_empty(),
        "not handed to the handler again"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_end_in_a_dead_letter_after_max_deliver() {
    let bus = bus().await;
    let mut spec = ConsumerSpec::new("retrying", bus.subjects.event(EventKind::ActionRecorded));
    spec.max_deliver = 3;
    bus.publish(&event("r1")).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Disposition::Retry {
        after: Duration::from_millis(50),
        reason: "not yet".into(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        bus.clone(),
        spec,
        Arc::new(Recorder {
            seen: seen.clone(),
            answer,
        }),
        stop.clone(),
    ));
    wait_until(|| seen.lock().unwrap().len() >= 3).await;
    for _ in 0..100 {
        if dead_letters(&bus).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "handled exactly max_deliver times"
    );
    assert_eq!(dead_letters(&bus).await, 1);
    let reason = first_dead_letter_reason(&bus).await;
    assert!(
        reason.contains("gave up after 3 deliveries: not yet"),
        "{reason}"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Stores nothing, but does Postgres work per message; "poison" takes longer than its
/// statement timeout every time, as a message whose own work is too slow would.
struct SlowOnPoison {
    pool: sqlx::PgPool,
    stored: Arc<Mutex<Vec<String>>>,
    attempts_on_poison: Arc<std::sync::atomic::AtomicU32>,
}

impl consumer::StoreInTx<ActionRecorded> for SlowOnPoison {
    type Stored = String;
    async fn store(
        &self,
        tx: &mut sqlx::PgConnection,
        batch: &[Delivery<ActionRecorded>],
    ) -> Result<Vec<Result<String, String>>, sqlx::Error> {
        let mut out = Vec::new();
        for d in batch {
            if d.event.action_id == "poison" {
                self.attempts_on_poison
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sqlx::query("SET LOCAL statement_timeout = '50ms'")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT pg_sleep(1)").execute(&mut *tx).await?;
            }
            sqlx::query("SELECT 1").execute(&mut *tx).await?;
            out.push(Ok(d.event.action_id.clone()));
        }
        Ok(out)
    }
}

impl Handler for SlowOnPoison {
    type Event = ActionRecorded;
    async fn handle(&self, batch: &[Delivery<ActionRecorded>]) -> anyhow::Result<Vec<Disposition>> {
        let out = consumer::store_batch(&self.pool, batch, self).await?;
        let mut stored = self.stored.lock().unwrap();
        Ok(out
            .into_iter()
            .map(|r| match r {
                Ok(id) => {
                    stored.push(id);
                    Disposition::Ack
                }
                Err(why) => Disposition::DeadLetter(why),
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_poison_message_is_dead_lettered_not_retried_forever() {
    let bus = bus().await;
    let common = ande_platform::testing::isolated_config().await;
    let pool = sqlx::PgPool::connect(ande_platform::ExposeSecret::expose_secret(
        &common.database_url,
    ))
    .await
    .unwrap();
    let spec = ConsumerSpec::new("slow", bus.subjects.event(EventKind::ActionRecorded));
    for id in ["before", "poison", "after"] {
        bus.publish(&event(id)).await.unwrap();
    }
    let stored = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        bus.clone(),
        spec,
        Arc::new(SlowOnPoison {
            pool,
            stored: stored.clone(),
            attempts_on_poison: attempts.clone(),
        }),
        stop.clone(),
    ));
    for _ in 0..200 {
        if dead_letters(&bus).await == 1 && stored.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut done = stored.lock().unwrap().clone();
    done.sort();
    assert_eq!(
        done,
        vec!["after".to_string(), "before".to_string()],
        "the others are stored"
    );
    assert_eq!(dead_letters(&bus).await, 1, "the poison is set aside");
    let reason = first_dead_letter_reason(&bus).await;
    assert!(reason.contains("statement timeout"), "{reason}");
    // Bounded: a few attempts as part of the batch, a few alone, then never again.
    let n = attempts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n <= 2 * consumer::CONTENTION_ATTEMPTS, "{n} attempts");
    stop.cancel();
    task.await.unwrap().unwrap();
}
