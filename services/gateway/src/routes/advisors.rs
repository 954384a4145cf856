//! Advisor bindings: who receives an advisor's notifications (kept by the notifier, see
//! `ande_notifier::bindings`).
//!
//! - `POST /api/advisor/bind {code}`: the advisor, logged in to the mini-program, redeems the
//!   pairing code staff gave them; the openid is the session's.
//! - `GET /api/advisor/credits`: the session's own credits with the advisors it is bound to, so
//!   the mini-program can ask for more accepts when they run low.
//! - Staff only: `GET /api/advisor-bindings[?advisorId=]`, `POST /api/advisor-bindings
//!   {advisorId, openid}`, `POST /api/advisor-bindings/unbind {advisorId, openid}`,
//!   `POST /api/advisor-pairings {advisorId}` (a code valid 10 minutes, shown once).

use std::collections::HashMap;
use std::time::Duration;

use ande_contracts::notifier::{
    AdvisorRef, AdvisorSettingsChange, GetAdvisorSettings, SetAdvisorSettings,
};
use ande_contracts::notifier::{
    Bind, BindRequest, BindingFilter, BindingKey, CheckBinding, Credits, CreditsQuery,
    ListBindings, Pair, PairRequest, Redeem, RedeemRequest, Unbind,
};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use crate::error::{ok, ok_with, ApiError};
use crate::extract::{Admin, JsonBody, MaybeSession};
use crate::validate;
use crate::AppState;

/// The notifier answers from its database.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Refuse unless `openid` is bound to `advisor_id`.
pub async fn require_binding(
    state: &AppState,
    advisor_id: &str,
    openid: &str,
) -> Result<(), ApiError> {
    let key = BindingKey {
        advisor_id: advisor_id.to_string(),
        openid: openid.to_string(),
    };
    let check = state.call::<CheckBinding>(&key, TIMEOUT).await?;
    if check.bound {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this WeChat user is not bound to that advisor; ask staff for a pairing code",
        ))
    }
}

/// The advisor redeems a pairing code from their own session.
#[tracing::instrument(skip_all)]
pub async fn redeem(
    State(state): State<AppState>,
    MaybeSession(session): MaybeSession,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let session = session.ok_or_else(|| {
        ApiError::unauthorized("log in to the mini-program first (Authorization: Bearer <session>)")
    })?;
    let code = validate::CODE.required("code", body.get("code"))?;
    let r = RedeemRequest {
        code,
        openid: session.sub,
    };
    let binding = state.call::<Redeem>(&r, TIMEOUT).await?;
    Ok(ok_with(StatusCode::CREATED, binding, "绑定成功"))
}

/// The session's credits (only its own openid's, only with advisors it is bound to).
#[tracing::instrument(skip_all)]
pub async fn credits(
    State(state): State<AppState>,
    MaybeSession(session): MaybeSession,
) -> Result<Response, ApiError> {
    let session = session.ok_or_else(|| {
        ApiError::unauthorized("log in to the mini-program first (Authorization: Bearer <session>)")
    })?;
    let q = CreditsQuery {
        openid: session.sub,
    };
    let report = state.call::<Credits>(&q, TIMEOUT).await?;
    Ok(ok(report, "ok"))
}

#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn list(
    State(state): State<AppState>,
    Admin(staff): Admin,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let advisor_id = match q.get("advisorId") {
        Some(a) => Some(validate::ID.required("advisorId", Some(&Value::String(a.clone())))?),
        None => None,
    };
    let f = BindingFilter { advisor_id };
    let all = state.call::<ListBindings>(&f, TIMEOUT).await?;
    Ok(ok(all, "ok"))
}

fn key(body: &Map<String, Value>) -> Result<BindingKey, ApiError> {
    Ok(BindingKey {
        advisor_id: validate::ID.required("advisorId", body.get("advisorId"))?,
        openid: validate::ID.required("openid", body.get("openid"))?,
    })
}

#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn bind(
    State(state): State<AppState>,
    Admin(staff): Admin,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let k = key(&body)?;
    let r = BindRequest {
        advisor_id: k.advisor_id,
        openid: k.openid,
        bound_by: staff.author(),
    };
    let binding = state.call::<Bind>(&r, TIMEOUT).await?;
    Ok(ok_with(StatusCode::CREATED, binding, "绑定成功"))
}

#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn unbind(
    State(state): State<AppState>,
    Admin(staff): Admin,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let k = key(&body)?;
    let gone = state.call::<Unbind>(&k, TIMEOUT).await?;
    Ok(ok(gone, "已解除绑定"))
}

#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn pair(
    State(state): State<AppState>,
    Admin(staff): Admin,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let advisor_id = validate::ID.required("advisorId", body.get("advisorId"))?;
    let r = PairRequest {
        advisor_id,
        created_by: staff.author(),
    };
    let pairing = state.call::<Pair>(&r, TIMEOUT).await?;
    Ok(ok_with(StatusCode::CREATED, pairing, "配对码已生成"))
}

/// `GET /api/advisor-settings?advisorId=` (staff): the advisor's own settings.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn settings(
    State(state): State<AppState>,
    Admin(staff): Admin,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let advisor_id = validate::ID.required(
        "advisorId",
        q.get("advisorId")
            .map(|a| Value::String(a.clone()))
            .as_ref(),
    )?;
    let r = AdvisorRef { advisor_id };
    let s = state.call::<GetAdvisorSettings>(&r, TIMEOUT).await?;
    Ok(ok(s, "ok"))
}

/// `HH:MM-HH:MM` with hours 00–23 and minutes 00–59: the document's `QUIET_HOURS_PATTERN`.
fn window_shape(s: &str) -> bool {
    let time = |t: &str| {
        let b = t.as_bytes();
        b.len() == 5
            && b[2] == b':'
            && t[..2].parse::<u8>().is_ok_and(|h| h < 24)
            && t[3..].parse::<u8>().is_ok_and(|m| m < 60)
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 2 || c.is_ascii_digit())
    };
    s.split_once('-').is_some_and(|(a, b)| time(a) && time(b))
}

/// `POST /api/advisor-settings {advisorId, quietHours}` (staff): the advisor's own quiet hours,
/// `HH:MM-HH:MM` Beijing time, `off`, or null for the deployment's.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn set_settings(
    State(state): State<AppState>,
    Admin(staff): Admin,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let advisor_id = validate::ID.required("advisorId", body.get("advisorId"))?;
    let quiet_hours = match body.get("quietHours") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "off" || window_shape(s) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::validation(
                "quietHours",
                "must be HH:MM-HH:MM, off, or null",
            ))
        }
    };
    let c = AdvisorSettingsChange {
        advisor_id,
        quiet_hours,
        updated_by: staff.author(),
    };
    let s = state.call::<SetAdvisorSettings>(&c, TIMEOUT).await?;
    Ok(ok(s, "设置已保存"))
}
