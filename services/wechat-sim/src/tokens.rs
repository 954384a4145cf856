//! Access tokens, classic and stable, and the rules by which each goes bad.
//!
//! This is where the simulator earns its keep: the production failures of WeChat clients are
//! token failures (a second process calling `/cgi-bin/token` and silently invalidating the first
//! one's token; a cache that trusts `expires_in` too long; a force refresh in a cluster). So the
//! two families behave exactly as WeChat documents and never see each other:
//!
//! - classic (`GET /cgi-bin/token`): every call issues a new token; the previous one stays valid
//!   for `classic_overlap`, after which it answers 40001 ("not latest");
//! - stable (`POST /cgi-bin/stable_token`): the same token while it is valid, a new one from
//!   `stable_renew_before` before expiry with both valid until the old one expires; force mode
//!   revokes every stable token at once and is rationed (20 a day, 30 s apart).
//!
//! A token that reached its lifetime answers 42001; one revoked before that answers 40001; one the
//! simulator never issued answers 40001. Time is passed in, so the rules are unit-tested without
//! sleeping.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::SimConfig;
use crate::ids;
use crate::wire::{errcode, WxError};

/// Force refreshes allowed in any 24 hours; the next answers 45009.
pub const FORCE_REFRESH_PER_DAY: usize = 20;
/// Least time between two force refreshes; a closer one answers 45011.
pub const FORCE_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

/// Which endpoint issued a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Classic,
    Stable,
}

/// A token as the endpoints answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub access_token: String,
    /// Whole seconds of life left.
    pub expires_in: u64,
}

#[derive(Debug)]
struct Record {
    kind: Kind,
    expires_at: Instant,
    /// When the token was (or will be) invalidated before its lifetime was up.
    revoked_at: Option<Instant>,
}

impl Record {
    fn dead_at(&self) -> Instant {
        self.revoked_at
            .map_or(self.expires_at, |r| r.min(self.expires_at))
    }

    fn is_alive(&self, now: Instant) -> bool {
        now < self.dead_at()
    }

    fn revoke(&mut self, at: Instant) {
        self.revoked_at = Some(self.revoked_at.map_or(at, |r| r.min(at)));
    }
}

/// Every token the simulator issued, and which one each family currently hands out.
#[derive(Debug, Default)]
pub struct Tokens {
    records: HashMap<String, Record>,
    classic_current: Option<String>,
    stable_current: Option<String>,
    /// When the force refreshes of the last 24 hours happened, oldest first.
    forced: VecDeque<Instant>,
}

impl Tokens {
    /// Whether `token` may call an API now, and which family it belongs to.
    pub fn check(&self, token: &str, now: Instant) -> Result<Kind, WxError> {
        let Some(record) = self.records.get(token) else {
            return Err(WxError::of(errcode::INVALID_CREDENTIAL));
        };
        if record.is_alive(now) {
            return Ok(record.kind);
        }
        match record.revoked_at {
            Some(revoked) if revoked < record.expires_at => {
                Err(WxError::of(errcode::INVALID_CREDENTIAL))
            }
            _ => Err(WxError::of(errcode::ACCESS_TOKEN_EXPIRED)),
        }
    }

    /// `GET /cgi-bin/token`: a new token; the previous one lives on for the overlap only.
    pub fn classic(&mut self, config: &SimConfig, now: Instant) -> Issued {
        if let Some(previous) = self.classic_current.take() {
            if let Some(record) = self.records.get_mut(&previous) {
                record.revoke(now + config.classic_overlap);
            }
        }
        let token = self.issue(Kind::Classic, config.classic_token_ttl, now);
        self.classic_current = Some(token.clone());
        Issued {
            access_token: token,
            expires_in: config.classic_token_ttl.as_secs(),
        }
    }

    /// `POST /cgi-bin/stable_token`.
    pub fn stable(
        &mut self,
        config: &SimConfig,
        force_refresh: bool,
        now: Instant,
    ) -> Result<Issued, WxError> {
        if force_refresh {
            self.ration_force_refresh(now)?;
            for record in self.records.values_mut() {
                if record.kind == Kind::Stable && record.is_alive(now) {
                    record.revoke(now);
                }
            }
            self.stable_current = None;
        }
        if let Some(current) = &self.stable_current {
            if let Some(record) = self.records.get(current).filter(|r| r.is_alive(now)) {
                let left = record.dead_at() - now;
                if left > config.stable_renew_before {
                    return Ok(Issued {
                        access_token: current.clone(),
                        expires_in: left.as_secs(),
                    });
                }
            }
        }
        // None yet, dead, or inside the renewal window: the old one (if any) keeps its lifetime.
        let token = self.issue(Kind::Stable, config.stable_token_ttl, now);
        self.stable_current = Some(token.clone());
        Ok(Issued {
            access_token: token,
            expires_in: config.stable_token_ttl.as_secs(),
        })
    }

    /// Make every issued token reach its lifetime now (42001 from here on); returns how many
    /// were still valid.
    pub fn expire_all(&mut self, now: Instant) -> usize {
        let mut alive = 0;
        for record in self.records.values_mut() {
            if record.is_alive(now) {
                alive += 1;
            }
            record.expires_at = record.expires_at.min(now);
        }
        alive
    }

    fn issue(&mut self, kind: Kind, ttl: Duration, now: Instant) -> String {
        let token = ids::access_token();
        self.records.insert(
            token.clone(),
            Record {
                kind,
                expires_at: now + ttl,
                revoked_at: None,
            },
        );
        token
    }

