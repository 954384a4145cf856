//! WeChat's message push for the mini-program: the URL check, signatures, the safe mode's
//! AES-256-CBC, and the subscription events in JSON or XML.
//!
//! Both sides live here so they cannot disagree: the gateway verifies, decrypts and parses what
//! WeChat pushes (`POST /api/wechat/events`), the simulator signs, encrypts and renders the same
//! pushes. The rules (from WeChat's "message push" and "message encryption" guides, summarised in
//! `docs/wechat.md`):
//!
//! - `signature` = SHA-1 hex of `[Token, timestamp, nonce]` sorted and concatenated. It does not
//!   cover the body: in plaintext mode anyone who saw one signed URL can post another body under
//!   it within the freshness window, which is why safe mode is the recommended setting.
//! - safe mode: the body holds only `Encrypt`; `msg_signature` = SHA-1 hex of `[Token, timestamp,
//!   nonce, Encrypt]` sorted, checked before anything is decrypted. Key = base64(EncodingAESKey +
//!   "="), IV = the key's first 16 bytes, PKCS#7 padding to 32 bytes; plaintext = 16 random bytes,
//!   a 4-byte big-endian length, the message, the app id (checked).
//! - subscription events: `subscribe_msg_popup_event`, `subscribe_msg_change_event`,
//!   `subscribe_msg_sent_event`; JSON `List` is an object for one item and an array for several,
//!   numbers may arrive as strings; XML items sit under `SubscribeMsg…Event/List`.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine;
use serde_json::{json, Map, Value};

/// WeChat pads the safe mode's plaintext to multiples of 32 bytes (not AES's 16).
const PAD_BLOCK: usize = 32;
/// The event names of the subscription pushes.
pub const POPUP_EVENT: &str = "subscribe_msg_popup_event";
pub const CHANGE_EVENT: &str = "subscribe_msg_change_event";
pub const SENT_EVENT: &str = "subscribe_msg_sent_event";

/// Why a push was refused. The messages name the field, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("signature does not match")]
    BadSignature,
    #[error("msg_signature does not match")]
    BadMsgSignature,
    #[error("cannot decrypt: {0}")]
    Decrypt(&'static str),
    #[error("encrypted for another app id")]
    WrongApp,
    #[error("malformed push: {0}")]
    Malformed(String),
    #[error("EncodingAESKey must be 43 characters of base64")]
    BadKey,
}

/// SHA-1 hex of the parts sorted and concatenated: both of WeChat's push signatures.
pub fn signature(parts: &[&str]) -> String {
    use sha1::Digest;
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let digest = sha1::Sha1::digest(sorted.concat().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare two signatures without leaking where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y.to_ascii_lowercase()))
            == 0
}

