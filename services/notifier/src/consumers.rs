//! The notifier's three durable consumers. NATS 2.9 allows one filter subject per consumer, so
//! outcomes, subscription changes (the mini-program's reports) and WeChat's subscription pushes
//! each have their own; all only write to the database (in
//! one transaction per batch, through `store_batch`/`apply_batch`, which isolate a message whose
//! data Postgres refuses) and ack after the commit. Sending happens in `dispatch`, driven by
//! the rows they write, so a redelivered or replayed event finds its row and does nothing.

use std::sync::Arc;

use ande_contracts::notifier::ActionSummary;
use ande_events::{
    from_timestamp, LeadOutcome, SubscriptionChanged, WechatPushKind, WechatSubscriptionEvent,
};
use ande_platform::consumer::{
    apply_batch, store_batch, ApplyInTx, Delivery, Disposition, Handler, StoreInTx,
};
use chrono::Utc;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::{CreditSource, ForeignLead, NotifierConfig};
use crate::content::{self, Audience};
use crate::credits;
use crate::store::{self, LogEntry, NotificationKind, NotificationState, Summary};

pub const OUTCOMES_DURABLE: &str = "notifier-outcomes";
pub const SUBSCRIPTIONS_DURABLE: &str = "notifier-subscriptions";
pub const WECHAT_DURABLE: &str = "notifier-wechat";
/// Deliveries of a sent event whose msgid is not (yet) ours before it is logged on its own.
const SENT_LOOKUPS: i64 = 5;

pub struct OutcomeHandler {
    pub pool: PgPool,
    pub config: Arc<NotifierConfig>,
    pub wake: Arc<Notify>,
}

impl Handler for OutcomeHandler {
    type Event = LeadOutcome;

    async fn handle(&self, batch: &[Delivery<LeadOutcome>]) -> anyhow::Result<Vec<Disposition>> {
        let stored = store_batch(&self.pool, batch, self).await?;
        self.wake.notify_one();
        Ok(stored
            .into_iter()
            .map(|r| r.unwrap_or_else(Disposition::DeadLetter))
            .collect())
    }
}

/// A batch's notifications are written with one statement (and their log entries with one
/// more): under load the outcomes arrive in batches, and a statement per row was most of what
/// the notifier cost Postgres.
impl StoreInTx<LeadOutcome> for OutcomeHandler {
    type Stored = Disposition;

    async fn store(
        &self,
        tx: &mut PgConnection,
        batch: &[Delivery<LeadOutcome>],
    ) -> Result<Vec<Result<Disposition, String>>, sqlx::Error> {
        let mut out = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        for d in batch {
            let o = &d.event;
            let (Ok(action_id), false) = (
                Uuid::parse_str(&o.action_id),
                o.advisor_id.trim().is_empty(),
            ) else {
                out.push(Ok(Disposition::DeadLetter(
                    "outcome without a valid action id or advisor".into(),
                )));
                continue;
            };
            for (advisor_id, audience) in recipients(o, self.config.foreign_lead) {
                let mut row = self.notification(o, action_id, advisor_id, audience);
                row.new.traceparent = ande_platform::telemetry::traceparent(&d.span);
                if o.anonymous {
                    // Admitted one by one: each counts against the advisor's hourly budget,
                    // which the next one reads.
                    let c = &self.config;
                    let (state, event) =
                        store::admit_anonymous(tx, advisor_id, c.anonymous_per_hour, c.max_waiting)
                            .await?;
                    let row = store::Enqueue {
                        new: store::NewNotification { state, ..row.new },
                        event,
                        ..row
                    };
                    store::enqueue_many(tx, std::slice::from_ref(&row)).await?;
                } else {
                    rows.push(row);
                }
            }
            out.push(Ok(Disposition::Ack));
        }
        store::enqueue_many(tx, &rows).await?;
        Ok(out)
    }
}

/// Who hears of an outcome, and in which form (see [`ForeignLead`]).
fn recipients(o: &LeadOutcome, mode: ForeignLead) -> Vec<(&str, Audience)> {
    let owner = o.lead_owner.trim();
    if owner.is_empty() || owner == o.advisor_id {
        return vec![(&o.advisor_id, Audience::Viewed)];
    }
    match mode {
        ForeignLead::Owner => vec![(owner, Audience::Owner)],
        ForeignLead::Both => vec![
            (owner, Audience::Owner),
            (&o.advisor_id, Audience::Redacted),
        ],
        ForeignLead::Viewed => vec![(&o.advisor_id, Audience::Viewed)],
    }
}

