//! The queue for operators (`andectl notifier …`, and the request/reply methods `pause`,
//! `queue`, `notifications`, `retry`): what is waiting, what failed, and sending switched off
//! and on. `resume` lives in [`crate::queries`] with the other pre-existing methods.

use std::collections::BTreeMap;

use ande_contracts::notifier::{
    CreditView, CreditsQuery, CreditsReport, NotificationFilter, Notifications, PauseRequest,
    PauseState, QueueReport, Retried, RetryRequest,
};
use ande_platform::rpc::{Failure, RpcError};
use chrono::Utc;
use sqlx::PgPool;

use crate::store::{self, LogEntry, NotificationState};

pub async fn pause(pool: &PgPool, r: PauseRequest) -> Result<PauseState, Failure> {
    if r.until.is_some_and(|u| u <= Utc::now()) {
        return Err(RpcError::invalid("until is in the past").into());
    }
    let reason = r.reason.unwrap_or_else(|| "operator".into());
    let mut conn = pool.acquire().await?;
    store::pause_until(
        &mut conn,
        Some(r.until.unwrap_or_else(PauseState::until_resumed)),
        &reason,
    )
    .await?;
    tracing::warn!(until = ?r.until, %reason, "sending paused by an operator");
    Ok(pause_state(pool).await?)
}

async fn pause_state(pool: &PgPool) -> Result<PauseState, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT paused_until, reason FROM control WHERE key = 'sending' AND paused_until > now()"
    )
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|r| PauseState {
            paused_until: r.paused_until,
            reason: r.reason,
        })
        .unwrap_or_default())
}

pub async fn report(pool: &PgPool) -> Result<QueueReport, Failure> {
    let rows = sqlx::query!(
        r#"SELECT state AS "state: NotificationState", count(*) AS "n!" FROM notifications GROUP BY state"#
    )
    .fetch_all(pool)
    .await?;
    let by_state: BTreeMap<NotificationState, i64> =
        rows.into_iter().map(|r| (r.state, r.n)).collect();
    let oldest: f64 = sqlx::query_scalar!(
        r#"SELECT COALESCE(extract(epoch FROM now() - min(next_attempt_at)), 0)::float8 AS "age!"
         FROM notifications WHERE state = 'queued' AND next_attempt_at <= now()"#
    )
    .fetch_one(pool)
    .await?;
    let no_credit: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM deliveries WHERE event = 'no_credit_at_wechat' AND at > now() - interval '1 hour'"#
    )
    .fetch_one(pool)
    .await?;
    Ok(QueueReport {
        by_state,
        oldest_queued_secs: oldest.max(0.0) as i64,
        no_credit_last_hour: no_credit,
        pause: pause_state(pool).await?,
    })
}

pub async fn list(pool: &PgPool, f: NotificationFilter) -> Result<Notifications, Failure> {
    let limit = i64::from(f.limit.unwrap_or(100).clamp(1, 1000));
    let mut conn = pool.acquire().await?;
    let notifications = store::by_state(&mut conn, f.state, f.advisor_id.as_deref(), limit).await?;
    Ok(Notifications { notifications })
}

/// Failed notifications back to the queue, due now, with a fresh retry budget and crash count.
pub async fn retry(pool: &PgPool, r: RetryRequest) -> Result<Retried, Failure> {
    let mut tx = pool.begin().await?;
    let only: Option<uuid::Uuid> = match r {
        RetryRequest::One(id) => {
            let state: Option<NotificationState> = sqlx::query_scalar!(
                r#"SELECT state AS "state: NotificationState" FROM notifications WHERE id = $1 FOR UPDATE"#,
                id
            )
            .fetch_optional(&mut *tx)
            .await?;
            match state {
                None => return Err(RpcError::not_found("no such notification").into()),
                Some(NotificationState::Failed) => Some(id),
                Some(s) => {
                    let message = format!(
                        "the notification is {}; only failed ones are retried",
                        s.as_str()
                    );
                    return Err(RpcError::Conflict { message }.into());
                }
            }
        }
        RetryRequest::AllFailed => None,
    };
    let rows = sqlx::query!(
        "UPDATE notifications SET state = 'queued', next_attempt_at = now(), retrying_since = NULL, crashes = 0,
                updated_at = now()
         WHERE state = 'failed' AND ($1::uuid IS NULL OR id = $1) RETURNING id, action_id, advisor_id",
        only
    )
    .fetch_all(&mut *tx)
    .await?;
    for r in &rows {
        LogEntry::about(r.id, r.action_id, &r.advisor_id, "retried_by_operator")
            .write(&mut tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(
        requeued = rows.len(),
        "failed notifications queued again by an operator"
    );
    Ok(Retried {
        requeued: rows.len() as u64,
    })
}

/// The credits of an openid's accounts with the advisors it is bound to (an account of an
/// advisor it is no longer bound to is not its to see, and cannot be spent).
pub async fn credits(pool: &PgPool, q: CreditsQuery) -> Result<CreditsReport, Failure> {
    let credits = sqlx::query_as!(
        CreditView,
        "SELECT s.advisor_id, s.template_id, s.credits, s.long_term, s.last_status FROM subscriptions s
         JOIN advisor_bindings b ON b.advisor_id = s.advisor_id AND b.openid = s.openid
         WHERE s.openid = $1 ORDER BY s.advisor_id, s.template_id",
        q.openid
    )
    .fetch_all(pool)
    .await?;
    Ok(CreditsReport { credits })
}