/// The AES key of safe mode, from the 43-character `EncodingAESKey`.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl AesKey {
    pub fn from_encoding_key(encoding_aes_key: &str) -> Result<Self, PushError> {
        if encoding_aes_key.len() != 43 {
            return Err(PushError::BadKey);
        }
        // WeChat's keys are 43 random base64 letters: the last one may carry trailing bits,
        // which WeChat's own SDKs ignore.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let bytes = lenient
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| PushError::BadKey)?;
        Ok(Self(bytes.try_into().map_err(|_| PushError::BadKey)?))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// Decrypt an `Encrypt` field and check it was made for `app_id`.
    pub fn decrypt(&self, encrypted: &str, app_id: &str) -> Result<String, PushError> {
        let mut buf = base64::engine::general_purpose::STANDARD
            .decode(encrypted.trim())
            .map_err(|_| PushError::Decrypt("not base64"))?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(PushError::Decrypt("not whole AES blocks"));
        }
        let plain = cbc::Decryptor::<aes::Aes256>::new(&self.0.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| PushError::Decrypt("bad blocks"))?;
        let pad = usize::from(*plain.last().unwrap_or(&0));
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(PushError::Decrypt("bad padding"));
        }
        let plain = &plain[..plain.len() - pad];
        if plain.len() < 20 {
            return Err(PushError::Decrypt("too short"));
        }
        let len = u32::from_be_bytes([plain[16], plain[17], plain[18], plain[19]]) as usize;
        let rest = &plain[20..];
        if len > rest.len() {
            return Err(PushError::Decrypt("length beyond the message"));
        }
        let (message, app) = rest.split_at(len);
        if app != app_id.as_bytes() {
            return Err(PushError::WrongApp);
        }
        String::from_utf8(message.to_vec()).map_err(|_| PushError::Decrypt("not UTF-8"))
    }

    /// Encrypt a message for `app_id` as WeChat does (the simulator's side).
    pub fn encrypt(&self, message: &str, app_id: &str, random: [u8; 16]) -> String {
        let mut plain = random.to_vec();
        plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
        plain.extend_from_slice(message.as_bytes());
        plain.extend_from_slice(app_id.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let len = plain.len();
        let out = cbc::Encryptor::<aes::Aes256>::new(&self.0.into(), &self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .expect("whole blocks")
            .to_vec();
        base64::engine::general_purpose::STANDARD.encode(out)
    }
}

/// The body's format; WeChat sends the one chosen in the mini-program's admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// XML bodies start with `<`; anything else is read as JSON.
    pub fn of(body: &str) -> Self {
        if body.trim_start().starts_with('<') {
            Format::Xml
        } else {
            Format::Json
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "xml" => Some(Format::Xml),
            _ => None,
        }
    }
}

/// One item of a subscription push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushItem {
    /// The user answered the popup for a template (`accept`, `reject`, …).
    Popup {
        template_id: String,
        status: String,
        scene: String,
    },
    /// The user changed a template in the mini-program's settings (WeChat sends `reject`).
    Change { template_id: String, status: String },
    /// What became of a message we sent.
    Sent {
        template_id: String,
        msg_id: String,
        error_code: i64,
        error_status: String,
    },
}

impl PushItem {
    pub fn template_id(&self) -> &str {
        match self {
            PushItem::Popup { template_id, .. }
            | PushItem::Change { template_id, .. }
            | PushItem::Sent { template_id, .. } => template_id,
        }
    }

    /// The fields in WeChat's spelling.
    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            PushItem::Popup {
                template_id,
                status,
                scene,
            } => vec![
                ("TemplateId", template_id.clone()),
                ("SubscribeStatusString", status.clone()),
                ("PopupScene", scene.clone()),
            ],
            PushItem::Change {
                template_id,
                status,
            } => vec![
                ("TemplateId", template_id.clone()),
                ("SubscribeStatusString", status.clone()),
            ],
            PushItem::Sent {
                template_id,
                msg_id,
                error_code,
                error_status,
            } => vec![
                ("TemplateId", template_id.clone()),
                ("MsgID", msg_id.clone()),
                ("ErrorCode", error_code.to_string()),
                ("ErrorStatus", error_status.clone()),
            ],
        }
    }
}

/// A push, decrypted. `items` is empty for events other than the three subscription ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub to_user: String,
    /// The user's openid: WeChat signed it.
    pub from_user: String,
    pub create_time: i64,
    pub msg_type: String,
    pub event: String,
    pub items: Vec<PushItem>,
}

/// The XML element that holds an event's items.
fn xml_container(event: &str) -> Option<&'static str> {
    match event {
        POPUP_EVENT => Some("SubscribeMsgPopupEvent"),
        CHANGE_EVENT => Some("SubscribeMsgChangeEvent"),
        SENT_EVENT => Some("SubscribeMsgSentEvent"),
        _ => None,
    }
}

fn malformed(m: impl Into<String>) -> PushError {
    PushError::Malformed(m.into())
}

/// A JSON value that WeChat sends as a string or a number.
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn number(field: &str, s: &str) -> Result<i64, PushError> {
    s.trim()
        .parse()
        .map_err(|_| malformed(format!("{field} is not a number")))
}

