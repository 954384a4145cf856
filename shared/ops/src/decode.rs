//! Stored messages as operators read them: one JSON object per message with its stream sequence,
//! subject, time, the headers worth seeing, and the event decoded from protobuf.
//!
//! Events are decoded from the descriptors of `proto-schemas/` (prost-reflect), not by hand: a
//! new field shows up without code. Field names are the proto JSON names (camelCase, as the HTTP
//! API spells them), enums are words, timestamps RFC 3339, and the JSON-text fields
//! (`action_data_json`, `extra_json`) are parsed back into objects.
//! A message that does not decode is still shown, with the decode error and the first bytes.
//!
//! Also here: the times operators type (`--since 15m`, `--from-time 2026-05-01T08:00:00+08:00`).

use ande_events::{headers, EventKind};
use ande_platform::bus::dlq_headers;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, ReflectMessage, Value as ReflectValue};
use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{json, Value};

/// Headers shown with every message (besides the dead-letter ones, shown when present).
const HEADERS_OF_INTEREST: [&str; 5] = [
    "Nats-Msg-Id",
    headers::EVENT_TYPE,
    headers::CORRELATION_ID,
    headers::PRODUCER,
    "traceparent",
];
const DLQ_HEADERS: [&str; 6] = [
    dlq_headers::REASON,
    dlq_headers::CONSUMER,
    dlq_headers::SUBJECT,
    dlq_headers::STREAM_SEQ,
    dlq_headers::DELIVERIES,
    dlq_headers::AT,
];
/// How much of an undecodable payload is shown, in bytes.
const RAW_PREVIEW: usize = 64;

/// A message as stored in a stream, whichever way it was read (direct get or a consumer).
#[derive(Clone, Debug)]
pub struct StoredMsg {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl StoredMsg {
    pub fn from_stream_message(
        stream: &str,
        m: async_nats::jetstream::message::StreamMessage,
    ) -> Self {
        Self {
            stream: stream.to_string(),
            seq: m.sequence,
            subject: m.subject.to_string(),
            time: to_chrono(m.time),
            headers: m.headers,
            payload: m.payload,
        }
    }

    /// From a message delivered by a consumer; its stream sequence and time come from the reply
    /// subject's metadata.
    pub fn from_delivery(m: &async_nats::jetstream::Message) -> anyhow::Result<(Self, u64)> {
        let info = m
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
        let stored = Self {
            stream: info.stream.to_string(),
            seq: info.stream_sequence,
            subject: m.subject.to_string(),
            time: to_chrono(info.published),
            headers: m.headers.clone().unwrap_or_default(),
            payload: m.payload.clone(),
        };
        Ok((stored, info.pending))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The kind of event in the payload: from `Ande-Event-Type`, else from the subject the event
    /// was published on (for a dead letter, its original subject).
    pub fn kind(&self) -> Option<EventKind> {
        self.header(headers::EVENT_TYPE)
            .and_then(kind_from_type_name)
            .or_else(|| {
                kind_from_subject(self.header(dlq_headers::SUBJECT).unwrap_or(&self.subject))
            })
    }

    /// The event decoded to JSON, or why it cannot be.
    pub fn event_json(&self) -> Result<Value, String> {
        let kind = self
            .kind()
            .ok_or_else(|| format!("unknown event type on subject {}", self.subject))?;
        decode(kind, &self.payload)
    }

    /// The correlation id (the action id that started the chain): the header, else the envelope.
    pub fn correlation_id(&self) -> Option<String> {
        if let Some(c) = self
            .header(headers::CORRELATION_ID)
            .filter(|c| !c.is_empty())
        {
            return Some(c.to_string());
        }
        let ev = self.event_json().ok()?;
        ev["meta"]["correlationId"].as_str().map(String::from)
    }

    /// The message as operators see it, fields in reading order (one line of `events tail` /
    /// `events show`; serde_json would sort the keys of a `Value`).
    pub fn view(&self) -> MsgView<'_> {
        let mut headers = BTreeMap::new();
        for name in HEADERS_OF_INTEREST.iter().chain(DLQ_HEADERS.iter()) {
            if let Some(v) = self.header(name) {
                headers.insert(*name, v);
            }
        }
        let (event, error, payload_bytes, payload_hex) = match self.event_json() {
            Ok(ev) => (Some(ev), None, None, None),
            Err(e) => (
                None,
                Some(e),
                Some(self.payload.len()),
                Some(hex(&self.payload[..self.payload.len().min(RAW_PREVIEW)])),
            ),
        };
        MsgView {
            seq: self.seq,
            stream: &self.stream,
            subject: &self.subject,
            time: rfc3339(self.time),
            kind: self.kind().map(short_type),
            headers,
            event,
            error,
            payload_bytes,
            payload_hex,
        }
    }

