//! Injected faults and call counters, per WeChat endpoint.
//!
//! The clients' hard paths (retry on `-1`, back off on 45009, time out on a slow answer, refresh
//! on 40001) never happen against a healthy simulator, so tests switch faults on: an errcode for
//! a fraction of calls, added latency, a quota of successful calls, each optionally for a number
//! of calls only. The counters let a test assert how a client behaved (one token call, not
//! twenty; a retry after `-1`), which is often the point of the test.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::wire::{errcode, WxError};

/// The WeChat endpoints the simulator serves, by the names the control API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Jscode2session,
    Token,
    StableToken,
    SubscribeSend,
    PhoneNumber,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Jscode2session,
        Endpoint::Token,
        Endpoint::StableToken,
        Endpoint::SubscribeSend,
        Endpoint::PhoneNumber,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Jscode2session => "jscode2session",
            Endpoint::Token => "token",
            Endpoint::StableToken => "stable_token",
            Endpoint::SubscribeSend => "subscribe_send",
            Endpoint::PhoneNumber => "phone_number",
        }
    }

    pub fn parse(name: &str) -> Option<Endpoint> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The body of `POST /sim/faults`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub endpoint: String,
    /// The errcode to answer instead of doing the work.
    pub errcode: Option<i64>,
    /// The fraction of calls (0..=1) that get `errcode`; 1 when absent.
    pub rate: Option<f64>,
    /// Added to every call's answer.
    pub latency_ms: Option<u64>,
    /// Successful calls allowed; the ones after answer 45009.
    pub quota: Option<u64>,
    /// Calls to affect before the fault clears itself; forever when absent.
    pub count: Option<u64>,
    /// Answer this HTTP status (500 to 599) with an HTML error page instead of doing the work,
    /// as WeChat's front end does when its back end is down. Takes `rate` like an errcode.
    pub http_status: Option<u16>,
}

/// An active fault, as `GET /sim/faults` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fault {
    pub endpoint: &'static str,
    pub errcode: Option<i64>,
    pub rate: f64,
    pub latency_ms: u64,
    pub quota: Option<u64>,
    /// Successful calls counted against the quota so far.
    pub quota_used: u64,
    /// Calls still to affect; `None` for a fault that stays until deleted.
    pub remaining: Option<u64>,
    pub http_status: Option<u16>,
}

impl Fault {
    /// Check a spec the way a careful reviewer would, so a typo fails the test that wrote it.
    pub fn from_spec(spec: &FaultSpec) -> Result<(Endpoint, Fault), String> {
        let endpoint = Endpoint::parse(&spec.endpoint).ok_or_else(|| {
            let names: Vec<_> = Endpoint::ALL.iter().map(|e| e.name()).collect();
            format!(
                "unknown endpoint {:?}; one of {}",
                spec.endpoint,
                names.join(", ")
            )
        })?;
        if spec.errcode == Some(0) {
            return Err("errcode 0 is success, not a fault".into());
        }
        let rate = spec.rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("rate {rate} is not within 0..=1"));
        }
        if let Some(s) = spec.http_status {
            if !(500..=599).contains(&s) {
                return Err(format!("http_status {s} is not a 5xx status"));
            }
            if spec.errcode.is_some() {
                return Err("give an errcode or an http_status, not both".into());
            }
        }
        if spec.rate.is_some() && spec.errcode.is_none() && spec.http_status.is_none() {
            return Err("rate needs an errcode or an http_status".into());
        }
        if spec.errcode.is_none()
            && spec.http_status.is_none()
            && spec.latency_ms.unwrap_or(0) == 0
            && spec.quota.is_none()
        {
            return Err("a fault needs an errcode, http_status, latency_ms or quota".into());
        }
        if spec.count == Some(0) {
            return Err("count must be at least 1 (or absent for a lasting fault)".into());
        }
        let fault = Fault {
            endpoint: endpoint.name(),
            errcode: spec.errcode,
            rate,
            latency_ms: spec.latency_ms.unwrap_or(0),
            quota: spec.quota,
            quota_used: 0,
            remaining: spec.count,
            http_status: spec.http_status,
        };
        Ok((endpoint, fault))
    }
}

/// What the faults decided for one call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gate {
    /// Hold the answer back this long.
    pub latency: Duration,
    /// Answer this instead of doing the work.
    pub injected: Option<WxError>,
    /// Answer this HTTP status instead of doing the work.
    pub http_status: Option<u16>,
}

/// The active faults, at most one per endpoint (a new one replaces the old).
#[derive(Debug, Default)]
pub struct Faults {
    by_endpoint: BTreeMap<Endpoint, Fault>,
}

impl Faults {
    pub fn set(&mut self, endpoint: Endpoint, fault: Fault) {
        self.by_endpoint.insert(endpoint, fault);
    }

    pub fn clear(&mut self, endpoint: Option<Endpoint>) {
        match endpoint {
            Some(e) => {
                self.by_endpoint.remove(&e);
            }
            None => self.by_endpoint.clear(),
        }
    }

    pub fn list(&self) -> Vec<Fault> {
        self.by_endpoint.values().cloned().collect()
    }

