//! How long personal data is kept, and the hourly job each service runs to forget what is older.
//!
//! The policy (README, "Personal data"): a lead (the CRM's record of a customer) stays until
//! staff remove it; everything recorded along the way is kept only as long as it helps to
//! operate and debug the system: the actions behind leads ([`ANDE_RETENTION_ACTIONS`]), the
//! notifications with their delivery log ([`ANDE_RETENTION_NOTIFICATIONS`]), idempotency keys
//! ([`ANDE_RETENTION_IDEMPOTENCY_KEYS`]), dead letters ([`ANDE_RETENTION_DLQ`], the DLQ stream's
//! age limit) and events (`ANDE_EVENT_MAX_AGE`, the event stream's age limit).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env};

pub const ANDE_RETENTION_ACTIONS: &str = "ANDE_RETENTION_ACTIONS";
pub const ANDE_RETENTION_NOTIFICATIONS: &str = "ANDE_RETENTION_NOTIFICATIONS";
pub const ANDE_RETENTION_IDEMPOTENCY_KEYS: &str = "ANDE_RETENTION_IDEMPOTENCY_KEYS";
pub const ANDE_RETENTION_DLQ: &str = "ANDE_RETENTION_DLQ";

const DAY: u64 = 86_400;

/// The ages after which each kind of record is forgotten.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub actions: Duration,
    pub notifications: Duration,
    pub idempotency_keys: Duration,
    pub dead_letters: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            actions: Duration::from_secs(365 * DAY),
            notifications: Duration::from_secs(90 * DAY),
            idempotency_keys: Duration::from_secs(7 * DAY),
            dead_letters: Duration::from_secs(90 * DAY),
        }
    }
}

impl Retention {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            actions: env.duration(ANDE_RETENTION_ACTIONS, d.actions)?,
            notifications: env.duration(ANDE_RETENTION_NOTIFICATIONS, d.notifications)?,
            idempotency_keys: env.duration(ANDE_RETENTION_IDEMPOTENCY_KEYS, d.idempotency_keys)?,
            dead_letters: env.duration(ANDE_RETENTION_DLQ, d.dead_letters)?,
        })
    }
}

/// An age as seconds for SQL (`now() - make_interval(secs => $1)`).
pub fn secs(age: Duration) -> f64 {
    age.as_secs_f64()
}

/// How often the purge runs.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Run `purge` now and every [`EVERY`] until shutdown, logging how many rows it forgot. Every
/// process of a service may run it: the deletes are idempotent.
pub async fn purge_hourly<F, Fut>(what: &'static str, shutdown: CancellationToken, mut purge: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    loop {
        match purge().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, what, "old records forgotten"),
            Err(e) => tracing::warn!(error = %e, what, "cannot purge old records"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
