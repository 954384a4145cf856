//! Staff login throttling that an attacker cannot turn against everyone.
//!
//! - Each client (address, IPv6 /64) may try [`PER_CLIENT_PER_MINUTE`] logins a minute.
//! - Failures are counted per (account, client): after [`FREE_FAILURES`] that client waits
//!   2, 4, 8 … seconds (at most [`MAX_LOCK`]) before it may try that account again. Other
//!   clients are not affected, so a flood from one place cannot lock a colleague out.
//! - At most [`MAX_CONCURRENT`] password checks run at once (argon2: ~19 MiB and tens of ms
//!   each); a login waits up to [`QUEUE_WAIT`] for its turn rather than being refused at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use moka::sync::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::limits::RateLimiter;

pub const PER_CLIENT_PER_MINUTE: u32 = 20;
pub const FREE_FAILURES: u32 = 5;
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
const MAX_CONCURRENT: usize = 4;
const QUEUE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct LoginGuard {
    per_client: RateLimiter,
    failures: Cache<String, (u32, Instant)>,
    permits: Arc<Semaphore>,
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self {
            per_client: RateLimiter::per_minute(PER_CLIENT_PER_MINUTE),
            failures: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(MAX_LOCK * 2)
                .build(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        }
    }
}

fn too_many(message: &str, wait: u64) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(wait.max(1))
}

fn key(username: &str, client: &str) -> String {
    format!("{username}\u{0}{client}")
}

impl LoginGuard {
    /// May `client` try `username` now? Holds a password-check slot while the answer lives.
    pub async fn admit(
        &self,
        username: &str,
        client: &str,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        self.per_client
            .check(client)
            .map_err(|wait| too_many("too many logins from this client; slow down", wait))?;
        if let Some((n, last)) = self.failures.get(&key(username, client)) {
            let lock = lock_for(n);
            let waited = last.elapsed();
            if waited < lock {
                let wait = (lock - waited).as_secs() + 1;
                return Err(too_many(
                    "too many failed logins for this account from here; wait",
                    wait,
                ));
            }
        }
        tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| too_many("too many logins at once; retry in a moment", 1))?
            .map_err(|_| too_many("logins are closed", 1))
    }

    pub fn failed(&self, username: &str, client: &str) {
        let k = key(username, client);
        let n = self.failures.get(&k).map_or(0, |(n, _)| n) + 1;
        self.failures.insert(k, (n, Instant::now()));
    }

    pub fn succeeded(&self, username: &str, client: &str) {
        self.failures.invalidate(&key(username, client));
    }
}

/// How long a client waits after `failures` failed logins on one account.
fn lock_for(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (failures - FREE_FAILURES + 1).min(20);
    Duration::from_secs(1u64 << exp).min(MAX_LOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_after_the_free_failures_and_is_capped() {
        assert_eq!(lock_for(4), Duration::ZERO);
        assert_eq!(lock_for(5), Duration::from_secs(2));
        assert_eq!(lock_for(6), Duration::from_secs(4));
        assert_eq!(lock_for(40), MAX_LOCK);
    }

    #[tokio::test]
    async fn failures_lock_one_client_out_of_one_account_only() {
        let g = LoginGuard::default();
        for _ in 0..FREE_FAILURES {
            drop(g.admit("ops", "a").await.unwrap());
            g.failed("ops", "a");
        }
        assert!(g.admit("ops", "a").await.is_err(), "client a waits");
        assert!(g.admit("ops", "b").await.is_ok(), "client b does not");
        assert!(
            g.admit("alice", "a").await.is_ok(),
            "another account does not"
        );
        g.succeeded("ops", "a");
        assert!(g.admit("ops", "a").await.is_ok());
    }
}