fn item(event: &str, get: &dyn Fn(&str) -> String) -> Result<PushItem, PushError> {
    let template_id = get("TemplateId");
    if template_id.is_empty() {
        return Err(malformed("an item without TemplateId"));
    }
    Ok(match event {
        POPUP_EVENT => PushItem::Popup {
            template_id,
            status: get("SubscribeStatusString"),
            scene: get("PopupScene"),
        },
        CHANGE_EVENT => PushItem::Change {
            template_id,
            status: get("SubscribeStatusString"),
        },
        _ => PushItem::Sent {
            template_id,
            msg_id: get("MsgID"),
            error_code: number("ErrorCode", &get("ErrorCode"))?,
            error_status: get("ErrorStatus"),
        },
    })
}

impl Push {
    /// Parse a plaintext push body (JSON or XML).
    pub fn parse(body: &str) -> Result<Self, PushError> {
        match Format::of(body) {
            Format::Json => Self::parse_json(body),
            Format::Xml => Self::parse_xml(body),
        }
    }

    fn parse_json(body: &str) -> Result<Self, PushError> {
        let v: Map<String, Value> =
            serde_json::from_str(body).map_err(|_| malformed("not a JSON object"))?;
        let event = text(v.get("Event"));
        let mut push = Push {
            to_user: text(v.get("ToUserName")),
            from_user: text(v.get("FromUserName")),
            create_time: number("CreateTime", &text(v.get("CreateTime")))?,
            msg_type: text(v.get("MsgType")),
            event: event.clone(),
            items: Vec::new(),
        };
        if xml_container(&event).is_some() {
            let list: Vec<&Value> = match v.get("List") {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(o @ Value::Object(_)) => vec![o],
                _ => return Err(malformed("List must be an object or an array")),
            };
            for entry in list {
                let obj = entry
                    .as_object()
                    .ok_or_else(|| malformed("List items must be objects"))?;
                push.items.push(item(&event, &|k: &str| text(obj.get(k)))?);
            }
        }
        push.check()
    }

    fn parse_xml(body: &str) -> Result<Self, PushError> {
        let doc = roxmltree::Document::parse(body).map_err(|_| malformed("not XML"))?;
        let root = doc.root_element();
        let child = |node: roxmltree::Node, name: &str| -> String {
            node.children()
                .find(|c| c.has_tag_name(name))
                .map(|c| c.text().unwrap_or("").trim().to_string())
                .unwrap_or_default()
        };
        let event = child(root, "Event");
        let mut push = Push {
            to_user: child(root, "ToUserName"),
            from_user: child(root, "FromUserName"),
            create_time: number("CreateTime", &child(root, "CreateTime"))?,
            msg_type: child(root, "MsgType"),
            event: event.clone(),
            items: Vec::new(),
        };
        if let Some(container) = xml_container(&event) {
            let holder = root
                .children()
                .find(|c| c.has_tag_name(container))
                .ok_or_else(|| malformed(format!("{container} is missing")))?;
            for list in holder.children().filter(|c| c.has_tag_name("List")) {
                push.items.push(item(&event, &|k: &str| child(list, k))?);
            }
        }
        push.check()
    }

    fn check(self) -> Result<Self, PushError> {
        if self.from_user.is_empty() {
            return Err(malformed("FromUserName is missing"));
        }
        if xml_container(&self.event).is_some() && self.items.is_empty() {
            return Err(malformed("a subscription event without items"));
        }
        Ok(self)
    }

