//! The control API under `/sim/`: what happens inside WeChat and the user's phone, made
//! reachable for tests and developers (a user accepting a template, a login code for a chosen
//! user, a fault), plus what a test needs to read back (messages, call counters, credits).
//!
//! Unlike the WeChat routes, these are ours: they answer with ordinary HTTP statuses and
//! `{"error": "…"}` on failure, and a POST body may be sent without a content type.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::{Endpoint, Fault, FaultSpec};
use crate::state::{Lifetimes, Phone, SimError, SimState};
use crate::subscriptions::Template;

/// The routes, to be nested under `/sim`.
pub fn routes() -> Router<SimState> {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/codes", post(mint_login_code))
        .route("/phone-codes", post(mint_phone_code))
        .route("/credits", get(credits).post(grant_credits))
        .route("/templates", get(templates).post(register_template))
        .route("/faults", get(faults).post(set_fault).delete(clear_faults))
        .route("/tokens/expire", post(expire_tokens))
        .route("/config", get(lifetimes).post(set_lifetimes))
        .route("/messages", get(messages))
        .route("/calls", get(calls))
        .route("/reset", post(reset))
        .route("/subscriptions/off", post(turn_off))
        .route("/pushes", get(pushes))
        .route(
            "/push-target",
            get(push_target)
                .post(set_push_target)
                .delete(clear_push_target),
        )
}