impl OutcomeHandler {
    /// The notification of the outcome for one advisor (stored once per (action, advisor)),
    /// queued.
    fn notification<'a>(
        &'a self,
        o: &LeadOutcome,
        action_id: Uuid,
        advisor_id: &'a str,
        audience: Audience,
    ) -> store::Enqueue<'a> {
        let (data, page) = content::for_outcome(&self.config, o, audience);
        let mut action = ActionSummary {
            action_type: o.action_type.as_str().into(),
            phone: o.customer_phone.clone(),
            name: o.customer_name.clone(),
            lead_id: o.lead_id.clone(),
            customer_code: o.customer_code.clone(),
            new_customer: o.is_new_customer,
        };
        if audience == Audience::Redacted {
            // Another advisor's customer: nothing that identifies them or their lead.
            action = ActionSummary {
                phone: String::new(),
                name: String::new(),
                lead_id: String::new(),
                customer_code: String::new(),
                ..action
            };
        }
        let detail = match audience {
            Audience::Owner => {
                Some("the customer is this advisor's lead; they acted on another advisor's resume")
            }
            Audience::Redacted => {
                Some("the customer is another advisor's lead: sent without phone and name")
            }
            Audience::Viewed => None,
        };
        store::Enqueue {
            new: store::NewNotification {
                id: Uuid::now_v7(),
                action_id,
                advisor_id,
                kind: NotificationKind::Action,
                template_id: &self.config.template_id,
                data,
                page,
                summary: Summary::Action(action),
                anonymous: o.anonymous,
                state: NotificationState::Queued,
                traceparent: None,
            },
            event: "queued",
            detail,
        }
    }
}

pub struct SubscriptionHandler {
    pub pool: PgPool,
    pub config: Arc<NotifierConfig>,
    /// The sweep releases waiting notifications once a credit exists.
    pub sweep_now: Arc<Notify>,
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
            let (Ok(event_id), Some(status)) = (
                Uuid::parse_str(&meta.event_id),
                ande_events::subscription_status(e.status),
            ) else {
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
            let decision = store::Decision {
                event_id,
                account: credits::Account {
                    advisor_id: &e.advisor_id,
                    openid: &e.openid,
                    template_id: &e.template_id,
                },
                status,
                source: &e.source,
                occurred_at: at,
                long_term,
                // With credits from WeChat's pushes, the client's report is recorded only.
                effect: match self.config.credit_source {
                    CreditSource::Client => credits::Effect::Counts,
                    CreditSource::Events => credits::Effect::RecordOnly,
                },
            };
            if store::apply_subscription(tx, &decision).await? {
                let event = format!("subscription_{status}");
                LogEntry {
                    advisor_id: &e.advisor_id,
                    event: &event,
                    detail: Some(&e.template_id),
                    ..LogEntry::default()
                }
                .write(tx)
                .await?;
            }
            Ok(Disposition::Ack)
        }
    }
}

/// WeChat's own subscription events, verified by the gateway: an accept in the popup, a template
/// turned off in the settings, what became of a sent message.
pub struct WechatPushHandler {
    pub pool: PgPool,
    pub config: Arc<NotifierConfig>,
    pub sweep_now: Arc<Notify>,
}

impl Handler for WechatPushHandler {
    type Event = WechatSubscriptionEvent;

    async fn handle(
        &self,
        batch: &[Delivery<WechatSubscriptionEvent>],
    ) -> anyhow::Result<Vec<Disposition>> {
        let out = apply_batch(&self.pool, batch, self).await?;
        self.sweep_now.notify_one();
        Ok(out)
    }
}