    /// [`Self::view`] as one line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&self.view()).unwrap_or_default()
    }

    /// [`Self::view`] as a JSON value (for tests and further processing).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}

/// One stored message, for output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MsgView<'a> {
    pub seq: u64,
    pub stream: &'a str,
    pub subject: &'a str,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: Option<&'static str>,
    pub headers: BTreeMap<&'static str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
}

/// A header's value. async-nats keeps well-known names (`Nats-Msg-Id`) as a different kind of
/// key when it parses a received message than when a `&str` is looked up, so both are tried.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let parsed = name
        .parse::<async_nats::HeaderName>()
        .ok()
        .and_then(|n| headers.get(n));
    parsed.or_else(|| headers.get(name)).map(|v| v.as_str())
}

pub fn short_type(kind: EventKind) -> &'static str {
    kind.type_name().rsplit('.').next().unwrap_or("?")
}

pub fn kind_from_type_name(name: &str) -> Option<EventKind> {
    EventKind::ALL.into_iter().find(|k| k.type_name() == name)
}

/// The kind an event subject carries under any prefix (`<prefix>.events.v1.lead.outcome`).
pub fn kind_from_subject(subject: &str) -> Option<EventKind> {
    EventKind::ALL.into_iter().find(|k| {
        subject
            .strip_suffix(k.suffix())
            .is_some_and(|p| p.ends_with('.'))
    })
}

/// The event descriptors of `proto-schemas/`, loaded once.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(ande_events::FILE_DESCRIPTOR_SET)
            .expect("the descriptors built with ande-events decode")
    })
}

/// Decode a payload of the given kind to JSON, from the descriptors rather than the generated
/// types, so a field added to a `.proto` shows up here without code: keys are the fields' JSON
/// names (camelCase); enums are their value names without the enum's prefix, in lower case
/// (`SUBSCRIPTION_STATUS_ACCEPT` → `accept`); timestamps are RFC 3339; a string field named
/// `*_json` holds JSON text and is shown parsed, under its name without the suffix.
pub fn decode(kind: EventKind, payload: &[u8]) -> Result<Value, String> {
    let descriptor = pool()
        .get_message_by_name(kind.type_name())
        .ok_or_else(|| format!("no descriptor for {}", kind.type_name()))?;
    let message = DynamicMessage::decode(descriptor, payload)
        .map_err(|e| format!("undecodable event: {}: {e}", kind.type_name()))?;
    let json = message_json(&message);
    // The envelope check every consumer makes (`Event::decode_checked`).
    let event_id = json["meta"]["eventId"]
        .as_str()
        .ok_or("undecodable event: missing envelope (meta)")?;
    uuid::Uuid::parse_str(event_id)
        .map_err(|_| format!("undecodable event: event_id {event_id:?} is not a UUID"))?;
    Ok(json)
}

fn message_json(m: &DynamicMessage) -> Value {
    let mut out = serde_json::Map::new();
    for field in m.descriptor().fields() {
        let name = field.json_name();
        if field.kind().as_message().is_some() && !m.has_field(&field) {
            out.insert(name.to_string(), Value::Null);
            continue;
        }
        let value = m.get_field(&field);
        match (field.name().strip_suffix("_json"), value.as_str()) {
            (Some(_), Some(text)) => {
                let key = name.strip_suffix("Json").unwrap_or(name);
                out.insert(key.to_string(), json_text(text));
            }
            _ => {
                out.insert(name.to_string(), value_json(&field.kind(), &value));
            }
        }
    }
    Value::Object(out)
}

