//! Everything the leads service reads and writes in its schema. Small functions over a
//! connection or transaction, so the consumer decides where transactions begin and end.

use ande_contracts::ClientJson;
use ande_events::{from_timestamp, ActionRecorded};
use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::LeadsConfig;
use crate::phone;

pub use ande_contracts::leads::{Lead, StoredAction, StoredOutcome};
pub use ande_contracts::vocab::{ActionType, OutcomeKind};

/// The remark of a lead created by an action, naming the action as the original did.
pub fn remark_for(action_type: &str) -> String {
    format!(
        "通过微信小程序{}自动创建",
        ActionType::from(action_type).label()
    )
}

/// Postgres text cannot hold NUL; nothing legitimate contains it.
fn clean(s: &str) -> Option<String> {
    let s: String = s.chars().filter(|c| *c != '\0').collect();
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn json_or_raw(text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::json!({});
    }
    serde_json::from_str(&text.replace("\\u0000", ""))
        .unwrap_or_else(|_| serde_json::json!({ "_raw": text.replace('\0', "") }))
}

pub async fn load_outcome(
    conn: &mut PgConnection,
    action_id: Uuid,
) -> Result<Option<StoredOutcome>, sqlx::Error> {
    // The same columns as in `record_batch` (the macro needs the whole query as one literal).
    sqlx::query_as!(
        StoredOutcome,
        r#"SELECT a.action_id, a.advisor_id, a.customer_id, a.action_type AS "action_type: ActionType",
            a.outcome_kind AS "kind: OutcomeKind", a.no_lead_reason, a.lead_id, l.customer_code AS "customer_code?",
            a.is_new_customer, COALESCE(l.name, a.customer_name) AS "customer_name?",
            COALESCE(l.phone, a.phone_normalized) AS "phone?", a.occurred_at, a.stored_at, a.outcome_event_id,
            a.outcome_published_at IS NOT NULL AS "published!", a.openid IS NULL AS "anonymous!", l.owner_advisor_id AS "lead_owner?",
            ARRAY(SELECT e.action_id FROM actions e WHERE e.linked_by = a.action_id ORDER BY e.occurred_at, e.action_id) AS "linked_actions!",
            a.linked_advisors AS "linked_advisors!"
         FROM actions a LEFT JOIN leads l ON l.id = a.lead_id WHERE a.action_id = $1"#,
        action_id
    )
    .fetch_optional(conn)
    .await
}

