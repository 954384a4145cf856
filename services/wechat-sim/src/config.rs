//! The simulator's settings: the app credentials it accepts and the lifetimes it enforces.
//!
//! The defaults are WeChat's own numbers (codes live 5 minutes, tokens 2 hours, 5-minute overlaps),
//! so a local run behaves like production. Tests shorten the lifetimes to seconds; when only a
//! token lifetime is shortened, the 5-minute margins shrink with it (to a quarter of the lifetime)
//! so that "renew early" and "overlap" keep meaning something.

use std::time::Duration;

use ande_platform::config::{
    ConfigError, Env, DEFAULT_APP_ID, DEFAULT_APP_SECRET, WECHAT_APP_ID, WECHAT_APP_SECRET,
};

/// Where the binary listens (`host:port`).
pub const WECHAT_SIM_ADDR: &str = "WECHAT_SIM_ADDR";
/// Lifetime of classic and stable access tokens (`7200s`, `2h`, `5s`…).
pub const WECHAT_SIM_TOKEN_TTL: &str = "WECHAT_SIM_TOKEN_TTL";
/// Lifetime of login and phone codes.
pub const WECHAT_SIM_CODE_TTL: &str = "WECHAT_SIM_CODE_TTL";

/// Message push (see `push`): the URL, the Token, the EncodingAESKey (safe mode when set) and
/// the format (`json`, the default, or `xml`).
pub const WECHAT_SIM_PUSH_URL: &str = "WECHAT_SIM_PUSH_URL";
pub const WECHAT_SIM_PUSH_TOKEN: &str = "WECHAT_SIM_PUSH_TOKEN";
pub const WECHAT_SIM_PUSH_AES_KEY: &str = "WECHAT_SIM_PUSH_AES_KEY";
pub const WECHAT_SIM_PUSH_FORMAT: &str = "WECHAT_SIM_PUSH_FORMAT";

/// Where the simulator pushes subscription events, as configured in a mini-program's admin.
#[derive(Clone, PartialEq, Eq)]
pub struct PushSettings {
    pub url: String,
    pub token: String,
    /// The 43-character EncodingAESKey; set: safe mode.
    pub aes_key: Option<String>,
    pub format: ande_wechat::push::Format,
}

impl std::fmt::Debug for PushSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSettings")
            .field("url", &self.url)
            .field("safe_mode", &self.aes_key.is_some())
            .field("format", &self.format)
            .finish()
    }
}

impl PushSettings {
    /// Check the key and build the pusher's target.
    pub fn target(&self) -> Result<crate::push::PushTarget, String> {
        let aes_key = match &self.aes_key {
            Some(k) => {
                Some(ande_wechat::push::AesKey::from_encoding_key(k).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        if self.token.is_empty() {
            return Err("a push Token is required".into());
        }
        Ok(crate::push::PushTarget {
            url: self.url.clone(),
            token: self.token.clone(),
            aes_key,
            format: self.format,
        })
    }

    fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let url = env.string(WECHAT_SIM_PUSH_URL, "");
        if url.trim().is_empty() {
            return Ok(None);
        }
        let bad = |var: &str, reason: String| ConfigError {
            var: var.into(),
            shown: String::new(),
            reason,
        };
        let raw_format = env.string(WECHAT_SIM_PUSH_FORMAT, "json");
        let format = ande_wechat::push::Format::parse(&raw_format)
            .ok_or_else(|| bad(WECHAT_SIM_PUSH_FORMAT, "expected json or xml".into()))?;
        let key = env.string(WECHAT_SIM_PUSH_AES_KEY, "");
        let settings = Self {
            url: url.trim().to_string(),
            token: env.string(WECHAT_SIM_PUSH_TOKEN, ""),
            aes_key: (!key.trim().is_empty()).then(|| key.trim().to_string()),
            format,
        };
        settings.target().map_err(|r| {
            let var = if r.contains("Token") {
                WECHAT_SIM_PUSH_TOKEN
            } else {
                WECHAT_SIM_PUSH_AES_KEY
            };
            bad(var, r)
        })?;
        Ok(Some(settings))
    }
}

/// The default listen address of the binary.
pub const DEFAULT_ADDR: &str = "127.0.0.1:3900";

const CODE_TTL: Duration = Duration::from_secs(300);
const TOKEN_TTL: Duration = Duration::from_secs(7200);
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// What the simulator accepts and enforces. See the module docs for the defaults.
/// `Debug` leaves the secret out, so the config can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SimConfig {
    pub app_id: String,
    pub app_secret: String,
    /// How long a login or phone code stays usable after it was minted or first seen.
    pub code_ttl: Duration,
    /// Lifetime of a token from `GET /cgi-bin/token`.
    pub classic_token_ttl: Duration,
    /// How long a classic token stays valid after a newer one was issued.
    pub classic_overlap: Duration,
    /// Lifetime of a token from `POST /cgi-bin/stable_token`.
    pub stable_token_ttl: Duration,
    /// How long before expiry a stable token call starts returning the next token.
    pub stable_renew_before: Duration,
    /// Message push; `None`: nothing is pushed.
    pub push: Option<PushSettings>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            app_id: DEFAULT_APP_ID.to_string(),
            app_secret: DEFAULT_APP_SECRET.to_string(),
            code_ttl: CODE_TTL,
            classic_token_ttl: TOKEN_TTL,
            classic_overlap: TOKEN_MARGIN,
            stable_token_ttl: TOKEN_TTL,
            stable_renew_before: TOKEN_MARGIN,
            push: None,
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("app_id", &self.app_id)
            .field("app_secret", &"<redacted>")
            .field("code_ttl", &self.code_ttl)
            .field("classic_token_ttl", &self.classic_token_ttl)
            .field("classic_overlap", &self.classic_overlap)
            .field("stable_token_ttl", &self.stable_token_ttl)
            .field("stable_renew_before", &self.stable_renew_before)
            .field("push", &self.push)
            .finish()
    }
}