    /// Decide what a call to `endpoint` suffers. A call is *affected* when it is delayed or gets
    /// an injected errcode (including 45009 past the quota); only affected calls use up `count`.
    pub fn enter(&mut self, endpoint: Endpoint) -> Gate {
        let Some(fault) = self.by_endpoint.get_mut(&endpoint) else {
            return Gate::default();
        };
        let mut gate = Gate {
            latency: Duration::from_millis(fault.latency_ms),
            injected: None,
            http_status: None,
        };
        if let Some(status) = fault.http_status {
            if rand::thread_rng().gen_bool(fault.rate) {
                gate.http_status = Some(status);
            }
        }
        if let Some(code) = fault.errcode {
            if rand::thread_rng().gen_bool(fault.rate) {
                gate.injected = Some(WxError::of(code));
            }
        }
        if gate.injected.is_none() && fault.quota.is_some_and(|q| fault.quota_used >= q) {
            gate.injected = Some(WxError::of(errcode::DAILY_QUOTA));
        }
        let affected =
            !gate.latency.is_zero() || gate.injected.is_some() || gate.http_status.is_some();
        if affected {
            if let Some(left) = fault.remaining.as_mut() {
                *left -= 1;
                if *left == 0 {
                    self.by_endpoint.remove(&endpoint);
                }
            }
        }
        gate
    }

    /// Count a successful call against the endpoint's quota, if it has one.
    pub fn succeeded(&mut self, endpoint: Endpoint) {
        if let Some(fault) = self.by_endpoint.get_mut(&endpoint) {
            if fault.quota.is_some() {
                fault.quota_used += 1;
            }
        }
    }
}

/// Calls to one endpoint and the errcodes they were answered with (`"0"` for success).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallStats {
    pub count: u64,
    pub errcodes: BTreeMap<String, u64>,
}

/// Calls per endpoint, every endpoint present even when never called.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Calls(BTreeMap<&'static str, CallStats>);

impl Default for Calls {
    fn default() -> Self {
        Self(
            Endpoint::ALL
                .iter()
                .map(|e| (e.name(), CallStats::default()))
                .collect(),
        )
    }
}

impl Calls {
    pub fn record(&mut self, endpoint: Endpoint, errcode: i64) {
        self.record_key(endpoint, errcode.to_string());
    }

    /// A call answered with an HTTP error status instead of a WeChat answer: `"http_502"`.
    pub fn record_http(&mut self, endpoint: Endpoint, status: u16) {
        self.record_key(endpoint, format!("http_{status}"));
    }

    fn record_key(&mut self, endpoint: Endpoint, key: String) {
        let stats = self.0.entry(endpoint.name()).or_default();
        stats.count += 1;
        *stats.errcodes.entry(key).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<(Endpoint, Fault), String> {
        Fault::from_spec(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn specs_are_checked() {
        assert!(spec(serde_json::json!({"endpoint": "token", "errcode": -1})).is_ok());
        assert!(spec(serde_json::json!({"endpoint": "tokens", "errcode": -1})).is_err());
        assert!(spec(serde_json::json!({"endpoint": "token"})).is_err());
        assert!(
            spec(serde_json::json!({"endpoint": "token", "errcode": -1, "rate": 1.5})).is_err()
        );
        assert!(spec(serde_json::json!({"endpoint": "token", "rate": 0.5})).is_err());
        assert!(spec(serde_json::json!({"endpoint": "token", "errcode": 0})).is_err());
        assert!(
            spec(serde_json::json!({"endpoint": "token", "latency_ms": 5, "count": 0})).is_err()
        );
    }

    #[test]
    fn a_counted_fault_clears_itself() {
        let mut faults = Faults::default();
        let (e, f) =
            spec(serde_json::json!({"endpoint": "token", "errcode": -1, "count": 2})).unwrap();
        faults.set(e, f);
        assert_eq!(faults.enter(e).injected.unwrap().errcode, -1);
        assert_eq!(faults.enter(e).injected.unwrap().errcode, -1);
        assert_eq!(faults.enter(e), Gate::default());
        assert!(faults.list().is_empty());
    }

    #[test]
    fn a_quota_allows_that_many_successes() {
        let mut faults = Faults::default();
        let (e, f) = spec(serde_json::json!({"endpoint": "subscribe_send", "quota": 2})).unwrap();
        faults.set(e, f);
        for _ in 0..2 {
            assert!(faults.enter(e).injected.is_none());
            faults.succeeded(e);
        }
        assert_eq!(faults.enter(e).injected.unwrap().errcode, 45009);
        assert!(faults.enter(Endpoint::Token).injected.is_none());
    }

    #[test]
    fn calls_list_every_endpoint() {
        let mut calls = Calls::default();
        calls.record(Endpoint::SubscribeSend, 43101);
        calls.record(Endpoint::SubscribeSend, 0);
        let json = serde_json::to_value(&calls).unwrap();
        assert_eq!(json["subscribe_send"]["count"], 2);
        assert_eq!(json["subscribe_send"]["errcodes"]["43101"], 1);
        assert_eq!(json["token"]["count"], 0);
    }
}
