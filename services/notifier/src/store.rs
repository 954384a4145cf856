//! The notifier's reads and writes: subscriptions and credits, the notification queue, the
//! delivery log, the pause switch.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::QuietHours;
use crate::credits;

pub use ande_contracts::notifier::{DeliveryView, NotificationView, Summary};
pub use ande_contracts::vocab::{NotificationKind, NotificationState, SubscriptionStatus};

/// One entry of the delivery log: a decision about a notification or an attempt to send it.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogEntry<'a> {
    pub notification_id: Option<Uuid>,
    pub action_id: Option<Uuid>,
    pub advisor_id: &'a str,
    /// What happened (`queued`, `sent`, `retry`, …): the journey shows it as is.
    pub event: &'a str,
    pub errcode: Option<i64>,
    pub errmsg: Option<&'a str>,
    pub msgid: Option<&'a str>,
    pub detail: Option<&'a str>,
}

impl<'a> LogEntry<'a> {
    /// An entry about a notification.
    pub fn about(
        notification_id: Uuid,
        action_id: Uuid,
        advisor_id: &'a str,
        event: &'a str,
    ) -> Self {
        Self {
            notification_id: Some(notification_id),
            action_id: Some(action_id),
            advisor_id,
            event,
            ..Self::default()
        }
    }

    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Append it to the log.
    pub async fn write(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query!(
        "INSERT INTO deliveries (notification_id, action_id, advisor_id, event, errcode, errmsg, msgid, detail)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        self.notification_id,
        self.action_id,
        self.advisor_id,
        self.event,
        self.errcode,
        self.errmsg,
        self.msgid,
        self.detail
    )
        .execute(conn)
        .await?;
        Ok(())
    }
}

pub struct NewNotification<'a> {
    /// The row's id; for a digest also its action id and the id its page carries, so that the
    /// page, the members' `digest_id` and the journey all name the same thing.
    pub id: Uuid,
    pub action_id: Uuid,
    pub advisor_id: &'a str,
    pub kind: NotificationKind,
    pub template_id: &'a str,
    pub data: BTreeMap<String, String>,
    pub page: String,
    pub summary: Summary,
    /// For an anonymous action (or a digest of only such): held to the advisor's budget.
    pub anonymous: bool,
    /// `Queued`, or where [`admit_anonymous`] put an anonymous one.
    pub state: NotificationState,
    /// The trace the send continues (the consume's `traceparent`), when traced.
    pub traceparent: Option<String>,
}

/// Store a notification unless one exists for (action, advisor). Returns its id when stored now.
pub async fn enqueue(
    conn: &mut PgConnection,
    n: &NewNotification<'_>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let row = sqlx::query!(
        "INSERT INTO notifications (id, action_id, advisor_id, kind, state, template_id, data, page, summary, anonymous, traceparent)
         VALUES ($1,$2,$3,$4,$9,$5,$6,$7,$8,$10,$11)
         ON CONFLICT (action_id, advisor_id) DO NOTHING RETURNING id",
        n.id,
        n.action_id,
        n.advisor_id,
        n.kind.as_str(),
        n.template_id,
        sqlx::types::Json(&n.data) as _,
        n.page,
        sqlx::types::Json(&n.summary) as _,
        n.state.as_str(),
        n.anonymous,
        n.traceparent
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.id))
}

/// A notification to store, and the log entry that says so.
pub struct Enqueue<'a> {
    pub new: NewNotification<'a>,
    /// The log's event (`queued`, or where [`admit_anonymous`] put it).
    pub event: &'a str,
    pub detail: Option<&'a str>,
}

/// Store notifications (each unless one exists for its (action, advisor)) and log those stored
/// now: two statements for any number.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    rows: &[Enqueue<'_>],
) -> Result<(), sqlx::Error> {
    // The same (action, advisor) twice in a batch (a redelivery beside the original): once.
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<&Enqueue> = rows
        .iter()
        .filter(|r| seen.insert((r.new.action_id, r.new.advisor_id)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    let data = col!(|r| serde_json::to_value(&r.new.data).unwrap_or_default());
    let summary = col!(|r| serde_json::to_value(&r.new.summary).unwrap_or_default());
    let stored: std::collections::HashSet<Uuid> = sqlx::query_scalar!(
        "INSERT INTO notifications (id, action_id, advisor_id, kind, state, template_id, data, page, summary, anonymous, traceparent)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                              $8::text[], $9::jsonb[], $10::bool[], $11::text[])
         ON CONFLICT (action_id, advisor_id) DO NOTHING RETURNING id",
        &col!(|r| r.new.id),
        &col!(|r| r.new.action_id),
        &col!(|r| r.new.advisor_id) as &[&str],
        &col!(|r| r.new.kind.as_str()) as &[&str],
        &col!(|r| r.new.state.as_str()) as &[&str],
        &col!(|r| r.new.template_id) as &[&str],
        &data,
        &col!(|r| r.new.page.as_str()) as &[&str],
        &summary,
        &col!(|r| r.new.anonymous),
        &col!(|r| r.new.traceparent.clone()) as &[Option<String>],
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let logged: Vec<&Enqueue> = rows
        .into_iter()
        .filter(|r| stored.contains(&r.new.id))
        .collect();
    if logged.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO deliveries (notification_id, action_id, advisor_id, event, detail)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])",
        &logged.iter().map(|r| r.new.id).collect::<Vec<_>>(),
        &logged.iter().map(|r| r.new.action_id).collect::<Vec<_>>(),
        &logged.iter().map(|r| r.new.advisor_id).collect::<Vec<_>>() as &[&str],
        &logged.iter().map(|r| r.event).collect::<Vec<_>>() as &[&str],
        logged.iter().map(|r| r.detail).collect::<Vec<_>>() as _,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Sends the advisor's anonymous notifications took in the last hour (queued, in flight or done).
pub async fn anonymous_spent(
    conn: &mut PgConnection,
    advisor_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "spent!" FROM notifications
         WHERE advisor_id = $1 AND anonymous AND state IN ('queued', 'sending', 'sent', 'failed')
           AND created_at > now() - interval '1 hour'"#,
        advisor_id
    )
    .fetch_one(conn)
    .await
}

/// Where a new anonymous notification starts, with the delivery-log event saying why: queued
/// within the advisor's hourly budget; above it waiting, to go out folded into the next digest;
/// dropped once `max_waiting` anonymous ones already wait. Serialised per advisor (the lock
/// `park` and `take_waiting` take), so concurrent consumers cannot overshoot the budget.
pub async fn admit_anonymous(
    conn: &mut PgConnection,
    advisor_id: &str,
    per_hour: i64,
    max_waiting: i64,
) -> Result<(NotificationState, &'static str), sqlx::Error> {
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext($1))", advisor_id)
        .execute(&mut *conn)
        .await?;
    if anonymous_spent(conn, advisor_id).await? < per_hour {
        return Ok((NotificationState::Queued, "queued"));
    }
    let waiting: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "waiting!" FROM notifications WHERE advisor_id = $1 AND anonymous AND state = 'waiting_credit'"#,
        advisor_id
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(if waiting >= max_waiting {
        (NotificationState::Dropped, "dropped_too_many_waiting")
    } else {
        (
            NotificationState::WaitingCredit,
            "folded_anonymous_over_budget",
        )
    })
}

