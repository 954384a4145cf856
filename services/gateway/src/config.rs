//! The gateway's settings, with the seed's variable names.

use std::net::IpAddr;
use std::time::Duration;

use ande_platform::config::{self as cfg, CommonConfig, ConfigError, Env};
use ande_wechat::WechatConfig;
use secrecy::SecretString;

pub const API_HOST: &str = "API_HOST";
pub const API_PORT: &str = "API_PORT";
pub const CORS_ORIGIN: &str = "CORS_ORIGIN";
pub const JWT_SECRET: &str = "JWT_SECRET";
pub const JWT_EXPIRES_IN: &str = "JWT_EXPIRES_IN";
pub const GATEWAY_RATE_PER_IP: &str = "GATEWAY_RATE_PER_IP";
pub const GATEWAY_RATE_PER_OPENID: &str = "GATEWAY_RATE_PER_OPENID";
pub const GATEWAY_RATE_WECHAT: &str = "GATEWAY_RATE_WECHAT";
pub const GATEWAY_BODY_LIMIT: &str = "GATEWAY_BODY_LIMIT";
pub const GATEWAY_TRUST_FORWARDED: &str = "GATEWAY_TRUST_FORWARDED";
pub const GATEWAY_ANONYMOUS_ACTIONS: &str = "GATEWAY_ANONYMOUS_ACTIONS";
pub const GATEWAY_COOKIE_SECURE: &str = "GATEWAY_COOKIE_SECURE";
pub const GATEWAY_TRUSTED_PROXIES: &str = "GATEWAY_TRUSTED_PROXIES";
pub const GATEWAY_HEADER_TIMEOUT: &str = "GATEWAY_HEADER_TIMEOUT";
pub const GATEWAY_IDLE_TIMEOUT: &str = "GATEWAY_IDLE_TIMEOUT";
pub const GATEWAY_MAX_CONNECTIONS: &str = "GATEWAY_MAX_CONNECTIONS";
/// WeChat's message push (Development → Message push in the mini-program's admin): the `Token`.
/// Unset: `/api/wechat/events` answers 404 and credits come from the mini-program's reports.
pub const WECHAT_PUSH_TOKEN: &str = "WECHAT_PUSH_TOKEN";
/// The push's `EncodingAESKey` (43 characters). Set: only safe-mode (encrypted) pushes are taken.
pub const WECHAT_PUSH_AES_KEY: &str = "WECHAT_PUSH_AES_KEY";

/// Used when JWT_SECRET is unset, so a developer machine runs with nothing set. The gateway logs
/// a warning at start when it is in use; never deploy with it.
pub const DEV_JWT_SECRET: &str = "ande-dev-only-jwt-secret-change-me";

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub common: CommonConfig,
    /// The admin listener (`METRICS_ADDR`: /metrics, /healthz, /readyz); none when `off`.
    pub admin_addr: Option<std::net::SocketAddr>,
    pub host: IpAddr,
    pub port: u16,
    /// Allowed browser origins; empty means any (development).
    pub cors_origins: Vec<String>,
    pub jwt_secret: SecretString,
    pub jwt_expires_in: Duration,
    pub wechat: WechatConfig,
    /// Requests per minute per client IP.
    pub rate_per_ip: u32,
    /// Customer actions per minute per openid.
    pub rate_per_openid: u32,
    /// WeChat logins and phone lookups per minute per client and per session.
    pub rate_wechat: u32,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Peers whose X-Forwarded-For is believed (`GATEWAY_TRUSTED_PROXIES`, CIDRs); from anyone
    /// else the header is ignored. `GATEWAY_TRUST_FORWARDED=true` is short for loopback.
    pub trusted_proxies: Vec<crate::clientip::Cidr>,
    /// Header-read and idle deadlines, the connection cap.
    pub limits: crate::server::Limits,
    /// Record customer actions without a session (the mini-program's calls today carry none).
    /// `false` answers them 401, for a mini-program that sends its session token.
    pub anonymous_actions: bool,
    /// Mark the console's session cookie `Secure` (`GATEWAY_COOKIE_SECURE`, default false):
    /// set it wherever the console is served over HTTPS (production); plain HTTP on a developer's
    /// machine needs it off.
    pub cookie_secure: bool,
    /// WeChat's message push, when configured.
    pub push: Option<PushConfig>,
}

/// The secrets WeChat signs (and in safe mode encrypts) its pushes with.
#[derive(Clone, Debug)]
pub struct PushConfig {
    pub token: SecretString,
    /// Safe mode: every push must be encrypted with this key.
    pub aes_key: Option<ande_wechat::push::AesKey>,
}

