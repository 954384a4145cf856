//! The WeChat endpoints, answering as `api.weixin.qq.com` does.
//!
//! Every handler goes through [`answer`], which applies the endpoint's fault, does the work under
//! the state lock, counts the call with its errcode, and only then sleeps any added latency. The
//! order matters: like a slow real server, the simulator has already acted (a message is sent, a
//! code is spent) when a client gives up waiting, so a client that retries after a timeout can
//! deliver a message twice here exactly as it can in production.
//!
//! Parameters are checked in the order WeChat appears to check them, and malformed input gets
//! WeChat's errcodes (41002, 47001, …) rather than HTTP errors: a client never sees a status
//! other than 200 from these routes.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::codes::Redeemed;
use crate::config::SimConfig;
use crate::faults::Endpoint;
use crate::ids;
use crate::state::{Inner, Phone, SimState};
use crate::subscriptions::SendRequest;
use crate::wire::{errcode, WxError};

type Params = HashMap<String, String>;
type QueryParams = Result<Query<Params>, QueryRejection>;

/// Run one call of `endpoint`: fault, work, count, then latency. See the module docs.
async fn answer<F>(state: &SimState, endpoint: Endpoint, work: F) -> Response
where
    F: FnOnce(&mut Inner, Instant) -> Result<Value, WxError>,
{
    let (latency, outcome) = {
        let mut inner = state.lock();
        let gate = inner.faults.enter(endpoint);
        let outcome = if let Some(status) = gate.http_status {
            inner.calls.record_http(endpoint, status);
            Err(Answer::Http(status))
        } else {
            match gate.injected {
                Some(injected) => Err(injected),
                None => work(&mut inner, Instant::now()),
            }
            .map_err(Answer::Wx)
        };
        if let Err(Answer::Wx(e)) = &outcome {
            inner.calls.record(endpoint, e.errcode);
        } else if outcome.is_ok() {
            inner.calls.record(endpoint, 0);
            inner.faults.succeeded(endpoint);
        }
        (gate.latency, outcome)
    };
    let errcode = match &outcome {
        Ok(_) => 0,
        Err(Answer::Wx(e)) => e.errcode,
        Err(Answer::Http(s)) => i64::from(*s),
    };
    tracing::debug!(%endpoint, errcode, latency_ms = latency.as_millis() as u64, "answered");
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match outcome {
        Ok(body) => Json(body).into_response(),
        Err(Answer::Wx(e)) => e.into_response(),
        Err(Answer::Http(status)) => {
            let status = axum::http::StatusCode::from_u16(status)
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            let page = format!("<html><body><h1>{status}</h1></body></html>");
            (status, [("content-type", "text/html")], page).into_response()
        }
    }
}

/// What a call answered instead of success.
enum Answer {
    /// A WeChat error (HTTP 200 with errcode and errmsg).
    Wx(WxError),
    /// An HTTP error status from WeChat's front end (a `/sim/faults` `http_status`).
    Http(u16),
}

