//! The durable consumer of `lead.changed`: staff changes to a lead's status, level, owner or
//! remark, published by the gateway for the staff console.
//!
//! Each event is applied once: the change row (keyed by the event id) and the lead's update
//! commit in one transaction, so a redelivered or replayed event finds its row and changes
//! nothing. The row records only what differed, from and to, which is the lead's audit trail.

use ande_events::{from_timestamp, LeadChanged};
use ande_platform::consumer::{apply_batch, ApplyInTx, Delivery, Disposition, Handler};
use serde_json::{json, Map, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub const DURABLE: &str = "leads-changes";
/// Longest value of a changed field, in characters: the gateway's longest (a remark, 500).
const MAX_FIELD: usize = 500;

pub struct ChangeHandler {
    pub pool: PgPool,
}

impl Handler for ChangeHandler {
    type Event = LeadChanged;

    async fn handle(&self, batch: &[Delivery<LeadChanged>]) -> anyhow::Result<Vec<Disposition>> {
        apply_batch(&self.pool, batch, self).await
    }
}

/// The fields an event sets: (column, new value), empty ones left out.
fn requested(e: &LeadChanged) -> Vec<(&'static str, &str)> {
    [
        ("status", e.status.as_str()),
        ("level", e.level.as_str()),
        ("owner_advisor_id", e.owner_advisor_id.as_str()),
        ("remark", e.remark.as_str()),
    ]
    .into_iter()
    .map(|(field, v)| (field, v.trim()))
    .filter(|(_, v)| !v.is_empty())
    .collect()
}

/// `{"field": {"from": …, "to": …}}` for each requested field that differs from `before`.
fn differences(before: &Value, wanted: &[(&'static str, &str)]) -> Map<String, Value> {
    wanted
        .iter()
        .filter(|(field, to)| before[*field].as_str() != Some(*to))
        .map(|(field, to)| {
            (
                field.to_string(),
                json!({ "from": before[*field], "to": to }),
            )
        })
        .collect()
}

impl ApplyInTx<LeadChanged> for ChangeHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        d: &Delivery<LeadChanged>,
    ) -> Result<Disposition, sqlx::Error> {
        let e = &d.event;
        let meta = e.meta.as_ref().expect("checked at decode");
        let (Ok(event_id), Ok(lead_id)) =
            (Uuid::parse_str(&meta.event_id), Uuid::parse_str(&e.lead_id))
        else {
            return Ok(Disposition::DeadLetter(
                "lead change without a valid lead id".into(),
            ));
        };
        let wanted = requested(e);
        if e.changed_by.trim().is_empty()
            || wanted.iter().any(|(_, v)| v.chars().count() > MAX_FIELD)
        {
            return Ok(Disposition::DeadLetter(
                "lead change without an author or with a field too long".into(),
            ));
        }
        let before = sqlx::query_scalar!(
            r#"SELECT json_build_object('status', status, 'level', level,
                      'owner_advisor_id', owner_advisor_id, 'remark', remark) AS "row!"
               FROM leads WHERE id = $1 FOR UPDATE"#,
            lead_id
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = before else {
            return Ok(Disposition::DeadLetter(format!("no lead {lead_id}")));
        };
        // Applied before (a redelivery or a replay): nothing to do, whoever owns the lead now.
        let applied = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM lead_changes WHERE event_id = $1) AS "applied!""#,
            event_id
        )
        .fetch_one(&mut *tx)
        .await?;
        if applied {
            return Ok(Disposition::Ack);
        }
        // A sales account's change was allowed for the owner it saw; if the lead has moved to
        // another advisor since, the change is not theirs to make any more.
        let owner = before["owner_advisor_id"].as_str().unwrap_or_default();
        if !e.expected_owner.is_empty() && e.expected_owner != owner {
            return Ok(Disposition::DeadLetter(format!(
                "lead {lead_id} changed owner before this change applied"
            )));
        }
        let changed_at = from_timestamp(meta.occurred_at.as_ref()).unwrap_or_else(chrono::Utc::now);
        let changes = Value::Object(differences(&before, &wanted));
        record(tx, event_id, lead_id, e, changes, changed_at).await?;
        Ok(Disposition::Ack)
    }
}

/// The history row and the lead's new values, in the caller's transaction (the event id makes
/// the row, and so the update, happen once).
async fn record(
    tx: &mut PgConnection,
    event_id: Uuid,
    lead_id: Uuid,
    e: &LeadChanged,
    changes: Value,
    changed_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    let fresh = sqlx::query!(
        "INSERT INTO lead_changes (event_id, lead_id, changed_by, changes, changed_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        event_id,
        lead_id,
        e.changed_by,
        changes,
        changed_at
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if fresh {
        sqlx::query!(
            "UPDATE leads SET status = COALESCE(NULLIF($2, ''), status),
                        level = COALESCE(NULLIF($3, ''), level),
                        owner_advisor_id = COALESCE(NULLIF($4, ''), owner_advisor_id),
                        remark = COALESCE(NULLIF($5, ''), remark), updated_at = now()
                 WHERE id = $1",
            lead_id,
            e.status.trim(),
            e.level.trim(),
            e.owner_advisor_id.trim(),
            e.remark.trim()
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fields_that_differ_are_recorded() {
        let e = LeadChanged {
            status: "跟进中".into(),
            level: "B类".into(),
            remark: " ".into(),
            ..Default::default()
        };
        let before =
            json!({"status": "待定", "level": "B类", "owner_advisor_id": "a1", "remark": ""});
        let diff = differences(&before, &requested(&e));
        assert_eq!(
            Value::Object(diff),
            json!({"status": {"from": "待定", "to": "跟进中"}})
        );
    }
}
