//! `POST /api/wechat/openid` (login) and `POST /api/wechat/phone` (phone number by code).

use std::time::Duration;

use ande_contracts::notifier::{Phone, PhoneQuery};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::clientip;
use crate::error::{ok, ApiError};
use crate::extract::{ClientIp, JsonBody, MaybeSession};
use crate::validate;
use crate::AppState;

/// The phone lookup goes through the notifier (which holds the access token); WeChat's own
/// timeout is 5 s, so allow a little more.
const PHONE_TIMEOUT: Duration = Duration::from_secs(7);

/// These calls spend the app's WeChat quota (and anyone may make them): each client, and each
/// session, gets `GATEWAY_RATE_WECHAT` a minute.
fn spend_quota(state: &AppState, key: &str) -> Result<(), ApiError> {
    state.wechat_limiter.check(key).map_err(|wait| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many WeChat logins or phone lookups; slow down",
        )
        .retry_after(wait)
    })
}

/// Exchange a `wx.login()` code for the openid and a session token. The session_key stays here.
#[tracing::instrument(skip_all)]
pub async fn openid(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let code = validate::CODE.required("code", body.get("code"))?;
    spend_quota(&state, &format!("client:{}", clientip::limit_key(ip)))?;
    let session = state.wechat.code2session(&code).await?;
    let token = auth::issue(
        &state.config.jwt_secret,
        auth::MINIPROGRAM_AUDIENCE,
        &session.openid,
        None,
        state.config.jwt_expires_in,
    )
    .map_err(ApiError::internal)?;
    let mut data = json!({
        "openid": session.openid,
        "token": token,
        "expiresIn": state.config.jwt_expires_in.as_secs(),
    });
    if let Some(u) = session.unionid {
        data["unionid"] = json!(u);
    }
    Ok(ok(data, "获取openid成功"))
}

/// Exchange the phone button's code for the user's phone number. With a session token, the
/// answer carries a renewed session token that includes the number, so later actions of this
/// customer carry it without the client sending it.
#[tracing::instrument(skip_all)]
pub async fn phone(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSession(session): MaybeSession,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let code = validate::CODE.required("code", body.get("code"))?;
    spend_quota(&state, &format!("client:{}", clientip::limit_key(ip)))?;
    if let Some(s) = &session {
        spend_quota(&state, &format!("session:{}", s.sub))?;
    }
    let openid = session.as_ref().map(|s| s.sub.clone());
    let q = PhoneQuery { code, openid };
    let info = state.call::<Phone>(&q, PHONE_TIMEOUT).await?;
    let mut data = json!({
        "phoneNumber": info.phone_number,
        "purePhoneNumber": info.pure_phone_number,
        "countryCode": info.country_code,
    });
    if let Some(s) = session {
        let phone = data["purePhoneNumber"].as_str().map(String::from);
        let token = auth::issue(
            &state.config.jwt_secret,
            auth::MINIPROGRAM_AUDIENCE,
            &s.sub,
            phone,
            state.config.jwt_expires_in,
        )
        .map_err(ApiError::internal)?;
        data["token"] = json!(token);
    }
    Ok(ok(data, "获取手机号成功"))
}
