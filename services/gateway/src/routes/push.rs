//! `GET/POST /api/wechat/events`: WeChat's message push for the mini-program.
//!
//! WeChat, not a user, calls this: the caller's identity is the signature over our push `Token`
//! (and in safe mode the `msg_signature` over the encrypted body, then the app id inside it).
//! Nothing is read before the signature that covers it is checked. Each item of a subscription
//! push becomes one `wechat.subscription` event whose id is derived from FromUserName +
//! CreateTime + content (`ande_wechat::push::Push::item_id`), published with JetStream's ack
//! before we answer `success`: a push we could not record gets a 503 and WeChat retries it; a
//! retried or replayed push is the same event, stored once by JetStream's duplicate window and
//! applied once by the notifier.
//!
//! Plaintext mode's `signature` does not cover the body, so a push is also refused when its
//! `timestamp` is more than [`MAX_SKEW_SECS`] away from our clock; safe mode (set
//! `WECHAT_PUSH_AES_KEY`) is the setting to deploy.

use std::collections::HashMap;

use ande_contracts::vocab::{SubscriptionStatus, Vocabulary};
use ande_events::{meta_with_id, WechatPushKind, WechatSubscriptionEvent};
use ande_wechat::push::{self, Push, PushError, PushItem};
use ande_wechat::ExposeSecret;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::config::PushConfig;
use crate::error::ApiError;
use crate::AppState;

/// How far a push's `timestamp` may be from our clock (WeChat retries within seconds).
pub const MAX_SKEW_SECS: i64 = 300;

fn config(state: &AppState) -> Result<&PushConfig, ApiError> {
    state.config.push.as_ref().ok_or_else(|| {
        ApiError::not_found("message push is not configured (WECHAT_PUSH_TOKEN is unset)")
    })
}

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    q.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty() && v.chars().count() <= 256)
        .ok_or_else(|| ApiError::validation(name, "is required (at most 256 characters)"))
}

fn refused(e: PushError) -> ApiError {
    match e {
        PushError::Malformed(_) => ApiError::bad_request("malformed_push", e.to_string()),
        _ => ApiError::unauthorized(format!("push refused: {e}")),
    }
}

/// Check `signature` and the timestamp's freshness; answer the timestamp and nonce.
fn signed<'a>(
    config: &PushConfig,
    q: &'a HashMap<String, String>,
) -> Result<(&'a str, &'a str), ApiError> {
    let (signature, timestamp, nonce) = (
        param(q, "signature")?,
        param(q, "timestamp")?,
        param(q, "nonce")?,
    );
    let token = config.token.expose_secret();
    if !push::same(&push::signature(&[token, timestamp, nonce]), signature) {
        return Err(refused(PushError::BadSignature));
    }
    let at: i64 = timestamp
        .parse()
        .map_err(|_| ApiError::validation("timestamp", "must be Unix seconds"))?;
    if (chrono::Utc::now().timestamp() - at).abs() > MAX_SKEW_SECS {
        return Err(ApiError::unauthorized(
            "push refused: timestamp too far from now",
        ));
    }
    Ok((timestamp, nonce))
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET`: the URL check when the push is configured in the admin: answer `echostr` as is.
#[tracing::instrument(skip_all)]
pub async fn check_url(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let config = config(&state)?;
    signed(config, &q)?;
    Ok(text(param(&q, "echostr")?.to_string()))
}

/// The push's plaintext: the body itself, or in safe mode the decrypted `Encrypt` after its
/// `msg_signature` is checked.
fn plaintext(
    state: &AppState,
    config: &PushConfig,
    q: &HashMap<String, String>,
    body: &str,
) -> Result<String, ApiError> {
    let (timestamp, nonce) = signed(config, q)?;
    let encrypted = q.get("encrypt_type").is_some_and(|t| t == "aes");
    let Some(key) = &config.aes_key else {
        if encrypted {
            return Err(ApiError::bad_request(
                "push_mode",
                "an encrypted push, but WECHAT_PUSH_AES_KEY is unset",
            ));
        }
        return Ok(body.to_string());
    };
    if !encrypted {
        return Err(ApiError::bad_request(
            "push_mode",
            "only encrypted (safe mode) pushes are accepted",
        ));
    }
    let msg_signature = param(q, "msg_signature")?;
    let sealed = push::encrypted_field(body).map_err(refused)?;
    let token = config.token.expose_secret();
    if !push::same(
        &push::signature(&[token, timestamp, nonce, &sealed]),
        msg_signature,
    ) {
        return Err(refused(PushError::BadMsgSignature));
    }
    key.decrypt(&sealed, &state.config.wechat.app_id)
        .map_err(refused)
}

/// The event for one verified item (a status this build does not know stays UNSPECIFIED).
pub fn event_for(p: &Push, item: &PushItem) -> WechatSubscriptionEvent {
    let id = p.item_id(item);
    let at = chrono::DateTime::from_timestamp(p.create_time, 0).unwrap_or_else(chrono::Utc::now);
    let status = |s: &str| {
        SubscriptionStatus::parse(&s.to_ascii_lowercase())
            .map(|s| ande_events::SubscriptionStatus::from(s) as i32)
            .unwrap_or_default()
    };
    let mut e = WechatSubscriptionEvent {
        meta: Some(meta_with_id(id, &id.to_string(), "gateway", at)),
        openid: p.from_user.clone(),
        template_id: item.template_id().to_string(),
        create_time: p.create_time,
        ..Default::default()
    };
    match item {
        PushItem::Popup {
            status: s, scene, ..
        } => {
            e.kind = WechatPushKind::Popup as i32;
            e.status = status(s);
            e.popup_scene = scene.clone();
        }
        PushItem::Change { status: s, .. } => {
            e.kind = WechatPushKind::Change as i32;
            e.status = status(s);
        }
        PushItem::Sent {
            msg_id,
            error_code,
            error_status,
            ..
        } => {
            e.kind = WechatPushKind::Sent as i32;
            e.msg_id = msg_id.clone();
            e.error_code = *error_code;
            e.error_status = error_status.clone();
        }
    }
    e
}

/// `POST`: one push. Answers `success` once every item is stored in JetStream.
#[tracing::instrument(skip_all)]
pub async fn receive(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config = config(&state)?;
    let body = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("malformed_push", "the body is not UTF-8"))?;
    let plain = plaintext(&state, config, &q, body)?;
    let p = Push::parse(&plain).map_err(refused)?;
    if p.items.is_empty() {
        tracing::debug!(event = %p.event, msg_type = %p.msg_type, "push without subscription items ignored");
    }
    for item in &p.items {
        state.bus.publish(&event_for(&p, item)).await.map_err(|e| {
            tracing::warn!(error = %e, "publish failed");
            ApiError::bus_unavailable()
        })?;
    }
    tracing::info!(event = %p.event, items = p.items.len(), "push recorded");
    Ok(text("success".into()))
}