pub async fn mark_published(
    conn: &mut PgConnection,
    action_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE actions SET outcome_published_at = now() WHERE action_id = ANY($1) AND outcome_published_at IS NULL",
        action_ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn lead_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<Lead>, sqlx::Error> {
    sqlx::query_as!(
        Lead,
        "SELECT id, customer_code, phone, name, openid, owner_advisor_id, created_by, source, status, level, remark,
                touch_count, last_touch_at, created_at
         FROM leads WHERE id = $1",
        id
    )
    .fetch_optional(conn)
    .await
}

pub async fn lead_by_phone(
    conn: &mut PgConnection,
    phone: &str,
) -> Result<Option<Lead>, sqlx::Error> {
    sqlx::query_as!(
        Lead,
        "SELECT id, customer_code, phone, name, openid, owner_advisor_id, created_by, source, status, level, remark,
                touch_count, last_touch_at, created_at
         FROM leads WHERE phone = $1",
        phone
    )
    .fetch_optional(conn)
    .await
}

/// A page of leads, newest first, optionally for one advisor and created in `[since, until)`
/// (the next page: `until` = the `created_at` of the last lead of this one).
pub async fn list_leads(
    conn: &mut PgConnection,
    advisor_id: Option<&str>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Lead>, sqlx::Error> {
    sqlx::query_as!(
        Lead,
        "SELECT id, customer_code, phone, name, openid, owner_advisor_id, created_by, source, status, level, remark,
                touch_count, last_touch_at, created_at
         FROM leads
         WHERE ($1::text IS NULL OR owner_advisor_id = $1)
           AND ($2::timestamptz IS NULL OR created_at >= $2)
           AND ($3::timestamptz IS NULL OR created_at < $3)
         ORDER BY created_at DESC, id DESC LIMIT $4",
        advisor_id,
        since,
        until,
        limit
    )
    .fetch_all(conn)
    .await
}

/// The stored action with every field, for the journey view.
pub async fn action_detail(
    conn: &mut PgConnection,
    action_id: Uuid,
) -> Result<Option<StoredAction>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT action_id, event_id, stream_seq, customer_id, advisor_id, action_type AS "action_type: ActionType",
                action_data AS "action_data: Json<ClientJson>", extra AS "extra: Json<ClientJson>",
                customer_name, customer_phone, openid, client_ip, user_agent, occurred_at, stored_at, outcome_published_at
         FROM actions WHERE action_id = $1"#,
        action_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| StoredAction {
        action_id: r.action_id,
        event_id: r.event_id,
        stream_seq: r.stream_seq,
        customer_id: r.customer_id,
        advisor_id: r.advisor_id,
        action_type: r.action_type,
        action_data: r.action_data.0,
        extra: r.extra.0,
        customer_name: r.customer_name,
        customer_phone: r.customer_phone,
        openid: r.openid,
        client_ip: r.client_ip,
        user_agent: r.user_agent,
        occurred_at: r.occurred_at,
        stored_at: r.stored_at,
        outcome_published_at: r.outcome_published_at,
    }))
}

/// An action checked and ready to store.
struct Prepared {
    action_id: Uuid,
    event_id: Uuid,
    seq: i64,
    customer_id: String,
    advisor_id: String,
    action_type: String,
    data: serde_json::Value,
    extra: serde_json::Value,
    name: Option<String>,
    raw_phone: Option<String>,
    phone: Result<String, phone::NoLead>,
    openid: Option<String>,
    ip: Option<String>,
    ua: Option<String>,
    occurred_at: DateTime<Utc>,
}

fn prepare(ev: &ActionRecorded, stream_seq: u64) -> Result<Prepared, String> {
    let meta = ev.meta.as_ref().ok_or("no envelope")?;
    let action_id = Uuid::parse_str(&ev.action_id)
        .map_err(|_| format!("invalid event: action_id {:?} is not a UUID", ev.action_id))?;
    let event_id = Uuid::parse_str(&meta.event_id)
        .map_err(|_| "invalid event: event_id is not a UUID".to_string())?;
    let need =
        |v: &str, what: &str| clean(v).ok_or_else(|| format!("invalid event: {what} is empty"));
    let raw_phone = clean(&ev.customer_phone);
    Ok(Prepared {
        action_id,
        event_id,
        seq: i64::try_from(stream_seq).unwrap_or(i64::MAX),
        customer_id: need(&ev.customer_id, "customer_id")?,
        advisor_id: need(&ev.advisor_id, "advisor_id")?,
        action_type: need(&ev.action_type, "action_type")?,
        data: json_or_raw(&ev.action_data_json),
        extra: json_or_raw(&ev.extra_json),
        name: clean(&ev.customer_name),
        phone: phone::mainland_mobile(raw_phone.as_deref()),
        raw_phone,
        openid: clean(&ev.openid),
        ip: clean(&ev.client_ip),
        ua: clean(&ev.user_agent),
        // Postgres keeps microseconds: the outcome built here says what is stored.
        occurred_at: from_timestamp(meta.occurred_at.as_ref())
            .unwrap_or_else(Utc::now)
            .trunc_subsecs(6),
    })
}

