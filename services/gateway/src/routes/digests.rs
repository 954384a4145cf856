//! `GET /api/digests/{id}`: the customer actions a digest message stood for. The digest's page
//! in the mini-program (`NOTIFIER_DIGEST_PAGE`, default `pages/customer/pending?digest={id}`)
//! calls it with the advisor's session; staff may read any digest.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::{ok, ApiError};
use crate::extract::Caller;
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
    state.require_bus()?;
    let answer: Value = ande_platform::rpc::call(
        &state.bus.client,
        state.bus.subjects.rpc("notifier", "digest"),
        &json!({ "digestId": id }),
        QUERY_TIMEOUT,
    )
    .await?;
    if let Caller::Customer(c) = &caller {
        // The digest was sent to one openid: only that WeChat user (the advisor) may read it.
        let to = answer
            .pointer("/digest/openid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if to.is_empty() || to != c.sub {
            return Err(ApiError::forbidden("this digest was sent to someone else"));
        }
    }
    let actions: Vec<Value> = answer["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let s = &n["summary"];
            json!({
                "actionId": n["actionId"],
                "actionType": s["actionType"],
                "customerName": s["name"],
                "customerPhone": s["phone"],
                "leadId": s["leadId"],
                "customerCode": s["customerCode"],
                "newCustomer": s["newCustomer"],
                "at": n["createdAt"],
            })
        })
        .collect();
    let d = &answer["digest"];
    Ok(ok(
        json!({ "digestId": id, "advisorId": d["advisorId"], "state": d["state"], "msgid": d["msgid"], "count": actions.len(), "actions": actions }),
        "ok",
    ))
}