fn value_json(kind: &Kind, v: &ReflectValue) -> Value {
    match (kind, v) {
        (Kind::Message(d), ReflectValue::Message(m))
            if d.full_name() == "google.protobuf.Timestamp" =>
        {
            let field = |n: &str| m.get_field_by_name(n);
            let seconds = field("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            let nanos = field("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
            let t = DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0));
            ts(t)
        }
        (_, ReflectValue::Message(m)) => message_json(m),
        (Kind::Enum(e), ReflectValue::EnumNumber(n)) => match e.get_value(*n) {
            Some(value) => Value::String(enum_word(e.name(), value.name())),
            None => Value::String(format!("unknown({n})")),
        },
        (_, ReflectValue::List(items)) => {
            Value::Array(items.iter().map(|i| value_json(kind, i)).collect())
        }
        (_, ReflectValue::Bool(b)) => Value::Bool(*b),
        (_, ReflectValue::I32(n)) => json!(n),
        (_, ReflectValue::I64(n)) => json!(n),
        (_, ReflectValue::U32(n)) => json!(n),
        (_, ReflectValue::U64(n)) => json!(n),
        (_, ReflectValue::F32(n)) => json!(n),
        (_, ReflectValue::F64(n)) => json!(n),
        (_, ReflectValue::String(s)) => Value::String(s.clone()),
        (_, other) => Value::String(format!("{other:?}")),
    }
}

/// `SUBSCRIPTION_STATUS_ACCEPT` of enum `SubscriptionStatus` → `accept` (proto3 style guide:
/// values carry the enum's name as a prefix).
fn enum_word(enum_name: &str, value: &str) -> String {
    let mut prefix = String::new();
    for (i, c) in enum_name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    value
        .strip_prefix(&prefix)
        .unwrap_or(value)
        .to_ascii_lowercase()
}

/// A JSON-text field: the parsed value, the raw text if it is not JSON, null if empty.
fn json_text(s: &str) -> Value {
    if s.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn to_chrono(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

pub fn to_offset(t: DateTime<Utc>) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos()),
    )
    .map_err(|e| anyhow::anyhow!("time {t} out of range: {e}"))
}

