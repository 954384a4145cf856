//! Request extractors that answer in the API's envelope instead of axum's plain-text rejections:
//! a JSON body (any malformed body is a 400, an oversized one a 413), the client's IP, and the
//! two kinds of bearer token.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::{self, Claims, StaffAccount};
use crate::error::ApiError;
use crate::AppState;

/// A JSON body. Content type is not insisted on (old clients send what they send); the body
/// must parse.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_limited(req, state.config.body_limit).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the body is empty; send a JSON object",
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error_lite(&mut de)?;
        Ok(JsonBody(value))
    }
}

/// After a body proved too large, read and drop up to this much more of it (for at most
/// [`DRAIN_TIME`]) before answering 413. An HTTP/1 server that answers and closes while the client
/// is still sending makes the client's write fail (broken pipe, reset) before it reads the
/// answer: the mini-program would see a network error instead of our 413. Past these bounds we
/// stop reading and let the connection close.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The whole body, at most `limit` bytes; a longer one is a 413 (answered after draining it).
async fn read_limited(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over {limit} bytes"),
        )
    };
    let unreadable = || ApiError::bad_request("invalid_body", "the body could not be read");
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // A client that waits for "100 Continue" sends nothing until the body is read: refuse it
    // at once instead of inviting the body in.
    let waits_to_send = req
        .headers()
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body().into_data_stream();
    if let Some(n) = declared.filter(|n| *n > limit) {
        if n <= limit + DRAIN_LIMIT && !waits_to_send {
            drain(body).await;
        }
        return Err(too_large());
    }
    // A small body arrives as one chunk: kept as it is, copied only when a second one follows.
    let mut only: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut read = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        read += chunk.len();
        if read > limit {
            drain(body).await;
            return Err(too_large());
        }
        if let Some(earlier) = only.take() {
            buf.extend_from_slice(&earlier);
        }
        if buf.is_empty() {
            only = Some(chunk);
        } else {
            buf.extend_from_slice(&chunk);
        }
    }
    Ok(only.unwrap_or_else(|| buf.freeze()))
}

async fn drain(mut body: axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0;
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

fn serde_path_to_error_lite<T: DeserializeOwned>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> Result<T, ApiError> {
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
        Ok(ClientIp(client_ip(
            &parts.extensions,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

pub fn client_ip(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
    trusted: &[crate::clientip::Cidr],
) -> IpAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    crate::clientip::client(peer, forwarded, trusted)
}

/// The bearer token of the request: `Ok(None)` without an Authorization header, a 401 when the
/// header is there but is not `Bearer <token>` (the scheme is case-insensitive, RFC 9110). A
/// malformed header is never read as "no token": that would record a signed-in customer's
/// action as anonymous.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get("authorization") else {
        return Ok(None);
    };
    let refuse = || ApiError::unauthorized("the Authorization header must be \"Bearer <token>\"");
    let value = value.to_str().map_err(|_| refuse())?.trim();
    let (scheme, token) = value.split_once(' ').ok_or_else(refuse)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(refuse());
    }
    Ok(Some(token))
}

/// A mini-program session if the request carries one. A token that is present but invalid is a
/// 401 (the client should log in again), never silently ignored.
pub struct MaybeSession(pub Option<Claims>);

impl FromRequestParts<AppState> for MaybeSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts)? {
            None => Ok(MaybeSession(None)),
            Some(t) => auth::verify(&state.config.jwt_secret, auth::MINIPROGRAM_AUDIENCE, t)
                .map(|c| MaybeSession(Some(c)))
                .ok_or_else(|| {
                    ApiError::unauthorized("the session token is invalid or expired; log in again")
                }),
        }
    }
}

/// Either a staff member or a customer session (for views both may see).
pub enum Caller {
    Staff(StaffAccount),
    Customer(Claims),
}

/// The staff console's session cookie: `HttpOnly` (no script reads it), `SameSite=Strict` (no
/// other site's page sends it). Requests that change something and carry only the cookie must
/// also send [`CONSOLE_HEADER`], which no cross-site form can and no cross-origin script may
/// without a preflight this gateway never grants with credentials.
pub const STAFF_COOKIE: &str = "ande_staff";
pub const CONSOLE_HEADER: &str = "x-ande-console";

/// The staff session cookie's token, if the request carries one.
fn staff_cookie(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == STAFF_COOKIE)
        .map(|(_, token)| token)
        .filter(|t| !t.is_empty())
}

/// A bearer token, or else the console's cookie (then a request that changes something must
/// carry [`CONSOLE_HEADER`]).
fn staff_or_session_token(parts: &Parts) -> Result<&str, ApiError> {
    if let Some(t) = bearer(parts)? {
        return Ok(t);
    }
    let t = staff_cookie(parts)
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
    let safe = matches!(parts.method, Method::GET | Method::HEAD);
    if !safe && !parts.headers.contains_key(CONSOLE_HEADER) {
        return Err(ApiError::forbidden(
            "a change made with the session cookie must carry the x-ande-console header",
        ));
    }
    Ok(t)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let t = staff_or_session_token(parts)?;
        if let Some(c) = auth::verify(&state.config.jwt_secret, auth::STAFF_AUDIENCE, t) {
            // Signed by us, but the account may have been disabled or its password changed.
            return match auth::staff_account(&state.pool, &c)
                .await
                .map_err(ApiError::db)?
            {
                Some(account) => Ok(Caller::Staff(account)),
                None => Err(ApiError::unauthorized(
                    "this staff token was revoked (password changed or account disabled); log in again",
                )),
            };
        }
        auth::verify(&state.config.jwt_secret, auth::MINIPROGRAM_AUDIENCE, t)
            .map(Caller::Customer)
            .ok_or_else(|| ApiError::unauthorized("the token is invalid or expired"))
    }
}

/// A staff member of either role (staff-only endpoints). A customer's session is a 403, no
/// token a 401.
pub struct Staff(pub StaffAccount);

impl FromRequestParts<AppState> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Staff(a) => Ok(Staff(a)),
            Caller::Customer(_) => Err(ApiError::forbidden("staff only")),
        }
    }
}

/// A staff member with the `admin` role; a `sales` account is a 403.
pub struct Admin(pub StaffAccount);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Staff(a) = Staff::from_request_parts(parts, state).await?;
        if a.is_admin() {
            Ok(Admin(a))
        } else {
            Err(ApiError::forbidden("admins only"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(auth: Option<&str>) -> Parts {
        let mut b = axum::http::Request::builder();
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_anything_else_is_refused() {
        assert_eq!(bearer(&parts(None)).unwrap(), None);
        assert_eq!(bearer(&parts(Some("Bearer abc"))).unwrap(), Some("abc"));
        assert_eq!(bearer(&parts(Some("bearer  abc "))).unwrap(), Some("abc"));
        assert_eq!(bearer(&parts(Some("BEARER abc"))).unwrap(), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer   ", "abc", ""] {
            let e = bearer(&parts(Some(bad))).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
    }
}
