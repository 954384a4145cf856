//! The notifier: decides whether and what to tell an advisor about each action outcome, and
//! sends it as a WeChat subscribe message, once, within WeChat's rules.
//!
//! - [`consumers`]: durable consumers of `lead.outcome` and `subscription.changed`; they only
//!   write rows (notifications to send, credits) and ack after the commit;
//! - [`dispatch`]: workers that claim queued notifications, reserve a credit, send, and record
//!   the result; retries, pauses, digests;
//! - [`content`]: the message texts, fitted to WeChat's keyword limits;
//! - [`store`]: the schema's reads and writes (migrations in `migrations/`);
//! - [`queries`]: request/reply: journey, digest, direct send, resume;
//! - [`queue`]: the queue for operators: pause, status, lists, retry of failed notifications.
//!
//! Scaling out: run more `notifier` processes. They share the durable consumers (NATS splits the
//! messages) and the queue table (rows are claimed with SKIP LOCKED), and they all get access
//! tokens from `stable_token`, which never invalidates another process's token.

pub mod bindings;
pub mod config;
pub mod consumers;
pub mod content;
pub mod credits;
pub mod dispatch;
pub mod queries;
pub mod queue;
pub mod send_keys;
pub mod store;

use std::sync::Arc;

use ande_events::EventKind;
use ande_platform::bus::Bus;
use ande_platform::consumer::{self, ConsumerSpec};
use ande_wechat::WechatClient;
use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::NotifierConfig;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
pub const SCHEMA: &str = "notifier";

pub fn consumer_specs(bus: &Bus) -> (ConsumerSpec, ConsumerSpec, ConsumerSpec) {
    (
        ConsumerSpec::new(
            consumers::OUTCOMES_DURABLE,
            bus.subjects.event(EventKind::LeadOutcome),
        ),
        ConsumerSpec::new(
            consumers::SUBSCRIPTIONS_DURABLE,
            bus.subjects.event(EventKind::SubscriptionChanged),
        ),
        ConsumerSpec::new(
            consumers::WECHAT_DURABLE,
            bus.subjects.event(EventKind::WechatSubscription),
        ),
    )
}

/// A send still waiting for WeChat must never be presumed abandoned: it would be sent twice.
/// One send can take a token fetch, the send, a re-fetch after a token error and the resend
/// (four WeChat calls), then recording the answer: `stale_after` is at least five timeouts.
fn raise_stale_after(config: &mut NotifierConfig) {
    let floor = config.wechat.timeout * 5;
    if config.stale_after < floor {
        tracing::warn!(stale_after = ?config.stale_after, wechat_timeout = ?config.wechat.timeout, "stale_after raised to five WeChat timeouts");
        config.stale_after = floor;
    }
}

/// Log the settings that matter, and those set but no longer read.
fn announce(config: &NotifierConfig) {
    for var in &config.obsolete {
        tracing::warn!(
            variable = var,
            "set but no longer read; see deploy/ande.env.example"
        );
    }
    tracing::info!(max_in_flight = config.max_in_flight, claim_batch = config.claim_batch, template = %config.template_id, "notifier starting");
}

/// The pool: the claim loop, the recorder, the sweep, two consumers and the request/reply
/// handlers each need a connection at times; sends hold none.
async fn pool(config: &NotifierConfig) -> anyhow::Result<sqlx::PgPool> {
    let connections = 12;
    let pool = ande_platform::db::connect_with(
        &config.common.database_url,
        SCHEMA,
        connections,
        &MIGRATIONS,
        config.common.migrations,
    )
    .await?;
    Ok(pool)
}

type Handlers = (
    Arc<consumers::OutcomeHandler>,
    Arc<consumers::SubscriptionHandler>,
    Arc<consumers::WechatPushHandler>,
);

/// The three consumers' handlers: outcomes wake the claim loops, subscription changes and
/// WeChat's pushes wake the sweep (a new credit may release waiting notifications).
fn handlers(
    pool: &sqlx::PgPool,
    config: &Arc<NotifierConfig>,
    wake: &Arc<Notify>,
    sweep_now: &Arc<Notify>,
) -> Handlers {
    (
        Arc::new(consumers::OutcomeHandler {
            pool: pool.clone(),
            config: config.clone(),
            wake: wake.clone(),
        }),
        Arc::new(consumers::SubscriptionHandler {
            pool: pool.clone(),
            config: config.clone(),
            sweep_now: sweep_now.clone(),
        }),
        Arc::new(consumers::WechatPushHandler {
            pool: pool.clone(),
            config: config.clone(),
            sweep_now: sweep_now.clone(),
        }),
    )
}

/// The samplers behind the notifier's gauges (always: under `andectl up` another service's
/// listener shows them), and its admin listener when it has one (metrics, health, readiness of
/// NATS, the consumers and Postgres).
async fn serve_admin(
    config: &NotifierConfig,
    bus: &Bus,
    pool: &sqlx::PgPool,
    wechat: &WechatClient,
    consumers: Vec<String>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use ande_platform::admin;
    tokio::spawn(sample_queue(pool.clone(), wechat.clone(), shutdown.clone()));
    tokio::spawn(admin::sample_consumers(
        bus.clone(),
        consumers.clone(),
        shutdown.clone(),
    ));
    if let Some(addr) = config.admin_addr {
        let ready = admin::Readiness {
            bus: Some(bus.clone()),
            pool: Some(pool.clone()),
            consumers,
        };
        admin::start(addr, ready, shutdown.clone()).await?;
    }
    Ok(())
}

