//! The leads service: turns recorded customer actions into the CRM's customer leads.
//!
//! - [`consumer`]: the durable consumer of `action.recorded`; stores every action, creates or
//!   matches the lead, publishes exactly one `lead.outcome` per action;
//! - [`store`]: the schema's reads and writes (migrations in `migrations/`);
//! - [`phone`]: the mainland-mobile rule that decides whether an action becomes a lead;
//! - [`queries`]: request/reply queries for the gateway and andectl.

pub mod config;
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

/// Run the service until `shutdown` is cancelled.
pub async fn run(config: LeadsConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool =
        ande_platform::db::connect(&config.common.database_url, SCHEMA, 8, &MIGRATIONS).await?;
    let bus = Bus::connect(&config.common, "leads").await?;
    bus.ensure_streams(config.common.event_max_age).await?;
    let spec = consumer_spec(&bus, &config);
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
    let consuming = ande_platform::consumer::run(bus, spec, handler, shutdown);
    tokio::try_join!(consuming, queries).context("leads service")?;
    pool.close().await;
    Ok(())
}
