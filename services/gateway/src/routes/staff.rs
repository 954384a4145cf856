//! The staff API (`/api/staff/…`): what the console at `/console/` shows and changes, usable
//! by any staff tool with a bearer token as well.
//!
//! Who may do what: every route needs a staff account (a customer's session is a 403, nothing a
//! 401). A `sales` account bound to an advisor sees only what that advisor owns (other leads
//! are "not found", not "forbidden", so their existence is not told); accounts and sending
//! (pause/resume) are for `admin` only. The console signs in with `POST /api/staff/session`,
//! which keeps the token in an httpOnly, SameSite=Strict cookie rather than in the page.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ande_contracts::leads::ActionQuery;
use ande_contracts::leads::{
    ActionStats, LeadKey, LeadSearch, LeadSort, LeadTimeline, SearchLeads, StatsQuery,
};
use ande_contracts::notifier::{
    BindingFilter, Credits, CreditsQuery, DeliveryStats, Journey, ListBindings, ListNotifications,
    NotificationFilter, Pause, PauseRequest, QueueQuery, QueueStatus, Resume, ResumeRequest, Retry,
    RetryRequest,
};
use ande_contracts::vocab::{NotificationState, Vocabulary};
use ande_events::{meta_with_id, LeadChanged};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::messages::MAX_PASSWORD;
use crate::auth::{self, Role, StaffAccount};
use crate::error::{ok, ok_with, ApiError};
use crate::extract::{Admin, ClientIp, JsonBody, Staff, CONSOLE_HEADER, STAFF_COOKIE};
use crate::validate::{self, Text};
use crate::AppState;
use secrecy::{ExposeSecret, SecretString};

const TIMEOUT: Duration = Duration::from_secs(5);
/// A lead's status or level (free words: the original used 待定 and B类).
pub const LABEL: Text = Text {
    max: 32,
    numbers: false,
};
/// A lead's remark.
pub const REMARK: Text = Text {
    max: 500,
    numbers: false,
};
/// The lead list's search text.
pub const SEARCH: Text = Text {
    max: 64,
    numbers: true,
};
/// Request/reply calls made at once for one answer (a timeline's journeys, advisors' credits).
const RPCS_AT_ONCE: usize = 8;
const PRODUCER: &str = "gateway";

type Params = Query<HashMap<String, String>>;

/// A query parameter as the JSON value the `validate` rules take.
pub(crate) fn param(q: &HashMap<String, String>, name: &str) -> Option<Value> {
    q.get(name).map(|v| Value::String(v.clone()))
}

/// A time filter when given and not empty: a date (`2026-12-06`: its midnight in Beijing) or an
/// RFC 3339 time.
fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    q.get(name)
        .filter(|raw| !raw.is_empty())
        .map(|raw| validate::time(name, raw))
        .transpose()
}

/// The advisors a request may look at: a sales account's own (asking for another is refused),
/// or the one asked for, or all.
fn advisor_filter(
    staff: &StaffAccount,
    asked: Option<String>,
) -> Result<Option<Vec<String>>, ApiError> {
    match (staff.advisor_scope(), asked) {
        (Some(scope), Some(a)) if !scope.contains(&a) => {
            Err(ApiError::forbidden("you see only your own advisor's leads"))
        }
        (Some(scope), _) => Ok(Some(scope)),
        (None, asked) => Ok(asked.map(|a| vec![a])),
    }
}

