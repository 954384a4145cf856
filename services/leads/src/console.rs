//! What the staff console asks of leads: a searchable, sortable page of leads, one lead's
//! timeline, the hourly numbers of the overview. Answered over request/reply
//! (`leads.search`, `leads.timeline`, `leads.stats`); who may see which leads is decided by the
//! gateway, which passes a sales user's advisors as `advisor_ids`.

use ande_contracts::leads::{
    HourCount, Lead, LeadChange, LeadKey, LeadPage, LeadSearch, LeadSort, LeadStats, StatsQuery,
    Timeline, TimelineAction,
};
use ande_contracts::vocab::{ActionType, OutcomeKind};
use ande_platform::rpc::{Failure, RpcError};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;
/// Actions shown in a timeline, newest first.
const TIMELINE_ACTIONS: i64 = 100;
/// Longest search text, in characters.
const MAX_QUERY: usize = 64;

/// The lead columns, in [`Lead`]'s order.
const LEAD_COLUMNS: &str = "id, customer_code, phone, name, openid, owner_advisor_id, created_by, \
     source, status, level, remark, touch_count, last_touch_at, created_at";

/// A page position: the sort key (microseconds since 1970) and id of the last lead of the page
/// before, as `<micros>_<uuid>` ([`ande_contracts::leads::CURSOR_PATTERN`]).
fn parse_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), Failure> {
    let bad = || {
        Failure::from(RpcError::invalid_field(
            "cursor",
            "not a cursor this API gave",
        ))
    };
    let (at, id) = cursor.split_once('_').ok_or_else(bad)?;
    let micros = at
        .parse::<i64>()
        .ok()
        .filter(|_| at.len() <= 16 && at.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id = Some(id)
        .filter(|id| id.len() == 36)
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or_else(bad)?;
    Ok((at, id))
}

fn cursor_of(lead: &Lead, sort: LeadSort) -> String {
    let at = match sort {
        LeadSort::Created => lead.created_at,
        LeadSort::LastTouch => lead.last_touch_at,
    };
    format!("{}_{}", at.timestamp_micros(), lead.id)
}

/// `q` as a LIKE pattern matching it anywhere, its wildcards taken literally.
fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The list's query for a sort: parameters $1 advisors, $2 status, $3 level, $4–$5 created
/// range, $6–$7 last-touch range, $8 search pattern, $9–$10 cursor, $11 limit (public so the
/// system test can show its plan).
pub fn search_sql(sort: LeadSort) -> String {
    // The sort column comes from this match, never from the caller's text.
    let column = match sort {
        LeadSort::Created => "created_at",
        LeadSort::LastTouch => "last_touch_at",
    };
    format!(
        "SELECT {LEAD_COLUMNS} FROM leads
         WHERE ($1::text[] IS NULL OR owner_advisor_id = ANY($1))
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR level = $3)
           AND ($4::timestamptz IS NULL OR created_at >= $4)
           AND ($5::timestamptz IS NULL OR created_at < $5)
           AND ($6::timestamptz IS NULL OR last_touch_at >= $6)
           AND ($7::timestamptz IS NULL OR last_touch_at < $7)
           AND ($8::text IS NULL OR phone LIKE $8 OR name ILIKE $8 OR customer_code ILIKE $8)
           AND ($9::timestamptz IS NULL OR ({column}, id) < ($9, $10))
         ORDER BY {column} DESC, id DESC LIMIT $11"
    )
}

/// A page of leads matching `q`'s filters, newest first by its sort.
pub async fn search(pool: &PgPool, q: LeadSearch) -> Result<LeadPage, Failure> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.chars().count() > MAX_QUERY) {
        return Err(RpcError::invalid_field("q", "at most 64 characters").into());
    }
    let after = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let sql = search_sql(q.sort);
    let leads: Vec<Lead> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(q.advisor_ids)
        .bind(q.status.filter(|s| !s.is_empty()))
        .bind(q.level.filter(|s| !s.is_empty()))
        .bind(q.created_from)
        .bind(q.created_until)
        .bind(q.touched_from)
        .bind(q.touched_until)
        .bind(text.map(like_pattern))
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(i64::from(limit) + 1)
        .fetch_all(pool)
        .await?;
    Ok(page(leads, limit as usize, q.sort))
}

