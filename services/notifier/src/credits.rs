//! The credit ledger: how many one-time subscribe messages each (advisor, openid, template) may
//! still receive. WeChat offers no API to read these counts, so we keep them: each accept adds
//! one (`store::apply_subscription`), a claim reserves one, a send WeChat did not take gives it
//! back, a 43101 ("no subscription") proves the count wrong and sets it to what we can still
//! justify. Every change to `subscriptions.credits` after an accept is a function here.
//! Long-term subscriptions have no count: nothing is reserved or given back for them.

use ande_contracts::vocab::SubscriptionStatus;
use sqlx::PgConnection;

/// One row of the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    pub advisor_id: &'a str,
    pub openid: &'a str,
    pub template_id: &'a str,
}

/// [`adjust`] for several sends at once (an account may appear more than once): `-1` reserves
/// a credit for each of a claim's sends (the caller holds the rows' locks and saw the credits),
/// `+1` gives back those of sends handed back unsent.
pub async fn adjust_many(
    conn: &mut PgConnection,
    accounts: &[Account<'_>],
    delta: i32,
) -> Result<(), sqlx::Error> {
    let mut per: std::collections::BTreeMap<(&str, &str, &str), i32> = Default::default();
    for a in accounts {
        *per.entry((a.advisor_id, a.openid, a.template_id))
            .or_default() += delta;
    }
    if per.is_empty() {
        return Ok(());
    }
    let advisors: Vec<&str> = per.keys().map(|k| k.0).collect();
    let openids: Vec<&str> = per.keys().map(|k| k.1).collect();
    let templates: Vec<&str> = per.keys().map(|k| k.2).collect();
    let counts: Vec<i32> = per.values().copied().collect();
    sqlx::query!(
        "UPDATE subscriptions s SET credits = GREATEST(s.credits + u.n, 0), updated_at = now()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[]) AS u(advisor_id, openid, template_id, n)
         WHERE s.advisor_id = u.advisor_id AND s.openid = u.openid AND s.template_id = u.template_id AND NOT s.long_term",
        &advisors as &[&str],
        &openids as &[&str],
        &templates as &[&str],
        &counts
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Give back a reserved credit (WeChat did not take the send), or, with `-1`, take one for a
/// send WeChat accepted after its reservation had been given back. Never below zero: WeChat says
/// 43101 if we are wrong.
pub async fn adjust(
    conn: &mut PgConnection,
    a: Account<'_>,
    delta: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE subscriptions SET credits = GREATEST(credits + $4, 0), updated_at = now()
         WHERE advisor_id = $1 AND openid = $2 AND template_id = $3 AND NOT long_term",
        a.advisor_id,
        a.openid,
        a.template_id,
        delta
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// WeChat said 43101 to a send claimed when the account had `accepts_at_claim` accepts: our
/// count was wrong, so set it to zero, but keep the credits of accepts that arrived after the
/// claim (WeChat has those).
pub async fn no_credit_at_wechat(
    conn: &mut PgConnection,
    a: Account<'_>,
    accepts_at_claim: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE subscriptions SET credits = LEAST(credits, GREATEST(accepts - $4, 0)), updated_at = now()
         WHERE advisor_id = $1 AND openid = $2 AND template_id = $3",
        a.advisor_id,
        a.openid,
        a.template_id,
        accepts_at_claim
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A direct send (staff, to an openid rather than for an advisor) that WeChat accepted spends
/// one of that user's credits for the template: from the account a queued send would use first
/// (most recently updated, then by advisor id, so the choice is deterministic).
pub async fn spend_direct(
    conn: &mut PgConnection,
    openid: &str,
    template_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE subscriptions SET credits = credits - 1, updated_at = now()
         WHERE (advisor_id, openid, template_id) = (
             SELECT advisor_id, openid, template_id FROM subscriptions
             WHERE openid = $1 AND template_id = $2 AND credits > 0 AND NOT long_term
             ORDER BY updated_at DESC, advisor_id LIMIT 1 FOR UPDATE)",
        openid,
        template_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A direct send met 43101: the user has no credit for the template, whichever advisor's
/// account counted one.
pub async fn zero_direct(
    conn: &mut PgConnection,
    openid: &str,
    template_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE subscriptions SET credits = 0, updated_at = now() WHERE openid = $1 AND template_id = $2",
        openid,
        template_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What a decision does to the credits besides recording it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// An accept adds one credit (it comes from the configured credit source).
    Counts,
    /// Recorded only: an accept from a source that does not add credits.
    RecordOnly,
    /// The user turned the template off in WeChat's settings: no credit is usable any more.
    TurnsOff,
}

/// A user's decision on a template: accept adds one credit (when its source counts); ban zeroes
/// them (the platform banned the template, nothing can be sent), so does a template turned off
/// in WeChat's settings; reject and filter are counted, and credits from earlier accepts stay
/// usable (WeChat keeps them).
pub async fn decide(
    conn: &mut PgConnection,
    a: Account<'_>,
    status: SubscriptionStatus,
    long_term: bool,
    effect: Effect,
) -> Result<(), sqlx::Error> {
    let accept = status == SubscriptionStatus::Accept && effect == Effect::Counts;
    let ban = status == SubscriptionStatus::Ban || effect == Effect::TurnsOff;
    let rejected = status != SubscriptionStatus::Accept;
    sqlx::query!(
        "INSERT INTO subscriptions (advisor_id, openid, template_id, credits, long_term, last_status, accepts, rejects)
         VALUES ($1,$2,$3, CASE WHEN $4 THEN 1 ELSE 0 END, $5, $6, CASE WHEN $4 THEN 1 ELSE 0 END, CASE WHEN $8 THEN 1 ELSE 0 END)
         ON CONFLICT (advisor_id, openid, template_id) DO UPDATE SET
            credits = CASE WHEN $7 THEN 0 ELSE subscriptions.credits + CASE WHEN $4 THEN 1 ELSE 0 END END,
            long_term = subscriptions.long_term OR $5,
            last_status = $6,
            accepts = subscriptions.accepts + CASE WHEN $4 THEN 1 ELSE 0 END,
            rejects = subscriptions.rejects + CASE WHEN $8 THEN 1 ELSE 0 END,
            updated_at = now()",
        a.advisor_id,
        a.openid,
        a.template_id,
        accept,
        long_term,
        status.as_str(),
        ban,
        rejected
    )
    .execute(conn)
    .await?;
    Ok(())
}
