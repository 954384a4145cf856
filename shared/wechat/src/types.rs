//! The requests and answers of the WeChat endpoints we call, shaped as WeChat sends them.
//!
//! WeChat is loose with JSON types: `msgid` is usually a number but sometimes a string, and
//! `countryCode` is documented as a string but arrives as a number. The answers are parsed
//! leniently into `String`s so that neither form breaks a send or a login. The simulator reuses
//! these types, so they serialize in WeChat's shape too.

use std::{collections::BTreeMap, fmt};

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use crate::keywords;

/// The answer of `jscode2session`: who the user is.
#[derive(Clone, Deserialize)]
pub struct Session {
    /// The user's id within this mini-program.
    pub openid: String,
    /// The key for decrypting the user's data; never to be sent to the client or logged.
    #[serde(deserialize_with = "secret_string")]
    pub session_key: SecretString,
    /// The user's id across the Open Platform account, when the app is bound to one.
    #[serde(default)]
    pub unionid: Option<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("openid", &self.openid)
            .field("session_key", &"[redacted]")
            .field("unionid", &self.unionid)
            .finish()
    }
}

/// A subscribe message, serialized as the body of `/cgi-bin/message/subscribe/send`.
///
/// `data` maps keyword names to values and serializes as `{"thing1":{"value":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeMessage {
    /// The recipient's openid.
    pub touser: String,
    /// The template's id.
    pub template_id: String,
    /// In-app page opened from the message, with its query (e.g. `pages/customer/detail?id=1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Keyword name to value.
    #[serde(with = "data_values")]
    pub data: BTreeMap<String, String>,
    /// `developer`, `trial` or `formal` (WeChat's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram_state: Option<String>,
    /// `zh_CN` (WeChat's default), `en_US`, `zh_HK` or `zh_TW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
}

impl SubscribeMessage {
    /// A message with no data, page, state or language yet.
    pub fn new(touser: impl Into<String>, template_id: impl Into<String>) -> Self {
        Self {
            touser: touser.into(),
            template_id: template_id.into(),
            page: None,
            data: BTreeMap::new(),
            miniprogram_state: None,
            lang: None,
        }
    }

    /// Sets the page opened from the message.
    pub fn page(mut self, page: impl Into<String>) -> Self {
        self.page = Some(page.into());
        self
    }

    /// Adds a keyword value as it is.
    pub fn field(mut self, keyword: impl Into<String>, value: impl Into<String>) -> Self {
        self.data.insert(keyword.into(), value.into());
        self
    }

    /// Adds a keyword value after [`keywords::fit`] has shaped it to the keyword's type.
    pub fn fitted_field(mut self, keyword: impl Into<String>, value: &str) -> Self {
        let keyword = keyword.into();
        let value = keywords::fit(&keyword, value);
        self.data.insert(keyword, value);
        self
    }

    /// Checks every keyword value against its type's limits, as WeChat will.
    pub fn validate(&self) -> Result<(), keywords::KeywordError> {
        keywords::validate_data(&self.data)
    }
}

/// The answer of a successful send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReceipt {
    /// WeChat's id of the message (a number or a string on the wire). Empty if WeChat left it
    /// out: the send succeeded all the same, and failing it would invite a duplicate resend.
    #[serde(default, deserialize_with = "string_or_number")]
    pub msgid: String,
}

/// A user's phone number, from `getuserphonenumber`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhoneInfo {
    /// With country code for numbers outside mainland China, e.g. `13800138000` or `+1 555…`.
    pub phone_number: String,
    /// Without country code.
    pub pure_phone_number: String,
    /// e.g. `86` (a string or a number on the wire).
    #[serde(deserialize_with = "string_or_number")]
    pub country_code: String,
}

/// The envelope `getuserphonenumber` answers with.
#[derive(Deserialize)]
pub(crate) struct PhoneNumberResponse {
    pub(crate) phone_info: PhoneInfo,
}

/// The answer of both token endpoints. No `Debug`: it holds the token.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(deserialize_with = "secret_string")]
    pub(crate) access_token: SecretString,
    pub(crate) expires_in: u64,
}

fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

/// Accepts `"123"` or `123` (or `1.5`) and keeps it as text.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(serde_json::Number),
    }
    Ok(match StringOrNumber::deserialize(d)? {
        StringOrNumber::String(s) => s,
        StringOrNumber::Number(n) => n.to_string(),
    })
}

/// `{"thing1": "x"}` in Rust, `{"thing1": {"value": "x"}}` on the wire.
mod data_values {
    use std::collections::BTreeMap;