/// The session cookie holding `token` for `max_age` seconds (empty and 0: forget it).
fn session_cookie(state: &AppState, token: &str, max_age: u64) -> HeaderValue {
    let secure = if state.config.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let v = format!(
        "{STAFF_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&v).expect("a token is header-safe")
}

fn sign_in_cookie(state: &AppState, token: &str) -> HeaderValue {
    session_cookie(state, token, state.config.jwt_expires_in.as_secs())
}

/// `POST /api/staff/session {username, password}`: sign in for the console. The token goes into
/// the cookie only; the page learns who signed in, never the token. Must carry
/// `x-ande-console` (no other site's form can), like every cookie-authenticated change.
#[tracing::instrument(skip_all)]
pub async fn sign_in(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    if !headers.contains_key(CONSOLE_HEADER) {
        return Err(ApiError::forbidden(
            "sign in from the console (x-ande-console header)",
        ));
    }
    let (_, token) = super::messages::authenticate(&state, ip, &body).await?;
    let claims = auth::verify(&state.config.jwt_secret, auth::STAFF_AUDIENCE, &token)
        .ok_or_else(|| ApiError::internal("a token just issued does not verify"))?;
    let account = auth::staff_account(&state.pool, &claims)
        .await
        .map_err(ApiError::db)?
        .ok_or_else(|| ApiError::unauthorized("wrong username or password"))?;
    let mut resp = ok(me_view(&state, &account), "登录成功");
    resp.headers_mut()
        .insert(header::SET_COOKIE, sign_in_cookie(&state, &token));
    Ok(resp)
}

/// `POST /api/staff/session/end`: forget the cookie.
pub async fn sign_out(State(state): State<AppState>) -> Response {
    let mut resp = ok(json!({}), "已退出");
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    resp
}

fn me_view(state: &AppState, a: &StaffAccount) -> Value {
    json!({ "username": a.username, "role": a.role, "advisorId": a.advisor_id,
            "expiresIn": state.config.jwt_expires_in.as_secs() })
}

/// `GET /api/staff/me`: who is signed in.
pub async fn me(State(state): State<AppState>, Staff(staff): Staff) -> Response {
    ok(me_view(&state, &staff), "ok")
}

/// A password field of a body: present, 1 to `MAX_PASSWORD` characters.
fn password_field(body: &Map<String, Value>, field: &str) -> Result<SecretString, ApiError> {
    match body.get(field) {
        Some(Value::String(p)) if !p.is_empty() && p.chars().count() <= MAX_PASSWORD => {
            Ok(SecretString::from(p.clone()))
        }
        _ => Err(ApiError::validation(
            field,
            format!("is required (at most {MAX_PASSWORD} characters)"),
        )),
    }
}

/// `POST /api/staff/me/password {currentPassword, newPassword}`: change one's own password (a
/// new colleague replaces the generated one). The current password is checked like a sign-in
/// (same throttling); then every token of the account stops working, and the console gets a new
/// cookie so it stays signed in.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn change_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Staff(staff): Staff,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let current = password_field(&body, "currentPassword")?;
    let new = password_field(&body, "newPassword")?;
    let check = json!({ "username": staff.username, "password": current.expose_secret() });
    let check = check.as_object().expect("an object");
    super::messages::authenticate(&state, ip, check).await?;
    if let Some(problem) = auth::password_problem(&staff.username, &new) {
        return Err(ApiError::validation("newPassword", problem));
    }
    auth::set_staff_password(&state.pool, &staff.username, new)
        .await
        .map_err(ApiError::internal)?;
    // A token at the account's new version, for this session's cookie.
    let ver = auth::token_version(&state.pool, &staff.username)
        .await
        .map_err(ApiError::db)?
        .ok_or_else(|| ApiError::unauthorized("this account is gone"))?;
    let token = auth::issue_staff(
        &state.config.jwt_secret,
        &staff.username,
        ver,
        state.config.jwt_expires_in,
    )
    .map_err(ApiError::internal)?;
    let mut resp = ok(me_view(&state, &staff), "密码已修改");
    resp.headers_mut()
        .insert(header::SET_COOKIE, sign_in_cookie(&state, &token));
    Ok(resp)
}

/// `GET /api/staff/leads`: a page of leads with filters, search, sort and cursor.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn leads(
    State(state): State<AppState>,
    Staff(staff): Staff,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let advisor = validate::ID.optional("advisorId", param(&q, "advisorId").as_ref())?;
    let sort = match q.get("sort").map(String::as_str) {
        None | Some("") | Some("created") => LeadSort::Created,
        Some("lastTouch") => LeadSort::LastTouch,
        Some(_) => return Err(ApiError::validation("sort", "must be created or lastTouch")),
    };
    let limit = match q.get("limit") {
        None => None,
        Some(l) => Some(
            l.parse::<u32>()
                .ok()
                .filter(|n| (1..=200).contains(n))
                .ok_or_else(|| ApiError::validation("limit", "must be 1 to 200"))?,
        ),
    };
    let search = LeadSearch {
        advisor_ids: advisor_filter(&staff, advisor)?,
        status: LABEL.optional("status", param(&q, "status").as_ref())?,
        level: LABEL.optional("level", param(&q, "level").as_ref())?,
        created_from: time_param(&q, "createdFrom")?,
        created_until: time_param(&q, "createdUntil")?,
        touched_from: time_param(&q, "touchedFrom")?,
        touched_until: time_param(&q, "touchedUntil")?,
        q: SEARCH.optional("q", param(&q, "q").as_ref())?,
        sort,
        cursor: q.get("cursor").filter(|c| !c.is_empty()).cloned(),
        limit,
    };
    let page = state.call::<SearchLeads>(&search, TIMEOUT).await?;
    Ok(ok(page, "ok"))
}