/// A user's decision on a template for an advisor, from a subscription-changed event.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    pub event_id: Uuid,
    pub account: credits::Account<'a>,
    pub status: SubscriptionStatus,
    pub source: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub long_term: bool,
    /// What the decision does to the credits (`NOTIFIER_CREDIT_SOURCE` decides whose accepts
    /// count; a template turned off in WeChat's settings zeroes them).
    pub effect: credits::Effect,
}

/// Apply one subscription decision once (by event id). Returns false for a duplicate.
pub async fn apply_subscription(
    conn: &mut PgConnection,
    d: &Decision<'_>,
) -> Result<bool, sqlx::Error> {
    let a = d.account;
    let fresh = sqlx::query!(
        "INSERT INTO subscription_events (event_id, advisor_id, openid, template_id, status, source, occurred_at)
         VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        d.event_id,
        a.advisor_id,
        a.openid,
        a.template_id,
        d.status.as_str(),
        d.source,
        d.occurred_at
    )
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    if fresh {
        credits::decide(conn, a, d.status, d.long_term, d.effect).await?;
    }
    Ok(fresh)
}

/// Remember a WeChat push item as applied. Returns false when it was already.
pub async fn record_push(
    conn: &mut PgConnection,
    event_id: Uuid,
    kind: &str,
    openid: &str,
    template_id: &str,
    pushed_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "INSERT INTO wechat_push_events (event_id, kind, openid, template_id, pushed_at)
         VALUES ($1,$2,$3,$4,$5) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        event_id,
        kind,
        openid,
        template_id,
        pushed_at
    )
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// The advisors whose notifications go to `openid`.
pub async fn advisors_bound_to(
    conn: &mut PgConnection,
    openid: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT advisor_id FROM advisor_bindings WHERE openid = $1 ORDER BY advisor_id",
        openid
    )
    .fetch_all(conn)
    .await
}

/// The notification WeChat gave `msgid` to, if we still have it.
pub async fn by_msgid(
    conn: &mut PgConnection,
    msgid: &str,
) -> Result<Option<(Uuid, Uuid, String)>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT id, action_id, advisor_id FROM notifications WHERE msgid = $1 LIMIT 1",
        msgid
    )
    .fetch_optional(conn)
    .await?
    .map(|r| (r.id, r.action_id, r.advisor_id)))
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
    /// The trace the send continues.
    pub traceparent: Option<String>,
}

/// What one claim found.
#[derive(Default)]
pub struct Batch {
    /// Sending is paused (45009 or an operator): nothing was claimed.
    pub paused: bool,
    /// Claimed with a credit reserved, in the order to send them (per advisor, oldest first).
    pub claimed: Vec<Claimed>,
    /// Looked at, no credit: now waiting (or dropped).
    pub parked: usize,
}

impl Batch {
    /// More may be due right now: the claim took all it was allowed.
    pub fn full(&self, limit: usize) -> bool {
        self.claimed.len() + self.parked >= limit
    }
}

impl Claimed {
    /// The ledger account its credit was reserved from.
    pub fn account(&self) -> credits::Account<'_> {
        credits::Account {
            advisor_id: &self.advisor_id,
            openid: &self.openid,
            template_id: &self.template_id,
        }
    }
}

/// A due notification, locked for this transaction.
struct Due {
    id: Uuid,
    action_id: Uuid,
    advisor_id: String,
    template_id: String,
    data: Json<BTreeMap<String, String>>,
    page: Option<String>,
    anonymous: bool,
    /// The action's type (none for a digest): quiet hours let urgent ones through.
    action_type: Option<String>,
    traceparent: Option<String>,
}

