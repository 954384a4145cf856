//! The notifier's two durable consumers. NATS 2.9 allows one filter subject per consumer, so
//! outcomes and subscription changes each have their own; both only write to the database (in
//! one transaction per batch, through `apply_batch`, which isolates a message whose data Postgres
//! refuses) and ack after the commit. Sending happens in `dispatch`, driven by
//! the rows they write, so a redelivered or replayed event finds its row and does nothing.

use std::sync::Arc;

use ande_events::{from_timestamp, LeadOutcome, SubscriptionChanged, SubscriptionStatus};
use ande_platform::consumer::{apply_batch, ApplyInTx, Delivery, Disposition, Handler};
use chrono::Utc;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::NotifierConfig;
use crate::content;
use crate::store;

pub const OUTCOMES_DURABLE: &str = "notifier-outcomes";
pub const SUBSCRIPTIONS_DURABLE: &str = "notifier-subscriptions";

pub struct OutcomeHandler {
    pub pool: PgPool,
    pub config: Arc<NotifierConfig>,
    pub wake: Arc<Notify>,
}

impl Handler for OutcomeHandler {
    type Event = LeadOutcome;

    async fn handle(&self, batch: &[Delivery<LeadOutcome>]) -> anyhow::Result<Vec<Disposition>> {
        let out = apply_batch(&self.pool, batch, self).await?;
        self.wake.notify_waiters();
        Ok(out)
    }
}

impl ApplyInTx<LeadOutcome> for OutcomeHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery<LeadOutcome>,
    ) -> Result<Disposition, sqlx::Error> {
        {
            let o = &d.event;
            let (Ok(action_id), false) = (
                Uuid::parse_str(&o.action_id),
                o.advisor_id.trim().is_empty(),
            ) else {
                return Ok(Disposition::DeadLetter(
                    "outcome without a valid action id or advisor".into(),
                ));
            };
            let (data, page) = content::for_outcome(&self.config, o);
            let summary = serde_json::json!({
                "actionType": o.action_type, "phone": o.customer_phone, "name": o.customer_name,
                "leadId": o.lead_id, "customerCode": o.customer_code, "newCustomer": o.is_new_customer,
            });
            let new = store::NewNotification {
                id: Uuid::now_v7(),
                action_id,
                advisor_id: &o.advisor_id,
                kind: "action",
                template_id: &self.config.template_id,
                data: &data,
                page: &page,
                summary,
            };
            if let Some(id) = store::enqueue(tx, &new).await? {
                store::log(
                    tx,
                    Some(id),
                    Some(action_id),
                    &o.advisor_id,
                    "queued",
                    None,
                    None,
                    None,
                    None,
                )
                .await?;
            }
            Ok(Disposition::Ack)
        }
    }
}

pub struct SubscriptionHandler {
    pub pool: PgPool,
    pub config: Arc<NotifierConfig>,
    /// The sweep releases waiting notifications once a credit exists.
    pub sweep_now: Arc<Notify>,
}

fn status_name(s: i32) -> Option<&'static str> {
    match SubscriptionStatus::try_from(s).ok()? {
        SubscriptionStatus::Accept => Some("accept"),
        SubscriptionStatus::Reject => Some("reject"),
        SubscriptionStatus::Ban => Some("ban"),
        SubscriptionStatus::Filter => Some("filter"),
        SubscriptionStatus::Unspecified => None,
    }
}

impl Handler for SubscriptionHandler {
    type Event = SubscriptionChanged;

    async fn handle(
        &self,
        batch: &[Delivery<SubscriptionChanged>],
    ) -> anyhow::Result<Vec<Disposition>> {
        let out = apply_batch(&self.pool, batch, self).await?;
        // A new credit may release waiting notifications: the sweep does that, wake it now
        // (`notify_one` keeps the wake-up if the sweep is busy right now).
        self.sweep_now.notify_one();
        Ok(out)
    }
}

impl ApplyInTx<SubscriptionChanged> for SubscriptionHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery<SubscriptionChanged>,
    ) -> Result<Disposition, sqlx::Error> {
        {
            let e = &d.event;
            let meta = e.meta.as_ref().expect("checked at decode");
            let (Ok(event_id), Some(status)) =
                (Uuid::parse_str(&meta.event_id), status_name(e.status))
            else {
                return Ok(Disposition::DeadLetter(
                    "subscription change without a status".into(),
                ));
            };
            if [&e.advisor_id, &e.openid, &e.template_id]
                .iter()
                .any(|s| s.trim().is_empty())
            {
                return Ok(Disposition::DeadLetter(
                    "subscription change without advisor, openid or template".into(),
                ));
            }
            let long_term = self
                .config
                .long_term_templates
                .iter()
                .any(|t| t == &e.template_id);
            let at = from_timestamp(meta.occurred_at.as_ref()).unwrap_or_else(Utc::now);
            let fresh = store::apply_subscription(
                tx,
                event_id,
                &e.advisor_id,
                &e.openid,
                &e.template_id,
                status,
                &e.source,
                at,
                long_term,
            )
            .await?;
            if fresh {
                store::log(
                    tx,
                    None,
                    None,
                    &e.advisor_id,
                    &format!("subscription_{status}"),
                    None,
                    None,
                    None,
                    Some(&e.template_id),
                )
                .await?;
            }
            Ok(Disposition::Ack)
        }
    }
}
