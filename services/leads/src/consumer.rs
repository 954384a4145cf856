//! Consumes `action.recorded`: stores each action and its lead outcome, then publishes the
//! outcome, then acks.
//!
//! Exactly one outcome per action, whatever crashes: the outcome is stored with the action (same
//! transaction) under a fixed event id, and published after the commit. A crash before the
//! publish leaves `outcome_published_at` empty and the action un-acked; its redelivery finds the
//! stored outcome and publishes it under the same event id. A crash after the publish but before
//! marking it republishes the same event id, which JetStream's duplicate window drops. Once
//! marked, a redelivery or replay publishes nothing.
//!
//! Under a backlog a whole batch is stored in one transaction (one commit for many events). If
//! that transaction fails for a reason other than Postgres being unavailable, the batch is redone
//! one action per transaction so that only the bad action is dead-lettered (`store_batch`, the
//! fallback every consumer shares).

use std::sync::Arc;

use ande_events::{meta_with_id, to_timestamp, ActionRecorded, LeadOutcome};
use ande_platform::bus::Bus;
use ande_platform::consumer::{store_batch, Delivery, Disposition, Handler, StoreInTx};
use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::config::LeadsConfig;
use crate::store::{self, StoredOutcome};

pub const DURABLE: &str = "leads";
pub const PRODUCER: &str = "leads";

pub struct ActionHandler {
    pub pool: PgPool,
    pub bus: Bus,
    pub config: Arc<LeadsConfig>,
}

impl Handler for ActionHandler {
    type Event = ActionRecorded;

    async fn handle(&self, batch: &[Delivery<ActionRecorded>]) -> anyhow::Result<Vec<Disposition>> {
        let started = std::time::Instant::now();
        let results = store_batch(&self.pool, batch, self).await?;
        let mut dispositions = Vec::with_capacity(batch.len());
        let mut to_publish = Vec::new();
        for (d, result) in batch.iter().zip(results) {
            match result {
                Ok(outcome) => {
                    tracing::info!(parent: &d.span, action_id = %outcome.action_id, kind = ?outcome.kind, lead_id = ?outcome.lead_id, "action stored");
                    if !outcome.published {
                        to_publish.push((outcome, d.span.clone()));
                    }
                    dispositions.push(Disposition::Ack);
                }
                Err(reason) => dispositions.push(Disposition::DeadLetter(reason)),
            }
        }
        let stored_ms = started.elapsed().as_millis();
        self.publish(to_publish).await?;
        tracing::debug!(
            size = batch.len(),
            stored_ms,
            total_ms = started.elapsed().as_millis(),
            "batch done"
        );
        Ok(dispositions)
    }
}

impl StoreInTx<ActionRecorded> for ActionHandler {
    type Stored = StoredOutcome;

    async fn store(
        &self,
        tx: &mut PgConnection,
        batch: &[Delivery<ActionRecorded>],
    ) -> Result<Vec<Result<StoredOutcome, String>>, sqlx::Error> {
        let events: Vec<(&ActionRecorded, u64)> =
            batch.iter().map(|d| (&d.event, d.stream_seq)).collect();
        store::record_batch(tx, &events, &self.config).await
    }
}

impl ActionHandler {
    /// Publish outcomes together (all in flight at once), wait for every ack, then mark them.
    async fn publish(&self, outcomes: Vec<(StoredOutcome, tracing::Span)>) -> anyhow::Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut acks = Vec::with_capacity(outcomes.len());
        for (o, span) in &outcomes {
            let event = outcome_event(o);
            acks.push(
                self.bus
                    .publish_start(&event)
                    .instrument(span.clone())
                    .await
                    .context("publishing outcome")?,
            );
        }
        for ack in acks {
            let acked = ack.await;
            Bus::count::<LeadOutcome>(acked.is_ok());
            acked.context("outcome not acknowledged")?;
        }
        for (o, _) in &outcomes {
            ande_platform::metrics::LEADS_OUTCOMES
                .with_label_values(&[o.kind.as_str()])
                .inc();
        }
        let ids: Vec<Uuid> = outcomes.iter().map(|(o, _)| o.action_id).collect();
        let mut conn = self.pool.acquire().await.context("acquire")?;
        store::mark_published(&mut conn, &ids)
            .await
            .context("marking outcomes published")?;
        Ok(())
    }
}

/// The outcome event of a stored action: always the same event id and time for the same action.
pub fn outcome_event(o: &StoredOutcome) -> LeadOutcome {
    let action_id = o.action_id.to_string();
    LeadOutcome {
        meta: Some(meta_with_id(
            o.outcome_event_id,
            &action_id,
            PRODUCER,
            o.stored_at,
        )),
        action_id,
        advisor_id: o.advisor_id.clone(),
        customer_id: o.customer_id.clone(),
        action_type: o.action_type.to_string(),
        kind: ande_events::LeadOutcomeKind::from(o.kind) as i32,
        no_lead_reason: o.no_lead_reason.clone().unwrap_or_default(),
        lead_id: o.lead_id.map(|id| id.to_string()).unwrap_or_default(),
        customer_code: o.customer_code.clone().unwrap_or_default(),
        is_new_customer: o.is_new_customer,
        customer_name: o.customer_name.clone().unwrap_or_default(),
        customer_phone: o.phone.clone().unwrap_or_default(),
        action_at: Some(to_timestamp(o.occurred_at)),
        anonymous: o.anonymous,
        lead_owner: o.lead_owner.clone().unwrap_or_default(),
        linked_action_ids: o.linked_actions.iter().map(Uuid::to_string).collect(),
        linked_advisors: o.linked_advisors,
    }
}