impl PushConfig {
    /// From the push Token and, for safe mode, the EncodingAESKey.
    pub fn new(
        token: &str,
        encoding_aes_key: Option<&str>,
    ) -> Result<Self, ande_wechat::push::PushError> {
        Ok(Self {
            token: SecretString::from(token.to_string()),
            aes_key: encoding_aes_key
                .map(ande_wechat::push::AesKey::from_encoding_key)
                .transpose()?,
        })
    }

    fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let token = env.string(WECHAT_PUSH_TOKEN, "");
        let key = env.string(WECHAT_PUSH_AES_KEY, "");
        if token.trim().is_empty() {
            if !key.trim().is_empty() {
                return Err(ConfigError {
                    var: WECHAT_PUSH_TOKEN.into(),
                    shown: String::new(),
                    reason: format!("must be set when {WECHAT_PUSH_AES_KEY} is"),
                });
            }
            return Ok(None);
        }
        let aes_key = match key.trim() {
            "" => None,
            k => Some(
                ande_wechat::push::AesKey::from_encoding_key(k).map_err(|e| ConfigError {
                    var: WECHAT_PUSH_AES_KEY.into(),
                    shown: "<redacted>".into(),
                    reason: e.to_string(),
                })?,
            ),
        };
        Ok(Some(Self {
            token: SecretString::from(token.trim().to_string()),
            aes_key,
        }))
    }
}

impl GatewayConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = Self::read(env)?;
        if !config.common.development {
            config.check_secret()?;
        }
        let w = &config.wechat;
        cfg::refuse_development_wechat(&config.common, &w.base_url, &w.app_id, &w.app_secret)?;
        Ok(config)
    }

    /// Anyone who knows the JWT secret can mint staff tokens, so outside development (on every
    /// address: a proxy on the same host makes loopback public) the gateway refuses the
    /// development secret, example values and secrets too short or too repetitive to be random.
    fn check_secret(&self) -> Result<(), ConfigError> {
        let secret = secrecy::ExposeSecret::expose_secret(&self.jwt_secret);
        let known = [DEV_JWT_SECRET, "change-me", "your_jwt_secret_key", "secret"];
        let problem = if known.contains(&secret) {
            Some("is a published example or development value".to_string())
        } else {
            weak_secret(secret)
        };
        match problem {
            Some(p) => Err(ConfigError {
                var: JWT_SECRET.into(),
                shown: "<redacted>".into(),
                reason: format!("{p}: set it to a random value, e.g. `openssl rand -base64 48` (or {}=development on a developer machine)", cfg::ANDE_ENV),
            }),
            None => Ok(()),
        }
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let wechat = WechatConfig::new(
            env.string(cfg::WECHAT_API_BASE, cfg::DEFAULT_WECHAT_API_BASE),
            env.string(cfg::WECHAT_APP_ID, cfg::DEFAULT_APP_ID),
            env.secret(cfg::WECHAT_APP_SECRET, cfg::DEFAULT_APP_SECRET),
        );
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            admin_addr: ande_platform::admin::addr_from_env(env, "127.0.0.1:9101")?,
            host: env.parse(API_HOST, IpAddr::from([127, 0, 0, 1]))?,
            port: env.parse(API_PORT, 3001u16)?,
            cors_origins: env
                .string(CORS_ORIGIN, "")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "*")
                .map(String::from)
                .collect(),
            jwt_secret: env.secret(JWT_SECRET, DEV_JWT_SECRET),
            jwt_expires_in: env.duration(JWT_EXPIRES_IN, Duration::from_secs(24 * 3600))?,
            wechat,
            rate_per_ip: env.parse(GATEWAY_RATE_PER_IP, 600u32)?.max(1),
            rate_per_openid: env.parse(GATEWAY_RATE_PER_OPENID, 120u32)?.max(1),
            rate_wechat: env.parse(GATEWAY_RATE_WECHAT, 30u32)?.max(1),
            body_limit: env.parse(GATEWAY_BODY_LIMIT, 64 * 1024usize)?.max(1024),
            trusted_proxies: trusted_proxies(env)?,
            limits: crate::server::Limits {
                header_timeout: env.duration(GATEWAY_HEADER_TIMEOUT, Duration::from_secs(10))?,
                idle_timeout: env.duration(GATEWAY_IDLE_TIMEOUT, Duration::from_secs(60))?,
                max_connections: env.parse(GATEWAY_MAX_CONNECTIONS, 10_000usize)?.max(1),
            },
            anonymous_actions: env.bool(GATEWAY_ANONYMOUS_ACTIONS, true)?,
            cookie_secure: env.bool(GATEWAY_COOKIE_SECURE, false)?,
            push: PushConfig::from_env(env)?,
        })
    }

    /// Defaults with the given shared settings and WeChat base URL (tests, `andectl up`).
    pub fn with_common(common: CommonConfig, wechat_base: &str) -> Self {
        let mut c = Self::read(&Env::default()).expect("defaults are valid");
        c.common = common;
        c.wechat.base_url = wechat_base.to_string();
        // Many services share a test process: none binds the default admin port.
        c.admin_addr = None;
        c
    }
}

