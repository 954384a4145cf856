//! `POST /api/message/send` (staff only) and `POST /api/auth/login`.

use std::time::Duration;

use ande_contracts::notifier::{DirectSend, Send, SendKey};
use ande_contracts::vocab::{Lang, MiniprogramState};
use ande_contracts::Unavailable;
use ande_platform::rpc::{self, RpcError};
use ande_wechat::SubscribeMessage;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::error::{ok, ApiError};
use crate::extract::{Admin, ClientIp, JsonBody};
use crate::idempotency;
use crate::validate;
use crate::AppState;

/// The send goes through the notifier, which may fetch an access token and send (each with
/// WeChat's 5 s timeout) and retry once after an invalid token: about 20 s at worst. The gateway
/// waits longer than that (and less than its 30 s request deadline) so that a slow send is
/// answered rather than abandoned.
const SEND_TIMEOUT: Duration = Duration::from_secs(25);
/// WeChat templates have at most this many keywords.
pub const MAX_KEYWORDS: usize = 20;
/// Longer passwords are refused before hashing (argon2 is deliberately slow).
pub const MAX_PASSWORD: usize = 256;

/// Send a subscribe message now. Staff only: it can message any user of the app.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn send(
    State(state): State<AppState>,
    Admin(staff): Admin,
    headers: HeaderMap,
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
    let idempotency = idempotency::key(&headers)?.map(|key| SendKey {
        scope: staff.author(),
        key,
        fingerprint: idempotency::fingerprint(&Value::Object(body.clone())),
    });
    let keyed = idempotency.is_some();
    let direct = DirectSend {
        idempotency,
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
    })
    .map_err(|e| outcome_unknown(e, keyed))?;
    Ok(ok(
        json!({ "errcode": 0, "errmsg": "ok", "msgid": sent.msgid }),
        "发送成功",
    ))
}

/// No answer in time, or WeChat gave none: the message may still have been sent. Say how to
/// learn the outcome instead of inviting a blind retry (no Retry-After).
fn outcome_unknown(e: RpcError, keyed: bool) -> ApiError {
    let how = if keyed {
        "retry with the same Idempotency-Key to learn the outcome (it is never sent twice)"
    } else {
        "a retry may send it twice; send with an Idempotency-Key to retry safely"
    };
    match e {
        RpcError::Unavailable {
            cause: Unavailable::Timeout,
            ..
        } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "send_outcome_unknown",
            format!("the notifier did not answer in time; the message may still be sent: {how}"),
        ),
        RpcError::WechatUnavailable { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "send_outcome_unknown",
            format!("WeChat gave no answer; the message may have been delivered: {how}"),
        ),
        other => other.into(),
    }
}

/// Staff login: username and password for a staff token.
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let (username, token) = authenticate(&state, ip, &body).await?;
    Ok(ok(
        json!({ "token": token, "username": username, "expiresIn": state.config.jwt_expires_in.as_secs() }),
        "登录成功",
    ))
}

/// Check `{username, password}` (throttled per client and account) and issue a staff token:
/// the username and the token. Used by `POST /api/auth/login` and the console's sign-in.
pub async fn authenticate(
    state: &AppState,
    ip: std::net::IpAddr,
    body: &Map<String, Value>,
) -> Result<(String, String), ApiError> {
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
    Ok((username, token))
}