/// A control request that cannot be done.
#[derive(Debug)]
struct ControlError(StatusCode, String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<SimError> for ControlError {
    fn from(e: SimError) -> Self {
        match e {
            SimError::Invalid(m) => ControlError(StatusCode::BAD_REQUEST, m),
            SimError::NotFound(m) => ControlError(StatusCode::NOT_FOUND, m),
        }
    }
}

type Answer = Result<Json<Value>, ControlError>;

fn bad_request(msg: impl Into<String>) -> ControlError {
    ControlError(StatusCode::BAD_REQUEST, msg.into())
}

/// A JSON body; an empty one counts as `{}`.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ControlError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| bad_request(format!("body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ControlError> {
    q.map(|Query(t)| t).map_err(|e| bad_request(e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintLoginCode {
    openid: Option<String>,
}

/// `POST /sim/codes {openid?}` → `{code, openid}`
async fn mint_login_code(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let req: MintLoginCode = body(&bytes)?;
    let (code, openid) = state.mint_login_code(req.openid.as_deref())?;
    Ok(Json(json!({"code": code, "openid": openid})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintPhoneCode {
    phone: String,
    country_code: Option<String>,
}

/// `POST /sim/phone-codes {phone, country_code?}` → `{code, phone, country_code}`
async fn mint_phone_code(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let req: MintPhoneCode = body(&bytes)?;
    let country_code = req
        .country_code
        .unwrap_or_else(|| Phone::MAINLAND.to_string());
    let phone = Phone {
        country_code: country_code.clone(),
        number: req.phone.clone(),
    };
    let code = state.mint_phone_code(phone)?;
    Ok(Json(
        json!({"code": code, "phone": req.phone, "country_code": country_code}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantCredits {
    openid: String,
    template_id: String,
    count: Option<u64>,
}

/// `POST /sim/credits {openid, template_id, count?}` → `{openid, template_id, remaining}`
async fn grant_credits(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let req: GrantCredits = body(&bytes)?;
    let remaining = state.grant_credits(&req.openid, &req.template_id, req.count.unwrap_or(1))?;
    Ok(Json(
        json!({"openid": req.openid, "template_id": req.template_id, "remaining": remaining}),
    ))
}

#[derive(Deserialize)]
struct CreditsQuery {
    openid: String,
    template_id: String,
}

/// `GET /sim/credits?openid&template_id` → `{openid, template_id, remaining, long_term}`
async fn credits(
    State(state): State<SimState>,
    q: Result<Query<CreditsQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let (remaining, long_term) = state.credits(&q.openid, &q.template_id)?;
    Ok(Json(json!({
        "openid": q.openid,
        "template_id": q.template_id,
        "remaining": remaining,
        "long_term": long_term,
    })))
}

/// `POST /sim/templates {template_id, keywords, long_term?}` → the template
async fn register_template(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let template: Template = body(&bytes)?;
    state.register_template(template.clone())?;
    Ok(Json(json!(template)))
}

/// `GET /sim/templates` → `{templates: [...]}`
async fn templates(State(state): State<SimState>) -> Json<Value> {
    Json(json!({"templates": state.templates()}))
}

/// `POST /sim/faults {endpoint, errcode?, rate?, latency_ms?, quota?, count?}` → the fault
async fn set_fault(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let spec: FaultSpec = body(&bytes)?;
    let (endpoint, fault) = Fault::from_spec(&spec).map_err(bad_request)?;
    tracing::info!(%endpoint, errcode = ?fault.errcode, latency_ms = fault.latency_ms, "fault set");
    state.set_fault(endpoint, fault.clone());
    Ok(Json(json!(fault)))
}

/// `GET /sim/faults` → `{faults: [...]}`
async fn faults(State(state): State<SimState>) -> Json<Value> {
    Json(json!({"faults": state.faults()}))
}

#[derive(Deserialize)]
struct ClearFaults {
    endpoint: Option<String>,
}

/// `DELETE /sim/faults[?endpoint=]` → 204
async fn clear_faults(
    State(state): State<SimState>,
    q: Result<Query<ClearFaults>, QueryRejection>,
) -> Result<StatusCode, ControlError> {
    let endpoint = match query(q)?.endpoint {
        None => None,
        Some(name) => Some(
            Endpoint::parse(&name)
                .ok_or_else(|| bad_request(format!("unknown endpoint {name:?}")))?,
        ),
    };
    state.clear_faults(endpoint);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sim/tokens/expire` → `{expired: n}` (tokens that were still valid)
async fn expire_tokens(State(state): State<SimState>) -> Json<Value> {
    Json(json!({"expired": state.expire_tokens()}))
}

/// `GET /sim/config` → the lifetimes in seconds
async fn lifetimes(State(state): State<SimState>) -> Json<Value> {
    Json(json!(state.lifetimes()))
}

/// `POST /sim/config {stable_token_ttl_secs?, classic_token_ttl_secs?, …}` → the lifetimes
async fn set_lifetimes(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let update: Lifetimes = body(&bytes)?;
    Ok(Json(json!(state.set_lifetimes(&update)?)))
}

#[derive(Deserialize)]
struct MessagesQuery {
    touser: Option<String>,
    template_id: Option<String>,
}

/// `GET /sim/messages[?touser=&template_id=]` → `{messages: [...]}`, oldest first
async fn messages(
    State(state): State<SimState>,
    q: Result<Query<MessagesQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let mut messages = state.messages(q.touser.as_deref().filter(|t| !t.is_empty()));
    if let Some(t) = q.template_id.as_deref().filter(|t| !t.is_empty()) {
        messages.retain(|m| m.template_id == t);
    }
    Ok(Json(json!({"messages": messages})))
}

/// `GET /sim/calls` → `{endpoint: {count, errcodes: {"0": n, …}}}`
async fn calls(State(state): State<SimState>) -> Json<Value> {
    Json(json!(state.calls()))
}

/// `POST /sim/reset` → 204
async fn reset(State(state): State<SimState>) -> StatusCode {
    state.reset();
    tracing::info!("simulator reset");
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnOff {
    openid: String,
    template_id: String,
}

/// `POST /sim/subscriptions/off {openid, template_id}`: the user turned the template off in the
/// mini-program's settings (credits gone, `subscribe_msg_change_event` pushed).
async fn turn_off(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let req: TurnOff = body(&bytes)?;
    state.turn_off(&req.openid, &req.template_id)?;
    Ok(Json(
        json!({"openid": req.openid, "template_id": req.template_id, "remaining": 0}),
    ))
}

/// `GET /sim/pushes` → `{pushes: [{event, openid, template_id, create_time, attempts, delivered, last_answer}]}`
async fn pushes(State(state): State<SimState>) -> Json<Value> {
    Json(json!({ "pushes": state.pusher.records() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPushTarget {
    url: String,
    token: String,
    aes_key: Option<String>,
    format: Option<String>,
}

/// `POST /sim/push-target {url, token, aes_key?, format?}`: where to push from now on.
async fn set_push_target(State(state): State<SimState>, bytes: Bytes) -> Answer {
    let req: SetPushTarget = body(&bytes)?;
    let format = match req.format.as_deref() {
        None => ande_wechat::push::Format::Json,
        Some(f) => ande_wechat::push::Format::parse(f)
            .ok_or_else(|| bad_request("format is json or xml"))?,
    };
    let settings = crate::config::PushSettings {
        url: req.url,
        token: req.token,
        aes_key: req.aes_key.filter(|k| !k.is_empty()),
        format,
    };
    let target = settings.target().map_err(bad_request)?;
    state.pusher.set_target(Some(target));
    Ok(Json(
        json!({"url": settings.url, "safe_mode": settings.aes_key.is_some()}),
    ))
}

/// `GET /sim/push-target` → `{url, safe_mode, format}` or `{url: null}`
async fn push_target(State(state): State<SimState>) -> Json<Value> {
    Json(match state.pusher.target() {
        Some(t) => {
            json!({"url": t.url, "safe_mode": t.aes_key.is_some(), "format": format!("{:?}", t.format).to_lowercase()})
        }
        None => json!({"url": null}),
    })
}

/// `DELETE /sim/push-target`: push nothing from now on.
async fn clear_push_target(State(state): State<SimState>) -> StatusCode {
    state.pusher.set_target(None);
    StatusCode::NO_CONTENT
}
