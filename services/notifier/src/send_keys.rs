//! Idempotency keys of direct sends: at most one WeChat send per (caller, key), and a retry
//! gets the first attempt's answer. See `migrations/0004_direct_send_keys.sql`.

use ande_contracts::notifier::{SendKey, Sent};
use ande_platform::rpc::RpcError;
use sqlx::PgPool;

/// A claim still `sending` after this was left by a notifier that stopped mid-send (a send
/// takes at most a few WeChat timeouts).
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What a retry is told when the first attempt's outcome is not known.
const UNKNOWN: &str = "a send with this Idempotency-Key was made and its outcome is unknown \
(WeChat did not answer, or the notifier stopped mid-send); it may have been delivered, so it is \
not sent again: check with the recipient, or send with a new key";

/// Claim `k` for a send. `None`: claimed, go ahead and send. `Some(answer)`: the key was used
/// before; that is the answer to give (the first attempt's, or a conflict).
pub async fn claim(
    pool: &PgPool,
    k: &SendKey,
) -> Result<Option<Result<Sent, RpcError>>, sqlx::Error> {
    let fresh = sqlx::query!(
        "INSERT INTO direct_send_keys (scope, key, fingerprint, state) VALUES ($1, $2, $3, 'sending')
         ON CONFLICT (scope, key) DO NOTHING",
        k.scope,
        k.key,
        k.fingerprint
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    if fresh {
        return Ok(None);
    }
    let row = sqlx::query!(
        r#"SELECT fingerprint, state, errcode, errmsg, msgid,
                  created_at < now() - make_interval(secs => $3) AS "abandoned!"
           FROM direct_send_keys WHERE scope = $1 AND key = $2"#,
        k.scope,
        k.key,
        ABANDONED_AFTER.as_secs_f64()
    )
    .fetch_one(pool)
    .await?;
    let conflict = |message: &str| RpcError::Conflict {
        message: message.into(),
    };
    Ok(Some(if row.fingerprint != k.fingerprint {
        Err(conflict(
            "this Idempotency-Key was used for a different message; use a new key",
        ))
    } else {
        match (row.state.as_str(), row.errcode) {
            ("answered", Some(0)) => Ok(Sent {
                msgid: row.msgid.unwrap_or_default(),
            }),
            ("answered", Some(errcode)) => Err(RpcError::WechatRefused {
                errcode,
                errmsg: row.errmsg.unwrap_or_default(),
            }),
            ("sending", _) if !row.abandoned => Err(conflict(
                "a send with this Idempotency-Key is in progress; ask again in a moment",
            )),
            _ => Err(conflict(UNKNOWN)),
        }
    }))
}

/// Keep WeChat's answer for the retries.
pub async fn answered(
    pool: &PgPool,
    k: &SendKey,
    errcode: i64,
    errmsg: &str,
    msgid: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE direct_send_keys SET state = 'answered', errcode = $3, errmsg = $4, msgid = $5, answered_at = now()
         WHERE scope = $1 AND key = $2",
        k.scope,
        k.key,
        errcode,
        errmsg,
        msgid
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// WeChat gave no usable answer: the outcome stays unknown for good.
pub async fn unknown(pool: &PgPool, k: &SendKey) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE direct_send_keys SET state = 'unknown', answered_at = now() WHERE scope = $1 AND key = $2",
        k.scope,
        k.key
    )
    .execute(pool)
    .await?;
    Ok(())
}
