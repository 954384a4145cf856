//! Validation of the mini-program's input: bounded, printable, never NUL (Postgres refuses it,
//! and nothing legitimate contains it).

use ande_contracts::vocab::Vocabulary;
use serde_json::Value;

use crate::error::ApiError;

pub const MAX_ID: usize = 128;
pub const MAX_ACTION_TYPE: usize = 64;
pub const MAX_NAME: usize = 64;
pub const MAX_PHONE: usize = 32;
pub const MAX_ACTION_DATA_BYTES: usize = 16 * 1024;
pub const MAX_ACTION_DATA_DEPTH: usize = 16;

/// A required text field: present, not blank, at most `max` characters, no control characters.
pub fn required(field: &str, value: Option<&Value>, max: usize) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) => Err(ApiError::validation(field, "is required")),
        Some(Value::String(s)) => text(field, s, max, false),
        // Old clients send numeric ids; accept them as text.
        Some(Value::Number(n)) => text(field, &n.to_string(), max, false),
        Some(_) => Err(ApiError::validation(field, "must be a string")),
    }
}

/// An optional text field; blank counts as absent.
pub fn optional(
    field: &str,
    value: Option<&Value>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => text(field, s, max, true).map(Some),
        Some(Value::Number(n)) => text(field, &n.to_string(), max, true).map(Some),
        Some(_) => Err(ApiError::validation(field, "must be a string")),
    }
}

/// An optional word of a shared vocabulary (`ande_contracts::vocab`); blank counts as absent.
pub fn word<V: Vocabulary>(field: &str, value: Option<&Value>) -> Result<Option<V>, ApiError> {
    let Some(w) = optional(field, value, 32)? else {
        return Ok(None);
    };
    V::parse(&w).map(Some).ok_or_else(|| {
        ApiError::validation(field, format!("must be one of {}", V::names().join(", ")))
    })
}

fn text(field: &str, s: &str, max: usize, allow_empty: bool) -> Result<String, ApiError> {
    let t = s.trim();
    if t.is_empty() && !allow_empty {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if t.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(t.to_string())
}

/// `actionData`: an object (absent means `{}`), bounded in size and depth, no NUL anywhere.
pub fn action_data(value: Option<&Value>) -> Result<Value, ApiError> {
    let v = match value {
        None | Some(Value::Null) => return Ok(Value::Object(Default::default())),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(ApiError::validation("actionData", "must be an object")),
    };
    let encoded = v.to_string();
    if encoded.len() > MAX_ACTION_DATA_BYTES {
        return Err(ApiError::validation(
            "actionData",
            format!("must be at most {MAX_ACTION_DATA_BYTES} bytes as JSON"),
        ));
    }
    if depth(v) > MAX_ACTION_DATA_DEPTH {
        return Err(ApiError::validation(
            "actionData",
            format!("must nest at most {MAX_ACTION_DATA_DEPTH} levels"),
        ));
    }
    if encoded.contains("\\u0000") {
        return Err(ApiError::validation(
            "actionData",
            "must not contain NUL characters",
        ));
    }
    Ok(v.clone())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn required_fields_refuse_blank_wrong_type_and_control_chars() {
        assert_eq!(required("a", Some(&json!(" x ")), 5).unwrap(), "x");
        assert_eq!(required("a", Some(&json!(42)), 5).unwrap(), "42");
        assert!(required("a", None, 5).is_err());
        assert!(required("a", Some(&json!("  ")), 5).is_err());
        assert!(required("a", Some(&json!([1])), 5).is_err());
        assert!(required("a", Some(&json!("a\u{0}b")), 5).is_err());
        assert!(
            required("a", Some(&json!("顾问顾问顾问")), 5).is_err(),
            "counted in characters"
        );
    }

    #[test]
    fn action_data_must_be_a_bounded_object() {
        assert_eq!(action_data(None).unwrap(), json!({}));
        assert!(action_data(Some(&json!("x"))).is_err());
        assert!(action_data(Some(&json!({"s": "x".repeat(MAX_ACTION_DATA_BYTES)}))).is_err());
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!({ "d": deep });
        }
        assert!(action_data(Some(&deep)).is_err());
        assert!(action_data(Some(&json!({"resumeId": "r1"}))).is_ok());
    }

    proptest! {
        #[test]
        fn accepted_text_is_trimmed_bounded_and_printable(s in "\\PC{0,80}|[\\x00-\\x1f]{0,5}") {
            if let Ok(t) = required("f", Some(&json!(s)), 40) {
                prop_assert!(!t.is_empty() && t.chars().count() <= 40 && !t.chars().any(char::is_control));
                prop_assert_eq!(t.trim(), t.as_str());
            }
        }

        #[test]
        fn optional_text_is_none_when_blank_and_bounded_otherwise(s in "\\PC{0,80}|[ \t]{0,5}") {
            match optional("f", Some(&json!(s)), 40) {
                Ok(None) => prop_assert!(s.trim().is_empty()),
                Ok(Some(t)) => prop_assert!(!t.is_empty() && t.chars().count() <= 40 && t == s.trim()),
                Err(e) => prop_assert!(s.trim().chars().count() > 40 || s.chars().any(char::is_control), "{:?}", e),
            }
        }

        #[test]
        fn text_over_the_bound_is_always_refused_naming_the_field(s in "[a-z顾]{41,80}") {
            let e = required("customerId", Some(&json!(s)), 40).unwrap_err();
            prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            prop_assert_eq!(&e.details["field"], "customerId");
        }

        #[test]
        fn non_text_values_are_refused(v in prop_oneof![Just(json!(true)), Just(json!([])), Just(json!({})), Just(json!([1, "a"]))]) {
            prop_assert!(required("f", Some(&v), 40).is_err());
            prop_assert!(optional("f", Some(&v), 40).is_err());
            prop_assert!(action_data(Some(&v)).is_ok() == v.is_object());
        }

        #[test]
        fn accepted_action_data_is_bounded(levels in 0usize..30, width in 0usize..50, s in "\\PC{0,400}") {
            let mut v = json!({ "s": s });
            for i in 0..levels {
                v = json!({ format!("k{i}"): v, "pad": "x".repeat(width) });
            }
            if let Ok(ok) = action_data(Some(&v)) {
                prop_assert!(ok.to_string().len() <= MAX_ACTION_DATA_BYTES);
                prop_assert!(depth(&ok) <= MAX_ACTION_DATA_DEPTH);
                prop_assert!(!ok.to_string().contains("\\u0000"));
            } else {
                prop_assert!(v.to_string().len() > MAX_ACTION_DATA_BYTES || depth(&v) > MAX_ACTION_DATA_DEPTH || v.to_string().contains("\\u0000"));
            }
        }

        #[test]
        fn any_json_object_is_either_accepted_or_refused_cleanly(keys in prop::collection::vec("[a-z]{1,8}", 0..20), vals in prop::collection::vec(any::<i64>(), 0..20)) {
            let obj: serde_json::Map<String, Value> = keys.into_iter().zip(vals).map(|(k, v)| (k, json!(v))).collect();
            prop_assert!(action_data(Some(&Value::Object(obj))).is_ok());
        }
    }
}