/// A subscription that can take a send, locked for this transaction.
struct Usable {
    advisor_id: String,
    template_id: String,
    openid: String,
    long_term: bool,
    credits: i32,
    accepts: i32,
    /// Order of preference within (advisor, template): long-term first, then most recently
    /// updated (a reservation updates it), then by openid.
    rank: i64,
}

/// When an advisor's notifications may go out: quiet hours (the deployment's, or the advisor's
/// own that staff set) and the hourly cap on single messages.
#[derive(Debug, Clone, Copy)]
pub struct SendPolicy<'a> {
    /// `NOTIFIER_QUIET_HOURS`, for advisors without their own setting.
    pub quiet_hours: Option<QuietHours>,
    /// Action types sent even in quiet hours.
    pub urgent: &'a [String],
    pub now: DateTime<Utc>,
    /// `NOTIFIER_MAX_SINGLES_PER_HOUR` (0: no cap).
    pub max_singles_per_hour: i64,
}

impl SendPolicy<'_> {
    /// Why a notification of `advisor` (of `action_type`, none for a digest) must wait now, if
    /// it must: the advisor's quiet hours (urgent action types excepted), or their hourly cap
    /// on single messages reached (digests excepted).
    fn hold(
        &self,
        action_type: Option<&str>,
        window: Option<QuietHours>,
        singles: i64,
    ) -> Option<&'static str> {
        let urgent = action_type.is_some_and(|t| self.urgent.iter().any(|u| u == t));
        if window.is_some_and(|w| w.contains(self.now)) && !urgent {
            return Some("held_for_quiet_hours");
        }
        let capped = self.max_singles_per_hour > 0 && singles >= self.max_singles_per_hour;
        (capped && action_type.is_some()).then_some("held_for_hourly_cap")
    }
}

/// Each advisor's quiet hours: their own setting where staff made one, else the deployment's.
pub async fn quiet_hours_of(
    conn: &mut PgConnection,
    advisors: &[&str],
    deployment: Option<QuietHours>,
) -> Result<HashMap<String, Option<QuietHours>>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT advisor_id, quiet_hours FROM advisor_settings WHERE advisor_id = ANY($1) AND quiet_hours IS NOT NULL",
        advisors as &[&str]
    )
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<String, Option<QuietHours>> = advisors
        .iter()
        .map(|a| (a.to_string(), deployment))
        .collect();
    for r in rows {
        let own = match r.quiet_hours.as_deref() {
            Some("off") | None => None,
            Some(w) => QuietHours::parse(w).ok(),
        };
        out.insert(r.advisor_id, own);
    }
    Ok(out)
}

/// Single messages (not digests) claimed for each advisor in the last hour.
pub async fn singles_last_hour(
    conn: &mut PgConnection,
    advisors: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT advisor_id, count(*) AS "n!" FROM notifications
         WHERE advisor_id = ANY($1) AND kind = 'action' AND state IN ('sending', 'sent')
           AND claimed_at > now() - interval '1 hour'
         GROUP BY advisor_id"#,
        advisors as &[&str]
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.advisor_id, r.n)).collect())
}

/// Why `advisor`'s waiting notifications must keep waiting now, if they must (the sweep's
/// side of [`SendPolicy`]): released, they would only be held again.
pub async fn release_held(
    conn: &mut PgConnection,
    advisor_id: &str,
    p: &SendPolicy<'_>,
) -> Result<Option<&'static str>, sqlx::Error> {
    let window = quiet_hours_of(conn, &[advisor_id], p.quiet_hours).await?;
    let singles = match p.max_singles_per_hour {
        0 => 0,
        _ => singles_last_hour(conn, &[advisor_id])
            .await?
            .get(advisor_id)
            .copied()
            .unwrap_or(0),
    };
    // As a digest would be judged: a digest is what the release makes of several; a lone
    // notification goes as a single and is judged as one.
    let window = window.get(advisor_id).copied().flatten();
    Ok(p.hold(None, window, 0).or(p.hold(Some(""), None, singles)))
}

/// Split due notifications into those that may go now and those held by the policy.
async fn apply_policy(
    conn: &mut PgConnection,
    due: Vec<Due>,
    p: &SendPolicy<'_>,
) -> Result<(Vec<Due>, Vec<(Due, &'static str)>), sqlx::Error> {
    let advisors: Vec<&str> = due.iter().map(|d| d.advisor_id.as_str()).collect();
    let windows = quiet_hours_of(conn, &advisors, p.quiet_hours).await?;
    let singles = match p.max_singles_per_hour {
        0 => HashMap::new(),
        _ => singles_last_hour(conn, &advisors).await?,
    };
    let mut go = Vec::new();
    let mut held = Vec::new();
    for d in due {
        let window = windows.get(&d.advisor_id).copied().flatten();
        let sent = singles.get(&d.advisor_id).copied().unwrap_or(0);
        match p.hold(d.action_type.as_deref(), window, sent) {
            Some(why) => held.push((d, why)),
            None => go.push(d),
        }
    }
    Ok((go, held))
}

/// How a claim chooses its notifications.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits<'a> {
    /// Quiet hours and the hourly cap: what they hold waits.
    pub policy: SendPolicy<'a>,
    /// Most notifications in this claim.
    pub limit: usize,
    /// Most notifications of one advisor in this claim: one advisor's backlog does not hold up
    /// the others'.
    pub per_advisor: usize,
    /// An advisor with a send claimed less than this long ago is skipped: their messages go out
    /// one after another, in order. (An older claim is presumed hung and does not block them.)
    pub in_flight_hold: std::time::Duration,
    /// `NOTIFIER_MAX_WAITING`.
    pub max_waiting: i64,
}

