//! The leads service: turns recorded customer actions into the CRM's customer leads.
//!
//! - [`consumer`]: the durable consumer of `action.recorded`; stores every action, creates or
//!   matches the lead, publishes exactly one `lead.outcome` per action;
//! - [`store`]: the schema's reads and writes (migrations in `migrations/`);
//! - [`phone`]: the mainland-mobile rule that decides whether an action becomes a lead;
//! - [`changes`]: the durable consumer of `lead.changed` (staff changes from the console);
//! - [`queries`]: request/reply queries for the gateway and andectl ([`console`]: the console's).

pub mod changes;
pub mod config;
pub mod console;
pub mod consumer;
pub mod phone;
pub mod queries;
pub mod store;

use std::sync::Arc;

use ande_events::EventKind;
use ande_platform::bus::Bus;
use ande_platform::consumer::ConsumerSpec;
use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::LeadsConfig;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
pub const SCHEMA: &str = "leads";

/// The consumer's settings on the server.
pub fn consumer_spec(bus: &Bus, config: &LeadsConfig) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(
        consumer::DURABLE,
        bus.subjects.event(EventKind::ActionRecorded),
    );
    spec.batch = config.batch;
    spec
}

/// The settings of the consumer of staff changes on the server.
pub fn changes_spec(bus: &Bus) -> ConsumerSpec {
    ConsumerSpec::new(changes::DURABLE, bus.subjects.event(EventKind::LeadChanged))
}

/// Run the service until `shutdown` is cancelled.
pub async fn run(config: LeadsConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = ande_platform::db::connect_with(
        &config.common.database_url,
        SCHEMA,
        8,
        &MIGRATIONS,
        config.common.migrations,
    )
    .await?;
    let bus = Bus::connect(&config.common, "leads").await?;
    bus.ensure_streams(config.common.event_max_age).await?;
    let spec = consumer_spec(&bus, &config);
    let changes_spec = changes_spec(&bus);
    let consumers = vec![consumer::DURABLE.to_string(), changes::DURABLE.to_string()];
    tokio::spawn(ande_platform::admin::sample_consumers(
        bus.clone(),
        consumers.clone(),
        shutdown.clone(),
    ));
    if let Some(addr) = config.admin_addr {
        let ready = ande_platform::admin::Readiness {
            bus: Some(bus.clone()),
            pool: Some(pool.clone()),
            consumers,
        };
        ande_platform::admin::start(addr, ready, shutdown.clone()).await?;
    }
    let handler = Arc::new(consumer::ActionHandler {
        pool: pool.clone(),
        bus: bus.clone(),
        config: Arc::new(config),
    });
    tracing::info!("leads service running");
    let queries = queries::serve(
        bus.client.clone(),
        bus.subjects.clone(),
        pool.clone(),
        shutdown.clone(),
    );
    let retention = tokio::spawn(purge_old_actions(
        pool.clone(),
        handler.config.common.retention.actions,
        shutdown.clone(),
    ));
    let changing = ande_platform::consumer::run(
        bus.clone(),
        changes_spec,
        Arc::new(changes::ChangeHandler { pool: pool.clone() }),
        shutdown.clone(),
    );
    let consuming = ande_platform::consumer::run(bus, spec, handler, shutdown);
    tokio::try_join!(consuming, changing, queries).context("leads service")?;
    retention.abort();
    pool.close().await;
    Ok(())
}

/// Forget actions (the customer's name, phone, address, browser as sent) older than
/// `ANDE_RETENTION_ACTIONS`; the leads they made stay. An action whose outcome was never
/// published is kept until it is.
pub async fn purge_old_actions(
    pool: sqlx::PgPool,
    age: std::time::Duration,
    shutdown: CancellationToken,
) {
    ande_platform::retention::purge_hourly("actions", shutdown, || async {
        let done = sqlx::query!(
            "DELETE FROM actions WHERE occurred_at < now() - make_interval(secs => $1)
               AND outcome_published_at IS NOT NULL",
            ande_platform::retention::secs(age)
        )
        .execute(&pool)
        .await?;
        Ok(done.rows_affected())
    })
    .await
}
