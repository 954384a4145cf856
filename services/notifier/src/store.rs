//! The notifier's reads and writes: subscriptions and credits, the notification queue, the
//! delivery log, the pause switch.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// Append to the delivery log.
#[allow(clippy::too_many_arguments)]
pub async fn log(
    conn: &mut PgConnection,
    notification_id: Option<Uuid>,
    action_id: Option<Uuid>,
    advisor_id: &str,
    event: &str,
    errcode: Option<i64>,
    errmsg: Option<&str>,
    msgid: Option<&str>,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deliveries (notification_id, action_id, advisor_id, event, errcode, errmsg, msgid, detail)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
    )
    .bind(notification_id)
    .bind(action_id)
    .bind(advisor_id)
    .bind(event)
    .bind(errcode)
    .bind(errmsg)
    .bind(msgid)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

pub struct NewNotification<'a> {
    /// The row's id; for a digest also its action id and the id its page carries, so that the
    /// page, the members' `digest_id` and the journey all name the same thing.
    pub id: Uuid,
    pub action_id: Uuid,
    pub advisor_id: &'a str,
    pub kind: &'a str,
    pub template_id: &'a str,
    pub data: &'a BTreeMap<String, String>,
    pub page: &'a str,
    pub summary: serde_json::Value,
}

/// Queue a notification unless one exists for (action, advisor). Returns its id when queued now.
pub async fn enqueue(
    conn: &mut PgConnection,
    n: &NewNotification<'_>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO notifications (id, action_id, advisor_id, kind, state, template_id, data, page, summary)
         VALUES ($1,$2,$3,$4,'queued',$5,$6,$7,$8)
         ON CONFLICT (action_id, advisor_id) DO NOTHING RETURNING id",
    )
    .bind(n.id)
    .bind(n.action_id)
    .bind(n.advisor_id)
    .bind(n.kind)
    .bind(n.template_id)
    .bind(serde_json::to_value(n.data).unwrap_or_default())
    .bind(n.page)
    .bind(&n.summary)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.get("id")))
}

