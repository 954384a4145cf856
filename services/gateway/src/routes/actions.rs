//! `POST /api/customer/action` and `GET /api/actions/{id}`.

use std::time::Duration;

use ande_contracts::leads::{self, ActionQuery};
use ande_contracts::notifier::{self, NotifierJourney};
use ande_contracts::vocab::{NotificationKind, NotificationState};
use ande_events::{meta_with_id, ActionRecorded};
use ande_platform::rpc::{self, RpcError};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::error::{ok, ok_with, ApiError};
use crate::extract::{Caller, ClientIp, JsonBody, MaybeSession};
use crate::idempotency;
use crate::validate;
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

/// The fields of an action as the mini-program sent them, checked.
struct ActionBody {
    customer_id: String,
    advisor_id: String,
    action_type: String,
    action_data: Value,
    /// `action_data` as JSON text.
    action_data_json: String,
    customer_name: Option<String>,
    customer_phone: Option<String>,
    /// Fields this endpoint does not model, kept as sent (as JSON text).
    extra: String,
}

impl ActionBody {
    fn parse(mut body: Map<String, Value>) -> Result<Self, ApiError> {
        let customer_id = validate::ID.required("customerId", body.get("customerId"))?;
        let advisor_id = validate::ID.required("advisorId", body.get("advisorId"))?;
        let action_type = validate::ACTION_TYPE.required("actionType", body.get("actionType"))?;
        let (action_data, action_data_json) = validate::action_data(body.remove("actionData"))?;
        let customer_name = validate::NAME.optional("customerName", body.get("customerName"))?;
        let customer_phone =
            validate::PHONE.optional("customerPhone", body.get("customerPhone"))?;
        // What is left once the known fields are taken out is the extra.
        for k in KNOWN {
            body.remove(k);
        }
        let extra = Value::Object(body).to_string();
        if extra.len() > validate::MAX_ACTION_DATA_BYTES {
            return Err(ApiError::validation(
                "body",
                "too many or too large extra fields",
            ));
        }
        Ok(Self {
            customer_id,
            advisor_id,
            action_type,
            action_data,
            action_data_json,
            customer_name,
            customer_phone,
            extra,
        })
    }
}

#[tracing::instrument(skip_all, fields(action_id))]
pub async fn record(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    MaybeSession(session): MaybeSession,
    headers: ActionHeaders,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let mut a = ActionBody::parse(body)?;
    if session.is_none() && !state.config.anonymous_actions {
        return Err(ApiError::unauthorized(
            "this deployment records actions only with a mini-program session (Authorization: Bearer <session>)",
        ));
    }
    // The openid comes from the session, never from the body. Without a session the action is
    // anonymous: recorded, but it changes no existing lead and its notification counts against
    // the advisor's budget for anonymous traffic.
    let openid = session.as_ref().map(|s| s.sub.clone()).unwrap_or_default();
    if a.customer_phone.is_none() {
        a.customer_phone = session.as_ref().and_then(|s| s.phone.clone());
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
        .user_agent
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(512)
        .collect::<String>();
    let (action_id, event_id, replayed) = ids(&state, &headers, &a, &openid).await?;
    tracing::Span::current().record("action_id", tracing::field::display(action_id));

    let now = chrono::Utc::now();
    let action = action_id.to_string();
    let event = ActionRecorded {
        meta: Some(meta_with_id(event_id, &action, PRODUCER, now)),
        action_id: action,
        action_data_json: a.action_data_json,
        customer_name: a.customer_name.unwrap_or_default(),
        customer_phone: a.customer_phone.unwrap_or_default(),
        customer_id: a.customer_id,
        advisor_id: a.advisor_id,
        action_type: a.action_type,
        openid,
        client_ip: ip.to_string(),
        user_agent,
        extra_json: a.extra,
    };
    state.require_bus()?;
    let ack = state.bus.publish(&event).await.map_err(|e| {
        tracing::warn!(error = %e, "publish failed");
        ApiError::bus_unavailable()
    })?;
    let data = Recorded {
        action_id,
        duplicate: replayed || ack.duplicate,
        event_id,
        sequence: ack.sequence,
    };
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(ok_with(status, data, "行为记录成功"))
}

/// The two headers an action reads, taken by themselves: axum's `HeaderMap` extractor would copy
/// the whole map on every action.
pub struct ActionHeaders {
    user_agent: Option<HeaderValue>,
    idempotency_key: Option<HeaderValue>,
}

impl<S: Sync> FromRequestParts<S> for ActionHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            user_agent: parts.headers.get(USER_AGENT).cloned(),
            idempotency_key: parts.headers.get(idempotency::HEADER).cloned(),
        })
    }
}

/// The answer to a recorded action.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    action_id: Uuid,
    duplicate: bool,
    event_id: Uuid,
    sequence: u64,
}

