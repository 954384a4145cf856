//! Client configuration: where WeChat is, who we are, and how the access token is obtained.
//!
//! The base URL is configurable so that the simulator can stand in for `api.weixin.qq.com` in
//! every test and local run. The AppSecret is a [`SecretString`] and the manual `Debug` impl
//! prints it redacted, so a config can be logged at start-up.

use std::{fmt, str::FromStr, time::Duration};

use secrecy::SecretString;

use crate::WechatError;

/// The real WeChat API.
pub const DEFAULT_BASE_URL: &str = "https://api.weixin.qq.com";

/// Renew the access token this long before WeChat says it expires. Stable tokens are renewed by
/// WeChat 5 minutes early with both valid meanwhile, so 300 s keeps us inside that overlap.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Whole-request timeout. WeChat normally answers within a few hundred milliseconds; 5 s bounds
/// how long a login or a JetStream consumer can hang on it while leaving room for slow days.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the access token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenMode {
    /// `POST /cgi-bin/stable_token`: the same token for every caller while it is valid, so
    /// several processes (or a cluster) never invalidate each other's token. The default.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: every call invalidates the previous token (after 5 minutes); only
    /// for a single process that is the sole user of the AppSecret.
    Classic,
}

impl FromStr for TokenMode {
    type Err = WechatError;

    /// Parses `stable` or `classic` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "stable" => Ok(Self::Stable),
            "classic" => Ok(Self::Classic),
            other => Err(WechatError::Config(format!(
                "token mode must be `stable` or `classic`, not `{other}`"
            ))),
        }
    }
}

impl fmt::Display for TokenMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stable => "stable",
            Self::Classic => "classic",
        })
    }
}

/// Everything [`crate::WechatClient::new`] needs.
#[derive(Clone)]
pub struct WechatConfig {
    /// `https://api.weixin.qq.com`, or the simulator's address.
    pub base_url: String,
    /// The mini-program's AppID.
    pub app_id: String,
    /// The mini-program's AppSecret.
    pub app_secret: SecretString,
    /// How the access token is obtained; [`TokenMode::Stable`] unless there is a reason.
    pub token_mode: TokenMode,
    /// Renew the cached token this long before it expires.
    pub refresh_margin: Duration,
    /// Timeout of each request, connection included.
    pub timeout: Duration,
}

impl WechatConfig {
    /// A config with the default token mode, refresh margin and timeout.
    pub fn new(
        base_url: impl Into<String>,
        app_id: impl Into<String>,
        app_secret: impl Into<SecretString>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            app_id: app_id.into(),
            app_secret: app_secret.into(),
            token_mode: TokenMode::default(),
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for WechatConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WechatConfig")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .field("app_secret", &"[redacted]")
            .field("token_mode", &self.token_mode)
            .field("refresh_margin", &self.refresh_margin)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_mode_parses() {
        assert_eq!("stable".parse::<TokenMode>().unwrap(), TokenMode::Stable);
        assert_eq!(
            " Classic ".parse::<TokenMode>().unwrap(),
            TokenMode::Classic
        );
        assert!(matches!(
            "force".parse::<TokenMode>(),
            Err(WechatError::Config(_))
        ));
        assert_eq!(TokenMode::default(), TokenMode::Stable);
        assert_eq!(
            TokenMode::Classic.to_string().parse(),
            Ok(TokenMode::Classic)
        );
    }

    #[test]
    fn defaults() {
        let cfg = WechatConfig::new(DEFAULT_BASE_URL, "wx1", SecretString::from("s"));
        assert_eq!(cfg.token_mode, TokenMode::Stable);
        assert_eq!(cfg.refresh_margin, Duration::from_secs(300));
        assert_eq!(cfg.timeout, Duration::from_secs(5));
    }

    #[test]
    fn debug_redacts_the_app_secret() {
        let cfg = WechatConfig::new(
            DEFAULT_BASE_URL,
            "wx1234",
            SecretString::from("APP-SECRET-abc123"),
        );
        let shown = format!("{cfg:?} {cfg:#?}");
        assert!(!shown.contains("APP-SECRET-abc123"), "{shown}");
        assert!(shown.contains("wx1234"), "{shown}");
    }
}