/// Claim due notifications and reserve a credit for each, in one transaction. Those whose
/// advisor has no usable credit are parked (waiting for one, or dropped).
pub async fn claim(conn: &mut PgConnection, l: ClaimLimits<'_>) -> Result<Batch, sqlx::Error> {
    // First, outside a transaction, whether there is anything to do: most claims at a low rate
    // follow a recorded send and find nothing, and a transaction to find nothing costs Postgres
    // four statements (BEGIN, the pause, the scan, ROLLBACK) where this costs one. A pause that
    // begins right after this check is seen by the next claim, as it was before (the pause was
    // read in a statement of its own then too).
    let state = sqlx::query!(
        r#"SELECT (SELECT paused_until > now() FROM control WHERE key = 'sending') AS paused,
                  EXISTS (SELECT 1 FROM notifications WHERE state = 'queued' AND next_attempt_at <= now()) AS "due!""#
    )
    .fetch_one(&mut *conn)
    .await?;
    if state.paused == Some(true) {
        return Ok(Batch {
            paused: true,
            ..Batch::default()
        });
    }
    if !state.due {
        return Ok(Batch::default());
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // Candidates: among the oldest due notifications of advisors with no send in flight (an
    // index scan in due order that stops at `$1 * 8` rows), at most `per_advisor` of each
    // advisor. Under a backlog most rows at the head of the queue belong to advisors with a send
    // in flight, so the scan passes many of them: those advisors are listed once per claim, as
    // a probe per row (`NOT EXISTS`) cost Postgres more than anything else while a backlog
    // drained (issue 14). Then
    // lock what no other claim holds; a candidate another process claimed meanwhile no longer
    // matches `state = 'queued'` and is passed over.
    // `= ANY(ARRAY(…))` rather than `IN (…)`: the planner then always looks the candidates up
    // by primary key; with `IN` and a freshly filled table (statistics not yet gathered) it
    // chose a nested loop that took 200 ms per claim.
    let due = sqlx::query_as!(
        Due,
        r#"SELECT id, action_id, advisor_id, template_id, data AS "data: Json<BTreeMap<String, String>>", page, anonymous,
                summary->>'actionType' AS action_type, traceparent
         FROM notifications
         WHERE id = ANY(ARRAY(
             SELECT id FROM (
                 SELECT id, next_attempt_at,
                        row_number() OVER (PARTITION BY advisor_id ORDER BY next_attempt_at, created_at, id) AS nth
                 FROM (SELECT id, advisor_id, next_attempt_at, created_at FROM notifications q
                       WHERE state = 'queued' AND next_attempt_at <= now()
                         AND advisor_id <> ALL(ARRAY(SELECT DISTINCT advisor_id FROM notifications s WHERE s.state = 'sending'
                                                        AND s.claimed_at > now() - make_interval(secs => $3)))
                       ORDER BY next_attempt_at LIMIT $1 * 8) q
             ) c WHERE nth <= $2 ORDER BY next_attempt_at LIMIT $1 * 4))
           AND state = 'queued' AND next_attempt_at <= now()
         ORDER BY next_attempt_at, created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"#,
        i32::try_from(l.limit).unwrap_or(i32::MAX),
        i64::try_from(l.per_advisor).unwrap_or(i64::MAX),
        l.in_flight_hold.as_secs_f64()
    )
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(Batch::default());
    }
    // Quiet hours and the hourly cap: what they hold waits (like a notification without
    // credit) and is released, as one digest, when the window ends or the cap frees.
    let (due, held) = apply_policy(&mut tx, due, &l.policy).await?;
    let subs = usable_subscriptions(&mut tx, &due).await?;
    let (claimed, no_credit) = assign_credits(due, subs);
    let mut batch = Batch {
        claimed,
        ..Batch::default()
    };
    reserve_and_mark_sending(&mut tx, &mut batch.claimed).await?;
    // Parking takes a per-advisor lock: always in advisor order, so two claims cannot deadlock.
    let mut parked: Vec<(&Due, Option<&str>)> = no_credit.iter().map(|d| (d, None)).collect();
    parked.extend(held.iter().map(|(d, why)| (d, Some(*why))));
    parked.sort_by(|a, b| a.0.advisor_id.cmp(&b.0.advisor_id));
    for (d, why) in &parked {
        park(&mut tx, d, l.max_waiting, *why).await?;
    }
    batch.parked = parked.len();
    tx.commit().await?;
    Ok(batch)
}

/// Give each due notification, in order, a credit from its advisor's best usable subscription
/// (as a claim one at a time would: a reservation makes that subscription the most recently
/// updated). Returns the claimed ones and those left without a credit.
fn assign_credits(due: Vec<Due>, mut subs: Vec<Usable>) -> (Vec<Claimed>, Vec<Due>) {
    let mut claimed = Vec::new();
    let mut no_credit = Vec::new();
    for d in due {
        let best = subs
            .iter_mut()
            .filter(|s| s.advisor_id == d.advisor_id && s.template_id == d.template_id)
            .filter(|s| s.long_term || s.credits > 0)
            .min_by_key(|s| s.rank);
        let Some(sub) = best else {
            no_credit.push(d);
            continue;
        };
        if !sub.long_term {
            sub.credits -= 1;
            sub.rank = -1;
        }
        claimed.push(Claimed {
            id: d.id,
            action_id: d.action_id,
            advisor_id: d.advisor_id,
            template_id: d.template_id,
            data: d.data.0,
            page: d.page,
            openid: sub.openid.clone(),
            long_term: sub.long_term,
            attempts: 0,
            accepts_at_claim: sub.accepts,
            traceparent: d.traceparent,
        });
    }
    (claimed, no_credit)
}

