//! The HTTP envelope and the one error type of the API.
//!
//! Success: `{success: true, data, message, timestamp, requestId}` (the seed's envelope plus
//! `requestId`). Error: `{success: false, message, error: {code, details}, timestamp, requestId}`
//! with an honest status. Internal causes are logged once, here, and never sent to the client.

use ande_platform::rpc::RpcError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

tokio::task_local! {
    /// The request id of the request being handled (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

pub fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A successful answer in the seed's envelope.
pub fn ok<T: Serialize>(data: T, message: &str) -> Response {
    ok_with(StatusCode::OK, data, message)
}

pub fn ok_with<T: Serialize>(status: StatusCode, data: T, message: &str) -> Response {
    let body = Envelope {
        data,
        message,
        request_id: request_id(),
        success: true,
        timestamp: now_ms(),
    };
    (status, Json(body)).into_response()
}

/// The seed's envelope, serialised straight from the handler's data (building a `Value` first
/// copied the data into a map on every answer). The fields are in the order that map wrote them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T> {
    data: T,
    message: &'a str,
    request_id: String,
    success: bool,
    timestamp: i64,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    pub fn validation(field: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            format!("{field}: {why}"),
        )
        .details(json!({ "field": field, "reason": why }))
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn bus_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "event_bus_unavailable",
            "the event bus is unavailable; retry shortly",
        )
        .retry_after(2)
    }
    pub fn service_unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(2)
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    /// Log the cause (once, here) and answer a 500 that reveals nothing.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
    /// Postgres trouble: unavailable is 503, anything else a logged 500.
    pub fn db(e: sqlx::Error) -> Self {
        if ande_platform::db::is_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            Self::service_unavailable(
                "database_unavailable",
                "the database is unavailable; retry shortly",
            )
        } else {
            Self::internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, "request failed");
        }
        let body = json!({
            "success": false,
            "message": self.message,
            "error": { "code": self.code, "details": self.details },
            "timestamp": now_ms(),
            "requestId": request_id(),
        });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(s));
        }
        resp
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::NotFound { message } => ApiError::not_found(message),
            RpcError::Invalid { message, field } => {
                let details = field.map_or(Value::Null, |f| json!({ "field": f }));
                ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", message)
                    .details(details)
            }
            RpcError::Unavailable { .. } => ApiError::service_unavailable(
                "service_unavailable",
                "a back-end service did not answer; retry shortly",
            ),
            RpcError::WechatRefused { errcode, errmsg } => {
                ApiError::from(ande_wechat::WechatError::Api { errcode, errmsg })
            }
            RpcError::WechatUnavailable { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "wechat_unreachable",
                "WeChat could not be reached",
            ),
            RpcError::Conflict { message } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            RpcError::Internal { .. } => ApiError::internal(e),
        }
    }
}

/// WeChat's refusals as distinct codes and fitting statuses.
impl From<ande_wechat::WechatError> for ApiError {
    fn from(e: ande_wechat::WechatError) -> Self {
        use ande_wechat::WechatError as W;
        match &e {
            W::Api { errcode, errmsg } => {
                let details = json!({ "errcode": errcode, "errmsg": errmsg });
                let (status, code, msg) = match errcode {
                    40029 => (
                        StatusCode::BAD_REQUEST,
                        "wechat_invalid_code",
                        "the login code is invalid or expired",
                    ),
                    40163 => (
                        StatusCode::CONFLICT,
                        "wechat_code_used",
                        "the login code was already used",
                    ),
                    40226 => (
                        StatusCode::FORBIDDEN,
                        "wechat_user_blocked",
                        "WeChat blocked this user's login",
                    ),
                    45011 => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "wechat_too_frequent",
                        "too many requests to WeChat; retry later",
                    ),
                    // A send WeChat refused for what the request named: the caller's to fix.
                    40003 => (
                        StatusCode::NOT_FOUND,
                        "wechat_unknown_user",
                        "WeChat knows no such user in this app (touser)",
                    ),
                    40037 => (
                        StatusCode::NOT_FOUND,
                        "wechat_unknown_template",
                        "WeChat knows no such template (template_id)",
                    ),
                    43101 => (
                        StatusCode::CONFLICT,
                        "wechat_no_subscription",
                        "the user holds no subscription credit for this template",
                    ),
                    47003 | 41030 => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "wechat_invalid_argument",
                        "WeChat refused a value of the message (data or page)",
                    ),
                    -1 => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "wechat_busy",
                        "WeChat is busy; retry later",
                    ),
                    _ => (
                        StatusCode::BAD_GATEWAY,
                        "wechat_refused",
                        "WeChat refused the request",
                    ),
                };
                let mut err = ApiError::new(status, code, msg).details(details);
                if matches!(errcode, 45011 | -1) {
                    err = err.retry_after(5);
                }
                err
            }
            W::Timeout | W::Transport(_) | W::Http { .. } | W::Decode(_) => {
                tracing::warn!(error = %e, "WeChat unreachable");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "wechat_unreachable",
                    "WeChat could not be reached",
                )
            }
            _ => ApiError::internal(e),
        }
    }
}
