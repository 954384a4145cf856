//! Advisor bindings: which WeChat users (openids) receive an advisor's notifications.
//!
//! Nothing a client sends can make someone an advisor's recipient: staff bind an openid to an
//! advisor (`andectl advisor bind`, or the staff HTTP API through [`serve`](crate::queries::serve)),
//! or make a one-time pairing code that the advisor redeems from their own mini-program session,
//! so the openid comes from WeChat's login, not from a body. A claim only picks subscriptions of
//! bound openids (`store::claim`), so credits added for an unbound openid are never spent.
//! Unbinding takes effect at the next claim: notifications already sent stay sent.

use std::time::Duration;

use ande_contracts::notifier::{
    AdvisorRef, AdvisorSettings, AdvisorSettingsChange, BindRequest, Binding, BindingCheck,
    BindingFilter, BindingKey, Bindings, PairRequest, Pairing, RedeemRequest, Unbound,
};
use ande_platform::rpc::{Failure, RpcError};
use rand::Rng;
use sqlx::PgPool;

/// How long a pairing code can be redeemed.
pub const PAIRING_TTL: Duration = Duration::from_secs(10 * 60);
/// Letters and digits that cannot be mistaken for one another when read aloud or typed.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// 10 characters of 31: about 49 bits, shown as `XXXXX-XXXXX`.
const CODE_LEN: usize = 10;
/// Longest advisor id or openid accepted (the gateway's ID rule).
const MAX_ID: usize = 128;

fn check_id(field: &str, value: &str) -> Result<(), Failure> {
    let v = value.trim();
    if v.is_empty()
        || v.len() != value.len()
        || value.chars().count() > MAX_ID
        || value.chars().any(char::is_control)
    {
        return Err(RpcError::invalid_field(
            field,
            format!("must be 1 to {MAX_ID} printable characters without surrounding spaces"),
        )
        .into());
    }
    Ok(())
}

/// Bind `openid` to `advisor_id`. Binding again keeps the first record.
pub async fn bind(pool: &PgPool, r: BindRequest) -> Result<Binding, Failure> {
    check_id("advisorId", &r.advisor_id)?;
    check_id("openid", &r.openid)?;
    let row = upsert(
        &mut *pool.acquire().await?,
        &r.advisor_id,
        &r.openid,
        &r.bound_by,
    )
    .await?;
    tracing::info!(advisor_id = %row.advisor_id, bound_by = %row.bound_by, "advisor bound");
    Ok(row)
}

pub async fn unbind(pool: &PgPool, k: BindingKey) -> Result<Unbound, Failure> {
    let gone = sqlx::query!(
        "DELETE FROM advisor_bindings WHERE advisor_id = $1 AND openid = $2",
        k.advisor_id,
        k.openid
    )
    .execute(pool)
    .await?
    .rows_affected();
    if gone == 0 {
        return Err(RpcError::not_found("no such binding").into());
    }
    tracing::info!(advisor_id = %k.advisor_id, "advisor unbound");
    Ok(Unbound {
        advisor_id: k.advisor_id,
        openid: k.openid,
    })
}

pub async fn list(pool: &PgPool, f: BindingFilter) -> Result<Bindings, Failure> {
    let bindings = sqlx::query_as!(
        Binding,
        "SELECT advisor_id, openid, bound_by, bound_at FROM advisor_bindings
         WHERE $1::text IS NULL OR advisor_id = $1 ORDER BY advisor_id, bound_at, openid",
        f.advisor_id
    )
    .fetch_all(pool)
    .await?;
    Ok(Bindings { bindings })
}

pub async fn check(pool: &PgPool, k: BindingKey) -> Result<BindingCheck, Failure> {
    let bound = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM advisor_bindings WHERE advisor_id = $1 AND openid = $2) AS "bound!""#,
        k.advisor_id,
        k.openid
    )
    .fetch_one(pool)
    .await?;
    Ok(BindingCheck { bound })
}

/// A fresh pairing code for an advisor, valid for [`PAIRING_TTL`]; only its hash is stored.
pub async fn pair(pool: &PgPool, r: PairRequest) -> Result<Pairing, Failure> {
    check_id("advisorId", &r.advisor_id)?;
    let raw: String = {
        let mut rng = rand::thread_rng();
        (0..CODE_LEN)
            .map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())]))
            .collect()
    };
    let ttl = i64::try_from(PAIRING_TTL.as_secs()).unwrap_or(600);
    let expires_at = sqlx::query_scalar!(
        "INSERT INTO advisor_pairings (code_sha256, advisor_id, created_by, expires_at)
         VALUES (sha256(convert_to($1, 'UTF8')), $2, $3, now() + make_interval(secs => $4))
         RETURNING expires_at",
        raw,
        r.advisor_id,
        r.created_by,
        ttl as f64
    )
    .fetch_one(pool)
    .await?;
    tracing::info!(advisor_id = %r.advisor_id, created_by = %r.created_by, "pairing code made");
    Ok(Pairing {
        advisor_id: r.advisor_id,
        code: format!("{}-{}", &raw[..CODE_LEN / 2], &raw[CODE_LEN / 2..]),
        expires_at,
    })
}