/// The subscriptions that could carry the due notifications, locked in key order (so that
/// concurrent claims cannot deadlock), each with its rank among those of its advisor and
/// template.
async fn usable_subscriptions(
    conn: &mut PgConnection,
    due: &[Due],
) -> Result<Vec<Usable>, sqlx::Error> {
    let advisors: Vec<&str> = due.iter().map(|d| d.advisor_id.as_str()).collect();
    let templates: Vec<&str> = due.iter().map(|d| d.template_id.as_str()).collect();
    let rows = sqlx::query!(
        r#"SELECT advisor_id, template_id, openid, long_term, credits, accepts, updated_at
         FROM subscriptions
         WHERE (advisor_id, template_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
           AND (credits > 0 OR long_term) AND last_status <> 'ban'
           AND EXISTS (SELECT 1 FROM advisor_bindings b WHERE b.advisor_id = subscriptions.advisor_id AND b.openid = subscriptions.openid)
         ORDER BY advisor_id, openid, template_id FOR UPDATE"#,
        &advisors as &[&str],
        &templates as &[&str]
    )
    .fetch_all(conn)
    .await?;
    let mut subs: Vec<(Usable, DateTime<Utc>)> = rows
        .into_iter()
        .map(|r| {
            let u = Usable {
                advisor_id: r.advisor_id,
                template_id: r.template_id,
                openid: r.openid,
                long_term: r.long_term,
                credits: r.credits,
                accepts: r.accepts,
                rank: 0,
            };
            (u, r.updated_at)
        })
        .collect();
    subs.sort_by(|(a, at), (b, bt)| {
        (b.long_term, bt)
            .cmp(&(a.long_term, at))
            .then_with(|| a.openid.cmp(&b.openid))
    });
    Ok(subs
        .into_iter()
        .enumerate()
        .map(|(i, (mut u, _))| {
            u.rank = i64::try_from(i).unwrap_or(i64::MAX);
            u
        })
        .collect())
}

/// Reserve one credit for each claimed notification (none for long-term subscriptions) and
/// mark them `sending`, each attempt numbered.
async fn reserve_and_mark_sending(
    conn: &mut PgConnection,
    claimed: &mut [Claimed],
) -> Result<(), sqlx::Error> {
    if claimed.is_empty() {
        return Ok(());
    }
    let accounts: Vec<_> = claimed.iter().map(Claimed::account).collect();
    // Long-term subscriptions reserve nothing: `adjust_many` leaves them alone.
    credits::adjust_many(conn, &accounts, -1).await?;
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.id).collect();
    let openids: Vec<&str> = claimed.iter().map(|c| c.openid.as_str()).collect();
    let rows = sqlx::query!(
        "UPDATE notifications n SET state = 'sending', openid = u.openid, claimed_at = clock_timestamp(),
                attempts = n.attempts + 1, updated_at = now()
         FROM unnest($1::uuid[], $2::text[]) AS u(id, openid) WHERE n.id = u.id
         RETURNING n.id, n.attempts",
        &ids,
        &openids as &[&str]
    )
    .fetch_all(conn)
    .await?;
    let attempts: std::collections::HashMap<Uuid, i32> =
        rows.into_iter().map(|r| (r.id, r.attempts)).collect();
    for c in claimed.iter_mut() {
        c.attempts = attempts.get(&c.id).copied().unwrap_or(1);
    }
    Ok(())
}

/// No credit for a due notification (or, with `why`, another reason to wait): it waits, or is
/// dropped when too many already wait for this advisor.
async fn park(
    conn: &mut PgConnection,
    due: &Due,
    max_waiting: i64,
    why: Option<&str>,
) -> Result<(), sqlx::Error> {
    // Parking is serialised per advisor (the lock `take_waiting` also takes), or concurrent
    // workers would all see room below `max_waiting` and overshoot it.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &due.advisor_id
    )
    .execute(&mut *conn)
    .await?;
    let known: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions WHERE advisor_id = $1 AND template_id = $2) AS "known!""#,
        &due.advisor_id,
        &due.template_id
    )
    .fetch_one(&mut *conn)
    .await?;
    let waiting: i64 = sqlx::query_scalar!(
        // Anonymous and verified notifications wait in separate rooms: a flood of the first
        // never takes the room of the second.
        r#"SELECT count(*) AS "waiting!" FROM notifications WHERE advisor_id = $1 AND state = 'waiting_credit' AND anonymous = $2"#,
        &due.advisor_id,
        due.anonymous
    )
    .fetch_one(&mut *conn)
    .await?;
    let (state, event) = if waiting >= max_waiting {
        (NotificationState::Dropped, "dropped_too_many_waiting")
    } else if let Some(why) = why {
        (NotificationState::WaitingCredit, why)
    } else if known {
        (NotificationState::WaitingCredit, "waiting_for_credit")
    } else {
        (NotificationState::WaitingCredit, "no_subscription")
    };
    sqlx::query!(
        "UPDATE notifications SET state = $2, updated_at = now() WHERE id = $1",
        due.id,
        state.as_str()
    )
    .execute(&mut *conn)
    .await?;
    LogEntry::about(due.id, due.action_id, &due.advisor_id, event)
        .write(conn)
        .await
}

