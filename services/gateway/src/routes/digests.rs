//! `GET /api/digests/{id}`: the customer actions a digest message stood for. The digest's page
//! in the mini-program (`NOTIFIER_DIGEST_PAGE`, default `pages/customer/pending?digest={id}`)
//! calls it with the advisor's session; staff may read any digest.

use std::time::Duration;

use ande_contracts::notifier::{DigestQuery, GetDigest, Summary};
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::{ok, ApiError};
use crate::extract::Caller;
use crate::routes::advisors;
use crate::AppState;

/// The notifier answers from its database.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[tracing::instrument(skip_all, fields(digest_id = %id))]
pub async fn digest(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::validation("id", "must be a digest id (UUID)"))?;
    let q = DigestQuery { digest_id: id };
    let answer = state.call::<GetDigest>(&q, QUERY_TIMEOUT).await?;
    let d = &answer.digest;
    if let Caller::Staff(a) = &caller {
        if !a.may_see(&d.advisor_id) {
            return Err(ApiError::not_found("no such digest"));
        }
    }
    if let Caller::Customer(c) = &caller {
        // The digest was sent to one openid: only that WeChat user (the advisor) may read it.
        if d.openid.as_deref().unwrap_or("").is_empty() || d.openid.as_deref() != Some(&c.sub) {
            return Err(ApiError::forbidden("this digest was sent to someone else"));
        }
        // ... and who is still bound to the advisor (an unbound phone loses access).
        advisors::require_binding(&state, &d.advisor_id, &c.sub).await?;
    }
    let actions: Vec<Value> = answer
        .notifications
        .iter()
        .map(|n| {
            let s = match &n.summary {
                Summary::Action(s) => Some(s),
                Summary::Digest { .. } => None,
            };
            json!({
                "actionId": n.action_id,
                "actionType": s.map(|s| &s.action_type),
                "customerName": s.map(|s| &s.name),
                "customerPhone": s.map(|s| &s.phone),
                "leadId": s.map(|s| &s.lead_id),
                "customerCode": s.map(|s| &s.customer_code),
                "newCustomer": s.map(|s| s.new_customer),
                "at": n.created_at,
            })
        })
        .collect();
    Ok(ok(
        json!({ "digestId": id, "advisorId": d.advisor_id, "state": d.state, "msgid": d.msgid, "count": actions.len(), "actions": actions }),
        "ok",
    ))
}
