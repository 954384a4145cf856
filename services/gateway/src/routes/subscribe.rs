//! `POST /api/advisor/subscribe`: an advisor's answer to `wx.requestSubscribeMessage`.
//!
//! Accepts the seed's body (`advisorId, openid, templateId, subscribed, subscribeData
//! {subscriptionStatus}`) and also the raw result object of `wx.requestSubscribeMessage` for
//! several templates at once (`{advisorId, openid, result: {"<templateId>": "accept", errMsg}}`).
//! Each template's decision is one `subscription.changed` event; each accept is one send credit.
//! The caller must be the advisor: a mini-program session whose openid staff bound to the
//! advisor id (see `routes::advisors`); anything else is a 403 and changes nothing.

use ande_contracts::vocab::{SubscriptionStatus, Vocabulary};
use ande_events::{new_meta, SubscriptionChanged};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::error::{ok_with, ApiError};
use crate::extract::{JsonBody, MaybeSession};
use crate::idempotency;
use crate::routes::advisors;
use crate::validate;
use crate::AppState;

/// WeChat allows up to 5 templates per request (3 in older docs).
const MAX_TEMPLATES: usize = 5;

fn parse_status(field: &str, s: &str) -> Result<SubscriptionStatus, ApiError> {
    SubscriptionStatus::parse(&s.trim().to_ascii_lowercase()).ok_or_else(|| {
        ApiError::validation(
            field,
            format!("must be one of {}", SubscriptionStatus::names().join(", ")),
        )
    })
}

/// The (template, status) decisions in a body, in either accepted shape.
pub fn decisions(body: &Map<String, Value>) -> Result<Vec<(String, SubscriptionStatus)>, ApiError> {
    let raw = body.get("result").or_else(|| body.get("subscribeResult"));
    if let Some(raw) = raw {
        let obj = raw.as_object().ok_or_else(|| {
            ApiError::validation(
                "result",
                "must be the object wx.requestSubscribeMessage answered",
            )
        })?;
        let mut out = Vec::new();
        for (k, v) in obj {
            if k == "errMsg" || k == "errCode" {
                continue;
            }
            let template = validate::ID.required("result", Some(&Value::String(k.clone())))?;
            let status = parse_status(&format!("result.{k}"), v.as_str().unwrap_or(""))?;
            out.push((template, status));
        }
        if out.is_empty() {
            return Err(ApiError::validation("result", "holds no template decision"));
        }
        if out.len() > MAX_TEMPLATES {
            return Err(ApiError::validation(
                "result",
                format!("at most {MAX_TEMPLATES} templates per request"),
            ));
        }
        return Ok(out);
    }
    let template = validate::ID.required("templateId", body.get("templateId"))?;
    let explicit = body
        .get("subscribeData")
        .and_then(|d| d.get("subscriptionStatus"))
        .and_then(Value::as_str);
    let status = match (explicit, body.get("subscribed")) {
        (Some(s), _) => parse_status("subscribeData.subscriptionStatus", s)?,
        (None, Some(Value::Bool(true))) => SubscriptionStatus::Accept,
        (None, Some(Value::Bool(false))) => SubscriptionStatus::Reject,
        (None, Some(_)) => return Err(ApiError::validation("subscribed", "must be true or false")),
        (None, None) => {
            return Err(ApiError::validation(
                "subscribed",
                "give subscribed or subscribeData.subscriptionStatus",
            ))
        }
    };
    Ok(vec![(template, status)])
}

/// With an `Idempotency-Key`, each template's decision keeps the event id of the first attempt,
/// so a retried request (or one that failed half way through its templates) adds no credit twice.
#[tracing::instrument(skip_all)]
pub async fn subscribe(
    State(state): State<AppState>,
    MaybeSession(session): MaybeSession,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let advisor_id = validate::ID.required("advisorId", body.get("advisorId"))?;
    let source = match body.get("subscribeData").and_then(|d| d.get("source")) {
        Some(v) => validate::SOURCE.optional("subscribeData.source", Some(v))?,
        None => None,
    }
    .unwrap_or_else(|| "miniprogram".into());
    let decisions = decisions(&body)?;
    // Only the advisor's own bound WeChat user may change their subscriptions: the openid is the
    // session's (a body's `openid` is ignored), and it must be bound to the advisor.
    let Some(session) = session else {
        return Err(ApiError::forbidden(
            "an advisor subscribes from their own mini-program session",
        ));
    };
    let openid = session.sub;
    // Each accept is a credit to message this openid: bound how fast anyone can add them.
    state.openid_limiter.check(&openid).map_err(|wait| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many subscription changes for this user",
        )
        .retry_after(wait)
    })?;
    advisors::require_binding(&state, &advisor_id, &openid).await?;

    let now = chrono::Utc::now();
    let mut recorded = Vec::new();
    let key = idempotency::key(&headers)?;
    for (template_id, status) in decisions {
        let mut meta = new_meta("", "gateway", now);
        if let Some(key) = &key {
            let request = json!([advisor_id, template_id, status.as_str()]);
            let scope = format!("subscribe:{openid}");
            let c = idempotency::claim(
                &state,
                &scope,
                &format!("{key}#{template_id}"),
                &idempotency::fingerprint(&request),
            )
            .await?;
            meta.event_id = c.event_id.to_string();
        }
        let event_id = meta.event_id.clone();
        let event = SubscriptionChanged {
            meta: Some(ande_events::EventMeta {
                correlation_id: event_id.clone(),
                ..meta
            }),
            advisor_id: advisor_id.clone(),
            openid: openid.clone(),
            template_id: template_id.clone(),
            status: ande_events::SubscriptionStatus::from(status) as i32,
            source: source.clone(),
        };
        state.bus.publish(&event).await.map_err(|e| {
            tracing::warn!(error = %e, "publish failed");
            ApiError::bus_unavailable()
        })?;
        recorded.push(
            json!({ "templateId": template_id, "status": status.as_str(), "eventId": event_id }),
        );
    }
    Ok(ok_with(
        StatusCode::CREATED,
        json!({ "advisorId": advisor_id, "openid": openid, "recorded": recorded }),
        "订阅状态保存成功",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn seed_shape_and_raw_result_shape() {
        let seed = body(
            json!({"advisorId":"a","openid":"o","templateId":"T","subscribed":true,"subscribeData":{"subscriptionStatus":"accept"}}),
        );
        assert_eq!(
            decisions(&seed).unwrap(),
            vec![("T".to_string(), SubscriptionStatus::Accept)]
        );
        let seed_bool = body(json!({"templateId":"T","subscribed":false}));
        assert_eq!(
            decisions(&seed_bool).unwrap()[0].1,
            SubscriptionStatus::Reject
        );
        let raw = body(
            json!({"result":{"T1":"accept","T2":"reject","T3":"ban","errMsg":"requestSubscribeMessage:ok"}}),
        );
        let d = decisions(&raw).unwrap();
        assert_eq!(d.len(), 3);
        assert!(decisions(&body(json!({"result":{"T1":"maybe"}}))).is_err());
        assert!(decisions(&body(json!({"templateId":"T"}))).is_err());
    }
}
