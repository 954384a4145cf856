//! Helpers for tests that run against the real NATS and Postgres of the machine: each test gets
//! its own database and its own subject prefix, so tests run in parallel and never see each
//! other's data or events. Not used by the services themselves.
//!
//! Test databases are named `t_<uuidv7>`; each call also drops those left by runs more than an
//! quarter of an hour old (the UUIDv7 carries its creation time), so the machine does not fill
//! up with them. No single test runs anywhere near that long.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection};

use crate::config::{CommonConfig, Env, DATABASE_URL, NATS_URL};

/// A config for one test: a fresh database (created now) and a unique prefix.
pub async fn isolated_config() -> CommonConfig {
    let env = Env::from_process();
    let mut config = CommonConfig::from_env(&Env::from_pairs(
        [DATABASE_URL, NATS_URL]
            .into_iter()
            .filter_map(|k| env.get(k).map(|v| (k, v.to_string()))),
    ))
    .expect("test config");
    // Tests run on the development defaults (secrets, the simulator), as `andectl up` does.
    config.development = true;
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = config.database_url.expose_secret().to_string();
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("Postgres must run for this test (see README)");
    drop_stale_databases(&mut conn).await;
    drop_stale_streams(&config.nats_url).await;
    // Dynamic: a database per test, named `t_<uuid v7>` here, never from input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    config.database_url = SecretString::from(with_database(&admin, &name));
    config.prefix = name;
    config
}

/// The URL with its database name replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Milliseconds since the epoch at which a `t_<uuidv7>` name was made.
fn created_ms(name: &str) -> Option<i64> {
    let id = uuid::Uuid::parse_str(name.get(2..)?).ok()?;
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some((secs as i64) * 1000 + i64::from(nanos / 1_000_000))
}

/// Test databases and streams older than this are left over from finished runs.
const STALE_AFTER_MS: i64 = 15 * 60 * 1000;

fn stale(name: &str) -> bool {
    created_ms(name).is_some_and(|ms| ms < chrono::Utc::now().timestamp_millis() - STALE_AFTER_MS)
}

async fn drop_stale_streams(nats_url: &str) {
    use futures::StreamExt;
    let Ok(client) = async_nats::connect(nats_url).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for n in names {
        let lower = n.to_lowercase();
        let prefix = lower
            .strip_suffix("_events")
            .or_else(|| lower.strip_suffix("_dlq"))
            .unwrap_or("");
        if prefix.starts_with("t_") && stale(prefix) {
            let _ = js.delete_stream(&n).await;
        }
    }
}

async fn drop_stale_databases(conn: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for n in names {
        if stale(&n) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced_keeping_the_query() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }
}
