//! One-time codes: the login code of `wx.login()` and the code of the phone-number button.
//!
//! Both are single use and live 5 minutes. A code the simulator has never seen is taken as
//! freshly minted by the mini-program, so a client (or a developer with curl) needs no setup;
//! its value is derived from the code by the caller. Tests that need a particular user or phone
//! mint a code for it first. Seen codes are remembered until reset, so that an expired code
//! stays expired instead of turning into a new one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What redeeming a code gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redeemed<T> {
    Fresh(T),
    Used,
    Expired,
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    created: Instant,
    used: bool,
}

/// Codes and what they stand for.
#[derive(Debug)]
pub struct CodeBook<T> {
    entries: HashMap<String, Entry<T>>,
}

impl<T> Default for CodeBook<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<T: Clone> CodeBook<T> {
    /// Remember `code` as minted now for `value`.
    pub fn mint(&mut self, code: String, value: T, now: Instant) {
        self.entries.insert(
            code,
            Entry {
                value,
                created: now,
                used: false,
            },
        );
    }

    /// Use `code` once. An unseen code is valid, standing for `derive(code)`.
    pub fn redeem(
        &mut self,
        code: &str,
        ttl: Duration,
        now: Instant,
        derive: impl FnOnce(&str) -> T,
    ) -> Redeemed<T> {
        let Some(entry) = self.entries.get_mut(code) else {
            let value = derive(code);
            self.entries.insert(
                code.to_string(),
                Entry {
                    value: value.clone(),
                    created: now,
                    used: true,
                },
            );
            return Redeemed::Fresh(value);
        };
        if now.duration_since(entry.created) >= ttl {
            Redeemed::Expired
        } else if entry.used {
            Redeemed::Used
        } else {
            entry.used = true;
            Redeemed::Fresh(entry.value.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn an_unseen_code_is_valid_once() {
        let (mut book, t0) = (CodeBook::default(), Instant::now());
        let derive = |c: &str| c.to_uppercase();
        assert_eq!(
            book.redeem("abc", TTL, t0, derive),
            Redeemed::Fresh("ABC".to_string())
        );
        assert_eq!(book.redeem("abc", TTL, t0, derive), Redeemed::Used);
        assert_eq!(book.redeem("abc", TTL, t0 + TTL, derive), Redeemed::Expired);
    }

    #[test]
    fn a_minted_code_expires_after_its_ttl_even_unused() {
        let (mut book, t0) = (CodeBook::default(), Instant::now());
        book.mint("m".into(), 7, t0);
        book.mint("n".into(), 8, t0);
        assert_eq!(
            book.redeem("m", TTL, t0 + TTL - Duration::from_millis(1), |_| 0),
            Redeemed::Fresh(7)
        );
        assert_eq!(book.redeem("n", TTL, t0 + TTL, |_| 0), Redeemed::Expired);
    }
}
