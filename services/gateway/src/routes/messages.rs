//! `POST /api/message/send` (staff only) and `POST /api/auth/login`.

use std::time::Duration;

use ande_contracts::notifier::{DirectSend, Send};
use ande_contracts::vocab::{Lang, MiniprogramState};
use ande_platform::rpc::{self, RpcError};
use ande_wechat::SubscribeMessage;
use axum::extract::State;
use axum::response::Response;
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::error::{ok, ApiError};
use crate::extract::{ClientIp, JsonBody, Staff};
use crate::validate;
use crate::AppState;

/// The send goes through the notifier, which calls WeChat with its own 5 s timeout.
const SEND_TIMEOUT: Duration = Duration::from_secs(8);
/// WeChat templates have at most this many keywords.
pub const MAX_KEYWORDS: usize = 20;
/// Longer passwords are refused before hashing (argon2 is deliberately slow).
pub const MAX_PASSWORD: usize = 256;

/// Send a subscribe message now. Staff only: it can message any user of the app.
#[tracing::instrument(skip_all, fields(staff = %staff.sub))]
pub async fn send(
    State(state): State<AppState>,
    Staff(staff): Staff,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let touser = validate::WECHAT_ID.required("touser", body.get("touser"))?;
    let template_id = validate::WECHAT_ID.required("template_id", body.get("template_id"))?;
    let page = validate::PAGE.optional("page", body.get("page"))?;
    let miniprogram_state: Option<MiniprogramState> =
        validate::word("miniprogram_state", body.get("miniprogram_state"))?;
    let lang: Option<Lang> = validate::word("lang", body.get("lang"))?;
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
    msg.miniprogram_state = miniprogram_state.map(|s| s.as_str().to_string());
    msg.lang = lang.map(|l| l.as_str().to_string());
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
    let direct = DirectSend {
        touser: msg.touser,
        template_id: msg.template_id,
        page: msg.page,
        data: msg.data,
        miniprogram_state,
        lang,
    };
    let sent = rpc::call::<Send>(
        &state.bus.client,
        &state.bus.subjects,
        &direct,
        SEND_TIMEOUT,
    )
    .await
    .inspect_err(|e| {
        if let RpcError::WechatRefused { errcode, errmsg } = e {
            tracing::info!(errcode, errmsg, "direct send refused by WeChat");
        }
    })?;
    Ok(ok(
        json!({ "errcode": 0, "errmsg": "ok", "msgid": sent.msgid }),
        "发送成功",
    ))
}

/// Staff login: username and password for a staff token.
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let username = validate::USERNAME.required("username", body.get("username"))?;
    let password = match body.get("password") {
        Some(Value::String(p)) if !p.is_empty() && p.chars().count() <= MAX_PASSWORD => {
            SecretString::from(p.clone())
        }
        _ => {
            return Err(ApiError::validation(
                "password",
                format!("is required (at most {MAX_PASSWORD} characters)"),
            ))
        }
    };
    let client = crate::clientip::limit_key(ip);
    let _slot = state.logins.admit(&username, &client).await?;
    let Some(ver) = auth::check_login(&state.pool, &username, password)
        .await
        .map_err(ApiError::db)?
    else {
        state.logins.failed(&username, &client);
        return Err(ApiError::unauthorized("wrong username or password"));
    };
    state.logins.succeeded(&username, &client);
    let token = auth::issue_staff(
        &state.config.jwt_secret,
        &username,
        ver,
        state.config.jwt_expires_in,
    )
    .map_err(ApiError::internal)?;
    Ok(ok(
        json!({ "token": token, "username": username, "expiresIn": state.config.jwt_expires_in.as_secs() }),
        "登录成功",
    ))
}
