//! Request/reply for the gateway and andectl (`<prefix>.rpc.notifier.<method>`, contracts in
//! `ande_contracts::notifier`):
//! - `journey`: the notifications and delivery log of an action;
//! - `digest`: the notifications a digest stands for;
//! - `send`: a direct send (staff), through this service's token cache so there is one cache;
//! - `phone`: a phone number by the phone button's code (needs the access token);
//! - `resume`: lift a pause (after 45009, or an operator's);
//! - `pause`, `queue`, `notifications`, `retry`: the queue for operators, and `credits`, an
//!   advisor's own remaining credits ([`crate::queue`]);
//! - `stats`: messages sent per hour and the latest errors (the staff console's overview);
//! - `bind`, `unbind`, `bindings`, `pair`, `redeem`, `check_binding`: advisor bindings
//!   ([`crate::bindings`]).

use ande_contracts::leads::ActionQuery;
use ande_contracts::leads::{HourCount, StatsQuery};
use ande_contracts::notifier::{Bind, CheckBinding, ListBindings, Pair, Redeem, Unbind};
use ande_contracts::notifier::{Credits, ListNotifications, Pause, QueueQuery, QueueStatus, Retry};
use ande_contracts::notifier::{DeliveryStats, NotifierStats};
use ande_contracts::notifier::{DeliveryView, GetAdvisorSettings, SetAdvisorSettings};
use ande_contracts::notifier::{
    DigestContents, DigestQuery, DirectSend, GetDigest, Journey, NotifierJourney, Phone,
    PhoneNumber, PhoneQuery, Resume, ResumeRequest, Resumed, Send, Sent,
};

use ande_platform::rpc::{self, Failure, RpcError};
use ande_wechat::{SubscribeMessage, WechatClient, WechatError};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::bindings;
use crate::credits;
use crate::queue;
use crate::send_keys;
use crate::store::{self, LogEntry};

pub async fn journey(pool: &PgPool, q: ActionQuery) -> Result<NotifierJourney, Failure> {
    let mut conn = pool.acquire().await?;
    let (notifications, log) = store::journey(&mut conn, q.action_id).await?;
    Ok(NotifierJourney { notifications, log })
}

pub async fn digest(pool: &PgPool, q: DigestQuery) -> Result<DigestContents, Failure> {
    let mut conn = pool.acquire().await?;
    let Some(digest) = store::digest_row(&mut conn, q.digest_id).await? else {
        return Err(RpcError::not_found("no such digest").into());
    };
    let notifications = store::digest_members(&mut conn, q.digest_id).await?;
    Ok(DigestContents {
        digest,
        notifications,
    })
}

/// The WeChat message of a direct send.
fn subscribe_message(d: DirectSend) -> SubscribeMessage {
    let mut msg = SubscribeMessage::new(d.touser, d.template_id);
    msg.page = d.page;
    msg.data = d.data;
    msg.miniprogram_state = d.miniprogram_state.map(|s| s.as_str().to_string());
    msg.lang = d.lang.map(|l| l.as_str().to_string());
    msg
}