/// The stored outcomes of these actions (those that exist).
async fn load_outcomes(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<StoredOutcome>, sqlx::Error> {
    // The same columns as in `load_outcome`.
    sqlx::query_as!(
        StoredOutcome,
        // Postgres' plan for `= ANY` hides the columns' NOT NULL from sqlx: stated with `!`.
        r#"SELECT a.action_id AS "action_id!", a.advisor_id AS "advisor_id!", a.customer_id AS "customer_id!",
            a.action_type AS "action_type!: ActionType", a.outcome_kind AS "kind!: OutcomeKind", a.no_lead_reason,
            a.lead_id, l.customer_code AS "customer_code?", a.is_new_customer AS "is_new_customer!",
            COALESCE(l.name, a.customer_name) AS "customer_name?", COALESCE(l.phone, a.phone_normalized) AS "phone?",
            a.occurred_at AS "occurred_at!", a.stored_at AS "stored_at!", a.outcome_event_id AS "outcome_event_id!",
            a.outcome_published_at IS NOT NULL AS "published!", a.openid IS NULL AS "anonymous!", l.owner_advisor_id AS "lead_owner?",
            ARRAY(SELECT e.action_id FROM actions e WHERE e.linked_by = a.action_id ORDER BY e.occurred_at, e.action_id) AS "linked_actions!",
            a.linked_advisors AS "linked_advisors!"
         FROM actions a LEFT JOIN leads l ON l.id = a.lead_id WHERE a.action_id = ANY($1)"#,
        ids
    )
    .fetch_all(conn)
    .await
}

/// Store actions and their lead outcomes, once, with a handful of set-based statements whatever
/// the batch size. A second call for an action already stored (a redelivery, a replay, a retried
/// publish) changes nothing and returns the stored outcome.
///
/// Each action is locked by its id first (a transaction-scoped advisory lock, taken in key
/// order): a concurrent duplicate (two workers holding the same message after an ack timeout)
/// waits until the first transaction ends, then finds the action stored and changes nothing, so
/// a lead's touch is counted once. The lead upsert is a single statement, so two actions with
/// the same new phone in two processes create exactly one lead: one inserts, the other waits for
/// the row and matches it. Then each new action is inserted once, with its outcome; its row is
/// not updated again until its outcome is published. Per action: `Ok(outcome)`, or
/// `Err(reason)` for an action that can never be stored (to dead-letter). Actions of one phone
/// within the batch are applied in batch order: the first may create the lead, the others match
/// it.
///
/// The outcome of an action stored now is put together from what these statements return
/// (`RETURNING`), not read back (issue 14's profile: reading back cost 3.5 ms of every batch,
/// and setting the outcome on rows inserted a moment before 2.6 ms).
pub async fn record_batch(
    conn: &mut PgConnection,
    events: &[(&ActionRecorded, u64)],
    config: &LeadsConfig,
) -> Result<Vec<Result<StoredOutcome, String>>, sqlx::Error> {
    let mut results: Vec<Option<Result<StoredOutcome, String>>> = vec![None; events.len()];
    let mut prepared: Vec<(usize, Prepared)> = Vec::with_capacity(events.len());
    // The same action twice in a batch is stored once; both positions get its outcome.
    for (i, (ev, seq)) in events.iter().enumerate() {
        match prepare(ev, *seq) {
            Ok(p) => prepared.push((i, p)),
            Err(why) => results[i] = Some(Err(why)),
        }
    }
    let unique: Vec<&Prepared> = {
        let mut s = std::collections::HashSet::new();
        prepared
            .iter()
            .map(|(_, p)| p)
            .filter(|p| s.insert(p.action_id))
            .collect()
    };
    let ids: Vec<Uuid> = unique.iter().map(|p| p.action_id).collect();
    lock_actions(conn, &ids).await?;
    // Stored before (a redelivery, a replay): changed nothing, answered as stored (below).
    let before: std::collections::HashSet<Uuid> =
        stored_before(conn, &ids).await?.into_iter().collect();
    let fresh: Vec<&Prepared> = unique
        .into_iter()
        .filter(|p| !before.contains(&p.action_id))
        .collect();
    let groups = group_by_phone(&fresh);
    let leads = if groups.is_empty() {
        HashMap::new()
    } else {
        upsert_leads(conn, groups, config).await?
    };
    let stored = insert_actions(conn, &fresh, &leads).await?;
    let linked = if leads.is_empty() {
        HashMap::new()
    } else {
        link_earlier(conn, &stored.keys().copied().collect::<Vec<_>>()).await?
    };
    // Read after this batch's upserts: a lead the batch changed (a verified action naming it,
    // say) is answered as it now is, as `load_outcome` will read it.
    let mut outcomes: HashMap<Uuid, StoredOutcome> = if before.is_empty() {
        HashMap::new()
    } else {
        let before: Vec<Uuid> = before.into_iter().collect();
        let stored = load_outcomes(conn, &before).await?;
        stored.into_iter().map(|o| (o.action_id, o)).collect()
    };
    for p in &fresh {
        let Some(s) = stored.get(&p.action_id) else {
            // The lock makes this impossible; if it happens, store nothing of this batch.
            return Err(sqlx::Error::Protocol(format!(
                "action {} was stored by another transaction while locked",
                p.action_id
            )));
        };
        let outcome = new_outcome(p, s, leads.get(&p.action_id), linked.get(&p.action_id));
        outcomes.insert(p.action_id, outcome);
    }
    for (i, p) in &prepared {
        results[*i] = Some(
            outcomes
                .get(&p.action_id)
                .cloned()
                .ok_or_else(|| "action vanished".to_string()),
        );
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not processed".into())))
        .collect())
}

/// Which of these actions are stored already. Planned for its values on every call: a plan
/// cached by the connection while the table was nearly empty scans the whole table (measured:
/// 2 ms per batch at 10,000 actions, against 0.07 ms planned afresh).
async fn stored_before(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT action_id FROM actions WHERE action_id = ANY($1)")
        .bind(ids)
        .persistent(false)
        .fetch_all(conn)
        .await
}

/// The advisory-lock class of leads' per-action locks (the two-key form: its keys never meet
/// the one-key locks the notifier takes per advisor).
const ACTION_LOCK_CLASS: i32 = 0x4c45_4144; // "LEAD"

/// Lock these actions for the rest of the transaction, in key order (so that two batches
/// sharing actions cannot deadlock). Distinct ids may share a key; they then only wait for each
/// other. Each lock takes a slot of Postgres' shared lock table (`max_locks_per_transaction` ×
/// `max_connections`, 6,400 by default): a batch of `LEADS_BATCH` (at most 512) per worker fits
/// many times over; an exhausted table fails the batch (retried), it does not corrupt anything.
async fn lock_actions(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT count(pg_advisory_xact_lock($1, k)) FROM
             (SELECT DISTINCT hashtext(id::text) AS k FROM unnest($2::uuid[]) AS id ORDER BY k) keys",
        ACTION_LOCK_CLASS,
        ids
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// What Postgres set on an action it stored now.
struct Inserted {
    stored_at: DateTime<Utc>,
    outcome_event_id: Uuid,
}

/// Insert new actions, each with its outcome (its lead, when it has one); returns what
/// Postgres set on each.
async fn insert_actions(
    conn: &mut PgConnection,
    unique: &[&Prepared],
    leads: &HashMap<Uuid, LeadFacts>,
) -> Result<HashMap<Uuid, Inserted>, sqlx::Error> {
    if unique.is_empty() {
        return Ok(HashMap::new());
    }
    macro_rules! col {
        ($f:expr) => {
            unique.iter().map($f).collect::<Vec<_>>()
        };
    }
    // Arrays with NULL elements are passed `as _` (the macro cannot type-check `Vec<Option<T>>`).
    let inserted = sqlx::query!(
        "INSERT INTO actions (action_id, event_id, stream_seq, customer_id, advisor_id, action_type, action_data, extra,
             customer_name, customer_phone, phone_normalized, openid, client_ip, user_agent, occurred_at,
             outcome_kind, is_new_customer, outcome_event_id, no_lead_reason, lead_id)
         SELECT u.action_id, u.event_id, u.seq, u.customer_id, u.advisor_id, u.action_type, u.data, u.extra, u.name,
                u.raw_phone, u.phone, u.openid, u.ip, u.ua, u.at, u2.kind, u2.fresh, u2.oe, u2.reason, u2.lead
         FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::jsonb[],
                     $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::timestamptz[])
              WITH ORDINALITY AS u(action_id, event_id, seq, customer_id, advisor_id, action_type, data, extra, name, raw_phone, phone, openid, ip, ua, at, n)
         JOIN UNNEST($16::uuid[], $17::text[], $18::text[], $19::bool[], $20::uuid[])
              WITH ORDINALITY AS u2(oe, reason, kind, fresh, lead, n) USING (n)
         ON CONFLICT (action_id) DO NOTHING RETURNING action_id, stored_at, outcome_event_id",
        &col!(|p| p.action_id),
        &col!(|p| p.event_id),
        &col!(|p| p.seq),
        &col!(|p| p.customer_id.clone()),
        &col!(|p| p.advisor_id.clone()),
        &col!(|p| p.action_type.clone()),
        &col!(|p| p.data.clone()),
        &col!(|p| p.extra.clone()),
        col!(|p| p.name.clone()) as _,
        col!(|p| p.raw_phone.clone()) as _,
        col!(|p| p.phone.as_ref().ok().cloned()) as _,
        col!(|p| p.openid.clone()) as _,
        col!(|p| p.ip.clone()) as _,
        col!(|p| p.ua.clone()) as _,
        &col!(|p| p.occurred_at),
        &col!(|_| Uuid::now_v7()),
        col!(|p| p.phone.as_ref().err().map(|r| r.as_str().to_string())) as _,
        &col!(|p| leads.get(&p.action_id).map_or(OutcomeKind::None, |l| l.kind)) as _,
        &col!(|p| leads.get(&p.action_id).is_some_and(|l| l.is_new)),
        col!(|p| leads.get(&p.action_id).map(|l| l.lead_id)) as _,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(inserted
        .into_iter()
        .map(|r| {
            let facts = Inserted {
                stored_at: r.stored_at,
                outcome_event_id: r.outcome_event_id,
            };
            (r.action_id, facts)
        })
        .collect())
}

/// The new actions that carry a valid phone, one group per distinct phone, in batch order.
struct Group<'a> {
    first: &'a Prepared,
    /// Any of its actions carried a session.
    verified: bool,
    /// Whom a new lead belongs to: the first verified action's advisor, else the first action's.
    owner: &'a str,
    name: Option<String>,
    openid: Option<String>,
    touches: i32,
    last: DateTime<Utc>,
    actions: Vec<Uuid>,
}