fn lead_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::validation("id", "must be a lead id (UUID)"))
}

/// `GET /api/staff/leads/{id}`: the lead, its actions, each with its notifications and their
/// delivery log, and the changes staff made.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn lead(
    State(state): State<AppState>,
    Staff(staff): Staff,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let timeline = state
        .call::<LeadTimeline>(&LeadKey::Id(lead_id(&id)?), TIMEOUT)
        .await?;
    if !staff.may_see(&timeline.lead.owner_advisor_id) {
        return Err(ApiError::not_found("no such lead"));
    }
    let ids: Vec<Uuid> = timeline.actions.iter().map(|a| a.action_id).collect();
    let scope = staff.advisor_scope();
    let journeys: Vec<Value> = futures::stream::iter(ids)
        .map(|action_id| {
            let (state, scope) = (state.clone(), scope.clone());
            let q = ActionQuery { action_id };
            async move {
                match state.call::<Journey>(&q, TIMEOUT).await {
                    Ok(mut j) => {
                        // A bound sales account sees its own advisor's messages only (an action
                        // about another advisor's resume notified that advisor).
                        if let Some(scope) = scope {
                            let all = j.notifications.len();
                            j.notifications.retain(|n| scope.contains(&n.advisor_id));
                            if j.notifications.len() != all {
                                j.log.clear();
                            }
                        }
                        json!({ "notifications": j.notifications, "log": j.log })
                    }
                    Err(e) => json!({ "notifications": [], "log": [], "unavailable": e.message }),
                }
            }
        })
        .buffered(RPCS_AT_ONCE)
        .collect()
        .await;
    let actions: Vec<Value> = timeline
        .actions
        .iter()
        .zip(journeys)
        .map(|(a, j)| {
            let mut v = serde_json::to_value(a).unwrap_or_default();
            v["delivery"] = j;
            v
        })
        .collect();
    Ok(ok(
        json!({ "lead": timeline.lead, "actions": actions, "changes": timeline.changes }),
        "ok",
    ))
}

/// The fields of a lead change, validated; at least one.
fn lead_change(body: &Map<String, Value>) -> Result<[Option<String>; 4], ApiError> {
    let change = [
        LABEL.optional("status", body.get("status"))?,
        LABEL.optional("level", body.get("level"))?,
        validate::ID.optional("ownerAdvisorId", body.get("ownerAdvisorId"))?,
        REMARK.optional("remark", body.get("remark"))?,
    ];
    if change.iter().all(Option::is_none) {
        return Err(ApiError::validation(
            "status",
            "give at least one of status, level, ownerAdvisorId, remark",
        ));
    }
    Ok(change)
}

/// `POST /api/staff/leads/{id} {status?, level?, ownerAdvisorId?, remark?}`: change a lead.
/// Recorded as a `lead.changed` event and answered 202 once JetStream holds it; leads applies
/// it (and the timeline shows it) moments later. Only an account that sees every advisor may
/// give a lead to another owner.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn change_lead(
    State(state): State<AppState>,
    Staff(staff): Staff,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let id = lead_id(&id)?;
    let [status, level, owner, remark] = lead_change(&body)?;
    let lead = state
        .call::<ande_contracts::leads::GetLead>(&LeadKey::Id(id), TIMEOUT)
        .await?;
    if !staff.may_see(&lead.owner_advisor_id) {
        return Err(ApiError::not_found("no such lead"));
    }
    if owner.is_some() && staff.advisor_scope().is_some() {
        return Err(ApiError::forbidden(
            "only staff who see every advisor may change a lead's owner",
        ));
    }
    let event_id = Uuid::now_v7();
    let event = LeadChanged {
        meta: Some(meta_with_id(
            event_id,
            &id.to_string(),
            PRODUCER,
            Utc::now(),
        )),
        lead_id: id.to_string(),
        changed_by: staff.author(),
        status: status.unwrap_or_default(),
        level: level.unwrap_or_default(),
        owner_advisor_id: owner.unwrap_or_default(),
        remark: remark.unwrap_or_default(),
        expected_owner: if staff.advisor_scope().is_some() {
            lead.owner_advisor_id.clone()
        } else {
            String::new()
        },
    };
    state.require_bus()?;
    let ack = state.bus.publish(&event).await.map_err(|e| {
        tracing::warn!(error = %e, "publish failed");
        ApiError::bus_unavailable()
    })?;
    Ok(ok_with(
        StatusCode::ACCEPTED,
        json!({ "leadId": id, "eventId": event_id, "sequence": ack.sequence }),
        "已提交修改",
    ))
}

