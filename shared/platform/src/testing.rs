//! Helpers for tests that run against the real NATS and Postgres of the machine: each test gets
//! its own database and its own subject prefix, so tests run in parallel and never see each
//! other's data or events. Not used by the services themselves.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection};

use crate::config::{CommonConfig, Env, DATABASE_URL, NATS_URL};

/// A config for one test: a fresh database (created now) and a unique prefix.
pub async fn isolated_config() -> CommonConfig {
    let env = Env::from_process();
    let mut config = CommonConfig::from_env(&Env::from_pairs(
        [DATABASE_URL, NATS_URL].into_iter().filter_map(|k| env.get(k).map(|v| (k, v.to_string()))),
    ))
    .expect("test config");
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = config.database_url.expose_secret().to_string();
    let mut conn = PgConnection::connect(&admin).await.expect("Postgres must run for this test (see README)");
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await.expect("create test database");
    let base = match admin.rfind('/') {
        Some(i) if admin[..i].contains("://") && i > admin.find("://").unwrap() + 2 => &admin[..i],
        _ => admin.as_str(),
    };
    config.database_url = SecretString::from(format!("{base}/{name}"));
    config.prefix = name;
    config
}