fn group_by_phone<'a>(fresh: &[&'a Prepared]) -> Vec<(String, Group<'a>)> {
    let mut groups: Vec<(String, Group)> = Vec::new();
    for p in fresh {
        let Ok(phone) = &p.phone else { continue };
        match groups.iter_mut().find(|(ph, _)| ph == phone) {
            Some((_, g)) => {
                let verified = p.openid.is_some();
                if verified && !g.verified {
                    // The first verified action outranks what anonymous ones said.
                    g.verified = true;
                    g.owner = &p.advisor_id;
                    g.name = p.name.clone().or_else(|| g.name.take());
                } else if verified || !g.verified {
                    g.name = g.name.take().or_else(|| p.name.clone());
                }
                g.openid = g.openid.take().or_else(|| p.openid.clone());
                g.touches += 1;
                g.last = g.last.max(p.occurred_at);
                g.actions.push(p.action_id);
            }
            None => groups.push((
                phone.clone(),
                Group {
                    first: p,
                    verified: p.openid.is_some(),
                    owner: &p.advisor_id,
                    name: p.name.clone(),
                    openid: p.openid.clone(),
                    touches: 1,
                    last: p.occurred_at,
                    actions: vec![p.action_id],
                },
            )),
        }
    }
    groups
}

/// Join each new action's earlier phoneless actions of the same openid to its lead, when the
/// lead is that openid's (the session that brought the phone is the one the lead records: a
/// customer typing someone else's number links nothing to that person's lead). An action links
/// what happened up to its own time, once: a redelivery is not new and links nothing again.
/// Returns, per linking action, what it linked (oldest first) and how many advisors that was.
async fn link_earlier(
    conn: &mut PgConnection,
    new: &[Uuid],
) -> Result<HashMap<Uuid, (Vec<Uuid>, i32)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH linking AS (
             SELECT a.action_id, a.openid, a.lead_id, a.occurred_at FROM actions a JOIN leads l ON l.id = a.lead_id
             WHERE a.action_id = ANY($1) AND a.openid IS NOT NULL AND l.openid = a.openid
         ), linked AS (
             UPDATE actions e SET linked_lead_id = t.lead_id, linked_by = t.action_id
             FROM linking t
             WHERE e.openid = t.openid AND e.lead_id IS NULL AND e.linked_lead_id IS NULL AND e.openid IS NOT NULL
               AND e.occurred_at <= t.occurred_at AND e.action_id <> t.action_id
             RETURNING e.action_id, e.occurred_at, e.advisor_id, t.action_id AS linker
         ), counted AS (
             UPDATE actions a SET linked_advisors = s.advisors
             FROM (SELECT linker, count(DISTINCT advisor_id)::int4 AS advisors FROM linked GROUP BY linker) s
             WHERE a.action_id = s.linker
             RETURNING a.action_id, a.linked_advisors
         )
         SELECT l.linker AS "linker!", l.action_id AS "action_id!", c.linked_advisors AS "advisors!"
         FROM linked l JOIN counted c ON c.action_id = l.linker
         ORDER BY l.linker, l.occurred_at, l.action_id"#,
        new
    )
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<Uuid, (Vec<Uuid>, i32)> = HashMap::new();
    for r in rows {
        let entry = out.entry(r.linker).or_insert((Vec::new(), r.advisors));
        entry.0.push(r.action_id);
    }
    Ok(out)
}

