//! Everything the simulated WeChat remembers, behind one `std::sync::Mutex`.
//!
//! One lock for all of it makes each call atomic: the fault decision, the work and the counters
//! happen together, so a quota of 3 lets exactly 3 concurrent sends through. No work here waits
//! on anything, and the lock is never held across an `.await` (added latency is slept after the
//! lock is released, in `api`). The methods on [`SimState`] are the control operations; the
//! `/sim/` routes are a thin HTTP skin over them, and in-process tests may call them directly.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::codes::CodeBook;
use crate::config::{margin_for, SimConfig};
use crate::faults::{Calls, Endpoint, Fault, Faults};
use crate::ids;
use crate::subscriptions::{SentMessage, Subscriptions, Template};
use crate::tokens::Tokens;

/// A phone number a phone code stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phone {
    /// Without `+`, e.g. `86`.
    pub country_code: String,
    /// The national number, e.g. `13800138000`.
    pub number: String,
}

impl Phone {
    pub const MAINLAND: &'static str = "86";

    pub fn mainland(number: impl Into<String>) -> Self {
        Self {
            country_code: Self::MAINLAND.to_string(),
            number: number.into(),
        }
    }
}

/// A control operation that cannot be done, with the reason in words.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
}

/// The mutable world: one per simulator.
#[derive(Debug)]
pub struct Inner {
    pub config: SimConfig,
    pub tokens: Tokens,
    /// Login code → openid.
    pub logins: CodeBook<String>,
    pub phones: CodeBook<Phone>,
    pub subscriptions: Subscriptions,
    pub faults: Faults,
    pub calls: Calls,
}

impl Inner {
    fn new(config: SimConfig) -> Self {
        Self {
            config,
            tokens: Tokens::default(),
            logins: CodeBook::default(),
            phones: CodeBook::default(),
            subscriptions: Subscriptions::default(),
            faults: Faults::default(),
            calls: Calls::default(),
        }
    }
}

/// The lifetimes as the control API shows and takes them, in seconds (fractions allowed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetimes {
    pub code_ttl_secs: Option<f64>,
    pub classic_token_ttl_secs: Option<f64>,
    pub classic_overlap_secs: Option<f64>,
    pub stable_token_ttl_secs: Option<f64>,
    pub stable_renew_before_secs: Option<f64>,
}

/// The simulator's state, cheap to clone (it is the axum state).
#[derive(Clone, Debug)]
pub struct SimState {
    inner: Arc<Mutex<Inner>>,
    /// Sends the message pushes (outside the lock: it posts over HTTP).
    pub pusher: crate::push::Pusher,
    /// What `reset` goes back to.
    startup: Arc<SimConfig>,
}

impl SimState {
    pub fn new(config: SimConfig) -> Self {
        let target = config.push.as_ref().and_then(|p| p.target().ok());
        Self {
            pusher: crate::push::Pusher::new(&config.app_id, target),
            inner: Arc::new(Mutex::new(Inner::new(config.clone()))),
            startup: Arc::new(config),
        }
    }

    /// The lock. A panic while holding it cannot leave WeChat's rules half-applied in a way
    /// worth refusing service for, so a poisoned lock is simply taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The configuration in force (lifetimes may have been changed at run time).
    pub fn config(&self) -> SimConfig {
        self.lock().config.clone()
    }

    /// A login code that will log in as `openid` (a random openid when `None`).
    pub fn mint_login_code(&self, openid: Option<&str>) -> Result<(String, String), SimError> {
        let openid = match openid {
            Some(o) if ids::is_openid_shaped(o) => o.to_string(),
            Some(o) => {
                return Err(SimError::Invalid(format!(
                    "openid {o:?} is not 1 to 64 characters of A-Z a-z 0-9 - _"
                )))
            }
            None => ids::openid_for_code(&ids::login_code()),
        };
        let code = ids::login_code();
        self.lock()
            .logins
            .mint(code.clone(), openid.clone(), Instant::now());
        Ok((code, openid))
    }

