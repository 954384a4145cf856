//! Postgres for one service: a pool whose connections see only the service's own schema.
//!
//! Each service owns a schema (`leads`, `notifier`, `gateway`) and its migrations. The pool sets
//! `search_path` to that schema, so migrations create unqualified tables there and sqlx's own
//! `_sqlx_migrations` bookkeeping is per service too: services sharing one database never trip
//! over each other's migration history.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// How long to wait for a connection from the pool before the caller sees an error (and, for a
/// consumer, backs off and retries): short, so an unreachable Postgres is noticed quickly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Postgres `statement_timeout`, in milliseconds.
const STATEMENT_TIMEOUT_MS: &str = "10000";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid Postgres URL")]
    BadUrl,
    #[error("cannot reach Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating schema {schema}: {source}")]
    Migrate {
        schema: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error(
        "schema {schema} lacks migrations this binary needs ({missing}): run `andectl migrate` \
         (ANDE_MIGRATIONS=check leaves migrating to it)"
    )]
    SchemaBehind { schema: String, missing: String },
    #[error(
        "schema {schema}: migration {version} differs from the one this binary was built with"
    )]
    SchemaChanged { schema: String, version: i64 },
}

/// What a service does with its migrations at start (`ANDE_MIGRATIONS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrations {
    /// Apply what is missing (one process or `andectl up`: the default).
    Apply,
    /// Apply nothing; refuse to start on a schema that lacks one of this binary's migrations
    /// (a deployment that runs `andectl migrate` as a step of its own, e.g. a Kubernetes Job).
    Check,
}

/// Connect to `schema` (created if missing) and apply `migrations` to it.
pub async fn connect(
    url: &SecretString,
    schema: &str,
    max_connections: u32,
    migrations: &Migrator,
) -> Result<PgPool, DbError> {
    connect_with(url, schema, max_connections, migrations, Migrations::Apply).await
}

/// [`connect`], applying or only checking the migrations as `mode` says.
///
/// Either way a schema *ahead* of the binary (migrations it does not know, all applied after its
/// own) is accepted: that is a one-version rollback, and migrations are written to be additive
/// (new tables, new nullable columns, new indexes), so the older binary still works on it.
pub async fn connect_with(
    url: &SecretString,
    schema: &str,
    max_connections: u32,
    migrations: &Migrator,
    mode: Migrations,
) -> Result<PgPool, DbError> {
    let base = PgConnectOptions::from_str(url.expose_secret()).map_err(|_| DbError::BadUrl)?;
    // CREATE SCHEMA IF NOT EXISTS can race with another process doing the same; the loser's
    // duplicate error is harmless.
    let mut conn = base.clone().connect().await.map_err(DbError::Connect)?;
    // Dynamic: the schema is the service's (a fixed name from its code, quoted), not input.
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
    )))
    .execute(&mut conn)
    .await
    {
        let dup = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "23505" || c == "42P06");
        if !dup {
            return Err(DbError::Connect(e));
        }
    }
    drop(conn);
    // A statement that runs longer than this is cancelled (and the caller retries): a hung
    // connection must not hold a consumer's batch past its ack deadline.
    let opts = base.options([
        ("search_path", schema),
        ("statement_timeout", STATEMENT_TIMEOUT_MS),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(opts)
        .await
        .map_err(DbError::Connect)?;
    match mode {
        Migrations::Apply => {
            tolerant(migrations)
                .run(&pool)
                .await
                .map_err(|source| DbError::Migrate {
                    schema: schema.into(),
                    source,
                })?
        }
        Migrations::Check => check(&pool, schema, migrations).await?,
    }
    Ok(pool)
}

/// `migrations`, accepting applied migrations it does not know (a rollback: see
/// [`connect_with`]).
fn tolerant(migrations: &Migrator) -> Migrator {
    Migrator {
        migrations: migrations.migrations.clone(),
        ignore_missing: true,
        locking: migrations.locking,
        no_tx: migrations.no_tx,
        table_name: migrations.table_name.clone(),
        create_schemas: migrations.create_schemas.clone(),
    }
}

/// Every migration of this binary is applied, unchanged.
async fn check(pool: &PgPool, schema: &str, migrations: &Migrator) -> Result<(), DbError> {
    // The bookkeeping table sqlx writes (the migrator's name for it, a constant of our code).
    let table = &migrations.table_name;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table.as_ref())
        .fetch_one(pool)
        .await
        .map_err(DbError::Connect)?;
    let applied: Vec<(i64, Vec<u8>)> = if exists {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, checksum FROM {table} WHERE success"
        )))
        .fetch_all(pool)
        .await
        .map_err(DbError::Connect)?
    } else {
        Vec::new()
    };
    let mut missing = Vec::new();
    for m in migrations
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        match applied.iter().find(|(v, _)| *v == m.version) {
            None => missing.push(m.version.to_string()),
            Some((_, sum)) if sum.as_slice() != &*m.checksum => {
                return Err(DbError::SchemaChanged {
                    schema: schema.into(),
                    version: m.version,
                })
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(DbError::SchemaBehind {
            schema: schema.into(),
            missing: missing.join(", "),
        });
    }
    Ok(())
}

/// True when an error means Postgres could not be reached or the connection broke (retry
/// later), rather than a problem with the statement or the data.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08xxx connection exceptions, 53xxx insufficient resources (too many connections),
            // 57P0x shutdown / cannot connect now, 55000 database not accepting connections,
            // 57014 statement timeout, 40001 serialization failure, 40P01 deadlock: all worth
            // retrying.
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "57014"
                || c == "55000"
                || c == "40001"
                || c == "40P01"
                || c == "55P03"
        }),
        _ => false,
    }
}

/// True when Postgres itself is out of reach (down, restarting, the connection broke, no
/// connection free): nothing about the message is wrong, so a consumer retries the same batch
/// for as long as it takes.
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    is_unavailable(e) && !is_contention(e)
}

/// A failure of this attempt that may or may not recur: a statement timeout, a serialization
/// failure, a deadlock, a lock not available. Usually load; but a message whose own work always
/// takes too long fails this way every time, so a consumer retries it a bounded number of times
/// and then dead-letters it instead of stalling on it.
pub fn is_contention(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| ["57014", "40001", "40P01", "55P03"].contains(&c.as_ref()))
}

/// Is this a unique-constraint violation (for 409 answers and idempotent inserts)?
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}