/// `GET /api/staff/notifications?state=failed&advisorId=&limit=`: notifications in a state.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn notifications(
    State(state): State<AppState>,
    Staff(staff): Staff,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let wanted = q.get("state").map_or("failed", String::as_str);
    let st = NotificationState::parse(wanted).ok_or_else(|| {
        ApiError::validation(
            "state",
            format!("must be one of {}", NotificationState::names().join(", ")),
        )
    })?;
    let advisor = validate::ID.optional("advisorId", param(&q, "advisorId").as_ref())?;
    let advisor = advisor_filter(&staff, advisor)?.and_then(|v| v.into_iter().next());
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::validation("limit", "must be 1 to 1000"))?,
    };
    let f = NotificationFilter {
        state: st,
        advisor_id: advisor,
        limit: Some(limit),
    };
    Ok(ok(
        state.call::<ListNotifications>(&f, TIMEOUT).await?,
        "ok",
    ))
}

/// `POST /api/staff/notifications/{id}/retry`: queue a failed notification again (one the
/// account may see).
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn retry(
    State(state): State<AppState>,
    Staff(staff): Staff,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::validation("id", "must be a notification id (UUID)"))?;
    if let Some(scope) = staff.advisor_scope() {
        let f = NotificationFilter {
            state: NotificationState::Failed,
            advisor_id: scope.into_iter().next(),
            limit: Some(1000),
        };
        let mine = state.call::<ListNotifications>(&f, TIMEOUT).await?;
        if !mine.notifications.iter().any(|n| n.id == id) {
            return Err(ApiError::not_found("no such failed notification"));
        }
    }
    let r = state.call::<Retry>(&RetryRequest::One(id), TIMEOUT).await?;
    Ok(ok(r, "已重新排队"))
}

/// `POST /api/staff/sending {paused: bool, minutes?, reason?}` (admin): pause or resume all
/// sending.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn sending(
    State(state): State<AppState>,
    Admin(staff): Admin,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let paused = match body.get("paused") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(ApiError::validation("paused", "must be true or false")),
    };
    let reason = validate::SOURCE.optional("reason", body.get("reason"))?;
    let minutes = match body.get("minutes") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n
            .as_f64()
            .filter(|m| m.fract() == 0.0 && (1.0..=10080.0).contains(m))
        {
            Some(m) => Some(m as i64),
            None => {
                return Err(ApiError::validation(
                    "minutes",
                    "must be a whole number from 1 to 10080",
                ))
            }
        },
        Some(_) => return Err(ApiError::validation("minutes", "must be a number")),
    };
    if !paused {
        let r = state.call::<Resume>(&ResumeRequest {}, TIMEOUT).await?;
        return Ok(ok(
            json!({ "paused": false, "requeued": r.requeued }),
            "已恢复发送",
        ));
    }
    let until = minutes.map(|m| Utc::now() + chrono::Duration::minutes(m));
    let r = PauseRequest {
        until,
        reason: Some(reason.unwrap_or_else(|| staff.author())),
    };
    let p = state.call::<Pause>(&r, TIMEOUT).await?;
    Ok(ok(json!({ "paused": true, "state": p }), "已暂停发送"))
}