/// A time as operators type it: RFC 3339 (`2026-05-01T08:00:00+08:00`), a date or date and time
/// without offset (taken as UTC: `2026-05-01`, `2026-05-01 08:00:00`), or a duration ago
/// (`90s`, `15m`, `2h`, `3d`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if let Ok(d) = ande_platform::config::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
        return now
            .checked_sub_signed(d)
            .ok_or_else(|| format!("{s:?} ago is before any time we can name"));
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 (2026-05-01T08:00:00+08:00), a UTC date and time (2026-05-01 08:00:00), or a duration ago (15m, 2h, 3d)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ande_events::{new_meta, ActionRecorded, LeadOutcome, LeadOutcomeKind, Message};

    #[test]
    fn times_parse_in_every_form_operators_type() {
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            rfc3339(parse_time("2026-05-01T08:00:00+08:00", now).unwrap()),
            "2026-05-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(parse_time("2026-04-30 10:30:00", now).unwrap()),
            "2026-04-30T10:30:00.000Z"
        );
        assert_eq!(
            rfc3339(parse_time("2026-04-30", now).unwrap()),
            "2026-04-30T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(parse_time("15m", now).unwrap()),
            "2026-05-01T11:45:00.000Z"
        );
        assert!(parse_time("yesterday", now)
            .unwrap_err()
            .contains("RFC 3339"));
    }

    #[test]
    fn an_outcome_decodes_to_readable_json() {
        let ev = LeadOutcome {
            meta: Some(new_meta("a-1", "leads", Utc::now())),
            action_id: "a-1".into(),
            kind: LeadOutcomeKind::Created as i32,
            is_new_customer: true,
            ..Default::default()
        };
        let v = decode(EventKind::LeadOutcome, &ev.encode_to_vec()).unwrap();
        assert_eq!(v["kind"], "created");
        assert_eq!(v["isNewCustomer"], true);
        assert_eq!(v["meta"]["correlationId"], "a-1");
        assert!(decode(EventKind::ActionRecorded, b"\xff\xff").is_err());
        let no_envelope = LeadOutcome::default().encode_to_vec();
        assert!(decode(EventKind::LeadOutcome, &no_envelope).is_err());
    }

    #[test]
    fn every_field_decodes_from_the_descriptors() {
        let ev = ActionRecorded {
            meta: Some(new_meta("a-2", "gateway", Utc::now())),
            action_id: "a-2".into(),
            action_data_json: r#"{"resumeId":"r-1"}"#.into(),
            client_ip: "127.0.0.1".into(),
            ..Default::default()
        };
        let v = decode(EventKind::ActionRecorded, &ev.encode_to_vec()).unwrap();
        assert_eq!(v["actionData"]["resumeId"], "r-1", "JSON text shown parsed");
        assert_eq!(v["extra"], Value::Null, "empty JSON text is null");
        assert_eq!(v["clientIp"], "127.0.0.1");
        assert!(v["meta"]["occurredAt"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            enum_word("SubscriptionStatus", "SUBSCRIPTION_STATUS_BAN"),
            "ban"
        );
        assert_eq!(
            enum_word("LeadOutcomeKind", "LEAD_OUTCOME_KIND_NONE"),
            "none"
        );
    }

    #[test]
    fn well_known_headers_are_found_in_received_messages() {
        let mut h = HeaderMap::new();
        h.insert(
            "Nats-Msg-Id".parse::<async_nats::HeaderName>().unwrap(),
            "id-1",
        );
        h.insert("Ande-Producer", "gateway");
        assert_eq!(header(&h, "Nats-Msg-Id"), Some("id-1"));
        assert_eq!(header(&h, "Ande-Producer"), Some("gateway"));
        assert_eq!(header(&h, "Ande-Missing"), None);
    }

    #[test]
    fn events_with_and_without_the_old_envelope_headers_read_the_same() {
        let ev = LeadOutcome {
            meta: Some(new_meta("a-3", "leads", Utc::now())),
            action_id: "a-3".into(),
            kind: LeadOutcomeKind::Matched as i32,
            ..Default::default()
        };
        let bare = StoredMsg {
            stream: "s".into(),
            seq: 7,
            subject: "p.events.v1.lead.outcome".into(),
            time: Utc::now(),
            headers: HeaderMap::new(),
            payload: ev.encode_to_vec().into(),
        };
        // As earlier builds published it (and the stream may still hold it).
        let mut old = bare.clone();
        old.headers
            .insert(headers::EVENT_TYPE, "ande.events.v1.LeadOutcome");
        old.headers.insert(headers::CORRELATION_ID, "a-3");
        old.headers.insert(headers::PRODUCER, "leads");
        for m in [&bare, &old] {
            assert_eq!(m.kind(), Some(EventKind::LeadOutcome));
            assert_eq!(m.correlation_id().as_deref(), Some("a-3"));
            assert_eq!(m.event_json().unwrap()["kind"], "matched");
        }
        // A dead letter of a header-less event: its type from the original subject.
        let mut dead = bare.clone();
        dead.subject = "p.dlq.notifier".into();
        dead.headers
            .insert(dlq_headers::SUBJECT, "p.events.v1.lead.outcome");
        assert_eq!(dead.kind(), Some(EventKind::LeadOutcome));
        assert_eq!(dead.correlation_id().as_deref(), Some("a-3"));
    }

    #[test]
    fn kinds_are_found_by_subject_under_any_prefix() {
        assert_eq!(
            kind_from_subject("scratch.events.v1.action.recorded"),
            Some(EventKind::ActionRecorded)
        );
        assert_eq!(
            kind_from_subject("x.events.v1.lead.outcome"),
            Some(EventKind::LeadOutcome)
        );
        assert_eq!(kind_from_subject("x.dlq.leads"), None);
    }
}
