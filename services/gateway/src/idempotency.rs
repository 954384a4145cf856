//! `Idempotency-Key`: a retried request gets the ids its first attempt got, so what it publishes
//! carries the same event id and is stored once (by JetStream within its duplicate window, by
//! the consumers' own idempotency after). Keys live in the gateway's schema, per scope (whose
//! keys they are), with a fingerprint of the request so a key reused for another request is a 409.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

const MAX_KEY: usize = 200;

/// The request's `Idempotency-Key`, if any: 1 to 200 visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    key_in(headers.get(HEADER))
}

/// The header's name.
pub const HEADER: &str = "idempotency-key";

/// [`key`], given the header's value (when the caller took only that one header).
pub fn key_in(value: Option<&HeaderValue>) -> Result<Option<String>, ApiError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key", "must be visible ASCII"))?
        .trim();
    if k.is_empty() || k.len() > MAX_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::validation(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY} visible ASCII characters"),
        ));
    }
    Ok(Some(k.to_string()))
}

/// A fingerprint of what a request asks for. Not a security boundary: it only tells "the same
/// request retried" from "the key reused for another request" (FNV-1a over canonical JSON).
/// The header's rule as JSON Schema (the OpenAPI document), the same [`key`] checks.
pub fn schema() -> Value {
    serde_json::json!({ "type": "string", "minLength": 1, "maxLength": MAX_KEY, "pattern": "^[\\x21-\\x7e]+$" })
}

pub fn fingerprint(request: &Value) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in request.to_string().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The ids reserved for a keyed request.
pub struct Claimed {
    pub action_id: Uuid,
    pub event_id: Uuid,
    /// The key was seen before: this is a retry.
    pub replayed: bool,
}

/// Reserve ids for `(scope, key)`, or find those of the first attempt.
pub async fn claim(
    state: &AppState,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Claimed, ApiError> {
    let fresh = sqlx::query!(
        "INSERT INTO idempotency_keys (scope, key, request_hash, action_id, event_id) VALUES ($1,$2,$3,$4,$5)
         ON CONFLICT (scope, key) DO NOTHING RETURNING action_id, event_id",
        scope,
        key,
        fingerprint,
        Uuid::now_v7(),
        Uuid::now_v7(),
    )
    .fetch_optional(&state.pool)
    .await
    .map_err(ApiError::db)?;
    if let Some(r) = fresh {
        return Ok(Claimed {
            action_id: r.action_id,
            event_id: r.event_id,
            replayed: false,
        });
    }
    let first = sqlx::query!(
        "SELECT action_id, event_id, request_hash FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    .fetch_one(&state.pool)
    .await
    .map_err(ApiError::db)?;
    let (action_id, event_id, stored) = (first.action_id, first.event_id, first.request_hash);
    if stored != fingerprint {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        ));
    }
    // The caller publishes again under the same event id: if the first attempt never reached
    // JetStream this records it; if it did, JetStream (or the consumer) drops the copy.
    Ok(Claimed {
        action_id,
        event_id,
        replayed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #[test]
        fn fingerprints_tell_different_requests_apart(t1 in "[a-z_]{1,12}", t2 in "[a-z_]{1,12}", phone in proptest::option::of("[0-9]{11}")) {
            let h = |t: &str| fingerprint(&json!(["c", "a", t, {}, null, phone]));
            prop_assert_eq!(h(&t1), h(&t1));
            if t1 != t2 {
                prop_assert_ne!(h(&t1), h(&t2));
            }
        }
    }

    #[test]
    fn keys_are_bounded_visible_ascii() {
        let mut h = HeaderMap::new();
        assert_eq!(key(&h).unwrap(), None);
        h.insert("idempotency-key", "abc-1".parse().unwrap());
        assert_eq!(key(&h).unwrap().as_deref(), Some("abc-1"));
        h.insert("idempotency-key", "a b".parse().unwrap());
        assert!(key(&h).is_err());
        h.insert("idempotency-key", "x".repeat(201).parse().unwrap());
        assert!(key(&h).is_err());
    }
}
