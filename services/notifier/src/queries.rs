//! Request/reply for the gateway and andectl (`<prefix>.rpc.notifier.<method>`):
//! - `journey`: the notifications and delivery log of an action;
//! - `digest`: the notifications a digest stands for;
//! - `send`: a direct send (staff), through this service's token cache so there is one cache;
//! - `phone`: a phone number by the phone button's code (needs the access token);
//! - `resume`: lift a pause (after 45009, or an operator's).

use ande_platform::rpc::{self, ActionQuery, RpcError};
use ande_wechat::{SubscribeMessage, WechatClient, WechatError};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

pub const QUEUE_GROUP: &str = "notifier";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestQuery {
    pub digest_id: String,
}

/// WeChat's answer to a direct send, passed back as is.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SendAnswer {
    pub errcode: i64,
    pub errmsg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
}

pub async fn journey(pool: &PgPool, q: ActionQuery) -> Result<serde_json::Value, RpcError> {
    let id = rpc::parse_id(&q.action_id)?;
    let mut conn = pool.acquire().await?;
    let (notifications, log) = store::journey(&mut conn, id).await?;
    Ok(serde_json::json!({ "notifications": notifications, "log": log }))
}

pub async fn digest(pool: &PgPool, q: DigestQuery) -> Result<serde_json::Value, RpcError> {
    let id = rpc::parse_id(&q.digest_id)?;
    let mut conn = pool.acquire().await?;
    let Some(digest) = store::digest_row(&mut conn, id).await? else {
        return Err(RpcError::not_found("no such digest"));
    };
    let members = store::digest_members(&mut conn, id).await?;
    Ok(serde_json::json!({ "digestId": id, "digest": digest, "notifications": members }))
}

/// Send now. Keyword values are checked before WeChat is called; WeChat's refusals are answered
/// as WeChat gave them (errcode, errmsg) rather than as RPC errors. An accepted send uses one of
/// our counted credits for that user and template, if we have any.
pub async fn send(
    pool: &PgPool,
    wechat: &WechatClient,
    msg: SubscribeMessage,
) -> Result<SendAnswer, RpcError> {
    if msg.touser.trim().is_empty() || msg.template_id.trim().is_empty() {
        return Err(RpcError::bad_request("touser and template_id are required"));
    }
    if let Err(e) = msg.validate() {
        return Err(RpcError::bad_request(e.to_string())
            .with_details(serde_json::json!({ "keyword": e.keyword })));
    }
    let answer = match wechat.send_subscribe(&msg).await {
        Ok(r) => SendAnswer {
            errcode: 0,
            errmsg: "ok".into(),
            msgid: Some(r.msgid),
        },
        Err(WechatError::Api { errcode, errmsg }) => SendAnswer {
            errcode,
            errmsg,
            msgid: None,
        },
        Err(e) => return Err(RpcError::new("wechat_unavailable", e.to_string())),
    };
    // WeChat's answer is known now and is what the caller must get: a bookkeeping failure is
    // logged, never turned into an error (a caller would retry and send the message twice).
    if let Err(e) = book_direct_send(pool, &msg, &answer).await {
        tracing::warn!(error = %e, errcode = answer.errcode, "direct send answered but not recorded");
    }
    Ok(answer)
}

#[derive(Debug, Deserialize)]
pub struct PhoneQuery {
    pub code: String,
    #[serde(default)]
    pub openid: Option<String>,
}

/// A phone number by the phone button's code (`getuserphonenumber` needs the access token, which
/// lives here). WeChat's refusals come back as code `wechat` with errcode and errmsg.
pub async fn phone(
    wechat: &WechatClient,
    q: PhoneQuery,
) -> Result<ande_wechat::PhoneInfo, RpcError> {
    if q.code.trim().is_empty() {
        return Err(RpcError::bad_request("code is required"));
    }
    match wechat.phone_number(&q.code, q.openid.as_deref()).await {
        Ok(info) => Ok(info),
        Err(WechatError::Api { errcode, errmsg }) => Err(RpcError::new("wechat", "WeChat refused")
            .with_details(serde_json::json!({ "errcode": errcode, "errmsg": errmsg }))),
        Err(e) => Err(RpcError::new("wechat_unavailable", e.to_string())),
    }
}

/// Credits, pause and log after a direct send.
async fn book_direct_send(
    pool: &PgPool,
    msg: &SubscribeMessage,
    answer: &SendAnswer,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    match answer.errcode {
        0 => {
            sqlx::query("UPDATE subscriptions SET credits = credits - 1, updated_at = now() WHERE openid = $1 AND template_id = $2 AND credits > 0 AND NOT long_term AND advisor_id = (SELECT advisor_id FROM subscriptions WHERE openid = $1 AND template_id = $2 AND credits > 0 AND NOT long_term LIMIT 1)")
                .bind(&msg.touser)
                .bind(&msg.template_id)
                .execute(&mut *conn)
                .await?;
        }
        ande_wechat::error::ERRCODE_NO_SUBSCRIPTION => {
            store::zero_credits(&mut conn, &msg.touser, &msg.template_id).await?
        }
        crate::dispatch::ERRCODE_DAILY_QUOTA => {
            // The quota is the app's, not this call's: the queue would only hit it too.
            let until = crate::dispatch::next_quota_reset(chrono::Utc::now());
            store::pause_until(
                &mut conn,
                Some(until),
                "45009 daily quota reached (direct send)",
            )
            .await?;
            tracing::warn!(until = %until, "daily quota reached on a direct send; sending paused");
        }
        _ => {}
    }
    store::log(
        &mut conn,
        None,
        None,
        "",
        "direct_send",
        Some(answer.errcode),
        Some(&answer.errmsg),
        answer.msgid.as_deref(),
        Some(&msg.touser),
    )
    .await
}

pub async fn resume(pool: &PgPool) -> Result<serde_json::Value, RpcError> {
    let mut tx = pool.begin().await?;
    store::pause_until(&mut tx, None, "resumed by operator").await?;
    let n = sqlx::query("UPDATE notifications SET next_attempt_at = now() WHERE state = 'queued' AND next_attempt_at > now()")
        .execute(&mut *tx)
        .await
        ?
        .rows_affected();
    tx.commit().await?;
    Ok(serde_json::json!({ "resumed": true, "requeued": n }))
}

pub async fn serve(
    client: async_nats::Client,
    subjects: ande_events::Subjects,
    pool: PgPool,
    wechat: WechatClient,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    rpc::Responder::new(client, subjects, QUEUE_GROUP, shutdown, (pool, wechat))
        .method("journey", |(p, _): Shared, q| async move {
            journey(&p, q).await
        })
        .method(
            "digest",
            |(p, _): Shared, q| async move { digest(&p, q).await },
        )
        .method(
            "send",
            |(p, w): Shared, m| async move { send(&p, &w, m).await },
        )
        .method(
            "phone",
            |(_, w): Shared, q| async move { phone(&w, q).await },
        )
        .method(
            "resume",
            |(p, _): Shared, _: serde_json::Value| async move { resume(&p).await },
        )
        .run()
        .await
}

/// What every method may use.
type Shared = (PgPool, WechatClient);