impl ApplyInTx<WechatSubscriptionEvent> for WechatPushHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery<WechatSubscriptionEvent>,
    ) -> Result<Disposition, sqlx::Error> {
        let e = &d.event;
        let meta = e.meta.as_ref().expect("checked at decode");
        let (Ok(event_id), Ok(kind)) = (
            Uuid::parse_str(&meta.event_id),
            WechatPushKind::try_from(e.kind),
        ) else {
            return Ok(Disposition::DeadLetter("a push of an unknown kind".into()));
        };
        let kind = match kind {
            WechatPushKind::Popup => "popup",
            WechatPushKind::Change => "change",
            WechatPushKind::Sent => "sent",
            WechatPushKind::Unspecified => {
                return Ok(Disposition::DeadLetter("a push of an unknown kind".into()))
            }
        };
        if e.openid.trim().is_empty() || e.template_id.trim().is_empty() {
            return Ok(Disposition::DeadLetter(
                "a push without openid or template".into(),
            ));
        }
        let at = from_timestamp(meta.occurred_at.as_ref()).unwrap_or_else(Utc::now);
        // WeChat may report a delivery before our recorder has stored the send's msgid: look
        // again a little later (before anything is written), then log it on its own.
        let sent_of = match kind {
            "sent" => store::by_msgid(tx, &e.msg_id).await?,
            _ => None,
        };
        if kind == "sent" && sent_of.is_none() && d.delivered < SENT_LOOKUPS {
            return Ok(Disposition::Retry {
                after: std::time::Duration::from_secs(1),
                reason: "no notification has this msgid yet".into(),
            });
        }
        if !store::record_push(tx, event_id, kind, &e.openid, &e.template_id, at).await? {
            return Ok(Disposition::Ack);
        }
        if kind == "sent" {
            self.delivered(tx, e, sent_of).await?;
        } else {
            self.decided(tx, e, event_id, kind, at).await?;
        }
        Ok(Disposition::Ack)
    }
}

impl WechatPushHandler {
    /// A popup answer or a template turned off: the decision for every advisor the WeChat user
    /// receives notifications for (the ledger counts per advisor; WeChat per user, so a user
    /// bound to two advisors gets the credit on both and a 43101 corrects the one spent second).
    async fn decided(
        &self,
        tx: &mut PgConnection,
        e: &WechatSubscriptionEvent,
        event_id: Uuid,
        kind: &str,
        at: chrono::DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let Some(status) = ande_events::subscription_status(e.status) else {
            tracing::info!(template = %e.template_id, "push with a subscription status we do not know: recorded, nothing changed");
            return Ok(());
        };
        let advisors = store::advisors_bound_to(tx, &e.openid).await?;
        if advisors.is_empty() {
            tracing::info!(template = %e.template_id, kind, "push from a WeChat user bound to no advisor: nothing to credit");
        }
        let long_term = self.config.long_term_templates.contains(&e.template_id);
        let (source, effect) = match (kind, self.config.credit_source) {
            ("change", _) => ("wechat_change", credits::Effect::TurnsOff),
            (_, CreditSource::Events) => ("wechat_popup", credits::Effect::Counts),
            (_, CreditSource::Client) => ("wechat_popup", credits::Effect::RecordOnly),
        };
        for advisor_id in &advisors {
            let decision = store::Decision {
                event_id: Uuid::new_v5(&event_id, advisor_id.as_bytes()),
                account: credits::Account {
                    advisor_id,
                    openid: &e.openid,
                    template_id: &e.template_id,
                },
                status,
                source,
                occurred_at: at,
                long_term,
                effect,
            };
            if store::apply_subscription(tx, &decision).await? {
                let event = format!("subscription_{status}");
                LogEntry {
                    advisor_id,
                    event: &event,
                    detail: Some(&format!("{} ({source})", e.template_id)),
                    ..LogEntry::default()
                }
                .write(tx)
                .await?;
            }
        }
        Ok(())
    }

    /// WeChat's word on a message we sent, into the delivery log of its notification (a
    /// message sent directly by staff has none: the entry stands alone, with its msgid).
    async fn delivered(
        &self,
        tx: &mut PgConnection,
        e: &WechatSubscriptionEvent,
        found: Option<(Uuid, Uuid, String)>,
    ) -> Result<(), sqlx::Error> {
        let (notification_id, action_id, advisor_id) = match &found {
            Some((n, a, adv)) => (Some(*n), Some(*a), adv.as_str()),
            None => (None, None, ""),
        };
        LogEntry {
            notification_id,
            action_id,
            advisor_id,
            event: if e.error_code == 0 {
                "wechat_delivered"
            } else {
                "wechat_not_delivered"
            },
            errcode: Some(e.error_code),
            errmsg: Some(&e.error_status),
            msgid: Some(&e.msg_id),
            detail: Some(&e.template_id),
        }
        .write(tx)
        .await?;
        Ok(())
    }
}