    /// A phone code that will give `phone`.
    pub fn mint_phone_code(&self, phone: Phone) -> Result<String, SimError> {
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(&phone.number, 15) || !digits(&phone.country_code, 4) {
            return Err(SimError::Invalid(
                "phone is 1 to 15 digits and country_code 1 to 4 digits, both without + or spaces"
                    .into(),
            ));
        }
        let code = ids::phone_code();
        self.lock().phones.mint(code.clone(), phone, Instant::now());
        Ok(code)
    }

    /// What a user's accept of `template_id` does: `count` more sends allowed. Returns the
    /// credits now left.
    pub fn grant_credits(
        &self,
        openid: &str,
        template_id: &str,
        count: u64,
    ) -> Result<u64, SimError> {
        if !ids::is_openid_shaped(openid) {
            return Err(SimError::Invalid(format!(
                "openid {openid:?} is not a possible openid"
            )));
        }
        let mut inner = self.lock();
        if inner.subscriptions.template(template_id).is_none() {
            return Err(SimError::NotFound(format!(
                "template {template_id:?} is not registered (POST /sim/templates)"
            )));
        }
        let left = inner.subscriptions.grant(openid, template_id, count);
        drop(inner);
        self.pusher.accepted(openid, template_id, count);
        Ok(left)
    }

    /// The user turned `template_id` off in the mini-program's settings: no credit is usable
    /// any more (sends answer 43101) and the change is pushed.
    pub fn turn_off(&self, openid: &str, template_id: &str) -> Result<(), SimError> {
        let mut inner = self.lock();
        if inner.subscriptions.template(template_id).is_none() {
            return Err(SimError::NotFound(format!(
                "template {template_id:?} is not registered"
            )));
        }
        inner.subscriptions.turn_off(openid, template_id);
        drop(inner);
        self.pusher.turned_off(openid, template_id);
        Ok(())
    }

    /// Credits left for (openid, template) and whether the template is long-term.
    pub fn credits(&self, openid: &str, template_id: &str) -> Result<(u64, bool), SimError> {
        let inner = self.lock();
        let template = inner.subscriptions.template(template_id).ok_or_else(|| {
            SimError::NotFound(format!("template {template_id:?} is not registered"))
        })?;
        Ok((
            inner.subscriptions.credits(openid, template_id),
            template.long_term,
        ))
    }

    pub fn register_template(&self, template: Template) -> Result<(), SimError> {
        if let Some(problem) = template.problem() {
            return Err(SimError::Invalid(problem));
        }
        self.lock().subscriptions.register(template);
        Ok(())
    }

    pub fn templates(&self) -> Vec<Template> {
        self.lock().subscriptions.templates()
    }

    /// Accepted subscribe messages, oldest first, to one user or all.
    pub fn messages(&self, touser: Option<&str>) -> Vec<SentMessage> {
        self.lock().subscriptions.sent(touser)
    }

    pub fn calls(&self) -> Calls {
        self.lock().calls.clone()
    }

    pub fn set_fault(&self, endpoint: Endpoint, fault: Fault) {
        self.lock().faults.set(endpoint, fault);
    }

    pub fn clear_faults(&self, endpoint: Option<Endpoint>) {
        self.lock().faults.clear(endpoint);
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.list()
    }

    /// Every issued token reaches its lifetime now; returns how many were still valid.
    pub fn expire_tokens(&self) -> usize {
        self.lock().tokens.expire_all(Instant::now())
    }

    /// The lifetimes in force.
    pub fn lifetimes(&self) -> Lifetimes {
        lifetimes_of(&self.lock().config)
    }

