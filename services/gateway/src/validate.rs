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

/// The rule of a text field. Handlers check values with it and the OpenAPI document states it
/// ([`Text::schema`]), so what the document promises is what the handler enforces.
#[derive(Debug, Clone, Copy)]
pub struct Text {
    /// At most this many characters, counted as sent (before trimming).
    pub max: usize,
    /// Also take a JSON number as its text (old clients send numeric ids).
    pub numbers: bool,
}

/// Ids the mini-program sends (customer, advisor, template, openid): numbers accepted as text.
pub const ID: Text = Text {
    max: MAX_ID,
    numbers: true,
};
/// A one-time code from WeChat (`wx.login`, the phone button): always a string.
pub const CODE: Text = Text {
    max: 128,
    numbers: false,
};
/// A staff user name.
pub const USERNAME: Text = Text {
    max: 64,
    numbers: false,
};
/// A subscribe message's recipient or template id, as WeChat's own API spells them.
pub const WECHAT_ID: Text = Text {
    max: MAX_ID,
    numbers: false,
};
/// An in-app page path with its query.
pub const PAGE: Text = Text {
    max: 512,
    numbers: false,
};
/// What the customer did (`view_resume`, …; any word is kept).
pub const ACTION_TYPE: Text = Text {
    max: MAX_ACTION_TYPE,
    numbers: true,
};
/// A customer's name as they typed it.
pub const NAME: Text = Text {
    max: MAX_NAME,
    numbers: true,
};
/// A phone number as typed (normalised later by the leads service).
pub const PHONE: Text = Text {
    max: MAX_PHONE,
    numbers: true,
};
/// Where a subscription decision came from.
pub const SOURCE: Text = Text {
    max: 32,
    numbers: false,
};

/// Printable: no control character (C0, DEL, C1), as `char::is_control` says.
const PRINTABLE: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// Printable with at least one character that is not white space (`char::is_whitespace`).
const NOT_BLANK: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]*$";

impl Text {
    /// Present, not blank, at most `max` characters, no control characters; returned trimmed.
    pub fn required(self, field: &str, value: Option<&Value>) -> Result<String, ApiError> {
        match value {
            None | Some(Value::Null) => Err(ApiError::validation(field, "is required")),
            Some(Value::String(s)) => text(field, s, self.max, false),
            Some(Value::Number(n)) if self.numbers => text(field, &n.to_string(), self.max, false),
            Some(_) => Err(ApiError::validation(field, "must be a string")),
        }
    }

    /// Absent, null or blank is `None`; otherwise as [`Text::required`].
    pub fn optional(self, field: &str, value: Option<&Value>) -> Result<Option<String>, ApiError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                text(field, s, self.max, true).map(|t| (!t.is_empty()).then_some(t))
            }
            Some(Value::Number(n)) if self.numbers => {
                text(field, &n.to_string(), self.max, true).map(Some)
            }
            Some(_) => Err(ApiError::validation(field, "must be a string")),
        }
    }

    /// The JSON Schema (OpenAPI 3.1) of a value this rule accepts; an optional one may be null.
    pub fn schema(self, required: bool) -> Value {
        let mut text = serde_json::json!({
            "type": "string",
            "maxLength": self.max,
            "pattern": if required { NOT_BLANK } else { PRINTABLE },
        });
        if required {
            text["minLength"] = 1.into();
        }
        let mut alternatives = vec![text];
        if self.numbers {
            alternatives.push(serde_json::json!({ "type": "number" }));
        }
        if !required {
            alternatives.push(serde_json::json!({ "type": "null" }));
        }
        match <[Value; 1]>::try_from(alternatives) {
            Ok([one]) => one,
            Err(many) => serde_json::json!({ "anyOf": many }),
        }
    }
}

/// An optional word of a shared vocabulary (`ande_contracts::vocab`): absent, null, or one of the
/// words exactly.
pub fn word<V: Vocabulary>(field: &str, value: Option<&Value>) -> Result<Option<V>, ApiError> {
    let refused =
        || ApiError::validation(field, format!("must be one of {}", V::names().join(", ")));
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(w)) => V::parse(w).map(Some).ok_or_else(refused),
        Some(_) => Err(refused()),
    }
}