/// A notification as an attempt's answer finds it.
pub struct Current {
    pub state: NotificationState,
    pub attempts: i32,
    pub msgid: Option<String>,
    pub retrying_since: Option<DateTime<Utc>>,
}

impl Current {
    /// The attempt numbered `attempts` still owns it: still `sending`, not claimed again since.
    pub fn owned_by(&self, attempts: i32) -> bool {
        self.state == NotificationState::Sending && self.attempts == attempts
    }
}

/// Lock the notifications whose attempts are being recorded (in id order: two recorders cannot
/// deadlock) and read them.
pub async fn lock_for_recording(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Current>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT id, state AS "state: NotificationState", attempts, msgid, retrying_since
         FROM notifications WHERE id = ANY($1) ORDER BY id FOR UPDATE"#,
        ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let current = Current {
                state: r.state,
                attempts: r.attempts,
                msgid: r.msgid,
                retrying_since: r.retrying_since,
            };
            (r.id, current)
        })
        .collect())
}

/// Mark sent the notifications WeChat accepted (id, msgid), and log each.
pub async fn mark_sent(
    conn: &mut PgConnection,
    sent: &[(&Claimed, &str)],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = sent.iter().map(|(c, _)| c.id).collect();
    let msgids: Vec<&str> = sent.iter().map(|(_, m)| *m).collect();
    sqlx::query!(
        "UPDATE notifications n SET state = 'sent', msgid = u.msgid, errcode = NULL, errmsg = NULL, updated_at = now()
         FROM unnest($1::uuid[], $2::text[]) AS u(id, msgid) WHERE n.id = u.id",
        &ids,
        &msgids as &[&str]
    )
    .execute(&mut *conn)
    .await?;
    let actions: Vec<Uuid> = sent.iter().map(|(c, _)| c.action_id).collect();
    let advisors: Vec<&str> = sent.iter().map(|(c, _)| c.advisor_id.as_str()).collect();
    sqlx::query!(
        "INSERT INTO deliveries (notification_id, action_id, advisor_id, event, errcode, msgid)
         SELECT id, action_id, advisor_id, 'sent', 0, msgid
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS u(id, action_id, advisor_id, msgid)",
        &ids,
        &actions,
        &advisors as &[&str],
        &msgids as &[&str]
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Claimed notifications that were never sent (shutdown, a pause) go back to the queue as they
/// were: their credit back, the attempt not counted, due at once.
pub async fn hand_back(
    conn: &mut PgConnection,
    unsent: &[&Claimed],
    why: &str,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = unsent.iter().map(|c| c.id).collect();
    let attempts: Vec<i32> = unsent.iter().map(|c| c.attempts).collect();
    let back = sqlx::query_scalar!(
        "UPDATE notifications n SET state = 'queued', attempts = n.attempts - 1, claimed_at = NULL, updated_at = now()
         FROM unnest($1::uuid[], $2::int4[]) AS u(id, attempts)
         WHERE n.id = u.id AND n.state = 'sending' AND n.attempts = u.attempts RETURNING n.id",
        &ids,
        &attempts
    )
    .fetch_all(&mut *conn)
    .await?;
    // Only those this attempt still owned (a re-queued one gave its credit back already).
    let owned: Vec<&Claimed> = unsent
        .iter()
        .copied()
        .filter(|c| back.contains(&c.id))
        .collect();
    let accounts: Vec<_> = owned.iter().map(|c| c.account()).collect();
    credits::adjust_many(conn, &accounts, 1).await?;
    for c in owned {
        LogEntry::about(c.id, c.action_id, &c.advisor_id, "handed_back")
            .detail(why)
            .write(conn)
            .await?;
    }
    Ok(())
}

/// Keep the msgid of a delivery without changing the notification's state.
pub async fn note_msgid(conn: &mut PgConnection, id: Uuid, msgid: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET msgid = $2, updated_at = now() WHERE id = $1",
        id,
        msgid
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What an attempt's end changes besides the state (`None` keeps the column as it is, except
/// the error, which is the attempt's).
#[derive(Debug, Default, Clone, Copy)]
pub struct StateChange<'a> {
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub msgid: Option<&'a str>,
    pub errcode: Option<i64>,
    pub errmsg: Option<&'a str>,
    /// A transient failure: start the retry budget's clock unless it runs already.
    pub retrying: bool,
}

pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: NotificationState,
    c: StateChange<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET state = $2, next_attempt_at = COALESCE($3, next_attempt_at), msgid = COALESCE($4, msgid),
            errcode = $5, errmsg = $6, updated_at = now(),
            retrying_since = CASE WHEN $7 THEN COALESCE(retrying_since, now()) ELSE retrying_since END
         WHERE id = $1",
        id,
        state.as_str(),
        c.next_attempt_at,
        c.msgid,
        c.errcode,
        c.errmsg,
        c.retrying
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn pause_until(
    conn: &mut PgConnection,
    until: Option<DateTime<Utc>>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO control (key, paused_until, reason) VALUES ('sending', $1, $2)
         ON CONFLICT (key) DO UPDATE SET paused_until = $1, reason = $2, updated_at = now()",
        until,
        reason
    )
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
    max_crashes: i32,
) -> Result<u64, sqlx::Error> {
    // One abandoned `max_crashes` times is failed rather than re-queued: whatever it does to
    // the process sending it, it must not do it forever.
    let rows = sqlx::query!(
        "UPDATE notifications SET
            crashes = crashes + 1,
            state = CASE WHEN crashes + 1 >= $2 THEN 'failed' ELSE 'queued' END,
            errmsg = CASE WHEN crashes + 1 >= $2 THEN 'abandoned by a crashed or hung process on every attempt' ELSE errmsg END,
            next_attempt_at = now(), updated_at = now()
         WHERE state = 'sending' AND claimed_at < now() - make_interval(secs => $1)
         RETURNING id, action_id, advisor_id, openid, template_id, state AS \"state: NotificationState\"",
        older_than.as_secs_f64(),
        max_crashes
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let account = credits::Account {
            advisor_id: &r.advisor_id,
            openid: r.openid.as_deref().unwrap_or_default(),
            template_id: &r.template_id,
        };
        credits::adjust(conn, account, 1).await?;
        let failed = r.state == NotificationState::Failed;
        let event = if failed {
            "failed_after_crashes"
        } else {
            "requeued_after_crash"
        };
        LogEntry::about(r.id, r.action_id, &r.advisor_id, event)
            .detail("outcome of the last attempt unknown")
            .write(conn)
            .await?;
    }
    Ok(rows.len() as u64)
}

/// Advisors that have notifications waiting and a usable credit now.
pub async fn advisors_to_release(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT DISTINCT n.advisor_id, n.template_id FROM notifications n
         JOIN subscriptions s ON s.advisor_id = n.advisor_id AND s.template_id = n.template_id
         JOIN advisor_bindings b ON b.advisor_id = s.advisor_id AND b.openid = s.openid
         WHERE n.state = 'waiting_credit' AND (s.credits > 0 OR s.long_term) AND s.last_status <> 'ban'"
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.advisor_id, r.template_id))
        .collect())
}