    /// Change lifetimes for what is issued from now on. A token lifetime given without its
    /// margin shrinks the margin to a quarter of it, as at start.
    pub fn set_lifetimes(&self, update: &Lifetimes) -> Result<Lifetimes, SimError> {
        let secs =
            |name: &str, v: Option<f64>, zero_ok: bool| -> Result<Option<Duration>, SimError> {
                match v {
                    None => Ok(None),
                    Some(s) if s.is_finite() && (s > 0.0 || (zero_ok && s == 0.0)) && s < 1e9 => {
                        Ok(Some(Duration::from_secs_f64(s)))
                    }
                    Some(s) => Err(SimError::Invalid(format!("{name} {s} is out of range"))),
                }
            };
        let code_ttl = secs("code_ttl_secs", update.code_ttl_secs, false)?;
        let classic_ttl = secs(
            "classic_token_ttl_secs",
            update.classic_token_ttl_secs,
            false,
        )?;
        let overlap = secs("classic_overlap_secs", update.classic_overlap_secs, true)?;
        let stable_ttl = secs("stable_token_ttl_secs", update.stable_token_ttl_secs, false)?;
        let renew = secs(
            "stable_renew_before_secs",
            update.stable_renew_before_secs,
            true,
        )?;

        let mut inner = self.lock();
        let c = &mut inner.config;
        if let Some(d) = code_ttl {
            c.code_ttl = d;
        }
        if let Some(d) = classic_ttl {
            c.classic_token_ttl = d;
            c.classic_overlap = self.startup.classic_overlap.min(margin_for(d));
        }
        if let Some(d) = overlap {
            c.classic_overlap = d;
        }
        if let Some(d) = stable_ttl {
            c.stable_token_ttl = d;
            c.stable_renew_before = self.startup.stable_renew_before.min(margin_for(d));
        }
        if let Some(d) = renew {
            c.stable_renew_before = d;
        }
        Ok(lifetimes_of(c))
    }

    /// Forget everything (codes, tokens, credits, templates but the default, messages, faults,
    /// counters) and go back to the configuration the simulator started with.
    pub fn reset(&self) {
        *self.lock() = Inner::new((*self.startup).clone());
        self.pusher
            .set_target(self.startup.push.as_ref().and_then(|p| p.target().ok()));
        self.pusher.forget();
    }
}

fn lifetimes_of(c: &SimConfig) -> Lifetimes {
    Lifetimes {
        code_ttl_secs: Some(c.code_ttl.as_secs_f64()),
        classic_token_ttl_secs: Some(c.classic_token_ttl.as_secs_f64()),
        classic_overlap_secs: Some(c.classic_overlap.as_secs_f64()),
        stable_token_ttl_secs: Some(c.stable_token_ttl.as_secs_f64()),
        stable_renew_before_secs: Some(c.stable_renew_before.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_token_lifetime_shrinks_its_margin_unless_given() {
        let state = SimState::new(SimConfig::default());
        let got = state
            .set_lifetimes(&Lifetimes {
                stable_token_ttl_secs: Some(4.0),
                ..Lifetimes::default()
            })
            .unwrap();
        assert_eq!(got.stable_renew_before_secs, Some(1.0));
        assert_eq!(got.classic_overlap_secs, Some(300.0));
        let got = state
            .set_lifetimes(&Lifetimes {
                classic_token_ttl_secs: Some(10.0),
                classic_overlap_secs: Some(0.5),
                ..Lifetimes::default()
            })
            .unwrap();
        assert_eq!(got.classic_overlap_secs, Some(0.5));
        assert!(state
            .set_lifetimes(&Lifetimes {
                code_ttl_secs: Some(-1.0),
                ..Lifetimes::default()
            })
            .is_err());
        state.reset();
        assert_eq!(state.config(), SimConfig::default());
    }

    #[test]
    fn credits_need_a_registered_template() {
        let state = SimState::new(SimConfig::default());
        assert!(matches!(
            state.grant_credits("oA", "nope", 1),
            Err(SimError::NotFound(_))
        ));
        assert!(matches!(
            state.grant_credits("not an openid", ande_wechat::DEV_TEMPLATE_ID, 1),
            Err(SimError::Invalid(_))
        ));
        assert_eq!(
            state.grant_credits("oA", ande_wechat::DEV_TEMPLATE_ID, 2),
            Ok(2)
        );
        assert_eq!(
            state.credits("oA", ande_wechat::DEV_TEMPLATE_ID),
            Ok((2, false))
        );
    }
}
