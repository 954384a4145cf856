//! The notifier's two durable consumers. NATS 2.9 allows one filter subject per consumer, so
//! outcomes and subscription changes each have their own; both only write to the database (in
//! one transaction per batch) and ack after the commit. Sending happens in `dispatch`, driven by
//! the rows they write, so a redelivered or replayed event finds its row and does nothing.

use std::sync::Arc;

use ande_events::{from_timestamp, LeadOutcome, SubscriptionChanged, SubscriptionStatus};
use ande_platform::consumer::{Delivery, Disposition, Handler};
use anyhow::Context;
use chrono::Utc;
use sqlx::PgPool;
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
        let mut tx = self.pool.begin().await.context("begin")?;
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            let o = &d.event;
            let (Ok(action_id), false) = (
                Uuid::parse_str(&o.action_id),
                o.advisor_id.trim().is_empty(),
            ) else {
                out.push(Disposition::DeadLetter(
                    "outcome without a valid action id or advisor".into(),
                ));
                continue;
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
            if let Some(id) = store::enqueue(&mut tx, &new).await.context("enqueue")? {
                store::log(
                    &mut tx,
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
            out.push(Disposition::Ack);
        }
        tx.commit().await.context("commit")?;
        self.wake.notify_waiters();
        Ok(out)
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
        let mut tx = self.pool.begin().await.context("begin")?;
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            let e = &d.event;
            let meta = e.meta.as_ref().expect("checked at decode");
            let (Ok(event_id), Some(status)) =
                (Uuid::parse_str(&meta.event_id), status_name(e.status))
            else {
                out.push(Disposition::DeadLetter(
                    "subscription change without a status".into(),
                ));
                continue;
            };
            if [&e.advisor_id, &e.openid, &e.template_id]
                .iter()
                .any(|s| s.trim().is_empty())
            {
                out.push(Disposition::DeadLetter(
                    "subscription change without advisor, openid or template".into(),
                ));
                continue;
            }
            let long_term = self
                .config
                .long_term_templates
                .iter()
                .any(|t| t == &e.template_id);
            let at = from_timestamp(meta.occurred_at.as_ref()).unwrap_or_else(Utc::now);
            let fresh = store::apply_subscription(
                &mut tx,
                event_id,
                &e.advisor_id,
                &e.openid,
                &e.template_id,
                status,
                &e.source,
                at,
                long_term,
            )
            .await
            .context("apply subscription")?;
            if fresh {
                store::log(
                    &mut tx,
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
            out.push(Disposition::Ack);
        }
        tx.commit().await.context("commit")?;
        // A new credit may release waiting notifications: the sweep does that, wake it now
        // (`notify_one` keeps the wake-up if the sweep is busy right now).
        self.sweep_now.notify_one();
        Ok(out)
    }
}