/// An action's lead, as the upsert left it.
struct LeadFacts {
    kind: OutcomeKind,
    lead_id: Uuid,
    is_new: bool,
    customer_code: String,
    name: Option<String>,
    phone: String,
    owner: String,
}

/// One upsert row per phone: creates the lead or touches the existing one. Returns each
/// action's lead and whether that action created it.
async fn upsert_leads(
    conn: &mut PgConnection,
    mut groups: Vec<(String, Group<'_>)>,
    config: &LeadsConfig,
) -> Result<HashMap<Uuid, LeadFacts>, sqlx::Error> {
    // Sorted by phone so that concurrent batches lock lead rows in the same order.
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let rows = sqlx::query!(
        "INSERT INTO leads (id, customer_code, phone, name, openid, owner_advisor_id, created_by, source, status, level, remark, touch_count, last_touch_at, verified)
         SELECT u.id, 'KH' || to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || customer_code_suffix(nextval('customer_code_seq')),
                u.phone, u.name, u.openid, u.adv, u.adv, $9, $10, $11, u.remark, u.touches, u.last, u.verified
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::timestamptz[], $12::bool[])
              AS u(id, phone, name, openid, adv, remark, touches, last, verified)
         ORDER BY u.phone
         ON CONFLICT (phone) DO UPDATE SET
             -- Anonymous actions change nothing a lead says; the first verified one corrects it.
             name = CASE WHEN EXCLUDED.verified AND NOT leads.verified THEN COALESCE(EXCLUDED.name, leads.name)
                         WHEN EXCLUDED.verified THEN COALESCE(leads.name, EXCLUDED.name) ELSE leads.name END,
             openid = CASE WHEN EXCLUDED.verified AND NOT leads.verified THEN COALESCE(EXCLUDED.openid, leads.openid)
                           WHEN EXCLUDED.verified THEN COALESCE(leads.openid, EXCLUDED.openid) ELSE leads.openid END,
             owner_advisor_id = CASE WHEN EXCLUDED.verified AND NOT leads.verified THEN EXCLUDED.owner_advisor_id
                                     ELSE leads.owner_advisor_id END,
             verified = leads.verified OR EXCLUDED.verified,
             touch_count = leads.touch_count + EXCLUDED.touch_count,
             last_touch_at = GREATEST(leads.last_touch_at, EXCLUDED.last_touch_at),
             updated_at = now()
         RETURNING phone, id, (xmax = 0) AS \"inserted!\", customer_code, name, owner_advisor_id",
        &groups.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>(),
        &groups.iter().map(|(ph, _)| ph.clone()).collect::<Vec<_>>(),
        groups.iter().map(|(_, g)| g.name.clone()).collect::<Vec<_>>() as _,
        groups.iter().map(|(_, g)| g.openid.clone()).collect::<Vec<_>>() as _,
        &groups.iter().map(|(_, g)| g.owner.to_string()).collect::<Vec<_>>(),
        &groups.iter().map(|(_, g)| remark_for(&g.first.action_type)).collect::<Vec<_>>(),
        &groups.iter().map(|(_, g)| g.touches).collect::<Vec<_>>(),
        &groups.iter().map(|(_, g)| g.last).collect::<Vec<_>>(),
        &config.source,
        &config.default_status,
        &config.default_level,
        &groups.iter().map(|(_, g)| g.verified).collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut facts = HashMap::new();
    for r in rows {
        let Some((_, g)) = groups.iter().find(|(ph, _)| *ph == r.phone) else {
            continue;
        };
        for (k, a) in g.actions.iter().enumerate() {
            let is_new = r.inserted && k == 0;
            let kind = if is_new {
                OutcomeKind::Created
            } else {
                OutcomeKind::Matched
            };
            facts.insert(
                *a,
                LeadFacts {
                    kind,
                    lead_id: r.id,
                    is_new,
                    customer_code: r.customer_code.clone(),
                    name: r.name.clone(),
                    phone: r.phone.clone(),
                    owner: r.owner_advisor_id.clone(),
                },
            );
        }
    }
    Ok(facts)
}

/// The outcome of an action stored now, from what the statements that stored it returned: the
/// same as [`load_outcomes`] would read back, without reading it.
fn new_outcome(
    p: &Prepared,
    stored: &Inserted,
    lead: Option<&LeadFacts>,
    linked: Option<&(Vec<Uuid>, i32)>,
) -> StoredOutcome {
    let (linked_actions, linked_advisors) = linked.cloned().unwrap_or_default();
    StoredOutcome {
        action_id: p.action_id,
        advisor_id: p.advisor_id.clone(),
        customer_id: p.customer_id.clone(),
        action_type: ActionType::from(p.action_type.as_str()),
        kind: lead.map_or(OutcomeKind::None, |l| l.kind),
        no_lead_reason: p.phone.as_ref().err().map(|r| r.as_str().to_string()),
        lead_id: lead.map(|l| l.lead_id),
        customer_code: lead.map(|l| l.customer_code.clone()),
        is_new_customer: lead.is_some_and(|l| l.is_new),
        customer_name: lead.and_then(|l| l.name.clone()).or_else(|| p.name.clone()),
        phone: lead.map_or_else(|| p.phone.as_ref().ok().cloned(), |l| Some(l.phone.clone())),
        occurred_at: p.occurred_at,
        stored_at: stored.stored_at,
        outcome_event_id: stored.outcome_event_id,
        published: false,
        anonymous: p.openid.is_none(),
        lead_owner: lead.map(|l| l.owner.clone()),
        linked_actions,
        linked_advisors,
    }
}
