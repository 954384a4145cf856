//! The notifier's methods (`<prefix>.rpc.notifier.*`): an action's notifications, a digest's
//! contents, a direct send and a phone number (both need the access token, which lives only in
//! the notifier), and lifting a pause.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::leads::ActionQuery;
use crate::method;
use crate::vocab::{ActionType, Lang, MiniprogramState, NotificationKind, NotificationState};

method! {
    /// The notifications of an action (and the digest that carried it) and their delivery log.
    Journey: "notifier"."journey", ActionQuery => NotifierJourney
}
method! {
    /// A digest and the customer actions it stands for.
    GetDigest: "notifier"."digest", DigestQuery => DigestContents
}
method! {
    /// Send a subscribe message now (staff). WeChat's refusal is `RpcError::WechatRefused`.
    Send: "notifier"."send", DirectSend => Sent
}
method! {
    /// A user's phone number from the phone button's code.
    Phone: "notifier"."phone", PhoneQuery => PhoneNumber
}
method! {
    /// Lift a pause (after 45009, or an operator's) and make waiting retries due now.
    Resume: "notifier"."resume", ResumeRequest => Resumed
}

method! {
    /// The credits an openid holds for the advisors it is bound to (the advisor's own session).
    Credits: "notifier"."credits", CreditsQuery => CreditsReport
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsQuery {
    pub openid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditsReport {
    pub credits: Vec<CreditView>,
}

/// One (advisor, template) account of the openid: the sends it may still receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditView {
    pub advisor_id: String,
    pub template_id: String,
    pub credits: i32,
    /// A long-term subscription: no credit needed.
    pub long_term: bool,
    /// The last decision: accept, reject, ban or filter.
    pub last_status: String,
}

method! {
    /// An advisor's own settings (staff).
    GetAdvisorSettings: "notifier"."advisor_settings", AdvisorRef => AdvisorSettings
}
method! {
    /// Change an advisor's own settings (staff).
    SetAdvisorSettings: "notifier"."set_advisor_settings", AdvisorSettingsChange => AdvisorSettings
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdvisorRef {
    pub advisor_id: String,
}

/// `quiet_hours`: `HH:MM-HH:MM` (Beijing time), `off` (none, whatever the deployment's), or
/// `None` (the deployment's `NOTIFIER_QUIET_HOURS`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdvisorSettingsChange {
    pub advisor_id: String,
    pub quiet_hours: Option<String>,
    /// Who changed it (`staff:<name>`), for the record.
    pub updated_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdvisorSettings {
    pub advisor_id: String,
    /// The advisor's own quiet hours; `None`: the deployment's.
    pub quiet_hours: Option<String>,
    pub updated_by: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

method! {
    /// Pause sending (operators): until a time, or until resumed.
    Pause: "notifier"."pause", PauseRequest => PauseState
}
method! {
    /// The queue at a glance: notifications by state, the oldest due one's age, the pause.
    QueueStatus: "notifier"."queue", QueueQuery => QueueReport
}
method! {
    /// Notifications in a state (operators), oldest first.
    ListNotifications: "notifier"."notifications", NotificationFilter => Notifications
}
method! {
    /// Messages WeChat accepted per hour over the last 24 hours, and the latest refusals (the
    /// staff console's overview).
    DeliveryStats: "notifier"."stats", crate::leads::StatsQuery => NotifierStats
}
method! {
    /// Queue failed notifications again (operators): one by id, or every failed one. Each gets a
    /// fresh retry budget.
    Retry: "notifier"."retry", RetryRequest => Retried
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseRequest {
    /// Until when; until resumed when absent.
    pub until: Option<DateTime<Utc>>,
    /// Why, for the status and the journey (`operator` when absent).
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseState {
    /// Paused until then ([`PauseState::until_resumed`] for a pause without an end); `None`
    /// when sending.
    pub paused_until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

impl PauseState {
    /// The end stored for "until resumed": a date nobody reaches.
    pub fn until_resumed() -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0)
            .single()
            .expect("a valid date")
    }

    /// Paused with no end but an operator's resume.
    pub fn without_end(&self) -> bool {
        self.paused_until
            .is_some_and(|u| u >= Self::until_resumed())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueQuery {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueReport {
    /// Notifications by state (finished ones until retention forgets them).
    pub by_state: BTreeMap<NotificationState, i64>,
    /// Seconds the oldest due queued notification has waited (0 when none is due).
    pub oldest_queued_secs: i64,
    /// Sends WeChat refused with 43101 (the user had no credit left) in the last hour.
    #[serde(default)]
    pub no_credit_last_hour: i64,
    pub pause: PauseState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationFilter {
    pub state: NotificationState,
    pub advisor_id: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    pub notifications: Vec<NotificationView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RetryRequest {
    /// One failed notification. `NotFound` when there is none; `Conflict` when it is not failed.
    One(Uuid),
    /// Every failed notification.
    AllFailed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retried {
    pub requeued: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestQuery {
    pub digest_id: Uuid,
}

/// What a notification is about, kept with it for the digest's page: one action's customer, or
/// how many actions a digest stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Summary {
    Digest { count: u32 },
    Action(ActionSummary),
}

impl Summary {
    /// How many customer actions the notification stands for.
    pub fn actions(&self) -> usize {
        match self {
            Summary::Digest { count } => *count as usize,
            Summary::Action(_) => 1,
        }
    }
}

/// The customer behind an action notification (empty strings where the outcome had none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionSummary {
    pub action_type: ActionType,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub lead_id: String,
    #[serde(default)]
    pub customer_code: String,
    #[serde(default)]
    pub new_customer: bool,
}

/// A notification row as operators and the journey see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub id: Uuid,
    pub action_id: Uuid,
    pub advisor_id: String,
    pub kind: NotificationKind,
    pub state: NotificationState,
    pub template_id: String,
    pub openid: Option<String>,
    pub attempts: i32,
    pub msgid: Option<String>,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub digest_id: Option<Uuid>,
    /// The message's keyword values by keyword name.
    pub data: BTreeMap<String, String>,
    pub page: Option<String>,
    pub summary: Summary,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One entry of the delivery log: a decision or an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// What happened (`queued`, `sent`, `retry`, `waiting_for_credit`, …).
    pub event: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub msgid: Option<String>,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// The reply of `notifier.journey`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifierJourney {
    pub notifications: Vec<NotificationView>,
    pub log: Vec<DeliveryView>,
}

/// The reply of `notifier.digest`: the digest and its member notifications, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestContents {
    pub digest: NotificationView,
    pub notifications: Vec<NotificationView>,
}

/// A subscribe message to send now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectSend {
    pub touser: String,
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Keyword name to value.
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram_state: Option<MiniprogramState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<Lang>,
    /// With a key, the send happens at most once: a retry gets the first attempt's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<SendKey>,
}

/// The caller's `Idempotency-Key` for a direct send, with whose key it is and what it was for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendKey {
    /// Whose keys these are (the staff member), so two callers' keys never collide.
    pub scope: String,
    pub key: String,
    /// A digest of the request: the same key for another message is a conflict.
    pub fingerprint: String,
}

/// WeChat accepted a direct send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub msgid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhoneQuery {
    pub code: String,
    /// The session's openid, when the caller has one (WeChat may check it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhoneNumber {
    /// With country code outside mainland China.
    pub phone_number: String,
    pub pure_phone_number: String,
    pub country_code: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeRequest {}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resumed {
    /// Retries that were waiting for the pause and are due now.
    pub requeued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_what_the_notifier_stores() {
        let digest: Summary = serde_json::from_str(r#"{"count": 3}"#).unwrap();
        assert_eq!(digest.actions(), 3);
        let action: Summary = serde_json::from_str(
            r#"{"actionType":"view_resume","phone":"13800138000","name":"王","leadId":"","customerCode":"","newCustomer":true}"#,
        )
        .unwrap();
        assert_eq!(action.actions(), 1);
        assert!(matches!(
            action,
            Summary::Action(ActionSummary {
                new_customer: true,
                ..
            })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Advisor bindings: which WeChat users (openids) receive an advisor's notifications. Only staff
// create them (directly, or by a pairing code the advisor redeems from their own session).
// ---------------------------------------------------------------------------------------------

method! {
    /// Bind an openid to an advisor (staff). Binding twice is not an error.
    Bind: "notifier"."bind", BindRequest => Binding
}
method! {
    /// Remove a binding (staff). `NotFound` if there was none.
    Unbind: "notifier"."unbind", BindingKey => Unbound
}
method! {
    /// The bindings, of one advisor or of all (staff).
    ListBindings: "notifier"."bindings", BindingFilter => Bindings
}
method! {
    /// A one-time pairing code for an advisor (staff), redeemed by the advisor's own session.
    Pair: "notifier"."pair", PairRequest => Pairing
}
method! {
    /// Redeem a pairing code for the openid of the session that holds it. `NotFound` for an
    /// unknown, used or expired code (which of these is not told).
    Redeem: "notifier"."redeem", RedeemRequest => Binding
}
method! {
    /// Whether an openid is bound to an advisor.
    CheckBinding: "notifier"."check_binding", BindingKey => BindingCheck
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingKey {
    pub advisor_id: String,
    pub openid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindRequest {
    pub advisor_id: String,
    pub openid: String,
    /// Who made it, for the record: `staff:<username>`, `andectl:<user>`, `pairing`.
    pub bound_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub advisor_id: String,
    pub openid: String,
    pub bound_by: String,
    pub bound_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unbound {
    pub advisor_id: String,
    pub openid: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingFilter {
    pub advisor_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bindings {
    pub bindings: Vec<Binding>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairRequest {
    pub advisor_id: String,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pairing {
    pub advisor_id: String,
    /// Shown once; only its hash is kept.
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedeemRequest {
    pub code: String,
    pub openid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingCheck {
    pub bound: bool,
}

/// The reply of `notifier.stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifierStats {
    /// Messages WeChat accepted, per hour (hours without any are absent).
    pub sent_per_hour: Vec<crate::leads::HourCount>,
    /// The last refusals or failures (newest first, at most 10).
    pub recent_errors: Vec<DeliveryView>,
}