    use serde::{ser::SerializeMap, Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct ValueRef<'a> {
        value: &'a str,
    }

    #[derive(Deserialize)]
    struct Value {
        value: String,
    }

    pub(super) fn serialize<S: Serializer>(
        data: &BTreeMap<String, String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(data.len()))?;
        for (k, v) in data {
            map.serialize_entry(k, &ValueRef { value: v })?;
        }
        map.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        let raw = BTreeMap::<String, Value>::deserialize(d)?;
        Ok(raw.into_iter().map(|(k, v)| (k, v.value)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    #[test]
    fn subscribe_message_serializes_in_wechat_shape() {
        let msg = SubscribeMessage::new("openid-1", crate::DEV_TEMPLATE_ID)
            .page("pages/customer/detail?id=42")
            .field("thing1", "客户查看了您的简历")
            .field("time2", "2019年10月1日 15:01");
        let value = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            value,
            json!({
                "touser": "openid-1",
                "template_id": "ande-dev-customer-action",
                "page": "pages/customer/detail?id=42",
                "data": {
                    "thing1": {"value": "客户查看了您的简历"},
                    "time2": {"value": "2019年10月1日 15:01"}
                }
            })
        );
    }

    #[test]
    fn subscribe_message_optional_fields_and_round_trip() {
        let mut msg = SubscribeMessage::new("o", "t").field("thing7", "张三");
        msg.miniprogram_state = Some("developer".into());
        msg.lang = Some("zh_CN".into());
        let value = serde_json::to_value(&msg).unwrap();
        assert_eq!(value["miniprogram_state"], "developer");
        assert_eq!(value["lang"], "zh_CN");
        assert!(value.get("page").is_none());
        let back: SubscribeMessage = serde_json::from_value(value).unwrap();
        assert_eq!(back, msg);

        // What a client of the simulator sends without optional fields.
        let parsed: SubscribeMessage = serde_json::from_str(
            r#"{"touser":"o","template_id":"t","data":{"thing1":{"value":"v"}}}"#,
        )
        .unwrap();
        assert_eq!(parsed.data["thing1"], "v");
        assert_eq!(parsed.page, None);
    }

    #[test]
    fn fitted_field_and_validate() {
        let msg = SubscribeMessage::new("o", "t")
            .fitted_field("thing1", &"很长".repeat(20))
            .field("thing3", "x".repeat(21));
        assert_eq!(msg.data["thing1"].chars().count(), 20);
        assert_eq!(msg.validate().unwrap_err().keyword, "thing3");
    }

    #[test]
    fn msgid_as_number_or_string() {
        let r: SendReceipt =
            serde_json::from_str(r#"{"errcode":0,"errmsg":"ok","msgid":1700827132819554304}"#)
                .unwrap();
        assert_eq!(r.msgid, "1700827132819554304");
        let r: SendReceipt = serde_json::from_str(r#"{"msgid":"294402298110051942"}"#).unwrap();
        assert_eq!(r.msgid, "294402298110051942");
        let r: SendReceipt = serde_json::from_str(r#"{"errcode":0,"errmsg":"ok"}"#).unwrap();
        assert_eq!(r.msgid, "");
    }

    #[test]
    fn country_code_as_number_or_string() {
        let body = |cc: &str| {
            format!(
                r#"{{"errcode":0,"errmsg":"ok","phone_info":{{"phoneNumber":"13800138000",
                "purePhoneNumber":"13800138000","countryCode":{cc},
                "watermark":{{"timestamp":1637744274,"appid":"wx1"}}}}}}"#
            )
        };
        for cc in ["86", "\"86\""] {
            let r: PhoneNumberResponse = serde_json::from_str(&body(cc)).unwrap();
            assert_eq!(
                r.phone_info,
                PhoneInfo {
                    phone_number: "13800138000".into(),
                    pure_phone_number: "13800138000".into(),
                    country_code: "86".into(),
                }
            );
        }
    }

    #[test]
    fn session_parses_and_debug_redacts_the_key() {
        let s: Session = serde_json::from_str(
            r#"{"openid":"o-1","session_key":"SESSION-KEY-xyz","unionid":"u-1"}"#,
        )
        .unwrap();
        assert_eq!(s.session_key.expose_secret(), "SESSION-KEY-xyz");
        assert_eq!(s.unionid.as_deref(), Some("u-1"));
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains("SESSION-KEY-xyz"), "{shown}");
        assert!(shown.contains("o-1"));

        let s: Session = serde_json::from_str(r#"{"openid":"o","session_key":"k"}"#).unwrap();
        assert_eq!(s.unionid, None);
    }
}
