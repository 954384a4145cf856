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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