/// The first `limit` leads, and a cursor when one more was found.
fn page(mut leads: Vec<Lead>, limit: usize, sort: LeadSort) -> LeadPage {
    let more = leads.len() > limit;
    leads.truncate(limit);
    let next_cursor = more
        .then(|| leads.last().map(|l| cursor_of(l, sort)))
        .flatten();
    LeadPage { leads, next_cursor }
}

/// The lead, its latest actions (its own and those joined to it later) and its changes, read
/// in one snapshot (a change applied meanwhile shows in both the lead and its history, or in
/// neither).
pub async fn timeline(pool: &PgPool, key: LeadKey) -> Result<Timeline, Failure> {
    let mut conn = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await?;
    let lead = crate::queries::lead_in(&mut conn, key).await?;
    let actions = sqlx::query_as!(
        TimelineAction,
        r#"SELECT action_id, advisor_id, action_type AS "action_type: ActionType", customer_name,
                  occurred_at, stored_at, outcome_kind AS "outcome_kind: OutcomeKind", is_new_customer,
                  (lead_id IS DISTINCT FROM $1) AS "linked!", outcome_published_at
           FROM actions WHERE lead_id = $1 OR linked_lead_id = $1
           ORDER BY occurred_at DESC, action_id DESC LIMIT $2"#,
        lead.id,
        TIMELINE_ACTIONS
    )
    .fetch_all(&mut *conn)
    .await?;
    let changes = sqlx::query_as!(
        LeadChange,
        "SELECT event_id, changed_by, changes, changed_at FROM lead_changes
         WHERE lead_id = $1 ORDER BY changed_at DESC, event_id DESC",
        lead.id
    )
    .fetch_all(&mut *conn)
    .await?;
    conn.commit().await?;
    Ok(Timeline {
        lead,
        actions,
        changes,
    })
}

/// Actions per hour over the last day, and lead counts.
pub async fn stats(pool: &PgPool, q: StatsQuery) -> Result<LeadStats, Failure> {
    let mut conn = pool.acquire().await?;
    let advisors = q.advisor_ids.as_deref();
    let actions_per_hour = sqlx::query_as!(
        HourCount,
        r#"SELECT date_trunc('hour', occurred_at) AS "hour!", count(*) AS "count!" FROM actions
           WHERE occurred_at > now() - interval '24 hours'
             AND ($1::text[] IS NULL OR advisor_id = ANY($1))
           GROUP BY 1 ORDER BY 1"#,
        advisors
    )
    .fetch_all(&mut *conn)
    .await?;
    let counts = sqlx::query!(
        r#"SELECT
             (SELECT count(*) FROM actions WHERE occurred_at > now() - interval '1 minute'
                AND ($1::text[] IS NULL OR advisor_id = ANY($1))) AS "last_minute!",
             (SELECT count(*) FROM leads WHERE created_at > now() - interval '24 hours'
                AND ($1::text[] IS NULL OR owner_advisor_id = ANY($1))) AS "last_day!",
             (SELECT count(*) FROM leads
                WHERE ($1::text[] IS NULL OR owner_advisor_id = ANY($1))) AS "total!""#,
        advisors
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(LeadStats {
        actions_per_hour,
        actions_last_minute: counts.last_minute,
        leads_last_24h: counts.last_day,
        leads_total: counts.total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_literal_and_cursors_round_trip() {
        assert_eq!(like_pattern("50%_a\\"), "%50\\%\\_a\\\\%");
        let at = DateTime::from_timestamp_micros(1_796_522_961_123_456).unwrap();
        let id = Uuid::now_v7();
        let c = format!("{}_{id}", at.timestamp_micros());
        assert_eq!(parse_cursor(&c).unwrap(), (at, id));
        let pattern = regex_lite(&c);
        assert!(pattern, "{c} matches the documented pattern");
        for bad in [
            "nonsense",
            "12_x",
            "-5_0190c5a0-0000-7000-8000-000000000000",
            "99999999999999999_0190c5a0-0000-7000-8000-000000000000",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    /// The documented pattern, checked by hand (no regex crate here): digits, `_`, a UUID.
    fn regex_lite(c: &str) -> bool {
        c.split_once('_').is_some_and(|(a, b)| {
            (1..=16).contains(&a.len())
                && a.bytes().all(|x| x.is_ascii_digit())
                && Uuid::try_parse(b).is_ok()
                && b.len() == 36
        })
    }
}