/// Queue a waiting notification again, due as of its creation: it keeps its place in line
/// among the advisor's notifications (ahead of a digest made now).
pub async fn requeue_waiting(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET state = 'queued', next_attempt_at = created_at, updated_at = now()
         WHERE id = $1 AND state = 'waiting_credit'",
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The credits an advisor's notifications of a template can use now (bound, not banned);
/// `None` when a long-term subscription makes them unlimited.
pub async fn usable_credits(
    conn: &mut PgConnection,
    advisor_id: &str,
    template_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT COALESCE(sum(credits), 0)::int8 AS "credits!", COALESCE(bool_or(long_term), false) AS "long_term!"
         FROM subscriptions s
         WHERE advisor_id = $1 AND template_id = $2 AND last_status <> 'ban'
           AND EXISTS (SELECT 1 FROM advisor_bindings b WHERE b.advisor_id = s.advisor_id AND b.openid = s.openid)"#,
        advisor_id,
        template_id
    )
    .fetch_one(conn)
    .await?;
    Ok((!r.long_term).then_some(r.credits))
}

/// A notification waiting for credit.
#[derive(Clone)]
pub struct Waiting {
    pub id: Uuid,
    pub action_id: Uuid,
    pub anonymous: bool,
    /// An action, or a digest that found no credit either.
    pub kind: NotificationKind,
    pub summary: Json<Summary>,
}

/// Mark the waiting notifications `ids` digested into `digest_id`, and move the members of any
/// digest among them there too. Returns the moved members (id, action id).
pub async fn fold_into_digest(
    conn: &mut PgConnection,
    ids: &[Uuid],
    digest_id: Uuid,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET state = 'digested', digest_id = $2, updated_at = now() WHERE id = ANY($1)",
        ids,
        digest_id
    )
        .execute(&mut *conn)
        .await?;
    let moved = sqlx::query!(
        // `IS NOT NULL` lets the planner use the partial index (`= ANY` of a parameter alone
        // does not prove it).
        "UPDATE notifications SET digest_id = $2, updated_at = now() WHERE digest_id = ANY($1) AND digest_id IS NOT NULL
         RETURNING id, action_id",
        ids,
        digest_id
    )
    .fetch_all(conn)
    .await?;
    Ok(moved.into_iter().map(|r| (r.id, r.action_id)).collect())
}

/// The waiting notifications of an advisor, oldest first, locked (serialised per advisor).
pub async fn take_waiting(
    conn: &mut PgConnection,
    advisor_id: &str,
    template_id: &str,
) -> Result<Vec<Waiting>, sqlx::Error> {
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext($1))", advisor_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query_as!(
        Waiting,
        r#"SELECT id, action_id, anonymous, kind AS "kind: NotificationKind", summary AS "summary: Json<Summary>"
         FROM notifications WHERE advisor_id = $1 AND template_id = $2 AND state = 'waiting_credit'
         ORDER BY created_at, id FOR UPDATE"#,
        advisor_id,
        template_id
    )
    .fetch_all(conn)
    .await
}