/// Apply one subscription decision once (by event id). Returns false for a duplicate.
#[allow(clippy::too_many_arguments)]
pub async fn apply_subscription(
    conn: &mut PgConnection,
    event_id: Uuid,
    advisor_id: &str,
    openid: &str,
    template_id: &str,
    status: &str,
    source: &str,
    occurred_at: DateTime<Utc>,
    long_term: bool,
) -> Result<bool, sqlx::Error> {
    let fresh = sqlx::query(
        "INSERT INTO subscription_events (event_id, advisor_id, openid, template_id, status, source, occurred_at)
         VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(event_id)
    .bind(advisor_id)
    .bind(openid)
    .bind(template_id)
    .bind(status)
    .bind(source)
    .bind(occurred_at)
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    if !fresh {
        return Ok(false);
    }
    // accept: one more credit. ban: the platform banned the template, nothing can be sent.
    // reject / filter: recorded; credits from earlier accepts stay usable (WeChat keeps them).
    let accept = status == "accept";
    sqlx::query(
        "INSERT INTO subscriptions (advisor_id, openid, template_id, credits, long_term, last_status, accepts, rejects)
         VALUES ($1,$2,$3, CASE WHEN $4 THEN 1 ELSE 0 END, $5, $6, CASE WHEN $4 THEN 1 ELSE 0 END, CASE WHEN $4 THEN 0 ELSE 1 END)
         ON CONFLICT (advisor_id, openid, template_id) DO UPDATE SET
            credits = CASE WHEN $6 = 'ban' THEN 0 ELSE subscriptions.credits + CASE WHEN $4 THEN 1 ELSE 0 END END,
            long_term = subscriptions.long_term OR $5,
            last_status = $6,
            accepts = subscriptions.accepts + CASE WHEN $4 THEN 1 ELSE 0 END,
            rejects = subscriptions.rejects + CASE WHEN $4 THEN 0 ELSE 1 END,
            updated_at = now()",
    )
    .bind(advisor_id)
    .bind(openid)
    .bind(template_id)
    .bind(accept)
    .bind(long_term)
    .bind(status)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// A claimed notification, ready to send.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub action_id: Uuid,
    pub advisor_id: String,
    pub template_id: String,
    pub data: BTreeMap<String, String>,
    pub page: Option<String>,
    pub openid: String,
    pub long_term: bool,
    pub attempts: i32,
    /// The subscription's accept count when the credit was reserved: accepts that arrive while
    /// the send is in flight are credits a 43101 must not wipe out.
    pub accepts_at_claim: i32,
}

/// What became of the attempt to claim work.
pub enum Claim {
    Nothing,
    Paused,
    /// Claimed and a credit reserved: send it.
    Send(Claimed),
    /// Looked at, no credit: now waiting (or dropped); nothing to send.
    Parked,
}

/// Claim one due notification and reserve a credit for it, in one transaction.
pub async fn claim(conn: &mut PgConnection, max_waiting: i64) -> Result<Claim, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let paused: Option<bool> =
        sqlx::query_scalar("SELECT paused_until > now() FROM control WHERE key = 'sending'")
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    if paused == Some(true) {
        return Ok(Claim::Paused);
    }
    let Some(row) = sqlx::query(
        "SELECT id, action_id, advisor_id, template_id, data, page, attempts FROM notifications
         WHERE state = 'queued' AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Claim::Nothing);
    };
    let id: Uuid = row.get("id");
    let action_id: Uuid = row.get("action_id");
    let advisor_id: String = row.get("advisor_id");
    let template_id: String = row.get("template_id");
    let sub = sqlx::query(
        "SELECT openid, long_term, accepts FROM subscriptions
         WHERE advisor_id = $1 AND template_id = $2 AND (credits > 0 OR long_term) AND last_status <> 'ban'
         ORDER BY long_term DESC, updated_at DESC LIMIT 1 FOR UPDATE",
    )
    .bind(&advisor_id)
    .bind(&template_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(sub) = sub else {
        // Parking is serialised per advisor (the lock `take_waiting` also takes), or concurrent
        // workers would all see room below `max_waiting` and overshoot it.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&advisor_id)
            .execute(&mut *tx)
            .await?;
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM subscriptions WHERE advisor_id = $1 AND template_id = $2)")
            .bind(&advisor_id)
            .bind(&template_id)
            .fetch_one(&mut *tx)
            .await?;
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE advisor_id = $1 AND state = 'waiting_credit'",
        )
        .bind(&advisor_id)
        .fetch_one(&mut *tx)
        .await?;
        let (state, event) = if waiting >= max_waiting {
            ("dropped", "dropped_too_many_waiting")
        } else if known {
            ("waiting_credit", "waiting_for_credit")
        } else {
            ("waiting_credit", "no_subscription")
        };
        sqlx::query("UPDATE notifications SET state = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(state)
            .execute(&mut *tx)
            .await?;
        log(
            &mut tx,
            Some(id),
            Some(action_id),
            &advisor_id,
            event,
            None,
            None,
            None,
            None,
        )
        .await?;
        tx.commit().await?;
        return Ok(Claim::Parked);
    };
    let openid: String = sub.get("openid");
    let long_term: bool = sub.get("long_term");
    let accepts_at_claim: i32 = sub.get("accepts");
    if !long_term {
        sqlx::query("UPDATE subscriptions SET credits = credits - 1, updated_at = now() WHERE advisor_id = $1 AND openid = $2 AND template_id = $3")
            .bind(&advisor_id)
            .bind(&openid)
            .bind(&template_id)
            .execute(&mut *tx)
            .await?;
    }
    let attempts: i32 = sqlx::query_scalar(
        "UPDATE notifications SET state = 'sending', openid = $2, claimed_at = clock_timestamp(), attempts = attempts + 1, updated_at = now()
         WHERE id = $1 RETURNING attempts",
    )
    .bind(id)
    .bind(&openid)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let data: serde_json::Value = row.get("data");
    Ok(Claim::Send(Claimed {
        id,
        action_id,
        advisor_id,
        template_id,
        data: serde_json::from_value(data).unwrap_or_default(),
        page: row.get("page"),
        openid,
        long_term,
        attempts,
        accepts_at_claim,
    }))
}

/// WeChat said 43101 (no credit left) to the send `c`: our count was wrong, so set it to zero,
/// but keep the credits of accepts that arrived after the claim (WeChat has those).
pub async fn no_credit_at_wechat(conn: &mut PgConnection, c: &Claimed) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE subscriptions SET credits = LEAST(credits, GREATEST(accepts - $4, 0)), updated_at = now()
         WHERE advisor_id = $1 AND openid = $2 AND template_id = $3",
    )
    .bind(&c.advisor_id)
    .bind(&c.openid)
    .bind(&c.template_id)
    .bind(c.accepts_at_claim)
    .execute(conn)
    .await?;
    Ok(())
}

