//! Event contracts of the pipeline and the subjects they travel on.
//!
//! The types are generated from `proto-schemas/ande/events/v1/events.proto` at build time. This
//! crate adds what every producer and consumer needs around them: the subject of each event
//! under an environment prefix ([`Subjects`]), the envelope ([`EventMeta`]) with a UUIDv7 event
//! id, and a decoder that names what went wrong.
//!
//! Who publishes and who consumes what:
//!
//! | subject (after the prefix)        | event                | producer | consumers |
//! |-----------------------------------|----------------------|----------|-----------|
//! | `events.v1.action.recorded`       | [`ActionRecorded`]   | gateway  | leads     |
//! | `events.v1.subscription.changed`  | [`SubscriptionChanged`] | gateway | notifier |
//! | `events.v1.lead.outcome`          | [`LeadOutcome`]      | leads    | notifier  |
//! | `events.v1.wechat.subscription`   | [`WechatSubscriptionEvent`] | gateway (WeChat's push) | notifier |
//! | `events.v1.lead.changed`          | [`LeadChanged`]             | gateway (staff console) | leads    |

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ande.events.v1.rs"));
}

pub use prost::Message;

/// The encoded `FileDescriptorSet` of `proto-schemas/`: every event type with its fields, for
/// decoding events without their generated types (`andectl events`, replay, dead letters).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
pub use v1::{
    ActionRecorded, EventMeta, LeadChanged, LeadOutcome, LeadOutcomeKind, SubscriptionChanged,
    SubscriptionStatus, WechatPushKind, WechatSubscriptionEvent,
};

use ande_contracts::vocab;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The shared vocabulary's word for an event's subscription status (`None` for unspecified or
/// a number this build does not know).
pub fn subscription_status(status: i32) -> Option<vocab::SubscriptionStatus> {
    match SubscriptionStatus::try_from(status).ok()? {
        SubscriptionStatus::Accept => Some(vocab::SubscriptionStatus::Accept),
        SubscriptionStatus::Reject => Some(vocab::SubscriptionStatus::Reject),
        SubscriptionStatus::Ban => Some(vocab::SubscriptionStatus::Ban),
        SubscriptionStatus::Filter => Some(vocab::SubscriptionStatus::Filter),
        SubscriptionStatus::Unspecified => None,
    }
}

impl From<vocab::SubscriptionStatus> for SubscriptionStatus {
    fn from(s: vocab::SubscriptionStatus) -> Self {
        match s {
            vocab::SubscriptionStatus::Accept => SubscriptionStatus::Accept,
            vocab::SubscriptionStatus::Reject => SubscriptionStatus::Reject,
            vocab::SubscriptionStatus::Ban => SubscriptionStatus::Ban,
            vocab::SubscriptionStatus::Filter => SubscriptionStatus::Filter,
        }
    }
}

/// The shared vocabulary's word for an event's lead outcome kind.
pub fn outcome_kind(kind: i32) -> Option<vocab::OutcomeKind> {
    match LeadOutcomeKind::try_from(kind).ok()? {
        LeadOutcomeKind::Created => Some(vocab::OutcomeKind::Created),
        LeadOutcomeKind::Matched => Some(vocab::OutcomeKind::Matched),
        LeadOutcomeKind::None => Some(vocab::OutcomeKind::None),
        LeadOutcomeKind::Unspecified => None,
    }
}

impl From<vocab::OutcomeKind> for LeadOutcomeKind {
    fn from(k: vocab::OutcomeKind) -> Self {
        match k {
            vocab::OutcomeKind::Created => LeadOutcomeKind::Created,
            vocab::OutcomeKind::Matched => LeadOutcomeKind::Matched,
            vocab::OutcomeKind::None => LeadOutcomeKind::None,
        }
    }
}

/// Headers that events published by earlier builds (before commit 0e0d10f, 2026-12-06) carry
/// besides `Nats-Msg-Id`. Events no longer get them (the subject names the type; `meta` holds the
/// correlation id and producer), but the stream keeps old events for its whole retention, so the
/// tools still read them when present.
pub mod headers {
    /// The event type, e.g. `ande.events.v1.ActionRecorded`.
    pub const EVENT_TYPE: &str = "Ande-Event-Type";
    pub const CORRELATION_ID: &str = "Ande-Correlation-Id";
    pub const PRODUCER: &str = "Ande-Producer";
}

/// The kinds of events, each with its subject suffix and protobuf type name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    ActionRecorded,
    SubscriptionChanged,
    LeadOutcome,
    WechatSubscription,
    LeadChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::ActionRecorded,
        EventKind::SubscriptionChanged,
        EventKind::LeadOutcome,
        EventKind::WechatSubscription,
        EventKind::LeadChanged,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            EventKind::ActionRecorded => "events.v1.action.recorded",
            EventKind::SubscriptionChanged => "events.v1.subscription.changed",
            EventKind::LeadOutcome => "events.v1.lead.outcome",
            EventKind::WechatSubscription => "events.v1.wechat.subscription",
            EventKind::LeadChanged => "events.v1.lead.changed",
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            EventKind::ActionRecorded => "ande.events.v1.ActionRecorded",
            EventKind::SubscriptionChanged => "ande.events.v1.SubscriptionChanged",
            EventKind::LeadOutcome => "ande.events.v1.LeadOutcome",
            EventKind::WechatSubscription => "ande.events.v1.WechatSubscriptionEvent",
            EventKind::LeadChanged => "ande.events.v1.LeadChanged",
        }
    }
}