/// Send now. Keyword values are checked before WeChat is called. An accepted send uses one of
/// our counted credits for that user and template, if we have any; WeChat's refusal is
/// `WechatRefused` with its errcode and errmsg.
pub async fn send(pool: &PgPool, wechat: &WechatClient, d: DirectSend) -> Result<Sent, Failure> {
    if d.touser.trim().is_empty() || d.template_id.trim().is_empty() {
        return Err(RpcError::invalid("touser and templateId are required").into());
    }
    let key = d.idempotency.clone();
    let msg = subscribe_message(d);
    if let Err(e) = msg.validate() {
        let field = format!("data.{}.value", e.keyword);
        return Err(RpcError::invalid_field(field, e.to_string()).into());
    }
    if let Some(k) = &key {
        if let Some(earlier) = send_keys::claim(pool, k).await? {
            return earlier.map_err(Failure::from);
        }
    }
    let (answer, errcode, errmsg) = match wechat.send_subscribe(&msg).await {
        Ok(r) => (Ok(Sent { msgid: r.msgid }), 0, "ok".to_string()),
        Err(WechatError::Api { errcode, errmsg }) => {
            let refused = RpcError::WechatRefused {
                errcode,
                errmsg: errmsg.clone(),
            };
            (Err(refused), errcode, errmsg)
        }
        Err(e) => {
            if let Some(k) = &key {
                if let Err(db) = send_keys::unknown(pool, k).await {
                    tracing::warn!(error = %db, "cannot mark a keyed direct send unknown");
                }
            }
            return Err(RpcError::WechatUnavailable {
                message: e.to_string(),
            }
            .into());
        }
    };
    if let Some(k) = &key {
        let msgid = answer.as_ref().ok().map(|s| s.msgid.as_str());
        if let Err(e) = send_keys::answered(pool, k, errcode, &errmsg, msgid).await {
            tracing::warn!(error = %e, "keyed direct send answered but its answer not kept");
        }
    }
    // WeChat's answer is known now and is what the caller must get: a bookkeeping failure is
    // logged, never turned into an error (a caller would retry and send the message twice).
    let msgid = answer.as_ref().ok().map(|s| s.msgid.as_str());
    if let Err(e) = book_direct_send(pool, &msg, errcode, &errmsg, msgid).await {
        tracing::warn!(error = %e, errcode, "direct send answered but not recorded");
    }
    answer.map_err(Failure::from)
}

/// A phone number by the phone button's code (`getuserphonenumber` needs the access token, which
/// lives here).
pub async fn phone(wechat: &WechatClient, q: PhoneQuery) -> Result<PhoneNumber, Failure> {
    if q.code.trim().is_empty() {
        return Err(RpcError::invalid_field("code", "is required").into());
    }
    match wechat.phone_number(&q.code, q.openid.as_deref()).await {
        Ok(info) => Ok(PhoneNumber {
            phone_number: info.phone_number,
            pure_phone_number: info.pure_phone_number,
            country_code: info.country_code,
        }),
        Err(WechatError::Api { errcode, errmsg }) => {
            Err(RpcError::WechatRefused { errcode, errmsg }.into())
        }
        Err(e) => Err(RpcError::WechatUnavailable {
            message: e.to_string(),
        }
        .into()),
    }
}

/// Credits, pause and log after a direct send WeChat answered with `errcode`.
async fn book_direct_send(
    pool: &PgPool,
    msg: &SubscribeMessage,
    errcode: i64,
    errmsg: &str,
    msgid: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    match errcode {
        0 => credits::spend_direct(&mut conn, &msg.touser, &msg.template_id).await?,
        ande_wechat::error::ERRCODE_NO_SUBSCRIPTION => {
            credits::zero_direct(&mut conn, &msg.touser, &msg.template_id).await?
        }
        crate::dispatch::ERRCODE_DAILY_QUOTA => {
            // The quota is the app's, not this call's: the queue would only hit it too.
            let until = crate::dispatch::next_quota_reset(chrono::Utc::now());
            let why = "45009 daily quota reached (direct send)";
            store::pause_until(&mut conn, Some(until), why).await?;
            tracing::warn!(until = %until, "daily quota reached on a direct send; sending paused");
        }
        _ => {}
    }
    LogEntry {
        event: "direct_send",
        errcode: Some(errcode),
        errmsg: Some(errmsg),
        msgid,
        detail: Some(&msg.touser),
        ..LogEntry::default()
    }
    .write(&mut conn)
    .await
}

pub async fn resume(pool: &PgPool) -> Result<Resumed, Failure> {
    let mut tx = pool.begin().await?;
    store::pause_until(&mut tx, None, "resumed by operator").await?;
    let requeued = sqlx::query!(
        "UPDATE notifications SET next_attempt_at = now() WHERE state = 'queued' AND next_attempt_at > now()"
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Resumed { requeued })
}

