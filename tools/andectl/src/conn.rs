//! Connections for the operator commands: NATS (with the environment's streams) and the
//! gateway's Postgres schema, with errors that say what could not be reached (exit code 3, see
//! [`crate::exit`]) and, when NATS answers but a stream is missing, what to run.

use ande_platform::bus::Bus;
use ande_platform::config::CommonConfig;
use sqlx::PgPool;

/// Connect to NATS as `andectl`. Fails fast (no retry loop) when NATS does not answer.
pub async fn bus(common: &CommonConfig) -> anyhow::Result<Bus> {
    Ok(Bus::connect(common, "andectl").await?)
}

/// Ask a service (`M::SERVICE`) a request/reply question; services answer from their database,
/// so a few seconds is plenty.
pub async fn ask<M: ande_platform::rpc::Method>(
    bus: &Bus,
    query: &M::Request,
) -> anyhow::Result<M::Reply> {
    ande_platform::rpc::call::<M>(
        &bus.client,
        &bus.subjects,
        query,
        std::time::Duration::from_secs(5),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{} service: {e}", M::SERVICE))
}

pub use ande_ops::streams::{dlq_stream, events_stream, stream};

/// The gateway's schema (staff accounts), migrated if needed, exactly as the gateway opens it.
/// The notifier's schema (advisor bindings), migrated if needed.
pub async fn notifier_db(common: &CommonConfig) -> anyhow::Result<PgPool> {
    Ok(ande_platform::db::connect(
        &common.database_url,
        ande_notifier::SCHEMA,
        2,
        &ande_notifier::MIGRATIONS,
    )
    .await?)
}

pub async fn gateway_db(common: &CommonConfig) -> anyhow::Result<PgPool> {
    Ok(ande_platform::db::connect(
        &common.database_url,
        ande_gateway::SCHEMA,
        2,
        &ande_gateway::MIGRATIONS,
    )
    .await?)
}

/// Apply every service's migrations to its schema (idempotent): the deployment step that runs
/// before the services when they start with `ANDE_MIGRATIONS=check`. Returns, per schema, the
/// newest migration this binary knows.
pub async fn migrate(common: &CommonConfig) -> anyhow::Result<Vec<(&'static str, i64)>> {
    use anyhow::Context;
    let schemas: [(&'static str, &sqlx::migrate::Migrator); 3] = [
        (ande_gateway::SCHEMA, &ande_gateway::MIGRATIONS),
        (ande_leads::SCHEMA, &ande_leads::MIGRATIONS),
        (ande_notifier::SCHEMA, &ande_notifier::MIGRATIONS),
    ];
    let mut done = Vec::new();
    for (schema, migrations) in schemas {
        let pool = ande_platform::db::connect(&common.database_url, schema, 1, migrations)
            .await
            .with_context(|| format!("migrating {schema}"))?;
        pool.close().await;
        let newest = migrations.iter().map(|m| m.version).max().unwrap_or(0);
        done.push((schema, newest));
    }
    Ok(done)
}