/// `GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code`
pub async fn jscode2session(State(state): State<SimState>, query: QueryParams) -> Response {
    let p = params(query);
    answer(&state, Endpoint::Jscode2session, |inner, now| {
        check_app(&inner.config, param(&p, "appid"), param(&p, "secret"))?;
        if param(&p, "grant_type") != Some("authorization_code") {
            return Err(WxError::of(errcode::INVALID_GRANT_TYPE));
        }
        let code = param(&p, "js_code").ok_or_else(|| WxError::of(errcode::CODE_MISSING))?;
        let ttl = inner.config.code_ttl;
        match inner.logins.redeem(code, ttl, now, ids::openid_for_code) {
            Redeemed::Fresh(openid) => {
                Ok(json!({"openid": openid, "session_key": ids::session_key()}))
            }
            Redeemed::Used => Err(WxError::of(errcode::CODE_BEEN_USED)),
            Redeemed::Expired => Err(WxError::of(errcode::INVALID_CODE)),
        }
    })
    .await
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid&secret`
pub async fn token(State(state): State<SimState>, query: QueryParams) -> Response {
    let p = params(query);
    answer(&state, Endpoint::Token, |inner, now| {
        if param(&p, "grant_type") != Some("client_credential") {
            return Err(WxError::of(errcode::INVALID_GRANT_TYPE));
        }
        check_app(&inner.config, param(&p, "appid"), param(&p, "secret"))?;
        let issued = inner.tokens.classic(&inner.config, now);
        Ok(json!({"access_token": issued.access_token, "expires_in": issued.expires_in}))
    })
    .await
}

#[derive(Deserialize)]
struct StableTokenRequest {
    grant_type: Option<String>,
    appid: Option<String>,
    secret: Option<String>,
    force_refresh: Option<bool>,
}

/// `POST /cgi-bin/stable_token {grant_type, appid, secret, force_refresh?}`
pub async fn stable_token(State(state): State<SimState>, body: Bytes) -> Response {
    answer(&state, Endpoint::StableToken, |inner, now| {
        let req: StableTokenRequest = parse_body(&body)?;
        if req.grant_type.as_deref() != Some("client_credential") {
            return Err(WxError::of(errcode::INVALID_GRANT_TYPE));
        }
        check_app(&inner.config, non_empty(&req.appid), non_empty(&req.secret))?;
        let force = req.force_refresh.unwrap_or(false);
        let issued = inner.tokens.stable(&inner.config, force, now)?;
        Ok(json!({"access_token": issued.access_token, "expires_in": issued.expires_in}))
    })
    .await
}

/// `POST /cgi-bin/message/subscribe/send?access_token=`
pub async fn subscribe_send(
    State(state): State<SimState>,
    query: QueryParams,
    body: Bytes,
) -> Response {
    let p = params(query);
    let mut delivered = None;
    let response = answer(&state, Endpoint::SubscribeSend, |inner, now| {
        authorize(inner, &p, now)?;
        let req: SendRequest = parse_body(&body)?;
        let to = (req.touser.clone(), req.template_id.clone());
        let msgid = inner.subscriptions.send(req, chrono::Utc::now())?;
        delivered = Some((to, msgid));
        Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
    })
    .await;
    // The message reached the user: WeChat pushes subscribe_msg_sent_event.
    if let Some(((Some(touser), Some(template_id)), msgid)) = delivered {
        state.pusher.sent(&touser, &template_id, msgid);
    }
    response
}

#[derive(Deserialize)]
struct PhoneNumberRequest {
    code: Option<String>,
    /// Accepted and ignored, as WeChat documents it as optional.
    #[serde(rename = "openid")]
    _openid: Option<String>,
}

/// `POST /wxa/business/getuserphonenumber?access_token= {code, openid?}`
pub async fn phone_number(
    State(state): State<SimState>,
    query: QueryParams,
    body: Bytes,
) -> Response {
    let p = params(query);
    answer(&state, Endpoint::PhoneNumber, |inner, now| {
        authorize(inner, &p, now)?;
        let req: PhoneNumberRequest = parse_body(&body)?;
        let code = non_empty(&req.code).ok_or_else(|| WxError::of(errcode::INVALID_CODE))?;
        let ttl = inner.config.code_ttl;
        let derive = |c: &str| Phone::mainland(ids::phone_for_code(c));
        let Redeemed::Fresh(phone) = inner.phones.redeem(code, ttl, now, derive) else {
            return Err(WxError::of(errcode::INVALID_CODE));
        };
        let phone_number = if phone.country_code == Phone::MAINLAND {
            phone.number.clone()
        } else {
            format!("+{} {}", phone.country_code, phone.number)
        };
        Ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": phone_number,
                "purePhoneNumber": phone.number,
                "countryCode": phone.country_code,
                "watermark": {
                    "timestamp": chrono::Utc::now().timestamp(),
                    "appid": inner.config.app_id,
                },
            },
        }))
    })
    .await
}

fn params(query: QueryParams) -> Params {
    query.map(|Query(p)| p).unwrap_or_default()
}

fn param<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|v| !v.is_empty())
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, WxError> {
    serde_json::from_slice(body).map_err(|e| {
        let hint = if body.is_empty() {
            "empty body".to_string()
        } else {
            e.to_string()
        };
        WxError::data_format(&hint)
    })
}

/// The app credentials, as `jscode2session`, `token` and `stable_token` check them.
fn check_app(config: &SimConfig, appid: Option<&str>, secret: Option<&str>) -> Result<(), WxError> {
    match appid {
        None => return Err(WxError::of(errcode::APPID_MISSING)),
        Some(a) if a != config.app_id => return Err(WxError::of(errcode::INVALID_APPID)),
        Some(_) => {}
    }
    match secret {
        None => Err(WxError::of(errcode::APPSECRET_MISSING)),
        Some(s) if s != config.app_secret => Err(WxError::of(errcode::INVALID_APPSECRET)),
        Some(_) => Ok(()),
    }
}

/// The `access_token` query parameter of every API but the token endpoints themselves.
fn authorize(inner: &Inner, p: &Params, now: Instant) -> Result<(), WxError> {
    let token =
        param(p, "access_token").ok_or_else(|| WxError::of(errcode::ACCESS_TOKEN_MISSING))?;
    inner.tokens.check(token, now).map(|_| ())
}
