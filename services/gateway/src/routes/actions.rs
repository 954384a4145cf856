//! `POST /api/customer/action` and `GET /api/actions/{id}`.

use std::time::Duration;

use ande_events::{meta_with_id, ActionRecorded};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::error::{ok, ok_with, ApiError};
use crate::extract::{Caller, ClientIp, JsonBody, MaybeSession};
use crate::idempotency;
use crate::validate::{self, MAX_ACTION_TYPE, MAX_ID, MAX_NAME, MAX_PHONE};
use crate::AppState;

const PRODUCER: &str = "gateway";
/// How long the journey view waits for each back-end service.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The fields this endpoint models; everything else the client sends is kept as `extra`.
const KNOWN: [&str; 6] = [
    "customerId",
    "advisorId",
    "actionType",
    "actionData",
    "customerName",
    "customerPhone",
];

#[tracing::instrument(skip_all, fields(action_id))]
pub async fn record(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSession(session): MaybeSession,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let customer_id = validate::required("customerId", body.get("customerId"), MAX_ID)?;
    let advisor_id = validate::required("advisorId", body.get("advisorId"), MAX_ID)?;
    let action_type = validate::required("actionType", body.get("actionType"), MAX_ACTION_TYPE)?;
    let action_data = validate::action_data(body.get("actionData"))?;
    let customer_name = validate::optional("customerName", body.get("customerName"), MAX_NAME)?;
    let mut customer_phone =
        validate::optional("customerPhone", body.get("customerPhone"), MAX_PHONE)?;
    let extra: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let extra = Value::Object(extra);
    if extra.to_string().len() > validate::MAX_ACTION_DATA_BYTES {
        return Err(ApiError::validation(
            "body",
            "too many or too large extra fields",
        ));
    }

    // The openid comes from the session, never from the body.
    let openid = session.as_ref().map(|s| s.sub.clone()).unwrap_or_default();
    if customer_phone.is_none() {
        customer_phone = session.as_ref().and_then(|s| s.phone.clone());
    }
    if !openid.is_empty() {
        state.openid_limiter.check(&openid).map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many actions from this user",
            )
            .retry_after(wait)
        })?;
    }
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(512)
        .collect::<String>();

    let (action_id, event_id, replayed) = match idempotency::key(&headers)? {
        None => (Uuid::now_v7(), Uuid::now_v7(), false),
        Some(key) => {
            let request = json!([
                customer_id,
                advisor_id,
                action_type,
                action_data,
                customer_name,
                customer_phone
            ]);
            let scope = idempotency_scope(&openid, &customer_id);
            let c = idempotency::claim(&state, &scope, &key, &idempotency::fingerprint(&request))
                .await?;
            (c.action_id, c.event_id, c.replayed)
        }
    };
    tracing::Span::current().record("action_id", tracing::field::display(action_id));

    let now = chrono::Utc::now();
    let event = ActionRecorded {
        meta: Some(meta_with_id(
            event_id,
            &action_id.to_string(),
            PRODUCER,
            now,
        )),
        action_id: action_id.to_string(),
        customer_id,
        advisor_id,
        action_type,
        action_data_json: action_data.to_string(),
        customer_name: customer_name.unwrap_or_default(),
        customer_phone: customer_phone.unwrap_or_default(),
        openid,
        client_ip: ip.to_string(),
        user_agent,
        extra_json: extra.to_string(),
    };
    state.require_bus()?;
    let ack = state.bus.publish(&event).await.map_err(|e| {
        tracing::warn!(error = %e, "publish failed");
        ApiError::bus_unavailable()
    })?;
    let data = json!({
        "actionId": action_id,
        "eventId": event_id,
        "sequence": ack.sequence,
        "duplicate": replayed || ack.duplicate,
    });
    Ok(ok_with(
        if replayed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        data,
        "行为记录成功",
    ))
}

/// Whose keys a key is looked up among: the session's customer when there is one (so another
/// session sending the same customerId and key never gets this customer's action back), else the
/// body's customerId. Prefixed so that the two kinds can never be mistaken for each other.
fn idempotency_scope(openid: &str, customer_id: &str) -> String {
    if openid.is_empty() {
        format!("customer:{customer_id}")
    } else {
        format!("session:{openid}")
    }
}