/// The code as typed: case, spaces and dashes do not matter.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Redeem a pairing code for `openid` (the session's): one use, before it expires. Unknown,
/// used and expired codes get the same answer, so probing tells nothing.
pub async fn redeem(pool: &PgPool, r: RedeemRequest) -> Result<Binding, Failure> {
    check_id("openid", &r.openid)?;
    let code = normalise(&r.code);
    let mut tx = pool.begin().await?;
    let advisor = sqlx::query_scalar!(
        "UPDATE advisor_pairings SET redeemed_by = $2, redeemed_at = now()
         WHERE code_sha256 = sha256(convert_to($1, 'UTF8')) AND redeemed_at IS NULL AND expires_at > now()
         RETURNING advisor_id",
        code,
        r.openid
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(advisor_id) = advisor else {
        return Err(
            RpcError::not_found("no such pairing code, or it was used or has expired").into(),
        );
    };
    let row = upsert(&mut tx, &advisor_id, &r.openid, "pairing").await?;
    tx.commit().await?;
    tracing::info!(%advisor_id, "pairing code redeemed");
    Ok(row)
}

/// Bind (binding twice is not an error) and answer the binding as it stands, first binder and
/// time kept, in one statement: a separate read after the insert could find nothing when an
/// unbind ran in between.
async fn upsert(
    conn: &mut sqlx::PgConnection,
    advisor_id: &str,
    openid: &str,
    bound_by: &str,
) -> Result<Binding, sqlx::Error> {
    sqlx::query_as!(
        Binding,
        "INSERT INTO advisor_bindings (advisor_id, openid, bound_by) VALUES ($1, $2, $3)
         ON CONFLICT (advisor_id, openid) DO UPDATE SET bound_by = advisor_bindings.bound_by
         RETURNING advisor_id, openid, bound_by, bound_at",
        advisor_id,
        openid,
        bound_by
    )
    .fetch_one(conn)
    .await
}

/// An advisor's own settings; an advisor staff never set answers the defaults (all `None`).
pub async fn settings(pool: &PgPool, r: AdvisorRef) -> Result<AdvisorSettings, Failure> {
    check_id("advisorId", &r.advisor_id)?;
    let row = sqlx::query!(
        "SELECT quiet_hours, updated_by, updated_at FROM advisor_settings WHERE advisor_id = $1",
        r.advisor_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(AdvisorSettings {
        quiet_hours: row.as_ref().and_then(|r| r.quiet_hours.clone()),
        updated_by: row.as_ref().map(|r| r.updated_by.clone()),
        updated_at: row.map(|r| r.updated_at),
        advisor_id: r.advisor_id,
    })
}

/// Set an advisor's own quiet hours (`HH:MM-HH:MM` Beijing time, `off`, or `None` for the
/// deployment's). Claims and the sweep read it at once.
pub async fn set_settings(
    pool: &PgPool,
    c: AdvisorSettingsChange,
) -> Result<AdvisorSettings, Failure> {
    check_id("advisorId", &c.advisor_id)?;
    let quiet_hours = match c.quiet_hours.as_deref().map(str::trim) {
        None | Some("") => None,
        Some("off") => Some("off".to_string()),
        Some(w) => match crate::config::QuietHours::parse(w) {
            Ok(q) => Some(format!(
                "{}-{}",
                q.start.format("%H:%M"),
                q.end.format("%H:%M")
            )),
            // An empty window (22:00-22:00) holds nothing: the advisor has no quiet hours.
            Err(_) if w.split_once('-').is_some_and(|(a, b)| a.trim() == b.trim()) => {
                Some("off".to_string())
            }
            Err(why) => return Err(RpcError::invalid_field("quietHours", why).into()),
        },
    };
    let row = sqlx::query!(
        "INSERT INTO advisor_settings (advisor_id, quiet_hours, updated_by) VALUES ($1, $2, $3)
         ON CONFLICT (advisor_id) DO UPDATE SET quiet_hours = $2, updated_by = $3, updated_at = now()
         RETURNING updated_at",
        c.advisor_id,
        quiet_hours,
        c.updated_by
    )
    .fetch_one(pool)
    .await?;
    tracing::info!(advisor = %c.advisor_id, quiet_hours = ?quiet_hours, by = %c.updated_by, "advisor settings changed");
    Ok(AdvisorSettings {
        advisor_id: c.advisor_id,
        quiet_hours,
        updated_by: Some(c.updated_by),
        updated_at: Some(row.updated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_loosely() {
        assert_eq!(normalise(" abcde-fghjk "), "ABCDEFGHJK");
        assert_eq!(normalise("ABCDE FGHJK"), "ABCDEFGHJK");
    }
}