/// Copy the queue's state and the token cache's fetches into the gauges until `shutdown`.
async fn sample_queue(pool: sqlx::PgPool, wechat: WechatClient, shutdown: CancellationToken) {
    use ande_platform::metrics as m;
    while !shutdown.is_cancelled() {
        let read = async {
            let mut conn = pool.acquire().await?;
            store::queue_gauges(&mut conn).await
        };
        match read.await {
            Ok(g) => {
                for state in store::LIVE_STATES.map(|s| s.as_str()) {
                    let n = g
                        .by_state
                        .iter()
                        .find(|(s, _)| s == state)
                        .map_or(0, |(_, n)| *n);
                    m::NOTIFICATIONS.with_label_values(&[state]).set(n);
                }
                m::OLDEST_QUEUED.set(g.oldest_due_seconds);
                m::NOTIFIER_PAUSED.set(i64::from(g.paused));
            }
            Err(e) => tracing::debug!(error = %e, "queue gauges not sampled"),
        }
        let fetched = wechat.token_fetches();
        let counted = m::WECHAT_TOKEN_FETCHES.get();
        if fetched > counted {
            m::WECHAT_TOKEN_FETCHES.inc_by(fetched - counted);
        }
        if ande_platform::consumer::sleep_or_shutdown(ande_platform::admin::SAMPLE_EVERY, &shutdown)
            .await
        {
            break;
        }
    }
}

/// Run the notifier until `shutdown` is cancelled.
pub async fn run(mut config: NotifierConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    raise_stale_after(&mut config);
    announce(&config);
    let pool = pool(&config).await?;
    let bus = Bus::connect(&config.common, "notifier").await?;
    bus.ensure_streams(config.common.event_max_age).await?;
    let wechat = WechatClient::new(config.wechat.clone()).context("WeChat client")?;
    let config = Arc::new(config);
    let wake = Arc::new(Notify::new());
    let sweep_now = Arc::new(Notify::new());
    let (outcomes, subscriptions, pushes) = consumer_specs(&bus);
    let consumers = [&outcomes, &subscriptions, &pushes].map(|s| s.durable.clone());
    serve_admin(&config, &bus, &pool, &wechat, consumers.to_vec(), &shutdown).await?;
    let (outcome_handler, sub_handler, push_handler) = handlers(&pool, &config, &wake, &sweep_now);
    let dispatcher = Arc::new(dispatch::Dispatcher {
        pool: pool.clone(),
        wechat: wechat.clone(),
        config: config.clone(),
        wake,
        sweep_now,
    });
    tokio::spawn(purge_old_records(
        pool.clone(),
        config.common.retention,
        shutdown.clone(),
    ));
    // One part failing stops all of them: the dispatcher must not go on sending after `run` has
    // returned an error. `join!`, not `try_join!`: an error exit still waits for the dispatcher
    // to finish or hand back its sends in flight and record them (within the shutdown grace).
    let stop = shutdown.child_token();
    let dispatching = async {
        dispatcher.run(stop.clone()).await;
        Ok::<_, anyhow::Error>(())
    };
    let stop_on_error = |r: anyhow::Result<()>| {
        if r.is_err() {
            stop.cancel();
        }
        r
    };
    let (consuming_outcomes, consuming_subscriptions, consuming_pushes, serving, dispatched) = tokio::join!(
        async {
            stop_on_error(consumer::run(bus.clone(), outcomes, outcome_handler, stop.clone()).await)
        },
        async {
            stop_on_error(
                consumer::run(bus.clone(), subscriptions, sub_handler, stop.clone()).await,
            )
        },
        async {
            stop_on_error(consumer::run(bus.clone(), pushes, push_handler, stop.clone()).await)
        },
        async {
            stop_on_error(
                queries::serve(
                    bus.client.clone(),
                    bus.subjects.clone(),
                    pool.clone(),
                    wechat,
                    stop.clone(),
                )
                .await,
            )
        },
        dispatching,
    );
    stop.cancel();
    consuming_outcomes
        .and(consuming_subscriptions)
        .and(consuming_pushes)
        .and(serving)
        .and(dispatched)
        .context("notifier")?;
    pool.close().await;
    Ok(())
}

/// Forget finished notifications and their delivery log (they hold the customer's name and
/// phone) after `ANDE_RETENTION_NOTIFICATIONS`, direct-send keys after
/// `ANDE_RETENTION_IDEMPOTENCY_KEYS`, and pairing codes a day after they expired. Queued,
/// in-flight and waiting notifications are never purged.
pub async fn purge_old_records(
    pool: sqlx::PgPool,
    r: ande_platform::retention::Retention,
    shutdown: CancellationToken,
) {
    use ande_platform::retention::secs;
    ande_platform::retention::purge_hourly("notifications, deliveries, keys", shutdown, || async {
        let mut tx = pool.begin().await?;
        let notifications = sqlx::query!(
            "DELETE FROM notifications WHERE created_at < now() - make_interval(secs => $1)
               AND state IN ('sent', 'failed', 'digested', 'dropped')",
            secs(r.notifications)
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let deliveries = sqlx::query!(
            "DELETE FROM deliveries WHERE at < now() - make_interval(secs => $1)",
            secs(r.notifications)
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let keys = sqlx::query!(
            "DELETE FROM direct_send_keys WHERE created_at < now() - make_interval(secs => $1)",
            secs(r.idempotency_keys)
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let pairings = sqlx::query!(
            "DELETE FROM advisor_pairings WHERE expires_at < now() - interval '1 day'"
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(notifications + deliveries + keys + pairings)
    })
    .await
}
