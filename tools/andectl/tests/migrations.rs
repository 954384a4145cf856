//! Migrations as a deployment step: `andectl migrate` (the real binary) applies every service's
//! migrations, idempotently; a service started with `ANDE_MIGRATIONS=check` refuses a schema that
//! lacks one of its migrations, naming the command to run, refuses one whose applied migration
//! differs from its own, and accepts a schema one migration ahead (a rollback of the binary).

use std::process::Command;

use ande_platform::db::{connect_with, DbError, Migrations};
use ande_platform::ExposeSecret;

const BIN: &str = env!("CARGO_BIN_EXE_andectl");

fn migrate(common: &ande_platform::config::CommonConfig) -> std::process::Output {
    Command::new(BIN)
        .arg("migrate")
        .env_remove("DB_HOST")
        .env("NATS_URL", &common.nats_url)
        .env("DATABASE_URL", common.database_url.expose_secret())
        .env("ANDE_PREFIX", &common.prefix)
        .output()
        .expect("andectl runs")
}

#[tokio::test]
async fn migrate_then_check_and_a_one_version_rollback_is_accepted() {
    let common = ande_platform::testing::isolated_config().await;
    let url = &common.database_url;
    let leads = |mode| connect_with(url, ande_leads::SCHEMA, 2, &ande_leads::MIGRATIONS, mode);

    // Nothing applied yet: a checking service refuses, and says what to do.
    let err = leads(Migrations::Check).await.expect_err("an empty schema");
    assert!(matches!(err, DbError::SchemaBehind { .. }), "{err}");
    assert!(err.to_string().contains("andectl migrate"), "{err}");

    for run in 0..2 {
        let out = migrate(&common);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for schema in ["gateway", "leads", "notifier"] {
            assert!(
                stdout.contains(&format!("{schema}: migrations applied up to")),
                "{stdout}"
            );
        }
    }
    let pool = leads(Migrations::Check)
        .await
        .expect("migrated: the check passes");

    // A newer binary's migration applied, then this binary rolled back to: accepted by both modes.
    sqlx::query(
        "INSERT INTO leads._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99991231000000, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    leads(Migrations::Check)
        .await
        .expect("one migration ahead: a rollback");
    leads(Migrations::Apply)
        .await
        .expect("applying tolerates it too");

    // An applied migration that is not the one this binary carries: refused.
    sqlx::query(
        "UPDATE leads._sqlx_migrations SET checksum = '\\x01'
         WHERE version = (SELECT min(version) FROM leads._sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = leads(Migrations::Check)
        .await
        .expect_err("a changed migration");
    assert!(matches!(err, DbError::SchemaChanged { .. }), "{err}");
}