    /// Render as WeChat would send it (the simulator's side). JSON `List` is an object for one
    /// item and an array for several, as WeChat does.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => {
                let items: Vec<Value> = self
                    .items
                    .iter()
                    .map(|i| {
                        Value::Object(
                            i.fields()
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), Value::String(v)))
                                .collect(),
                        )
                    })
                    .collect();
                let list = match items.len() {
                    1 => items[0].clone(),
                    _ => Value::Array(items),
                };
                json!({
                    "ToUserName": self.to_user,
                    "FromUserName": self.from_user,
                    "CreateTime": self.create_time,
                    "MsgType": self.msg_type,
                    "Event": self.event,
                    "List": list,
                })
                .to_string()
            }
            Format::Xml => {
                let mut out = format!(
                    "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{}</CreateTime><MsgType>{}</MsgType><Event>{}</Event>",
                    cdata(&self.to_user),
                    cdata(&self.from_user),
                    self.create_time,
                    cdata(&self.msg_type),
                    cdata(&self.event)
                );
                if let Some(container) = xml_container(&self.event) {
                    out.push_str(&format!("<{container}>"));
                    for i in &self.items {
                        out.push_str("<List>");
                        for (k, v) in i.fields() {
                            out.push_str(&format!("<{k}>{}</{k}>", cdata(&v)));
                        }
                        out.push_str("</List>");
                    }
                    out.push_str(&format!("</{container}>"));
                }
                out.push_str("</xml>");
                out
            }
        }
    }

    /// A stable id for one item, from what WeChat says identifies a push (FromUserName +
    /// CreateTime + content): a retried or replayed push gets the same id, so it is applied once.
    pub fn item_id(&self, item: &PushItem) -> uuid::Uuid {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            self.from_user.as_str(),
            &self.create_time.to_string(),
            &self.event,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for (k, v) in item.fields() {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

/// XML text as WeChat writes it. `]]>` inside a value is split so the section stays closed.
fn cdata(s: &str) -> String {
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

/// The `Encrypt` field of a safe-mode body.
pub fn encrypted_field(body: &str) -> Result<String, PushError> {
    let value = match Format::of(body) {
        Format::Json => {
            let v: Map<String, Value> =
                serde_json::from_str(body).map_err(|_| malformed("not a JSON object"))?;
            text(v.get("Encrypt"))
        }
        Format::Xml => {
            let doc = roxmltree::Document::parse(body).map_err(|_| malformed("not XML"))?;
            doc.root_element()
                .children()
                .find(|c| c.has_tag_name("Encrypt"))
                .and_then(|c| c.text())
                .unwrap_or("")
                .trim()
                .to_string()
        }
    };
    if value.is_empty() {
        return Err(malformed("Encrypt is missing"));
    }
    Ok(value)
}

/// A safe-mode body around an `Encrypt` value (the simulator's side).
pub fn sealed_body(format: Format, to_user: &str, encrypted: &str) -> String {
    match format {
        Format::Json => json!({"ToUserName": to_user, "Encrypt": encrypted}).to_string(),
        Format::Xml => format!(
            "<xml><ToUserName>{}</ToUserName><Encrypt>{}</Encrypt></xml>",
            cdata(to_user),
            cdata(encrypted)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn popup(items: usize) -> Push {
        Push {
            to_user: "gh_app".into(),
            from_user: "o_user".into(),
            create_time: 1_700_000_000,
            msg_type: "event".into(),
            event: POPUP_EVENT.into(),
            items: (0..items)
                .map(|i| PushItem::Popup {
                    template_id: format!("T{i}"),
                    status: "accept".into(),
                    scene: "0".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn signature_sorts_then_hashes() {
        // SHA-1 of "1234567890abc" (sorted: "1234", "567890", "abc").
        assert_eq!(
            signature(&["abc", "567890", "1234"]),
            signature(&["1234", "abc", "567890"])
        );
        assert_eq!(
            signature(&["a"]),
            "86f7e437faa5a7fce15d1ddcb9eaeaea377667b8"
        );
        assert!(same(
            &signature(&["a"]),
            "86F7E437FAA5A7FCE15D1DDCB9EAEAEA377667B8"
        ));
        assert!(!same(&signature(&["a"]), &signature(&["b"])));
    }

    #[test]
    fn both_formats_round_trip_with_one_item_or_several() {
        for n in [1, 3] {
            for f in [Format::Json, Format::Xml] {
                let p = popup(n);
                assert_eq!(Push::parse(&p.render(f)).unwrap(), p, "{f:?} {n}");
            }
        }
        let v: Value = serde_json::from_str(&popup(1).render(Format::Json)).unwrap();
        assert!(v["List"].is_object());
        let v: Value = serde_json::from_str(&popup(2).render(Format::Json)).unwrap();
        assert!(v["List"].is_array());
    }

    #[test]
    fn wechats_own_examples_parse() {
        let json = r#"{"ToUserName":"gh_123456789abc","FromUserName":"o7esq5OI1Buyn6WfT5aZbhnPLuqI","CreateTime":"1620963428","MsgType":"event","Event":"subscribe_msg_sent_event","List":{"TemplateId":"hD-ixGOhYmUfjOnI8MCzQMPshzGVeux_2vBgcdBcLXY","MsgID":"1864323726461255680","ErrorCode":"0","ErrorStatus":"success"}}"#;
        let p = Push::parse(json).unwrap();
        assert_eq!(p.create_time, 1620963428);
        assert!(
            matches!(&p.items[0], PushItem::Sent { msg_id, error_code: 0, .. } if msg_id == "1864323726461255680")
        );
        let xml = "<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName><FromUserName><![CDATA[otFpruAK8D-E6EfStSYonYSBZ8igAA]]></FromUserName><CreateTime>1610969468</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_change_event]]></Event><SubscribeMsgChangeEvent><List><TemplateId><![CDATA[VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc]]></TemplateId><SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString></List></SubscribeMsgChangeEvent></xml>";
        let p = Push::parse(xml).unwrap();
        assert_eq!(p.from_user, "otFpruAK8D-E6EfStSYonYSBZ8igAA");
        assert!(matches!(&p.items[0], PushItem::Change { status, .. } if status == "reject"));
    }

    #[test]
    fn malformed_pushes_are_refused_not_panicked_on() {
        for body in [
            "",
            "{}",
            "[]",
            "<xml>",
            r#"{"FromUserName":"o","CreateTime":"x","Event":"e"}"#,
            r#"{"FromUserName":"o","CreateTime":1,"Event":"subscribe_msg_popup_event"}"#,
            r#"{"FromUserName":"o","CreateTime":1,"Event":"subscribe_msg_popup_event","List":[1]}"#,
            r#"{"FromUserName":"o","CreateTime":1,"Event":"subscribe_msg_sent_event","List":{"TemplateId":"T","ErrorCode":"x"}}"#,
        ] {
            assert!(Push::parse(body).is_err(), "{body}");
        }
        // Other events parse, with no items.
        let p = Push::parse(r#"{"FromUserName":"o","CreateTime":1,"MsgType":"text"}"#).unwrap();
        assert!(p.items.is_empty());
    }

    #[test]
    fn safe_mode_round_trips_and_checks_the_app() {
        let key = AesKey::from_encoding_key(KEY).unwrap();
        let body = popup(2).render(Format::Xml);
        let enc = key.encrypt(&body, "wx_app", [7; 16]);
        assert_eq!(key.decrypt(&enc, "wx_app").unwrap(), body);
        assert_eq!(key.decrypt(&enc, "wx_other"), Err(PushError::WrongApp));
        let other = AesKey::from_encoding_key(&KEY.replace('a', "b")).unwrap();
        assert!(other.decrypt(&enc, "wx_app").is_err());
        assert!(key.decrypt("not base64!", "wx_app").is_err());
        assert!(key.decrypt("AAAA", "wx_app").is_err());
        assert!(AesKey::from_encoding_key("short").is_err());
        assert!(!format!("{key:?}").contains('a'.to_string().repeat(2).as_str()));
        for f in [Format::Json, Format::Xml] {
            assert_eq!(encrypted_field(&sealed_body(f, "gh", &enc)).unwrap(), enc);
        }
    }

    #[test]
    fn the_item_id_follows_sender_time_and_content() {
        let p = popup(2);
        let a = p.item_id(&p.items[0]);
        assert_eq!(a, popup(2).item_id(&popup(2).items[0]));
        assert_ne!(a, p.item_id(&p.items[1]));
        let mut later = popup(2);
        later.create_time += 1;
        assert_ne!(a, later.item_id(&later.items[0]));
    }
}