/// Subject and stream names of one environment. The prefix keeps tests and environments that
/// share a NATS server from ever seeing each other's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// `prefix` must be a NATS token: letters, digits, `-` and `_`.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(Self {
                prefix: prefix.to_string(),
            })
        } else {
            Err("a prefix is 1 to 64 letters, digits, '-' or '_'".into())
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn event(&self, kind: EventKind) -> String {
        format!("{}.{}", self.prefix, kind.suffix())
    }

    /// Which kind of event a subject carries, if any.
    pub fn kind_of(&self, subject: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| self.event(*k) == subject)
    }

    /// Everything the event stream stores.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The stream of events (stream names cannot contain dots).
    pub fn stream(&self) -> String {
        format!("{}_EVENTS", self.prefix.to_uppercase())
    }

    /// Dead letters: `<prefix>.dlq.<consumer>`, kept in their own stream.
    pub fn dead_letters(&self, consumer: &str) -> String {
        format!("{}.dlq.{consumer}", self.prefix)
    }

    pub fn all_dead_letters(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.prefix.to_uppercase())
    }

    /// Request/reply subjects: `<prefix>.rpc.<service>.<method>`.
    pub fn rpc(&self, service: &str, method: &str) -> String {
        format!("{}.rpc.{service}.{method}", self.prefix)
    }
}

/// A new envelope for an event produced now.
pub fn new_meta(correlation_id: &str, producer: &str, occurred_at: DateTime<Utc>) -> EventMeta {
    meta_with_id(Uuid::now_v7(), correlation_id, producer, occurred_at)
}

/// An envelope with a given event id, for re-emitting a stored event under its original id.
pub fn meta_with_id(
    event_id: Uuid,
    correlation_id: &str,
    producer: &str,
    occurred_at: DateTime<Utc>,
) -> EventMeta {
    EventMeta {
        event_id: event_id.to_string(),
        occurred_at: Some(to_timestamp(occurred_at)),
        correlation_id: correlation_id.to_string(),
        producer: producer.to_string(),
    }
}

pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

/// Access to the envelope of any event.
pub trait Event: Message + Default + Sized {
    const KIND: EventKind;
    fn meta(&self) -> Option<&EventMeta>;

    /// Decode and check the envelope: a message without a valid event id is not an event.
    fn decode_checked(bytes: &[u8]) -> Result<Self, DecodeError> {
        let event = Self::decode(bytes)
            .map_err(|e| DecodeError(format!("{}: {e}", Self::KIND.type_name())))?;
        let meta = event
            .meta()
            .ok_or_else(|| DecodeError("missing envelope (meta)".into()))?;
        Uuid::parse_str(&meta.event_id)
            .map_err(|_| DecodeError(format!("event_id {:?} is not a UUID", meta.event_id)))?;
        Ok(event)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable event: {0}")]
pub struct DecodeError(pub String);

macro_rules! impl_event {
    ($t:ty, $kind:expr) => {
        impl Event for $t {
            const KIND: EventKind = $kind;
            fn meta(&self) -> Option<&EventMeta> {
                self.meta.as_ref()
            }
        }
    };
}
impl_event!(ActionRecorded, EventKind::ActionRecorded);
impl_event!(SubscriptionChanged, EventKind::SubscriptionChanged);
impl_event!(LeadOutcome, EventKind::LeadOutcome);
impl_event!(WechatSubscriptionEvent, EventKind::WechatSubscription);
impl_event!(LeadChanged, EventKind::LeadChanged);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_prefixed_and_recognised() {
        let s = Subjects::new("t_1").unwrap();
        assert_eq!(
            s.event(EventKind::LeadOutcome),
            "t_1.events.v1.lead.outcome"
        );
        assert_eq!(
            s.kind_of("t_1.events.v1.action.recorded"),
            Some(EventKind::ActionRecorded)
        );
        assert_eq!(s.kind_of("other.events.v1.action.recorded"), None);
        assert_eq!(s.stream(), "T_1_EVENTS");
        assert!(Subjects::new("a.b").is_err());
        assert!(Subjects::new("").is_err());
    }

    #[test]
    fn events_round_trip_and_garbage_is_refused() {
        let ev = ActionRecorded {
            meta: Some(new_meta("a1", "gateway", Utc::now())),
            action_id: "a1".into(),
            ..Default::default()
        };
        let back = ActionRecorded::decode_checked(&ev.encode_to_vec()).unwrap();
        assert_eq!(back, ev);
        assert!(ActionRecorded::decode_checked(b"\xff\xff\xff").is_err());
        assert!(ActionRecorded::decode_checked(&[]).is_err(), "no envelope");
    }
}
