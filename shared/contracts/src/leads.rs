//! The leads service's methods (`<prefix>.rpc.leads.*`): an action's journey, one lead, a page
//! of leads. Asked by the gateway (`GET /api/actions/{id}`) and by `andectl leads`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::vocab::{ActionType, OutcomeKind};
use crate::{method, ClientJson};

method! {
    /// The action as leads stored it, and what it meant for the CRM.
    Journey: "leads"."journey", ActionQuery => LeadJourney
}
method! {
    /// One lead, by id or by phone number.
    GetLead: "leads"."lead", LeadKey => Lead
}
method! {
    /// A page of leads, newest first.
    ListLeads: "leads"."list", ListQuery => Vec<Lead>
}
method! {
    /// The staff console's lead list: filters, text search, a sort and a cursor.
    SearchLeads: "leads"."search", LeadSearch => LeadPage
}
method! {
    /// One lead with its actions (newest first, at most 100) and the changes staff made to it.
    LeadTimeline: "leads"."timeline", LeadKey => Timeline
}
method! {
    /// Actions and new leads per hour over the last 24 hours, for the console's overview.
    ActionStats: "leads"."stats", StatsQuery => LeadStats
}

/// Which action (the `journey` methods of both services take it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionQuery {
    pub action_id: Uuid,
}

/// A lead by its id, or by a phone number (normalised by the leads service).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeadKey {
    Id(Uuid),
    Phone(String),
}

/// A page of leads: optionally one advisor's, created in `[since, until)`; `limit` 1–500,
/// default 50.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advisor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A lead as the CRM sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Lead {
    pub id: Uuid,
    pub customer_code: String,
    pub phone: String,
    pub name: Option<String>,
    pub openid: Option<String>,
    pub owner_advisor_id: String,
    pub created_by: String,
    pub source: String,
    pub status: String,
    pub level: String,
    pub remark: String,
    pub touch_count: i32,
    pub last_touch_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// A customer action as stored, with the connection facts the gateway recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAction {
    pub action_id: Uuid,
    pub event_id: Uuid,
    pub stream_seq: Option<i64>,
    pub customer_id: String,
    pub advisor_id: String,
    pub action_type: ActionType,
    pub action_data: ClientJson,
    pub extra: ClientJson,
    pub customer_name: Option<String>,
    pub customer_phone: Option<String>,
    pub openid: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub outcome_published_at: Option<DateTime<Utc>>,
}

/// What an action meant for the CRM, as stored with the action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredOutcome {
    pub action_id: Uuid,
    pub advisor_id: String,
    pub customer_id: String,
    pub action_type: ActionType,
    pub kind: OutcomeKind,
    pub no_lead_reason: Option<String>,
    pub lead_id: Option<Uuid>,
    pub customer_code: Option<String>,
    pub is_new_customer: bool,
    pub customer_name: Option<String>,
    pub phone: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub outcome_event_id: Uuid,
    pub published: bool,
    /// The action carried no mini-program session.
    #[serde(default)]
    pub anonymous: bool,
    /// The advisor who owns the lead (now), when there is one.
    #[serde(default)]
    pub lead_owner: Option<String>,
    /// Earlier actions of the customer's openid, without a phone, that this action joined to
    /// the lead (oldest first), and how many advisors they were about.
    #[serde(default)]
    pub linked_actions: Vec<Uuid>,
    #[serde(default)]
    pub linked_advisors: i32,
}

/// The reply of `leads.journey`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadJourney {
    pub action: StoredAction,
    pub outcome: Option<StoredOutcome>,
}

/// How the console sorts leads: by creation or by the last customer action, newest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeadSort {
    #[default]
    Created,
    LastTouch,
}

/// The console's lead query. Every filter is optional; `advisor_ids`, when given, holds the
/// lead's owner to one of them (the gateway sets it for a sales user bound to an advisor).
/// `q` searches name, phone and customer code (substring, case-insensitive). `cursor` is the
/// `next_cursor` of the page before.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadSearch {
    #[serde(default)]
    pub advisor_ids: Option<Vec<String>>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub created_from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub created_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub touched_from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub touched_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub sort: LeadSort,
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1–200, default 50.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The shape of a lead page's cursor, `<microseconds since 1970>_<uuid>`: every string it
/// matches is a position the leads service takes (empty: the first page).
pub const CURSOR_PATTERN: &str =
    "^([0-9]{1,16}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadPage {
    pub leads: Vec<Lead>,
    /// Pass as `cursor` for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// One action in a lead's timeline: what the customer did and what it meant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineAction {
    pub action_id: Uuid,
    pub advisor_id: String,
    pub action_type: ActionType,
    pub customer_name: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub outcome_kind: OutcomeKind,
    pub is_new_customer: bool,
    /// Joined to the lead later (an earlier action of the same session without a phone).
    pub linked: bool,
    pub outcome_published_at: Option<DateTime<Utc>>,
}

/// A change staff made to a lead (a `lead.changed` event as leads applied it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadChange {
    pub event_id: Uuid,
    pub changed_by: String,
    /// `{"status": {"from": "待定", "to": "跟进中"}, …}`
    pub changes: serde_json::Value,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub lead: Lead,
    pub actions: Vec<TimelineAction>,
    pub changes: Vec<LeadChange>,
}

/// Which advisors' numbers (all when `None`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsQuery {
    #[serde(default)]
    pub advisor_ids: Option<Vec<String>>,
}

/// Counts in one hour (the hour's start).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HourCount {
    pub hour: DateTime<Utc>,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeadStats {
    /// Actions stored per hour, the last 24 hours (hours without any are absent).
    pub actions_per_hour: Vec<HourCount>,
    pub actions_last_minute: i64,
    pub leads_last_24h: i64,
    pub leads_total: i64,
}