/// The journey of one action: recorded, lead outcome, notification.
#[tracing::instrument(skip_all, fields(action_id = %id))]
pub async fn journey(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::validation("id", "must be an action id (UUID)"))?;
    state.require_bus()?;
    let q = json!({ "actionId": id });
    let client = &state.bus.client;
    let subjects = &state.bus.subjects;
    let (leads, notes) = tokio::join!(
        ande_platform::rpc::call::<_, Value>(
            client,
            subjects.rpc("leads", "journey"),
            &q,
            QUERY_TIMEOUT
        ),
        ande_platform::rpc::call::<_, Value>(
            client,
            subjects.rpc("notifier", "journey"),
            &q,
            QUERY_TIMEOUT
        ),
    );
    let leads = match leads {
        Ok(v) => v,
        Err(e) if e.code == ande_platform::rpc::codes::NOT_FOUND => {
            return Err(ApiError::not_found("no such action (or not processed yet)"))
        }
        Err(e) => return Err(e.into()),
    };
    if let Caller::Customer(c) = &caller {
        let owner = leads
            .pointer("/action/openid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if owner.is_empty() || owner != c.sub {
            return Err(ApiError::forbidden(
                "this action belongs to another customer",
            ));
        }
    }
    let notification = match notes {
        Ok(v) => summarize_notification(&v),
        Err(e) => json!({ "status": "unknown", "reason": e.message }),
    };
    let outcome = leads.get("outcome").cloned().unwrap_or(Value::Null);
    let lead = json!({
        "status": outcome.get("kind").cloned().unwrap_or(Value::Null),
        "reason": outcome.get("no_lead_reason").cloned().unwrap_or(Value::Null),
        "leadId": outcome.get("lead_id").cloned().unwrap_or(Value::Null),
        "customerCode": outcome.get("customer_code").cloned().unwrap_or(Value::Null),
        "newCustomer": outcome.get("is_new_customer").cloned().unwrap_or(Value::Null),
        "published": outcome.get("published").cloned().unwrap_or(Value::Null),
    });
    let mut action = leads.get("action").cloned().unwrap_or(Value::Null);
    if let (Caller::Customer(_), Some(obj)) = (&caller, action.as_object_mut()) {
        // A customer sees their action, not our bookkeeping about their connection.
        obj.remove("clientIp");
        obj.remove("userAgent");
    }
    Ok(ok(
        json!({ "actionId": id, "recorded": action, "lead": lead, "notification": notification }),
        "ok",
    ))
}

/// Reduce the notifier's rows to one status: sent (msgid), pending (waiting for credit),
/// failed (errcode), queued, or none.
fn summarize_notification(v: &Value) -> Value {
    let notes = v
        .get("notifications")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let log = v.get("log").cloned().unwrap_or(Value::Array(vec![]));
    // A digest that carried this action is its delivery.
    let main = notes
        .iter()
        .rev()
        .find(|n| n.get("kind").and_then(Value::as_str) == Some("digest"))
        .or_else(|| notes.first());
    let Some(n) = main else {
        return json!({ "status": "none", "log": log });
    };
    let state = n.get("state").and_then(Value::as_str).unwrap_or("");
    let status = match state {
        "sent" => "sent",
        "waiting_credit" => "pending_credit",
        "failed" | "dropped" => "failed",
        _ => "queued",
    };
    json!({
        "status": status,
        "state": state,
        "kind": n.get("kind"),
        "msgid": n.get("msgid"),
        "errcode": n.get("errcode"),
        "errmsg": n.get("errmsg"),
        "attempts": n.get("attempts"),
        "log": log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A customerId sent without a session can never name a session's scope (nor the reverse),
        /// and different sessions or customers never share one.
        #[test]
        fn idempotency_scopes_never_collide(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            if !a.is_empty() {
                prop_assert_ne!(idempotency_scope(&a, &b), idempotency_scope("", &a));
                prop_assert_ne!(idempotency_scope(&a, &b), idempotency_scope("", &b));
            }
            if a != b && !a.is_empty() && !b.is_empty() {
                prop_assert_ne!(idempotency_scope(&a, "c"), idempotency_scope(&b, "c"));
            }
            if a != b {
                prop_assert_ne!(idempotency_scope("", &a), idempotency_scope("", &b));
            }
        }

    }

    #[test]
    fn notification_summary_prefers_the_digest_and_maps_states() {
        let v = json!({"notifications": [{"kind": "single", "state": "waiting_credit"}, {"kind": "digest", "state": "sent", "msgid": "9"}], "log": []});
        let s = summarize_notification(&v);
        assert_eq!(s["status"], "sent");
        assert_eq!(s["msgid"], "9");
        assert_eq!(
            summarize_notification(
                &json!({"notifications": [{"kind": "single", "state": "waiting_credit"}]})
            )["status"],
            "pending_credit"
        );
        assert_eq!(
            summarize_notification(
                &json!({"notifications": [{"kind": "single", "state": "dropped", "errcode": 43101}]})
            )["status"],
            "failed"
        );
        assert_eq!(summarize_notification(&json!({}))["status"], "none");
    }
}
