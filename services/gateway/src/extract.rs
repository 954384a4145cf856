//! Request extractors that answer in the API's envelope instead of axum's plain-text rejections:
//! a JSON body (any malformed body is a 400, an oversized one a 413), the client's IP, and the
//! two kinds of bearer token.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::{self, Claims};
use crate::error::ApiError;
use crate::AppState;

/// A JSON body. Content type is not insisted on (old clients send what they send); the body
/// must parse.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body is over {} bytes", state.config.body_limit))
            } else {
                ApiError::bad_request("invalid_body", "the body could not be read")
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("invalid_body", "the body is empty; send a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error_lite(&mut de)?;
        Ok(JsonBody(value))
    }
}

fn serde_path_to_error_lite<T: DeserializeOwned>(de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>) -> Result<T, ApiError> {
    let v = T::deserialize(&mut *de).and_then(|v| de.end().map(|_| v));
    v.map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => "a field has the wrong type or is missing",
            _ => "the body is not valid JSON",
        };
        ApiError::bad_request("invalid_body", kind).details(json!({ "reason": e.to_string() }))
    })
}

/// The client's IP: the socket's peer, or the first X-Forwarded-For hop when configured to trust it.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(ClientIp(client_ip(parts, state.config.trust_forwarded)))
    }
}

pub fn client_ip(parts: &Parts, trust_forwarded: bool) -> IpAddr {
    if trust_forwarded {
        if let Some(ip) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
        {
            return ip;
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts.headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// A mini-program session if the request carries one. A token that is present but invalid is a
/// 401 (the client should log in again), never silently ignored.
pub struct MaybeSession(pub Option<Claims>);

impl FromRequestParts<AppState> for MaybeSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            None => Ok(MaybeSession(None)),
            Some(t) => auth::verify(&state.config.jwt_secret, auth::MINIPROGRAM_AUDIENCE, t)
                .map(|c| MaybeSession(Some(c)))
                .ok_or_else(|| ApiError::unauthorized("the session token is invalid or expired; log in again")),
        }
    }
}

/// Either a staff member or a customer session (for views both may see).
pub enum Caller {
    Staff(Claims),
    Customer(Claims),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let t = bearer(parts).ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
        if let Some(c) = auth::verify(&state.config.jwt_secret, auth::STAFF_AUDIENCE, t) {
            return Ok(Caller::Staff(c));
        }
        auth::verify(&state.config.jwt_secret, auth::MINIPROGRAM_AUDIENCE, t)
            .map(Caller::Customer)
            .ok_or_else(|| ApiError::unauthorized("the token is invalid or expired"))
    }
}

/// A staff member (staff-only endpoints). A customer's session is a 403, no token a 401.
pub struct Staff(pub Claims);

impl FromRequestParts<AppState> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Staff(c) => Ok(Staff(c)),
            Caller::Customer(_) => Err(ApiError::forbidden("staff only")),
        }
    }
}