/// Give back a reserved credit (the send was not accepted by WeChat). Long-term subscriptions
/// reserve nothing, so nothing is given back to them (also when `c.long_term` is not known, as
/// for a re-queued abandoned send).
pub async fn refund(conn: &mut PgConnection, c: &Claimed) -> Result<(), sqlx::Error> {
    adjust_credits(conn, c, 1).await
}

/// Take a credit for a send WeChat accepted after its reservation had been given back (the send
/// was presumed abandoned and re-queued). Never below zero: WeChat will say 43101 if we are wrong.
pub async fn charge(conn: &mut PgConnection, c: &Claimed) -> Result<(), sqlx::Error> {
    adjust_credits(conn, c, -1).await
}

async fn adjust_credits(
    conn: &mut PgConnection,
    c: &Claimed,
    delta: i32,
) -> Result<(), sqlx::Error> {
    if c.long_term {
        return Ok(());
    }
    sqlx::query(
        "UPDATE subscriptions SET credits = GREATEST(credits + $4, 0), updated_at = now()
         WHERE advisor_id = $1 AND openid = $2 AND template_id = $3 AND NOT long_term",
    )
    .bind(&c.advisor_id)
    .bind(&c.openid)
    .bind(&c.template_id)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lock a notification and tell whether the attempt numbered `attempts` still owns it (still
/// `sending` and not claimed again since), and its current state.
pub async fn ownership(
    conn: &mut PgConnection,
    id: Uuid,
    attempts: i32,
) -> Result<(bool, String), sqlx::Error> {
    let row = sqlx::query("SELECT state, attempts FROM notifications WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(conn)
        .await?;
    let (state, now): (String, i32) = (row.get("state"), row.get("attempts"));
    Ok((state == "sending" && now == attempts, state))
}

/// Keep the msgid of a delivery without changing the notification's state.
pub async fn note_msgid(conn: &mut PgConnection, id: Uuid, msgid: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE notifications SET msgid = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(msgid)
        .execute(conn)
        .await?;
    Ok(())
}

/// The msgid WeChat gave a delivery of this notification, if any.
pub async fn msgid(conn: &mut PgConnection, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT msgid FROM notifications WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
}

pub async fn zero_credits(
    conn: &mut PgConnection,
    openid: &str,
    template_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE subscriptions SET credits = 0, updated_at = now() WHERE openid = $1 AND template_id = $2")
        .bind(openid)
        .bind(template_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: &str,
    next_attempt_at: Option<DateTime<Utc>>,
    msgid: Option<&str>,
    errcode: Option<i64>,
    errmsg: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET state = $2, next_attempt_at = COALESCE($3, next_attempt_at), msgid = COALESCE($4, msgid),
            errcode = $5, errmsg = $6, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(next_attempt_at)
    .bind(msgid)
    .bind(errcode)
    .bind(errmsg)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn pause_until(
    conn: &mut PgConnection,
    until: Option<DateTime<Utc>>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO control (key, paused_until, reason) VALUES ('sending', $1, $2)
         ON CONFLICT (key) DO UPDATE SET paused_until = $1, reason = $2, updated_at = now()",
    )
    .bind(until)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Notifications a crashed worker left in `sending` go back to the queue. Their credit was
/// reserved and is given back, since they will reserve one again. The outcome of the abandoned
/// attempt is unknown, so this is treated like a timeout: sent again (see `dispatch`). If the
/// abandoned attempt answers after all, `dispatch` sees it no longer owns the row and settles
/// the credit from what WeChat said.
pub async fn requeue_stale(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    max_attempts: i32,
) -> Result<u64, sqlx::Error> {
    // One that was abandoned on each of its `max_attempts` attempts is failed rather than
    // re-queued: whatever it does to the worker sending it, it must not do it forever.
    let rows = sqlx::query(
        "UPDATE notifications SET
            state = CASE WHEN attempts >= $2 THEN 'failed' ELSE 'queued' END,
            errmsg = CASE WHEN attempts >= $2 THEN 'abandoned by a crashed or hung worker on every attempt' ELSE errmsg END,
            next_attempt_at = now(), updated_at = now()
         WHERE state = 'sending' AND claimed_at < now() - make_interval(secs => $1)
         RETURNING id, action_id, advisor_id, openid, template_id, state",
    )
    .bind(older_than.as_secs_f64())
    .bind(max_attempts)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let c = Claimed {
            id: r.get("id"),
            action_id: r.get("action_id"),
            advisor_id: r.get("advisor_id"),
            template_id: r.get("template_id"),
            data: BTreeMap::new(),
            page: None,
            openid: r.get::<Option<String>, _>("openid").unwrap_or_default(),
            long_term: false,
            attempts: 0,
            accepts_at_claim: 0,
        };
        refund(conn, &c).await?;
        let failed = r.get::<String, _>("state") == "failed";
        log(
            conn,
            Some(c.id),
            Some(c.action_id),
            &c.advisor_id,
            if failed {
                "failed_after_crashes"
            } else {
                "requeued_after_crash"
            },
            None,
            None,
            None,
            Some("outcome of the last attempt unknown"),
        )
        .await?;
    }
    Ok(rows.len() as u64)
}

/// Advisors that have notifications waiting and a usable credit now.
pub async fn advisors_to_release(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT n.advisor_id, n.template_id FROM notifications n
         JOIN subscriptions s ON s.advisor_id = n.advisor_id AND s.template_id = n.template_id
         WHERE n.state = 'waiting_credit' AND (s.credits > 0 OR s.long_term) AND s.last_status <> 'ban'",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("advisor_id"), r.get("template_id")))
        .collect())
}

/// A notification waiting for credit.
pub struct Waiting {
    pub id: Uuid,
    pub action_id: Uuid,
    /// `action`, or `digest` for a digest that found no credit either.
    pub kind: String,
    pub summary: serde_json::Value,
}

impl Waiting {
    /// How many customer actions it stands for.
    pub fn actions(&self) -> usize {
        match self.kind.as_str() {
            "digest" => self
                .summary
                .get("count")
                .and_then(|c| c.as_u64())
                .unwrap_or(1) as usize,
            _ => 1,
        }
    }
}

/// The waiting notifications of an advisor, oldest first, locked (serialised per advisor).
pub async fn take_waiting(
    conn: &mut PgConnection,
    advisor_id: &str,
    template_id: &str,
) -> Result<Vec<Waiting>, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(advisor_id)
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query(
        "SELECT id, action_id, kind, summary FROM notifications WHERE advisor_id = $1 AND template_id = $2 AND state = 'waiting_credit'
         ORDER BY created_at, id FOR UPDATE",
    )
    .bind(advisor_id)
    .bind(template_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Waiting {
            id: r.get("id"),
            action_id: r.get("action_id"),
            kind: r.get("kind"),
            summary: r.get("summary"),
        })
        .collect())
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub id: Uuid,
    pub action_id: Uuid,
    pub advisor_id: String,
    pub kind: String,
    pub state: String,
    pub template_id: String,
    pub openid: Option<String>,
    pub attempts: i32,
    pub msgid: Option<String>,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub digest_id: Option<Uuid>,
    pub data: serde_json::Value,
    pub page: Option<String>,
    /// What the notification is about (action type, customer, lead), for the digest's page.
    pub summary: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub event: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub msgid: Option<String>,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

const VIEW_COLUMNS: &str = "id, action_id, advisor_id, kind, state, template_id, openid, attempts, msgid, errcode, errmsg, digest_id, data, page, summary, created_at, updated_at";

/// Notifications of an action, with the digest that carried them if any, and the log.
pub async fn journey(
    conn: &mut PgConnection,
    action_id: Uuid,
) -> Result<(Vec<NotificationView>, Vec<DeliveryView>), sqlx::Error> {
    let notes: Vec<NotificationView> = sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM notifications WHERE action_id = $1
         OR id IN (SELECT digest_id FROM notifications WHERE action_id = $1 AND digest_id IS NOT NULL) ORDER BY created_at, id"
    ))
    .bind(action_id)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = notes.iter().map(|n| n.id).collect();
    let log = sqlx::query_as(
        "SELECT event, errcode, errmsg, msgid, detail, at FROM deliveries WHERE action_id = $1 OR notification_id = ANY($2) ORDER BY id",
    )
    .bind(action_id)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok((notes, log))
}

/// The customer actions a digest stands for (the page a digest opens lists them), including
/// those of an earlier digest it folded in.
/// The digest notification itself.
pub async fn digest_row(
    conn: &mut PgConnection,
    digest_id: Uuid,
) -> Result<Option<NotificationView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM notifications WHERE id = $1 AND kind = 'digest'"
    ))
    .bind(digest_id)
    .fetch_optional(conn)
    .await
}

pub async fn digest_members(
    conn: &mut PgConnection,
    digest_id: Uuid,
) -> Result<Vec<NotificationView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {VIEW_COLUMNS} FROM notifications WHERE digest_id = $1 AND kind = 'action' ORDER BY created_at, id"))
        .bind(digest_id)
        .fetch_all(conn)
        .await
}