/// Sends WeChat accepted per hour over the last day and the latest errors, for the advisors
/// asked about (all when none are named).
pub async fn stats(pool: &PgPool, q: StatsQuery) -> Result<NotifierStats, Failure> {
    let mut conn = pool.acquire().await?;
    let advisors = q.advisor_ids.as_deref();
    let sent_per_hour = sqlx::query_as!(
        HourCount,
        r#"SELECT date_trunc('hour', d.at) AS "hour!", count(*) AS "count!"
           FROM deliveries d LEFT JOIN notifications n ON n.id = d.notification_id
           WHERE d.at > now() - interval '24 hours' AND d.event = 'sent'
             AND ($1::text[] IS NULL OR n.advisor_id = ANY($1))
           GROUP BY 1 ORDER BY 1"#,
        advisors
    )
    .fetch_all(&mut *conn)
    .await?;
    let recent_errors = sqlx::query_as!(
        DeliveryView,
        r#"SELECT d.event, d.errcode, d.errmsg, d.msgid, d.detail, d.at
           FROM deliveries d LEFT JOIN notifications n ON n.id = d.notification_id
           WHERE d.at > now() - interval '24 hours' AND COALESCE(d.errcode, 0) <> 0
             AND ($1::text[] IS NULL OR n.advisor_id = ANY($1))
           ORDER BY d.at DESC, d.id DESC LIMIT 10"#,
        advisors
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(NotifierStats {
        sent_per_hour,
        recent_errors,
    })
}

pub async fn serve(
    client: async_nats::Client,
    subjects: ande_events::Subjects,
    pool: PgPool,
    wechat: WechatClient,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    rpc::Responder::new(client, subjects, shutdown, (pool, wechat))
        .method::<Journey, _, _>(|(p, _): Shared, q| async move { journey(&p, q).await })
        .method::<GetDigest, _, _>(|(p, _): Shared, q| async move { digest(&p, q).await })
        .method::<Send, _, _>(|(p, w): Shared, m| async move { send(&p, &w, m).await })
        .method::<Phone, _, _>(|(_, w): Shared, q| async move { phone(&w, q).await })
        .method::<Resume, _, _>(|(p, _): Shared, _: ResumeRequest| async move { resume(&p).await })
        .method::<Pause, _, _>(|(p, _): Shared, r| async move { queue::pause(&p, r).await })
        .method::<QueueStatus, _, _>(|(p, _): Shared, _: QueueQuery| async move {
            queue::report(&p).await
        })
        .method::<ListNotifications, _, _>(
            |(p, _): Shared, f| async move { queue::list(&p, f).await },
        )
        .method::<Retry, _, _>(|(p, _): Shared, r| async move { queue::retry(&p, r).await })
        .method::<DeliveryStats, _, _>(|(p, _): Shared, q| async move { stats(&p, q).await })
        .method::<Credits, _, _>(|(p, _): Shared, q| async move { queue::credits(&p, q).await })
        .method::<Bind, _, _>(|(p, _): Shared, r| async move { bindings::bind(&p, r).await })
        .method::<Unbind, _, _>(|(p, _): Shared, k| async move { bindings::unbind(&p, k).await })
        .method::<ListBindings, _, _>(
            |(p, _): Shared, f| async move { bindings::list(&p, f).await },
        )
        .method::<Pair, _, _>(|(p, _): Shared, r| async move { bindings::pair(&p, r).await })
        .method::<Redeem, _, _>(|(p, _): Shared, r| async move { bindings::redeem(&p, r).await })
        .method::<CheckBinding, _, _>(
            |(p, _): Shared, k| async move { bindings::check(&p, k).await },
        )
        .method::<GetAdvisorSettings, _, _>(|(p, _): Shared, r| async move {
            bindings::settings(&p, r).await
        })
        .method::<SetAdvisorSettings, _, _>(|(p, _): Shared, c| async move {
            bindings::set_settings(&p, c).await
        })
        .run()
        .await
}

/// What every method may use.
type Shared = (PgPool, WechatClient);
