//! Fixed-window rate limits per key (client IP, openid), kept in a bounded moka cache so memory
//! stays flat whatever the number of clients. One gateway process counts its own requests; with
//! several behind a balancer each allows the configured rate (good enough against floods).

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

const WINDOW: Duration = Duration::from_secs(60);
const MAX_KEYS: u64 = 100_000;

/// Keyed by `K`: a `String` (an openid, a named quota) or an address (no allocation per request).
#[derive(Clone)]
pub struct RateLimiter<K = String> {
    limit: u32,
    windows: Cache<K, Arc<(Instant, AtomicU32)>>,
}

impl<K: Hash + Eq + Send + Sync + 'static> RateLimiter<K> {
    pub fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            windows: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(WINDOW)
                .build(),
        }
    }

    /// `Ok` if allowed, else the seconds until the window resets (for Retry-After).
    pub fn check<Q>(&self, key: &Q) -> Result<(), u64>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        // A known key is looked up borrowed: the owned copy is made only for a new one.
        let w = self.windows.get(key).unwrap_or_else(|| {
            self.windows.get_with(key.to_owned(), || {
                Arc::new((Instant::now(), AtomicU32::new(0)))
            })
        });
        let n = w.1.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= self.limit {
            Ok(())
        } else {
            Err(WINDOW.saturating_sub(w.0.elapsed()).as_secs().max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_then_refuses_with_a_wait() {
        let l: RateLimiter = RateLimiter::per_minute(3);
        assert!((0..3).all(|_| l.check("a").is_ok()));
        let wait = l.check("a").unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(l.check("b").is_ok(), "keys are independent");
    }
}
