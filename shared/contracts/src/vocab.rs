//! The words every crate shares, each written once: here. Rust code matches on these enums; SQL
//! binds them as text (`sqlx::Type`), the services' tests check each table's `CHECK` list against
//! [`Vocabulary::ALL`], the gateway's OpenAPI document lists [`Vocabulary::ALL`] as the enum, and
//! `andectl` prints [`Vocabulary::as_str`].

use std::fmt;
use std::str::FromStr;

/// A closed set of words with one spelling each.
pub trait Vocabulary: Sized + Copy + 'static {
    /// Every word, in the order documentation lists them.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    /// The word for `s`, if it is one.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }
    /// All words, for error messages and schemas.
    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }
}

/// A word that is not in the vocabulary it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{got:?} is not one of {expected}")]
pub struct UnknownWord {
    pub got: String,
    pub expected: String,
}

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The word as written on the wire and in the database.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl Vocabulary for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                <$name as Vocabulary>::parse(s).ok_or_else(|| UnknownWord {
                    got: s.to_string(),
                    expected: <$name as Vocabulary>::names().join(", "),
                })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(s.parse::<$name>()?)
            }
        }
    };
}

vocabulary! {
    /// Where a notification row is in its life (`notifier.notifications.state`).
    NotificationState {
        /// Due to be sent at `next_attempt_at`.
        Queued = "queued",
        /// Claimed by a worker that is calling WeChat.
        Sending = "sending",
        Sent = "sent",
        /// WeChat refused it for good, or it ran out of attempts.
        Failed = "failed",
        /// No credit for this advisor: waits for the next accept, then goes out as a digest.
        WaitingCredit = "waiting_credit",
        /// Folded into a digest (`digest_id`).
        Digested = "digested",
        /// Dropped without sending (too many waiting for one advisor, or no recipient).
        Dropped = "dropped",
    }
}

vocabulary! {
    /// What a notification stands for (`notifier.notifications.kind`).
    NotificationKind {
        /// One customer action.
        Action = "action",
        /// Several waiting actions in one message.
        Digest = "digest",
    }
}

vocabulary! {
    /// A user's decision on a template, as the mini-program's `requestSubscribeMessage` reports it.
    SubscriptionStatus {
        Accept = "accept",
        Reject = "reject",
        /// The platform banned the template: nothing can be sent with it.
        Ban = "ban",
        /// Filtered by WeChat (e.g. the template's title repeats another).
        Filter = "filter",
    }
}

vocabulary! {
    /// What an action meant for the CRM (`leads.actions.outcome_kind`).
    OutcomeKind {
        /// A new lead was created from the action's phone number.
        Created = "created",
        /// The phone number belongs to an existing lead.
        Matched = "matched",
        /// No lead: no usable phone number (`no_lead_reason` says why).
        None = "none",
    }
}

vocabulary! {
    /// `miniprogram_state` of a subscribe message: which build of the mini-program it opens.
    MiniprogramState {
        Developer = "developer",
        Trial = "trial",
        /// WeChat's default.
        Formal = "formal",
    }
}

vocabulary! {
    /// `lang` of a subscribe message.
    Lang {
        /// WeChat's default.
        ZhCn = "zh_CN",
        EnUs = "en_US",
        ZhHk = "zh_HK",
        ZhTw = "zh_TW",
    }
}

/// What a customer did. The mini-program sends these three today; any other word is kept as
/// sent (the original system accepted any), so the enum is open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActionType {
    ViewResume,
    ContactAdvisor,
    BookService,
    Other(String),
}

impl ActionType {
    /// The words the mini-program is known to send.
    pub const KNOWN: [&'static str; 3] = ["view_resume", "contact_advisor", "book_service"];

    pub fn as_str(&self) -> &str {
        match self {
            ActionType::ViewResume => "view_resume",
            ActionType::ContactAdvisor => "contact_advisor",
            ActionType::BookService => "book_service",
            ActionType::Other(s) => s,
        }
    }

    /// How the CRM names it in Chinese (lead remarks, message texts); unknown types as sent.
    pub fn label(&self) -> &str {
        match self {
            ActionType::ViewResume => "查看简历",
            ActionType::ContactAdvisor => "联系顾问",
            ActionType::BookService => "预约服务",
            ActionType::Other(s) => s,
        }
    }
}

impl From<&str> for ActionType {
    fn from(s: &str) -> Self {
        match s {
            "view_resume" => ActionType::ViewResume,
            "contact_advisor" => ActionType::ContactAdvisor,
            "book_service" => ActionType::BookService,
            other => ActionType::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ActionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ActionType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ActionType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(ActionType::from(s.as_ref()))
    }
}

impl sqlx::Type<sqlx::Postgres> for ActionType {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for ActionType {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for ActionType {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(ActionType::from(
            <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?,
        ))
    }
}

/// The words of a table's `CHECK (column IN ('a', 'b', …))` constraint definition as Postgres
/// prints it (`pg_get_constraintdef`), for tests that hold the schema to a vocabulary.
pub fn check_constraint_words(def: &str) -> Vec<String> {
    def.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_serde_and_from_str() {
        for s in NotificationState::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(
                serde_json::from_str::<NotificationState>(&json).unwrap(),
                *s
            );
            assert_eq!(s.as_str().parse::<NotificationState>().unwrap(), *s);
        }
        let err = "nope".parse::<Lang>().unwrap_err();
        assert_eq!(err.expected, "zh_CN, en_US, zh_HK, zh_TW");
        assert!(serde_json::from_str::<MiniprogramState>("\"beta\"").is_err());
    }

    #[test]
    fn action_types_are_open() {
        assert_eq!(ActionType::from("view_resume"), ActionType::ViewResume);
        let other: ActionType = serde_json::from_str("\"share_resume\"").unwrap();
        assert_eq!(other, ActionType::Other("share_resume".into()));
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"share_resume\"");
        assert_eq!(ActionType::BookService.label(), "预约服务");
    }

    #[test]
    fn check_constraint_words_are_read_from_postgres_text() {
        let def = "CHECK ((kind = ANY (ARRAY['action'::text, 'digest'::text])))";
        assert_eq!(check_constraint_words(def), vec!["action", "digest"]);
    }
}
