//! The one error type of the crate, and the questions callers ask of it.
//!
//! Callers need to tell three things apart: a failure worth retrying later (WeChat busy, a
//! timeout, a 5xx), a permanent refusal (the user has no subscription credit, an invalid code),
//! and a stale access token (which the client already handles by refreshing and retrying once).
//! [`WechatError::is_retryable`] and [`WechatError::is_token_error`] answer that, so that no
//! caller has to remember errcodes.
//!
//! No variant ever holds a URL, a secret, an access token or a session key: transport errors are
//! stripped of their URL (it carries `secret=` or `access_token=` in its query) and decode errors
//! do not quote the body.

/// Errcodes meaning the access token is invalid, expired or not the latest one.
pub const TOKEN_ERRCODES: [i64; 3] = [40001, 42001, 40014];

/// Errcodes meaning "try again later": `-1` system busy, `45011` calls too frequent.
pub const RETRYABLE_ERRCODES: [i64; 2] = [-1, 45011];

/// `43101`: the user has no subscription credit left for the template (or cancelled it).
pub const ERRCODE_NO_SUBSCRIPTION: i64 = 43101;

/// `47003`: a keyword value breaks its type's limit; the errmsg names the field.
pub const ERRCODE_DATA_INVALID: i64 = 47003;

/// `40029`: invalid code (login or phone number).
pub const ERRCODE_INVALID_CODE: i64 = 40029;

/// What went wrong talking to WeChat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered with a non-zero `errcode`.
    #[error("WeChat API error {errcode}: {errmsg}")]
    Api {
        /// WeChat's error code.
        errcode: i64,
        /// WeChat's message, as sent (it often ends with a `rid` to quote to WeChat support).
        errmsg: String,
    },
    /// The request or the connection timed out. For a send, the message may have gone out.
    #[error("WeChat request timed out")]
    Timeout,
    /// The request could not be sent or its answer not read (connection refused, reset, TLS).
    #[error("WeChat transport error: {0}")]
    Transport(String),
    /// WeChat answered with a non-2xx HTTP status.
    #[error("WeChat answered HTTP {status}")]
    Http {
        /// The HTTP status code.
        status: u16,
    },
    /// The answer was not the JSON expected.
    #[error("WeChat answer could not be decoded: {0}")]
    Decode(String),
    /// The client's configuration is unusable.
    #[error("WeChat client configuration invalid: {0}")]
    Config(String),
}

impl WechatError {
    /// WeChat's errcode, for [`WechatError::Api`].
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Self::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// Whether the access token was refused (`40001`, `42001`, `40014`).
    pub fn is_token_error(&self) -> bool {
        self.errcode().is_some_and(|c| TOKEN_ERRCODES.contains(&c))
    }

    /// Whether the same call may succeed later: WeChat busy (`-1`), too frequent (`45011`),
    /// a timeout, a transport failure, HTTP 429 or 5xx.
    ///
    /// A timed-out send may already have been delivered: retrying it can deliver it twice, which
    /// the caller must weigh.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { errcode, .. } => RETRYABLE_ERRCODES.contains(errcode),
            Self::Timeout | Self::Transport(_) => true,
            Self::Http { status } => *status == 429 || (500..600).contains(status),
            Self::Decode(_) | Self::Config(_) => false,
        }
    }

    /// Turns a reqwest error into ours without its URL, whose query holds secrets.
    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return Self::Timeout;
        }
        let err = err.without_url();
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            msg.push_str(": ");
            msg.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Transport(msg)
    }

    /// A decode error naming the endpoint and what was wrong, without quoting any value: serde's
    /// "invalid type" messages quote the offending value, which could be a token or session key.
    pub(crate) fn decode(endpoint: &str, err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let what = match err.classify() {
            Category::Data => {
                let msg = err.to_string();
                if msg.starts_with("missing field") {
                    msg.split(" at line")
                        .next()
                        .unwrap_or("missing field")
                        .to_owned()
                } else {
                    "a field has an unexpected type or value".to_owned()
                }
            }
            Category::Syntax => "not valid JSON".to_owned(),
            Category::Eof => "truncated JSON".to_owned(),
            Category::Io => "read error".to_owned(),
        };
        Self::Decode(format!("{endpoint}: {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(errcode: i64) -> WechatError {
        WechatError::Api {
            errcode,
            errmsg: "x".into(),
        }
    }

    #[test]
    fn token_errors() {
        for c in [40001, 42001, 40014] {
            assert!(api(c).is_token_error(), "{c}");
            assert!(!api(c).is_retryable(), "{c}");
        }
        for c in [0, -1, 40013, 40125, 43101, 47003] {
            assert!(!api(c).is_token_error(), "{c}");
        }
        assert!(!WechatError::Timeout.is_token_error());
    }

    #[test]
    fn retryable_errors() {
        assert!(api(-1).is_retryable());
        assert!(api(45011).is_retryable());
        assert!(WechatError::Timeout.is_retryable());
        assert!(WechatError::Transport("reset".into()).is_retryable());
        assert!(WechatError::Http { status: 502 }.is_retryable());
        assert!(WechatError::Http { status: 503 }.is_retryable());
        assert!(WechatError::Http { status: 429 }.is_retryable());

        for c in [40029, 40163, 43101, 47003, 40037, 45009, 48001] {
            assert!(!api(c).is_retryable(), "{c}");
        }
        assert!(!WechatError::Http { status: 404 }.is_retryable());
        assert!(!WechatError::Decode("x".into()).is_retryable());
        assert!(!WechatError::Config("x".into()).is_retryable());
    }

    #[test]
    fn errcode_only_for_api_errors() {
        assert_eq!(api(43101).errcode(), Some(43101));
        assert_eq!(WechatError::Timeout.errcode(), None);
        assert_eq!(WechatError::Http { status: 500 }.errcode(), None);
    }

    #[test]
    fn decode_errors_do_not_quote_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            access_token: String,
        }
        let err = serde_json::from_str::<T>(r#"{"access_token": ["SECRET-TOKEN"]}"#).unwrap_err();
        let e = WechatError::decode("/cgi-bin/token", &err);
        assert!(!format!("{e} {e:?}").contains("SECRET-TOKEN"), "{e:?}");

        let err = serde_json::from_str::<T>(r#"{"x": 1}"#).unwrap_err();
        let e = WechatError::decode("/cgi-bin/token", &err).to_string();
        assert!(e.contains("missing field `access_token`"), "{e}");

        let err = serde_json::from_str::<T>("SECRET-TOKEN").unwrap_err();
        let e = WechatError::decode("/cgi-bin/token", &err);
        assert!(!format!("{e} {e:?}").contains("SECRET-TOKEN"), "{e:?}");
    }
}
