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
pub const GATEWAY_BODY_LIMIT: &str = "GATEWAY_BODY_LIMIT";
pub const GATEWAY_TRUST_FORWARDED: &str = "GATEWAY_TRUST_FORWARDED";

/// Used when JWT_SECRET is unset, so a developer machine runs with nothing set. The gateway logs
/// a warning at start when it is in use; never deploy with it.
pub const DEV_JWT_SECRET: &str = "ande-dev-only-jwt-secret-change-me";

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub common: CommonConfig,
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
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Take the client IP from X-Forwarded-For (only behind a proxy that sets it).
    pub trust_forwarded: bool,
}

impl GatewayConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let config = Self::read(env)?;
        config.check_secret()?;
        Ok(config)
    }

    /// Anyone who knows the JWT secret can mint staff tokens, so a gateway reachable from other
    /// machines refuses the development secret, example values and short secrets.
    fn check_secret(&self) -> Result<(), ConfigError> {
        let secret = secrecy::ExposeSecret::expose_secret(&self.jwt_secret);
        let weak = secret == DEV_JWT_SECRET
            || secret == "change-me"
            || secret == "your_jwt_secret_key"
            || secret.len() < 32;
        if weak && !self.host.is_loopback() {
            return Err(ConfigError {
                var: JWT_SECRET.into(),
                shown: "<redacted>".into(),
                reason: format!("API_HOST={} is reachable from other machines: set JWT_SECRET to a random value of at least 32 characters", self.host),
            });
        }
        Ok(())
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        let wechat = WechatConfig::new(
            env.string(cfg::WECHAT_API_BASE, cfg::DEFAULT_WECHAT_API_BASE),
            env.string(cfg::WECHAT_APP_ID, cfg::DEFAULT_APP_ID),
            env.secret(cfg::WECHAT_APP_SECRET, cfg::DEFAULT_APP_SECRET),
        );
        Ok(Self {
            common: CommonConfig::from_env(env)?,
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
            body_limit: env.parse(GATEWAY_BODY_LIMIT, 64 * 1024usize)?.max(1024),
            trust_forwarded: env.bool(GATEWAY_TRUST_FORWARDED, false)?,
        })
    }

    /// Defaults with the given shared settings and WeChat base URL (tests, `andectl up`).
    pub fn with_common(common: CommonConfig, wechat_base: &str) -> Self {
        let mut c = Self::read(&Env::default()).expect("defaults are valid");
        c.common = common;
        c.wechat.base_url = wechat_base.to_string();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reachable_gateway_refuses_a_weak_jwt_secret() {
        let local = GatewayConfig::from_env(&Env::default()).unwrap();
        assert!(
            local.host.is_loopback(),
            "the development secret is fine on loopback"
        );
        let err = GatewayConfig::from_env(&Env::from_pairs([
            (API_HOST, "0.0.0.0"),
            (JWT_SECRET, "change-me"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains(JWT_SECRET) && !err.to_string().contains("change-me"),
            "{err}"
        );
        assert!(GatewayConfig::from_env(&Env::from_pairs([(API_HOST, "0.0.0.0")])).is_err());
        let strong = "k".repeat(40);
        assert!(GatewayConfig::from_env(&Env::from_pairs([
            (API_HOST, "0.0.0.0"),
            (JWT_SECRET, strong.as_str())
        ]))
        .is_ok());
    }
}
