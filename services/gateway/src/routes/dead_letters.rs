//! Dead letters in the staff console (admins): the messages a consumer set aside, decoded, and
//! what an operator does with them — retry once the cause is fixed, or purge. The same code as
//! `andectl dlq` (`ande_ops::dlq`).
//!
//! A retry republishes the original event to its subject, so the gateway retries only what its
//! own NATS user may publish (the events it produces itself); a dead `lead.outcome` (published by
//! leads) answers 409 and names the `andectl` command: the internet-facing gateway is not given
//! the right to write other services' events.

use std::collections::HashMap;

use ande_events::EventKind;
use ande_ops::dlq;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::{ok, ApiError};
use crate::extract::Admin;
use crate::validate;
use crate::AppState;

/// Dead letters listed at most, newest first.
const LIST_MAX: usize = 200;
/// The events the gateway publishes, and so may retry.
const OWN_EVENTS: [EventKind; 4] = [
    EventKind::ActionRecorded,
    EventKind::SubscriptionChanged,
    EventKind::WechatSubscription,
    EventKind::LeadChanged,
];

fn seq_of(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::validation("seq", "must be a dead letter's sequence number"))
}

fn unavailable(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = %format!("{e:#}"), "dead letters unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the dead-letter stream does not answer",
    )
}

async fn letter(state: &AppState, seq: u64) -> Result<dlq::DeadLetter, ApiError> {
    state.require_bus()?;
    dlq::get(&state.bus, seq)
        .await
        .map_err(|_| ApiError::not_found("no dead letter with this sequence number"))
}

/// `GET /api/staff/dead-letters?consumer=`: the newest dead letters, decoded.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn list(
    State(state): State<AppState>,
    Admin(staff): Admin,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let consumer =
        validate::ID.optional("consumer", super::staff::param(&q, "consumer").as_ref())?;
    state.require_bus()?;
    let all = dlq::list(&state.bus, consumer.as_deref())
        .await
        .map_err(unavailable)?;
    let total = all.len();
    let letters: Vec<Value> = all
        .iter()
        .rev()
        .take(LIST_MAX)
        .map(|d| d.to_json())
        .collect();
    Ok(ok(json!({ "deadLetters": letters, "total": total }), "ok"))
}

/// `GET /api/staff/dead-letters/{seq}`: one dead letter with its event decoded.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn show(
    State(state): State<AppState>,
    Admin(staff): Admin,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    let d = letter(&state, seq_of(&seq)?).await?;
    Ok(ok(d.to_json(), "ok"))
}

/// `POST /api/staff/dead-letters/{seq}/retry`: republish the original event (one the gateway
/// produces), then delete the dead letter.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn retry(
    State(state): State<AppState>,
    Admin(staff): Admin,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    let seq = seq_of(&seq)?;
    let d = letter(&state, seq).await?;
    let kind = ande_ops::decode::kind_from_subject(&d.original_subject);
    if !kind.is_some_and(|k| OWN_EVENTS.contains(&k)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the gateway does not publish {:?}; retry it with `andectl dlq retry {seq}`",
                d.original_subject
            ),
        ));
    }
    let r = dlq::retry(&state.bus, seq).await.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("not retried: {e:#}"),
        )
    })?;
    tracing::info!(dlq_seq = seq, new_seq = r.new_seq, "dead letter retried");
    Ok(ok(
        json!({ "seq": seq, "subject": r.subject, "newSequence": r.new_seq }),
        "已重新投递",
    ))
}

/// `POST /api/staff/dead-letters/{seq}/purge`: delete a dead letter for good.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn purge(
    State(state): State<AppState>,
    Admin(staff): Admin,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    let seq = seq_of(&seq)?;
    letter(&state, seq).await?;
    dlq::purge(&state.bus, seq).await.map_err(unavailable)?;
    tracing::info!(dlq_seq = seq, "dead letter purged");
    Ok(ok(json!({ "seq": seq }), "已清除"))
}