/// `GET /api/staff/advisors`: each advisor with its bound WeChat users, their send credits per
/// template, and how many notifications wait for a credit or have failed.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn advisors(
    State(state): State<AppState>,
    Staff(staff): Staff,
) -> Result<Response, ApiError> {
    let advisor = staff.advisor_scope().and_then(|s| s.into_iter().next());
    let in_state = |state: NotificationState| NotificationFilter {
        state,
        advisor_id: advisor.clone(),
        limit: Some(1000),
    };
    let (filter, waiting, failed) = (
        BindingFilter {
            advisor_id: advisor.clone(),
        },
        in_state(NotificationState::WaitingCredit),
        in_state(NotificationState::Failed),
    );
    let (bindings, waiting, failed) = tokio::join!(
        state.call::<ListBindings>(&filter, TIMEOUT),
        state.call::<ListNotifications>(&waiting, TIMEOUT),
        state.call::<ListNotifications>(&failed, TIMEOUT),
    );
    let bindings = bindings?.bindings;
    let mut by_advisor: BTreeMap<String, Value> = BTreeMap::new();
    let mut openids: Vec<String> = bindings.iter().map(|b| b.openid.clone()).collect();
    openids.sort();
    openids.dedup();
    let credits: Vec<_> = futures::stream::iter(openids)
        .map(|openid| {
            let state = state.clone();
            async move {
                state
                    .call::<Credits>(&CreditsQuery { openid }, TIMEOUT)
                    .await
            }
        })
        .buffered(RPCS_AT_ONCE)
        .collect()
        .await;
    for b in &bindings {
        push(&mut by_advisor, &b.advisor_id, "bindings", json!(b));
    }
    for c in credits.into_iter().flatten().flat_map(|r| r.credits) {
        if by_advisor.contains_key(&c.advisor_id) {
            push(&mut by_advisor, &c.advisor_id.clone(), "credits", json!(c));
        }
    }
    for (key, list) in [("waiting", waiting?), ("failed", failed?)] {
        for n in list.notifications {
            let a = advisor_entry(&mut by_advisor, &n.advisor_id);
            a[key] = json!(a[key].as_i64().unwrap_or(0) + 1);
        }
    }
    Ok(ok(
        json!({ "advisors": by_advisor.into_values().collect::<Vec<_>>() }),
        "ok",
    ))
}

fn advisor_entry<'m>(all: &'m mut BTreeMap<String, Value>, advisor: &str) -> &'m mut Value {
    all.entry(advisor.to_string()).or_insert_with(|| {
        json!({ "advisorId": advisor, "bindings": [], "credits": [], "waiting": 0, "failed": 0 })
    })
}

fn push(all: &mut BTreeMap<String, Value>, advisor: &str, list: &str, item: Value) {
    if let Some(items) = advisor_entry(all, advisor)[list].as_array_mut() {
        items.push(item);
    }
}

/// `GET /api/staff/overview`: what an operator looks at first.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn overview(
    State(state): State<AppState>,
    Staff(staff): Staff,
) -> Result<Response, ApiError> {
    let scope = StatsQuery {
        advisor_ids: staff.advisor_scope(),
    };
    let (leads, sent, queue) = tokio::join!(
        state.call::<ActionStats>(&scope, TIMEOUT),
        state.call::<DeliveryStats>(&scope, TIMEOUT),
        state.call::<QueueStatus>(&QueueQuery {}, TIMEOUT),
    );
    // The pipeline's own state is for admins; a sales account sees its leads and messages.
    let (consumers, dead_letters) = if staff.is_admin() {
        tokio::join!(consumer_lag(&state), dead_letters(&state))
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(ok(
        json!({ "leads": leads?, "messages": sent?, "queue": queue?, "consumers": consumers,
                "deadLetters": dead_letters }),
        "ok",
    ))
}

/// Each consumer of the event stream with what it has yet to take and to acknowledge; empty
/// when JetStream does not answer (the overview still shows the rest).
async fn consumer_lag(state: &AppState) -> Vec<Value> {
    let Ok(stream) = state.bus.js.get_stream(state.bus.subjects.stream()).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut infos = stream.consumers();
    while let Some(Ok(info)) = infos.next().await {
        out.push(json!({ "name": info.name, "pending": info.num_pending, "ackPending": info.num_ack_pending }));
    }
    out
}

/// Dead letters waiting, by consumer (`andectl dlq` shows, retries and purges them); empty when
/// JetStream does not answer.
async fn dead_letters(state: &AppState) -> Vec<Value> {
    let subjects = &state.bus.subjects;
    let Ok(stream) = state.bus.js.get_stream(subjects.dlq_stream()).await else {
        return Vec::new();
    };
    let Ok(counts) = stream.info_with_subjects(subjects.all_dead_letters()).await else {
        return Vec::new();
    };
    let prefix = format!("{}.dlq.", subjects.prefix());
    let mut out: Vec<Value> = counts
        .filter_map(|r| async move { r.ok() })
        .map(|(subject, n)| {
            let consumer = subject
                .strip_prefix(&prefix)
                .unwrap_or(&subject)
                .to_string();
            json!({ "consumer": consumer, "count": n })
        })
        .collect()
        .await;
    out.sort_by(|a, b| a["consumer"].as_str().cmp(&b["consumer"].as_str()));
    out
}

/// `GET /api/staff/users` (admin).
pub async fn users(State(state): State<AppState>, Admin(_): Admin) -> Result<Response, ApiError> {
    let all = auth::list_staff(&state.pool).await.map_err(ApiError::db)?;
    Ok(ok(json!({ "users": all }), "ok"))
}

fn role_of(body: &Map<String, Value>) -> Result<Option<Role>, ApiError> {
    match body.get("role") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) => Role::parse(r)
            .map(Some)
            .ok_or_else(|| ApiError::validation("role", "must be admin or sales")),
        Some(_) => Err(ApiError::validation("role", "must be admin or sales")),
    }
}