/// `GATEWAY_TRUSTED_PROXIES` (comma-separated CIDRs or addresses), or loopback when the older
/// `GATEWAY_TRUST_FORWARDED=true` is set, else nobody.
fn trusted_proxies(env: &Env) -> Result<Vec<crate::clientip::Cidr>, ConfigError> {
    let raw = env.string(GATEWAY_TRUSTED_PROXIES, "");
    let raw = if raw.trim().is_empty() && env.bool(GATEWAY_TRUST_FORWARDED, false)? {
        "127.0.0.0/8,::1/128".to_string()
    } else {
        raw
    };
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|reason: String| ConfigError {
                var: GATEWAY_TRUSTED_PROXIES.into(),
                shown: s.into(),
                reason,
            })
        })
        .collect()
}

/// Least length and estimated entropy of a JWT secret.
const SECRET_MIN_CHARS: usize = 32;
const SECRET_MIN_BITS: f64 = 100.0;
const SECRET_MIN_DISTINCT: usize = 10;

/// Why `secret` is too weak to sign tokens, if it is: shorter than 32 characters, fewer than 10
/// distinct characters, or under 100 bits by its own character frequencies (Shannon entropy
/// times length: `openssl rand -base64 32` gives about 190, `-hex 32` about 250).
pub fn weak_secret(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < SECRET_MIN_CHARS {
        return Some(format!("is shorter than {SECRET_MIN_CHARS} characters"));
    }
    let mut counts = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(*c).or_insert(0usize) += 1;
    }
    let n = chars.len() as f64;
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    if counts.len() < SECRET_MIN_DISTINCT || per_char * n < SECRET_MIN_BITS {
        return Some("is too repetitive to be random".to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_development_weak_secrets_and_development_wechat_are_refused() {
        let dev = GatewayConfig::from_env(&Env::from_pairs([(cfg::ANDE_ENV, "development")]));
        assert!(dev.is_ok(), "development runs on the defaults");
        // No ANDE_ENV: production, on loopback too (a proxy on the same host makes it public).
        let err = GatewayConfig::from_env(&Env::default()).unwrap_err();
        assert!(err.to_string().contains(JWT_SECRET), "{err}");
        let err =
            GatewayConfig::from_env(&Env::from_pairs([(JWT_SECRET, "change-me")])).unwrap_err();
        assert!(
            err.to_string().contains(JWT_SECRET) && !err.to_string().contains("change-me"),
            "{err}"
        );
        for weak in [
            "k".repeat(40),
            "abcabcabcabcabcabcabcabcabcabcabcabc".into(),
            "short-but-random-Q7x!".into(),
        ] {
            assert!(weak_secret(&weak).is_some(), "{weak}");
        }
        let strong = "q9G2v+Lr8ZtX0mN4bK7cW1sJ5yHdPfE3aUoR6iTg";
        assert!(weak_secret(strong).is_none());
        let prod = |extra: &[(&str, &str)]| {
            let mut pairs = vec![
                (JWT_SECRET, strong),
                (cfg::WECHAT_APP_ID, "wx1234567890abcdef"),
                (cfg::WECHAT_APP_SECRET, "0123456789abcdef0123456789abcdef"),
                (cfg::WECHAT_API_BASE, "https://api.weixin.qq.com"),
            ];
            pairs.extend_from_slice(extra);
            GatewayConfig::from_env(&Env::from_pairs(pairs))
        };
        assert!(prod(&[]).is_ok());
        let err = prod(&[(cfg::WECHAT_APP_ID, cfg::DEFAULT_APP_ID)]).unwrap_err();
        assert!(err.to_string().contains("WECHAT_APP_ID"), "{err}");
        let err = prod(&[(cfg::WECHAT_APP_SECRET, cfg::DEFAULT_APP_SECRET)]).unwrap_err();
        assert!(!err.to_string().contains(cfg::DEFAULT_APP_SECRET), "{err}");
        let err = prod(&[(cfg::WECHAT_API_BASE, "http://127.0.0.1:3900")]).unwrap_err();
        assert!(err.to_string().contains("HTTPS"), "{err}");
    }
}