/// Length and control characters are checked on the value as sent, blankness after trimming:
/// exactly what [`Text::schema`] states.
fn text(field: &str, s: &str, max: usize, allow_empty: bool) -> Result<String, ApiError> {
    if s.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            "must not contain control characters",
        ));
    }
    let t = s.trim();
    if t.is_empty() && !allow_empty {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    Ok(t.to_string())
}

/// A time filter: a date (`YYYY-MM-DD`, JSON Schema's `date`: midnight in Beijing) or an RFC
/// 3339 time (`date-time`), as the document's `format`s say.
pub fn time(field: &str, raw: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    let refuse = || ApiError::validation(field, "must be a date (YYYY-MM-DD) or an RFC 3339 time");
    let is_date = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if is_date {
        let date = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| refuse())?;
        let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("a valid offset");
        let midnight = date.and_hms_opt(0, 0, 0).ok_or_else(refuse)?;
        return Ok(midnight
            .and_local_timezone(beijing)
            .single()
            .ok_or_else(refuse)?
            .to_utc());
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.to_utc())
        .map_err(|_| refuse())
}

/// `actionData`: an object (absent means `{}`), bounded in size and depth, no NUL anywhere.
/// Answers the object and its JSON text (encoded once: the check needs it, and so does the event).
pub fn action_data(value: Option<Value>) -> Result<(Value, String), ApiError> {
    let v = match value {
        None | Some(Value::Null) => return Ok((Value::Object(Default::default()), "{}".into())),
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
    if depth(&v) > MAX_ACTION_DATA_DEPTH {
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
    Ok((v, encoded))
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

    #[test]
    fn time_filters_take_dates_and_rfc3339_times() {
        let t = |s: &str| time("t", s).map(|t| t.to_rfc3339());
        assert_eq!(t("2026-12-06").unwrap(), "2026-12-05T16:00:00+00:00");
        assert_eq!(
            t("2026-12-06T01:02:03.5+08:00").unwrap(),
            "2026-12-05T17:02:03.500+00:00"
        );
        assert_eq!(
            t("2026-12-06t01:02:03z").unwrap(),
            "2026-12-06T01:02:03+00:00"
        );
        for bad in [
            "",
            "2026-13-01",
            "2026-02-30",
            "2026-12-06T24:00:00Z",
            "2026-12-06T01:02:03",
            "２０２６-12-06",
            "2026-12-06 ",
            "yesterday",
        ] {
            assert!(time("t", bad).is_err(), "{bad:?}");
        }
    }
    use serde_json::json;

    #[test]
    fn required_fields_refuse_blank_wrong_type_and_control_chars() {
        let rule = Text {
            max: 5,
            numbers: true,
        };
        assert_eq!(rule.required("a", Some(&json!(" x "))).unwrap(), "x");
        assert_eq!(rule.required("a", Some(&json!(42))).unwrap(), "42");
        assert!(
            CODE.required("a", Some(&json!(42))).is_err(),
            "codes are strings"
        );
        assert!(rule.required("a", None).is_err());
        assert!(rule.required("a", Some(&json!("  "))).is_err());
        assert!(rule.required("a", Some(&json!([1]))).is_err());
        assert!(rule.required("a", Some(&json!("a\u{0}b"))).is_err());
        assert!(
            rule.required("a", Some(&json!("\tab"))).is_err(),
            "as sent, not trimmed"
        );
        assert!(
            rule.required("a", Some(&json!("顾问顾问顾问"))).is_err(),
            "counted in characters"
        );
    }

    #[test]
    fn action_data_must_be_a_bounded_object() {
        assert_eq!(action_data(None).unwrap(), (json!({}), "{}".to_string()));
        assert!(action_data(Some(json!("x"))).is_err());
        assert!(action_data(Some(json!({"s": "x".repeat(MAX_ACTION_DATA_BYTES)}))).is_err());
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!({ "d": deep });
        }
        assert!(action_data(Some(deep)).is_err());
        let (v, text) = action_data(Some(json!({"resumeId": "r1"}))).unwrap();
        assert_eq!(text, v.to_string(), "the text is the object's JSON");
    }

    const R40: Text = Text {
        max: 40,
        numbers: true,
    };

    /// Whether `s` is valid under the schema `Text::schema` states for a string value.
    fn schema_admits(rule: Text, required: bool, s: &str) -> bool {
        let schema = rule.schema(required);
        let text = if rule.numbers {
            &schema["anyOf"][0]
        } else {
            &schema
        };
        let pattern = regex::Regex::new(text["pattern"].as_str().unwrap()).unwrap();
        let min = text["minLength"].as_u64().unwrap_or(0) as usize;
        let n = s.chars().count();
        pattern.is_match(s) && n >= min && n <= rule.max
    }

    proptest! {
        /// The document and the handler agree on every string: what the schema admits is
        /// accepted, what it refuses is refused (required and optional fields).
        #[test]
        fn the_schema_states_exactly_what_the_handler_accepts(
            s in "[ a-z\\t\\n\\u{85}\\u{a0}\\u{3000}\\u{feff}\\u{2028}顾\\x00-\\x1f\\x7f]{0,45}"
        ) {
            prop_assert_eq!(schema_admits(R40, true, &s), R40.required("f", Some(&json!(s))).is_ok(), "{:?}", s);
            prop_assert_eq!(schema_admits(R40, false, &s), R40.optional("f", Some(&json!(s))).is_ok(), "{:?}", s);
        }

        #[test]
        fn accepted_text_is_trimmed_bounded_and_printable(s in "\\PC{0,80}|[\\x00-\\x1f]{0,5}") {
            if let Ok(t) = R40.required("f", Some(&json!(s))) {
                prop_assert!(!t.is_empty() && t.chars().count() <= 40 && !t.chars().any(char::is_control));
                prop_assert_eq!(t.trim(), t.as_str());
            }
        }

        #[test]
        fn optional_text_is_none_when_blank_and_bounded_otherwise(s in "\\PC{0,80}|[ \t]{0,5}") {
            match R40.optional("f", Some(&json!(s))) {
                Ok(None) => prop_assert!(s.trim().is_empty()),
                Ok(Some(t)) => prop_assert!(!t.is_empty() && t.chars().count() <= 40 && t == s.trim()),
                Err(e) => prop_assert!(s.chars().count() > 40 || s.chars().any(char::is_control), "{:?}", e),
            }
        }

        #[test]
        fn text_over_the_bound_is_always_refused_naming_the_field(s in "[a-z顾]{41,80}") {
            let e = R40.required("customerId", Some(&json!(s))).unwrap_err();
            prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            prop_assert_eq!(&e.details["field"], "customerId");
        }

        #[test]
        fn non_text_values_are_refused(v in prop_oneof![Just(json!(true)), Just(json!([])), Just(json!({})), Just(json!([1, "a"]))]) {
            prop_assert!(R40.required("f", Some(&v)).is_err());
            prop_assert!(R40.optional("f", Some(&v)).is_err());
            prop_assert!(action_data(Some(v.clone())).is_ok() == v.is_object());
        }

        #[test]
        fn accepted_action_data_is_bounded(levels in 0usize..30, width in 0usize..50, s in "\\PC{0,400}") {
            let mut v = json!({ "s": s });
            for i in 0..levels {
                v = json!({ format!("k{i}"): v, "pad": "x".repeat(width) });
            }
            if let Ok((ok, text)) = action_data(Some(v.clone())) {
                prop_assert_eq!(&text, &ok.to_string());
                prop_assert!(text.len() <= MAX_ACTION_DATA_BYTES);
                prop_assert!(depth(&ok) <= MAX_ACTION_DATA_DEPTH);
                prop_assert!(!text.contains("\\u0000"));
            } else {
                prop_assert!(v.to_string().len() > MAX_ACTION_DATA_BYTES || depth(&v) > MAX_ACTION_DATA_DEPTH || v.to_string().contains("\\u0000"));
            }
        }

        #[test]
        fn any_json_object_is_either_accepted_or_refused_cleanly(keys in prop::collection::vec("[a-z]{1,8}", 0..20), vals in prop::collection::vec(any::<i64>(), 0..20)) {
            let obj: serde_json::Map<String, Value> = keys.into_iter().zip(vals).map(|(k, v)| (k, json!(v))).collect();
            prop_assert!(action_data(Some(Value::Object(obj))).is_ok());
        }
    }
}