impl SimConfig {
    /// Read `WECHAT_APP_ID`, `WECHAT_APP_SECRET`, `WECHAT_SIM_TOKEN_TTL` and `WECHAT_SIM_CODE_TTL`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let token_ttl = positive(env, WECHAT_SIM_TOKEN_TTL, TOKEN_TTL)?;
        let code_ttl = positive(env, WECHAT_SIM_CODE_TTL, CODE_TTL)?;
        Ok(Self {
            app_id: env.string(WECHAT_APP_ID, &defaults.app_id),
            app_secret: env.string(WECHAT_APP_SECRET, &defaults.app_secret),
            code_ttl,
            classic_token_ttl: token_ttl,
            classic_overlap: margin_for(token_ttl),
            stable_token_ttl: token_ttl,
            stable_renew_before: margin_for(token_ttl),
            push: PushSettings::from_env(env)?,
        })
    }
}

/// WeChat's 5-minute margin, or a quarter of a lifetime too short to hold it comfortably.
pub(crate) fn margin_for(ttl: Duration) -> Duration {
    TOKEN_MARGIN.min(ttl / 4)
}

fn positive(env: &Env, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let d = env.duration(name, default)?;
    if d.is_zero() {
        return Err(ConfigError {
            var: name.to_string(),
            shown: env.string(name, ""),
            reason: "must be longer than zero".into(),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_wechats_numbers() {
        let c = SimConfig::from_env(&Env::default()).unwrap();
        assert_eq!(c, SimConfig::default());
        assert_eq!(c.app_id, DEFAULT_APP_ID);
        assert_eq!(c.code_ttl, Duration::from_secs(300));
        assert_eq!(c.stable_token_ttl, Duration::from_secs(7200));
        assert_eq!(c.stable_renew_before, Duration::from_secs(300));
        assert_eq!(c.classic_overlap, Duration::from_secs(300));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let shown = format!("{:?}", SimConfig::default());
        assert!(!shown.contains(DEFAULT_APP_SECRET), "{shown}");
        assert!(shown.contains(DEFAULT_APP_ID), "{shown}");
    }

    #[test]
    fn a_short_token_ttl_shrinks_the_margins() {
        let env = Env::from_pairs([
            (WECHAT_SIM_TOKEN_TTL, "8s"),
            (WECHAT_SIM_CODE_TTL, "2s"),
            (WECHAT_APP_ID, "wx_test"),
        ]);
        let c = SimConfig::from_env(&env).unwrap();
        assert_eq!(c.app_id, "wx_test");
        assert_eq!(c.classic_token_ttl, Duration::from_secs(8));
        assert_eq!(c.stable_renew_before, Duration::from_secs(2));
        assert_eq!(c.classic_overlap, Duration::from_secs(2));
        assert_eq!(c.code_ttl, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err =
            SimConfig::from_env(&Env::from_pairs([(WECHAT_SIM_TOKEN_TTL, "soon")])).unwrap_err();
        assert_eq!(err.var, WECHAT_SIM_TOKEN_TTL);
        let err = SimConfig::from_env(&Env::from_pairs([(WECHAT_SIM_CODE_TTL, "0")])).unwrap_err();
        assert_eq!(err.var, WECHAT_SIM_CODE_TTL);
    }
}