/// The action's and its event's ids: fresh, or those of the first request with the same
/// `Idempotency-Key` (`replayed`).
async fn ids(
    state: &AppState,
    headers: &ActionHeaders,
    a: &ActionBody,
    openid: &str,
) -> Result<(Uuid, Uuid, bool), ApiError> {
    let Some(key) = idempotency::key_in(headers.idempotency_key.as_ref())? else {
        return Ok((Uuid::now_v7(), Uuid::now_v7(), false));
    };
    let request = json!([
        a.customer_id,
        a.advisor_id,
        a.action_type,
        a.action_data,
        a.customer_name,
        a.customer_phone
    ]);
    let scope = idempotency_scope(openid, &a.customer_id);
    let c = idempotency::claim(state, &scope, &key, &idempotency::fingerprint(&request)).await?;
    Ok((c.action_id, c.event_id, c.replayed))
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
    let q = ActionQuery { action_id: id };
    let (client, subjects) = (&state.bus.client, &state.bus.subjects);
    let (leads, notes) = tokio::join!(
        rpc::call::<leads::Journey>(client, subjects, &q, QUERY_TIMEOUT),
        rpc::call::<notifier::Journey>(client, subjects, &q, QUERY_TIMEOUT),
    );
    let leads = match leads {
        Ok(j) => j,
        Err(RpcError::NotFound { .. }) => {
            return Err(ApiError::not_found("no such action (or not processed yet)"))
        }
        Err(e) => return Err(e.into()),
    };
    let customer = matches!(caller, Caller::Customer(_));
    if let Caller::Staff(a) = &caller {
        // A sales user bound to an advisor sees that advisor's actions and leads only.
        let owner = leads.outcome.as_ref().and_then(|o| o.lead_owner.as_deref());
        if !a.may_see(&leads.action.advisor_id) && !owner.is_some_and(|o| a.may_see(o)) {
            return Err(ApiError::not_found("no such action (or not processed yet)"));
        }
    }
    if let Caller::Customer(c) = &caller {
        let owner = leads.action.openid.as_deref().unwrap_or("");
        if owner.is_empty() || owner != c.sub {
            return Err(ApiError::forbidden(
                "this action belongs to another customer",
            ));
        }
    }
    let notification = match notes {
        Ok(j) => summarize_notification(&j),
        Err(e) => json!({ "status": "unknown", "reason": e.to_string() }),
    };
    let o = leads.outcome.as_ref();
    let lead = if customer {
        // A customer learns that their phone number became a lead, never whether it was one
        // already (or whose): no created/matched, no customer code.
        json!({
            "status": o.map(|o| if o.lead_id.is_some() { "lead" } else { "none" }),
            "reason": o.and_then(|o| o.no_lead_reason.as_deref()),
            "published": o.map(|o| o.published),
        })
    } else {
        json!({
            "status": o.map(|o| o.kind),
            "reason": o.and_then(|o| o.no_lead_reason.as_deref()),
            "leadId": o.and_then(|o| o.lead_id),
            "customerCode": o.and_then(|o| o.customer_code.as_deref()),
            "newCustomer": o.map(|o| o.is_new_customer),
            "published": o.map(|o| o.published),
        })
    };
    let mut action = serde_json::to_value(&leads.action).map_err(ApiError::internal)?;
    if let (true, Some(obj)) = (customer, action.as_object_mut()) {
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
fn summarize_notification(j: &NotifierJourney) -> Value {
    // A digest that carried this action is its delivery.
    let main = j
        .notifications
        .iter()
        .rev()
        .find(|n| n.kind == NotificationKind::Digest)
        .or_else(|| j.notifications.first());
    let Some(n) = main else {
        return json!({ "status": "none", "log": j.log });
    };
    let status = match n.state {
        NotificationState::Sent => "sent",
        NotificationState::WaitingCredit => "pending_credit",
        NotificationState::Failed | NotificationState::Dropped => "failed",
        NotificationState::Queued | NotificationState::Sending | NotificationState::Digested => {
            "queued"
        }
    };
    json!({
        "status": status,
        "state": n.state,
        "kind": n.kind,
        "msgid": n.msgid,
        "errcode": n.errcode,
        "errmsg": n.errmsg,
        "attempts": n.attempts,
        "log": j.log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ande_contracts::notifier::NotificationView;
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

    fn view(kind: NotificationKind, state: NotificationState) -> NotificationView {
        let now = chrono::Utc::now();
        NotificationView {
            id: Uuid::now_v7(),
            action_id: Uuid::now_v7(),
            advisor_id: "adv".into(),
            kind,
            state,
            template_id: "T".into(),
            openid: None,
            attempts: 1,
            msgid: (state == NotificationState::Sent).then(|| "9".to_string()),
            errcode: None,
            errmsg: None,
            digest_id: None,
            data: Default::default(),
            page: None,
            summary: ande_contracts::notifier::Summary::Digest { count: 2 },
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn notification_summary_prefers_the_digest_and_maps_states() {
        use NotificationKind::{Action, Digest};
        let journey = |notifications| NotifierJourney {
            notifications,
            log: vec![],
        };
        let s = summarize_notification(&journey(vec![
            view(Action, NotificationState::Digested),
            view(Digest, NotificationState::Sent),
        ]));
        assert_eq!(s["status"], "sent");
        assert_eq!(s["msgid"], "9");
        let pending = journey(vec![view(Action, NotificationState::WaitingCredit)]);
        assert_eq!(summarize_notification(&pending)["status"], "pending_credit");
        let dropped = journey(vec![view(Action, NotificationState::Dropped)]);
        assert_eq!(summarize_notification(&dropped)["status"], "failed");
        assert_eq!(summarize_notification(&journey(vec![]))["status"], "none");
    }
}
