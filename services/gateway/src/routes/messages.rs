//! `POST /api/message/send` (staff only) and `POST /api/auth/login`.

use std::time::Duration;

use ande_wechat::SubscribeMessage;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::error::{ok, ApiError};
use crate::extract::{JsonBody, Staff};
use crate::validate::{self, MAX_ID};
use crate::AppState;

/// The send goes through the notifier, which calls WeChat with its own 5 s timeout.
const SEND_TIMEOUT: Duration = Duration::from_secs(8);
const MAX_KEYWORDS: usize = 20;

/// Send a subscribe message now. Staff only: it can message any user of the app.
#[tracing::instrument(skip_all, fields(staff = %staff.sub))]
pub async fn send(
    State(state): State<AppState>,
    Staff(staff): Staff,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let touser = validate::required("touser", body.get("touser"), MAX_ID)?;
    let template_id = validate::required("template_id", body.get("template_id"), MAX_ID)?;
    let page = validate::optional("page", body.get("page"), 512)?;
    let miniprogram_state =
        validate::optional("miniprogram_state", body.get("miniprogram_state"), 16)?;
    if let Some(s) = &miniprogram_state {
        if !["developer", "trial", "formal"].contains(&s.as_str()) {
            return Err(ApiError::validation(
                "miniprogram_state",
                "must be developer, trial or formal",
            ));
        }
    }
    let lang = validate::optional("lang", body.get("lang"), 8)?;
    if let Some(l) = &lang {
        if !["zh_CN", "en_US", "zh_HK", "zh_TW"].contains(&l.as_str()) {
            return Err(ApiError::validation(
                "lang",
                "must be zh_CN, en_US, zh_HK or zh_TW",
            ));
        }
    }
    let data = body
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::validation("data", "must be an object of {keyword: {value}}"))?;
    if data.is_empty() || data.len() > MAX_KEYWORDS {
        return Err(ApiError::validation(
            "data",
            format!("must hold 1 to {MAX_KEYWORDS} keywords"),
        ));
    }
    let mut msg = SubscribeMessage::new(touser, template_id);
    msg.page = page;
    msg.miniprogram_state = miniprogram_state;
    msg.lang = lang;
    for (k, v) in data {
        let value = v.get("value").and_then(Value::as_str).ok_or_else(|| {
            ApiError::validation(&format!("data.{k}"), "must be {\"value\": \"…\"}")
        })?;
        msg.data.insert(k.clone(), value.to_string());
    }
    // Refuse what WeChat would refuse, before calling it.
    msg.validate()
        .map_err(|e| ApiError::validation(&format!("data.{}.value", e.keyword), e.to_string()))?;
    state.require_bus()?;
    let answer: Value = ande_platform::rpc::call(
        &state.bus.client,
        state.bus.subjects.rpc("notifier", "send"),
        &msg,
        SEND_TIMEOUT,
    )
    .await?;
    let errcode = answer.get("errcode").and_then(Value::as_i64).unwrap_or(-1);
    if errcode == 0 {
        Ok(ok(answer, "发送成功"))
    } else {
        let errmsg = answer
            .get("errmsg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "wechat_refused",
            format!("WeChat refused the message ({errcode})"),
        )
        .details(answer)
        .tap_log(&errmsg))
    }
}

trait TapLog {
    fn tap_log(self, errmsg: &str) -> Self;
}
impl TapLog for ApiError {
    fn tap_log(self, errmsg: &str) -> Self {
        tracing::info!(code = self.code, errmsg, "direct send refused by WeChat");
        self
    }
}

/// Staff login: username and password for a staff token.
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let username = validate::required("username", body.get("username"), 64)?;
    let password = match body.get("password") {
        Some(Value::String(p)) if !p.is_empty() && p.len() <= 256 => SecretString::from(p.clone()),
        _ => {
            return Err(ApiError::validation(
                "password",
                "is required (at most 256 bytes)",
            ))
        }
    };
    let _permit = state.login_permits.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many logins at once; retry in a moment",
        )
        .retry_after(1)
    })?;
    if !auth::check_login(&state.pool, &username, password)
        .await
        .map_err(ApiError::db)?
    {
        return Err(ApiError::unauthorized("wrong username or password"));
    }
    let token = auth::issue(
        &state.config.jwt_secret,
        auth::STAFF_AUDIENCE,
        &username,
        None,
        state.config.jwt_expires_in,
    )
    .map_err(ApiError::internal)?;
    Ok(ok(
        json!({ "token": token, "username": username, "expiresIn": state.config.jwt_expires_in.as_secs() }),
        "登录成功",
    ))
}
