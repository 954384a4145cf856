//! WeChat's error envelope, and the one place the simulator's errcodes and errmsgs are written.
//!
//! WeChat answers API errors with HTTP 200 and a body `{"errcode": …, "errmsg": "…"}`; a client
//! that looks at the status code instead of the body is wrong against the real server, so the
//! simulator answers the same way. Like WeChat, every errmsg ends in `, rid: …` (a request id
//! that differs on every answer), so clients cannot get away with comparing errmsgs for equality:
//! they must branch on `errcode`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde_json::json;

/// The errcodes the simulator answers with. Names follow WeChat's documentation.
pub mod errcode {
    pub const SYSTEM_BUSY: i64 = -1;
    pub const INVALID_CREDENTIAL: i64 = 40001;
    pub const INVALID_GRANT_TYPE: i64 = 40002;
    pub const INVALID_OPENID: i64 = 40003;
    pub const INVALID_APPID: i64 = 40013;
    pub const INVALID_ACCESS_TOKEN: i64 = 40014;
    pub const INVALID_CODE: i64 = 40029;
    pub const INVALID_TEMPLATE_ID: i64 = 40037;
    pub const INVALID_APPSECRET: i64 = 40125;
    pub const CODE_BEEN_USED: i64 = 40163;
    pub const ACCESS_TOKEN_MISSING: i64 = 41001;
    pub const APPID_MISSING: i64 = 41002;
    pub const APPSECRET_MISSING: i64 = 41004;
    pub const CODE_MISSING: i64 = 41008;
    pub const PAGE_INVALID: i64 = 41030;
    pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
    pub const USER_REFUSED: i64 = 43101;
    pub const DAILY_QUOTA: i64 = 45009;
    pub const MINUTE_QUOTA: i64 = 45011;
    pub const SENSITIVE_CONTENT: i64 = 45168;
    pub const DATA_FORMAT_ERROR: i64 = 47001;
    pub const ARGUMENT_INVALID: i64 = 47003;
    pub const UNAUTHORIZED: i64 = 48001;
    pub const HIGH_RISK_USER: i64 = 40226;
}

/// The errmsg WeChat gives for an errcode, as far as its documentation and SDK issue trackers show.
/// Used for injected faults and for errors with nothing to add.
pub fn standard_errmsg(code: i64) -> &'static str {
    use errcode::*;
    match code {
        SYSTEM_BUSY => "system error",
        INVALID_CREDENTIAL => "invalid credential, access_token is invalid or not latest",
        INVALID_GRANT_TYPE => "invalid grant_type",
        INVALID_OPENID => "invalid openid",
        INVALID_APPID => "invalid appid",
        INVALID_ACCESS_TOKEN => "invalid access_token",
        INVALID_CODE => "invalid code",
        INVALID_TEMPLATE_ID => "invalid template_id",
        INVALID_APPSECRET => "invalid appsecret",
        CODE_BEEN_USED => "code been used",
        ACCESS_TOKEN_MISSING => "access_token missing",
        APPID_MISSING => "appid missing",
        APPSECRET_MISSING => "appsecret missing",
        CODE_MISSING => "missing code",
        PAGE_INVALID => "invalid weapp pagepath",
        ACCESS_TOKEN_EXPIRED => "access_token expired",
        USER_REFUSED => "user refuse to accept the msg",
        DAILY_QUOTA => "reach max api daily quota limit",
        MINUTE_QUOTA => "api minute-quota reach limit  mustslower  retry next minute",
        SENSITIVE_CONTENT => "sensitive content",
        DATA_FORMAT_ERROR => "data format error",
        ARGUMENT_INVALID => "argument invalid!",
        UNAUTHORIZED => "api unauthorized",
        HIGH_RISK_USER => "high risk user, login blocked",
        _ => "simulated fault",
    }
}

/// An API error as WeChat sends it: HTTP 200, `errcode` and `errmsg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WxError {
    pub errcode: i64,
    /// The message without the `rid` suffix, which is added when the answer is written.
    pub errmsg: String,
}

impl WxError {
    pub fn new(errcode: i64, errmsg: impl Into<String>) -> Self {
        Self {
            errcode,
            errmsg: errmsg.into(),
        }
    }

    /// The error with WeChat's usual message for its code.
    pub fn of(errcode: i64) -> Self {
        Self::new(errcode, standard_errmsg(errcode))
    }

    /// 47003 naming what is wrong, as in `argument invalid! data.thing3.value invalid`.
    pub fn argument_invalid(what: &str) -> Self {
        Self::new(
            errcode::ARGUMENT_INVALID,
            format!("argument invalid! {what} invalid"),
        )
    }

    /// 47001 with WeChat's `hint` naming what could not be read.
    pub fn data_format(hint: &str) -> Self {
        Self::new(
            errcode::DATA_FORMAT_ERROR,
            format!("data format error hint: [{hint}]"),
        )
    }
}

impl IntoResponse for WxError {
    fn into_response(self) -> Response {
        let body = json!({
            "errcode": self.errcode,
            "errmsg": format!("{}, rid: {}", self.errmsg, rid()),
        });
        (StatusCode::OK, Json(body)).into_response()
    }
}

/// A request id shaped like WeChat's (`6523e7e2-0c1a8f38-6e2b3c1a`).
fn rid() -> String {
    let mut rng = rand::thread_rng();
    let secs = chrono::Utc::now().timestamp() as u32;
    format!(
        "{secs:08x}-{:08x}-{:08x}",
        rng.gen::<u32>(),
        rng.gen::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_http_200_with_a_request_id_like_wechat() {
        let resp = WxError::argument_invalid("data.thing3.value").into_response();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["errcode"], 47003);
        let msg = body["errmsg"].as_str().unwrap();
        assert!(
            msg.starts_with("argument invalid! data.thing3.value invalid, rid: "),
            "{msg}"
        );
        assert_eq!(msg.rsplit("rid: ").next().unwrap().len(), 26, "{msg}");
    }
}
