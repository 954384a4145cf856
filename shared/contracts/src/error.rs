//! The errors a request/reply method can answer with, typed so that callers match on them
//! instead of on strings.

use serde::{Deserialize, Serialize};

/// Why a method failed. On the wire: `{"code": "notFound", "message": …, …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(
    tag = "code",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum RpcError {
    /// What was asked for does not exist (or not yet: an action leads has not stored).
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The request cannot be answered as sent; `field` names the offending part when known
    /// (e.g. a keyword of a direct send).
    #[error("invalid request: {message}")]
    Invalid {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// The answer could not be had now; retrying later may succeed.
    #[error("unavailable ({cause}): {message}")]
    Unavailable { cause: Unavailable, message: String },
    /// WeChat answered with an error code (e.g. 40029 for a bad phone code, 43101 no credit).
    #[error("WeChat refused ({errcode}): {errmsg}")]
    WechatRefused { errcode: i64, errmsg: String },
    /// WeChat could not be reached or gave no usable answer; its outcome is unknown.
    #[error("WeChat unavailable: {message}")]
    WechatUnavailable { message: String },
    /// The request conflicts with one made before: an idempotency key reused for a different
    /// request, or a keyed send whose first attempt has no known outcome.
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// A bug or an unexpected failure on the answering side (logged there).
    #[error("internal error: {message}")]
    Internal { message: String },
}

/// Which part was unavailable, so that operators' tools can tell "down" from "degraded".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Unavailable {
    /// Nobody subscribes to the method's subject: the service is not running.
    NoResponders,
    /// The request was sent but no answer came in time.
    Timeout,
    /// NATS itself could not carry the request.
    Transport,
    /// The service answered, but its database is unavailable.
    Database,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unavailable::NoResponders => "no responders",
            Unavailable::Timeout => "timeout",
            Unavailable::Transport => "transport",
            Unavailable::Database => "database",
        })
    }
}

impl RpcError {
    pub fn not_found(message: impl Into<String>) -> Self {
        RpcError::NotFound {
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        RpcError::Invalid {
            message: message.into(),
            field: None,
        }
    }
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        RpcError::Invalid {
            message: message.into(),
            field: Some(field.into()),
        }
    }
    pub fn unavailable(cause: Unavailable, message: impl Into<String>) -> Self {
        RpcError::Unavailable {
            cause,
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        RpcError::Internal {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_travel_as_tagged_camel_case() {
        let e = RpcError::WechatRefused {
            errcode: 40029,
            errmsg: "invalid code".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": "wechatRefused", "errcode": 40029, "errmsg": "invalid code"})
        );
        assert_eq!(serde_json::from_value::<RpcError>(v).unwrap(), e);
        let u = RpcError::unavailable(Unavailable::NoResponders, "x");
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({"code": "unavailable", "cause": "noResponders", "message": "x"})
        );
    }
}