/// A username: 1–64 characters, no white space (as JavaScript's `\s` or Rust's
/// `is_whitespace` say) and no control characters: the document's [`USERNAME_PATTERN`].
pub const USERNAME_PATTERN: &str = r"^[^\s\u0000-\u001F\u007F-\u009F]+$";

fn username(body: &Map<String, Value>) -> Result<String, ApiError> {
    let name = match body.get("username") {
        Some(Value::String(n)) => n,
        _ => return Err(ApiError::validation("username", "is required")),
    };
    let bad = |c: char| c.is_whitespace() || c == '\u{feff}' || c.is_control();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(bad) {
        return Err(ApiError::validation(
            "username",
            "must be 1 to 64 characters without spaces or control characters",
        ));
    }
    Ok(name.clone())
}

/// `POST /api/staff/users {username, role, advisorId?}` (admin): a new account with a generated
/// password, answered once (hand it over; `andectl user passwd` changes it). The admin never
/// picks a weak one, and no policy a form cannot state is needed.
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn add_user(
    State(state): State<AppState>,
    Admin(staff): Admin,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let username = username(&body)?;
    let role = role_of(&body)?.ok_or_else(|| ApiError::validation("role", "is required"))?;
    let advisor = validate::ID.optional("advisorId", body.get("advisorId"))?;
    let password = auth::generate_password(&username);
    let created = auth::add_staff(
        &state.pool,
        &username,
        secrecy::SecretString::from(password.clone()),
        role,
        advisor.as_deref(),
    )
    .await
    .map_err(ApiError::internal)?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a staff user with this name exists",
        ));
    }
    Ok(ok_with(
        StatusCode::CREATED,
        json!({ "username": username, "role": role, "advisorId": advisor, "password": password }),
        "已创建",
    ))
}

/// `POST /api/staff/users/{name} {disabled?, role?, advisorId?}` (admin). An admin cannot
/// disable or demote themselves (so there is always someone to undo a mistake).
#[tracing::instrument(skip_all, fields(staff = %staff.username))]
pub async fn change_user(
    State(state): State<AppState>,
    Admin(staff): Admin,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let disabled = match body.get("disabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::validation("disabled", "must be true or false")),
    };
    let role = role_of(&body)?;
    // `advisorId` absent: the account keeps its advisor; null or blank: none.
    let advisor = match body.contains_key("advisorId") {
        true => Some(validate::ID.optional("advisorId", body.get("advisorId"))?),
        false => None,
    };
    if name == staff.username && (disabled == Some(true) || role == Some(Role::Sales)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot disable or demote your own account",
        ));
    }
    let missing = || ApiError::not_found("no such staff user");
    if let Some(d) = disabled {
        if !auth::set_disabled(&state.pool, &name, d)
            .await
            .map_err(ApiError::db)?
        {
            return Err(missing());
        }
    }
    if role.is_some() || advisor.is_some() {
        let advisor = advisor.as_ref().map(Option::as_deref);
        if !auth::set_role(&state.pool, &name, role, advisor)
            .await
            .map_err(ApiError::db)?
        {
            return Err(missing());
        }
    }
    let all = auth::list_staff(&state.pool).await.map_err(ApiError::db)?;
    let user = all
        .into_iter()
        .find(|u| u.username == name)
        .ok_or_else(missing)?;
    Ok(ok(user, "已保存"))
}