/// A notification row as read; its JSON columns become the contract's types in [`NotificationView`].
struct ViewRow {
    id: Uuid,
    action_id: Uuid,
    advisor_id: String,
    kind: NotificationKind,
    state: NotificationState,
    template_id: String,
    openid: Option<String>,
    attempts: i32,
    msgid: Option<String>,
    errcode: Option<i64>,
    errmsg: Option<String>,
    digest_id: Option<Uuid>,
    data: Json<BTreeMap<String, String>>,
    page: Option<String>,
    summary: Json<Summary>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ViewRow> for NotificationView {
    fn from(r: ViewRow) -> Self {
        NotificationView {
            id: r.id,
            action_id: r.action_id,
            advisor_id: r.advisor_id,
            kind: r.kind,
            state: r.state,
            template_id: r.template_id,
            openid: r.openid,
            attempts: r.attempts,
            msgid: r.msgid,
            errcode: r.errcode,
            errmsg: r.errmsg,
            digest_id: r.digest_id,
            data: r.data.0,
            page: r.page,
            summary: r.summary.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

// The four queries below select the same columns (each macro needs its query as one literal).

/// Notifications in a state, of one advisor or all, oldest first (operators' lists).
pub async fn by_state(
    conn: &mut PgConnection,
    state: NotificationState,
    advisor_id: Option<&str>,
    limit: i64,
) -> Result<Vec<NotificationView>, sqlx::Error> {
    let rows = sqlx::query_as!(
        ViewRow,
        r#"SELECT id, action_id, advisor_id, kind AS "kind: NotificationKind", state AS "state: NotificationState",
                template_id, openid, attempts, msgid, errcode, errmsg, digest_id,
                data AS "data: Json<BTreeMap<String, String>>", page, summary AS "summary: Json<Summary>",
                created_at, updated_at
         FROM notifications WHERE state = $1 AND ($2::text IS NULL OR advisor_id = $2)
         ORDER BY updated_at, id LIMIT $3"#,
        state.as_str(),
        advisor_id,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Notifications of an action, with the digest that carried them if any, and the log.
pub async fn journey(
    conn: &mut PgConnection,
    action_id: Uuid,
) -> Result<(Vec<NotificationView>, Vec<DeliveryView>), sqlx::Error> {
    let notes = sqlx::query_as!(
        ViewRow,
        r#"SELECT id, action_id, advisor_id, kind AS "kind: NotificationKind", state AS "state: NotificationState",
                template_id, openid, attempts, msgid, errcode, errmsg, digest_id,
                data AS "data: Json<BTreeMap<String, String>>", page, summary AS "summary: Json<Summary>",
                created_at, updated_at
         FROM notifications WHERE action_id = $1
            OR id IN (SELECT digest_id FROM notifications WHERE action_id = $1 AND digest_id IS NOT NULL)
         ORDER BY created_at, id"#,
        action_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let notes: Vec<NotificationView> = notes.into_iter().map(Into::into).collect();
    let ids: Vec<Uuid> = notes.iter().map(|n| n.id).collect();
    let log = sqlx::query_as!(
        DeliveryView,
        "SELECT event, errcode, errmsg, msgid, detail, at FROM deliveries
         WHERE action_id = $1 OR notification_id = ANY($2) ORDER BY id",
        action_id,
        &ids
    )
    .fetch_all(conn)
    .await?;
    Ok((notes, log))
}

/// The digest notification itself.
pub async fn digest_row(
    conn: &mut PgConnection,
    digest_id: Uuid,
) -> Result<Option<NotificationView>, sqlx::Error> {
    let row = sqlx::query_as!(
        ViewRow,
        r#"SELECT id, action_id, advisor_id, kind AS "kind: NotificationKind", state AS "state: NotificationState",
                template_id, openid, attempts, msgid, errcode, errmsg, digest_id,
                data AS "data: Json<BTreeMap<String, String>>", page, summary AS "summary: Json<Summary>",
                created_at, updated_at
         FROM notifications WHERE id = $1 AND kind = 'digest'"#,
        digest_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Into::into))
}

/// The customer actions a digest stands for (the page a digest opens lists them), including
/// those of an earlier digest it folded in.
pub async fn digest_members(
    conn: &mut PgConnection,
    digest_id: Uuid,
) -> Result<Vec<NotificationView>, sqlx::Error> {
    let rows = sqlx::query_as!(
        ViewRow,
        r#"SELECT id, action_id, advisor_id, kind AS "kind: NotificationKind", state AS "state: NotificationState",
                template_id, openid, attempts, msgid, errcode, errmsg, digest_id,
                data AS "data: Json<BTreeMap<String, String>>", page, summary AS "summary: Json<Summary>",
                created_at, updated_at
         FROM notifications WHERE digest_id = $1 AND kind = 'action' ORDER BY created_at, id"#,
        digest_id
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// What the notifier's gauges show: notifications by live state, the age of the oldest one due
/// and not sent, and whether sending is paused.
pub struct QueueGauges {
    pub by_state: Vec<(String, i64)>,
    pub oldest_due_seconds: i64,
    pub paused: bool,
}

/// The states [`queue_gauges`] counts: the live ones (sent, failed, digested and dropped rows
/// are history, not queue).
pub const LIVE_STATES: [NotificationState; 3] = [
    NotificationState::Queued,
    NotificationState::Sending,
    NotificationState::WaitingCredit,
];

/// Read [`QueueGauges`] for the [`LIVE_STATES`].
pub async fn queue_gauges(conn: &mut PgConnection) -> Result<QueueGauges, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT state AS "state!", count(*) AS "n!" FROM notifications
         WHERE state IN ('queued', 'sending', 'waiting_credit') GROUP BY state"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let oldest: Option<f64> = sqlx::query_scalar!(
        "SELECT extract(epoch FROM now() - min(next_attempt_at))::float8 FROM notifications
         WHERE state = 'queued' AND next_attempt_at <= now()"
    )
    .fetch_one(&mut *conn)
    .await?;
    let paused: Option<bool> =
        sqlx::query_scalar!("SELECT paused_until > now() FROM control WHERE key = 'sending'")
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    Ok(QueueGauges {
        by_state: rows.into_iter().map(|r| (r.state, r.n)).collect(),
        oldest_due_seconds: oldest.map_or(0, |s| s.max(0.0) as i64),
        paused: paused == Some(true),
    })
}