    fn ration_force_refresh(&mut self, now: Instant) -> Result<(), WxError> {
        while self
            .forced
            .front()
            .is_some_and(|&t| now.duration_since(t) >= DAY)
        {
            self.forced.pop_front();
        }
        if self.forced.len() >= FORCE_REFRESH_PER_DAY {
            return Err(WxError::of(errcode::DAILY_QUOTA));
        }
        if self
            .forced
            .back()
            .is_some_and(|&t| now.duration_since(t) < FORCE_REFRESH_MIN_INTERVAL)
        {
            return Err(WxError::of(errcode::MINUTE_QUOTA));
        }
        self.forced.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SimConfig {
        SimConfig::default()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn code(r: Result<Kind, WxError>) -> i64 {
        r.map_or_else(|e| e.errcode, |_| 0)
    }

    #[test]
    fn a_classic_call_invalidates_the_previous_token_after_the_overlap() {
        let (mut t, c, t0) = (Tokens::default(), config(), Instant::now());
        let first = t.classic(&c, t0);
        assert_eq!(first.expires_in, 7200);
        let second = t.classic(&c, t0 + secs(10));
        assert_ne!(first.access_token, second.access_token);
        assert_eq!(code(t.check(&first.access_token, t0 + secs(309))), 0);
        assert_eq!(code(t.check(&first.access_token, t0 + secs(310))), 40001);
        assert_eq!(code(t.check(&second.access_token, t0 + secs(7209))), 0);
        assert_eq!(code(t.check(&second.access_token, t0 + secs(7210))), 42001);
    }

    #[test]
    fn a_stable_token_is_the_same_until_renewal_then_both_are_valid() {
        let (mut t, c, t0) = (Tokens::default(), config(), Instant::now());
        let first = t.stable(&c, false, t0).unwrap();
        let again = t.stable(&c, false, t0 + secs(1000)).unwrap();
        assert_eq!(again.access_token, first.access_token);
        assert_eq!(again.expires_in, 6200);

        let renewed = t.stable(&c, false, t0 + secs(6900)).unwrap();
        assert_ne!(renewed.access_token, first.access_token);
        assert_eq!(renewed.expires_in, 7200);
        assert_eq!(code(t.check(&first.access_token, t0 + secs(7199))), 0);
        assert_eq!(code(t.check(&renewed.access_token, t0 + secs(7199))), 0);
        assert_eq!(code(t.check(&first.access_token, t0 + secs(7200))), 42001);
        let later = t.stable(&c, false, t0 + secs(7000)).unwrap();
        assert_eq!(later.access_token, renewed.access_token);
    }

    #[test]
    fn stable_expires_in_never_drops_below_the_renewal_margin() {
        let (mut t, c, t0) = (Tokens::default(), config(), Instant::now());
        for s in (0..30_000).step_by(97) {
            let issued = t.stable(&c, false, t0 + secs(s)).unwrap();
            assert!(issued.expires_in >= 300, "at {s}s: {}", issued.expires_in);
        }
    }

    #[test]
    fn classic_and_stable_are_isolated() {
        let (mut t, c, t0) = (Tokens::default(), config(), Instant::now());
        let stable = t.stable(&c, false, t0).unwrap();
        let classic = t.classic(&c, t0);
        t.classic(&c, t0 + secs(1));
        t.classic(&c, t0 + secs(2));
        assert_eq!(code(t.check(&stable.access_token, t0 + secs(1000))), 0);
        assert_eq!(
            t.stable(&c, false, t0 + secs(1000)).unwrap().access_token,
            stable.access_token
        );
        t.stable(&c, true, t0 + secs(1001)).unwrap();
        assert_eq!(code(t.check(&classic.access_token, t0 + secs(200))), 0);
    }

    #[test]
    fn force_refresh_revokes_at_once_and_is_rationed() {
        let (mut t, c, t0) = (Tokens::default(), config(), Instant::now());
        let first = t.stable(&c, false, t0).unwrap();
        let forced = t.stable(&c, true, t0 + secs(1)).unwrap();
        assert_ne!(forced.access_token, first.access_token);
        assert_eq!(code(t.check(&first.access_token, t0 + secs(1))), 40001);
        assert_eq!(
            t.stable(&c, true, t0 + secs(20)).unwrap_err().errcode,
            45011
        );

        let mut at = t0 + secs(1);
        for _ in 1..FORCE_REFRESH_PER_DAY {
            at += secs(31);
            t.stable(&c, true, at).unwrap();
        }
        assert_eq!(
            t.stable(&c, true, at + secs(31)).unwrap_err().errcode,
            45009
        );
        assert!(t.stable(&c, true, t0 + secs(1) + DAY).is_ok());
    }

    #[test]
    fn unknown_tokens_are_40001_and_expire_all_makes_42001() {
        let (mut t, c, t0) = (Tokens::default(), config(), Instant::now());
        assert_eq!(code(t.check("nope", t0)), 40001);
        let a = t.classic(&c, t0);
        let b = t.stable(&c, false, t0).unwrap();
        assert_eq!(t.expire_all(t0 + secs(1)), 2);
        assert_eq!(code(t.check(&a.access_token, t0 + secs(1))), 42001);
        assert_eq!(code(t.check(&b.access_token, t0 + secs(1))), 42001);
        let fresh = t.stable(&c, false, t0 + secs(2)).unwrap();
        assert_ne!(fresh.access_token, b.access_token);
    }
}
