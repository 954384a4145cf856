//! Tokens and passwords.
//!
//! Two kinds of JWT, signed with `JWT_SECRET` (HS256) and told apart by audience so one can never
//! stand for the other: a customer's mini-program session (`aud = ande-miniprogram`, `sub` = the
//! openid, optionally the phone number WeChat confirmed) and a staff token (`aud = ande-staff`,
//! `sub` = the username, `ver` = the account's token version). Staff passwords are argon2id
//! hashes, checked off the async runtime. A staff token is good only while its account is
//! enabled and its version current: `passwd` and `disable` move the version on, so the tokens
//! issued before stop working at once (checked against the database on every staff request).

use std::time::Duration;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

pub const MINIPROGRAM_AUDIENCE: &str = "ande-miniprogram";
pub const STAFF_AUDIENCE: &str = "ande-staff";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Staff tokens: the account's token version when it was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<i32>,
}

pub fn issue(
    secret: &SecretString,
    audience: &str,
    sub: &str,
    phone: Option<String>,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: sub.to_string(),
        aud: audience.to_string(),
        iat: now,
        exp: now + ttl.as_secs() as i64,
        phone,
        ver: None,
    };
    sign(secret, &claims)
}

/// A staff token for `username` at token version `ver`.
pub fn issue_staff(
    secret: &SecretString,
    username: &str,
    ver: i32,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: username.to_string(),
        aud: STAFF_AUDIENCE.to_string(),
        iat: now,
        exp: now + ttl.as_secs() as i64,
        phone: None,
        ver: Some(ver),
    };
    sign(secret, &claims)
}

fn sign(secret: &SecretString, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    let key = EncodingKey::from_secret(secret.expose_secret().as_bytes())?;
    encode(&Header::new(Algorithm::HS256), claims, &key)
}

/// What a staff member may do: `admin` everything; `sales` works leads (only its advisor's
/// when bound to one) and cannot manage accounts, bindings, direct sends or the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Sales,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Sales => "sales",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "sales" => Some(Role::Sales),
            _ => None,
        }
    }
}

/// The staff member behind a request, read from the database on every request (so a changed
/// role or binding applies at once).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaffAccount {
    pub username: String,
    pub role: Role,
    /// A sales user bound to an advisor sees that advisor's leads only.
    pub advisor_id: Option<String>,
}

impl StaffAccount {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The advisors whose leads and notifications this account may see; `None`: all.
    pub fn advisor_scope(&self) -> Option<Vec<String>> {
        match (&self.role, &self.advisor_id) {
            (Role::Sales, Some(a)) => Some(vec![a.clone()]),
            _ => None,
        }
    }

    /// Whether this account may see what belongs to `advisor_id`.
    pub fn may_see(&self, advisor_id: &str) -> bool {
        self.advisor_scope()
            .is_none_or(|scope| scope.iter().any(|a| a == advisor_id))
    }

    /// How changes by this account are recorded: `staff:<username>`.
    pub fn author(&self) -> String {
        format!("staff:{}", self.username)
    }
}

/// The account of a staff token, when it is enabled and the token's version current.
pub async fn staff_account(
    pool: &PgPool,
    claims: &Claims,
) -> Result<Option<StaffAccount>, sqlx::Error> {
    let Some(ver) = claims.ver else {
        return Ok(None);
    };
    let row = sqlx::query!(
        "SELECT role, advisor_id FROM staff_users
         WHERE username = $1 AND NOT disabled AND token_version = $2",
        claims.sub,
        ver
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|r| {
        Some(StaffAccount {
            username: claims.sub.clone(),
            role: Role::parse(&r.role)?,
            advisor_id: r.advisor_id,
        })
    }))
}

/// A staff account as `andectl user ls` and the console show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaffUser {
    pub username: String,
    pub role: String,
    pub advisor_id: Option<String>,
    pub disabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list_staff(pool: &PgPool) -> Result<Vec<StaffUser>, sqlx::Error> {
    sqlx::query_as!(
        StaffUser,
        "SELECT username, role, advisor_id, disabled, created_at, updated_at FROM staff_users ORDER BY username"
    )
    .fetch_all(pool)
    .await
}

/// Disable or enable an account; either way its tokens issued so far stop working. `false` when
/// there is no such account.
pub async fn set_disabled(
    pool: &PgPool,
    username: &str,
    disabled: bool,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query!(
        "UPDATE staff_users SET disabled = $2, token_version = token_version + 1, updated_at = now()
         WHERE username = $1",
        username,
        disabled
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

pub fn verify(secret: &SecretString, audience: &str, token: &str) -> Option<Claims> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[audience]);
    v.leeway = 5;
    let key = DecodingKey::from_secret(secret.expose_secret().as_bytes()).ok()?;
    decode::<Claims>(token, &key, &v).ok().map(|d| d.claims)
}

/// argon2id with the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &SecretString) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_password(password: &SecretString, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.expose_secret().as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A password for a new account `username` (not empty) made in the console: 20 characters from
/// 56 letters and digits without look-alikes (about 116 bits), passing [`password_problem`].
pub fn generate_password(username: &str) -> String {
    use argon2::password_hash::rand_core::RngCore;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    loop {
        let pw: String = (0..20)
            .map(|_| ALPHABET[(OsRng.next_u32() as usize) % ALPHABET.len()] as char)
            .collect();
        if password_problem(username, &SecretString::from(pw.clone())).is_none() {
            return pw;
        }
    }
}

/// Fewest characters of a staff password.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Why a staff password is too weak, if it is: shorter than [`MIN_PASSWORD_CHARS`], fewer than
/// 5 different characters, or containing the username.
pub fn password_problem(username: &str, password: &SecretString) -> Option<String> {
    let pw = password.expose_secret();
    let distinct: std::collections::HashSet<char> = pw.chars().collect();
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        Some(format!(
            "a password has at least {MIN_PASSWORD_CHARS} characters"
        ))
    } else if distinct.len() < 5 {
        Some("a password needs at least 5 different characters".into())
    } else if pw.to_lowercase().contains(&username.to_lowercase()) {
        Some("a password must not contain the username".into())
    } else {
        None
    }
}

/// The argon2id hash of a password [`password_problem`] does not object to (hashed off the
/// async runtime).
async fn checked_hash(username: &str, password: SecretString) -> anyhow::Result<String> {
    if let Some(problem) = password_problem(username, &password) {
        anyhow::bail!("{problem}");
    }
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await?
        .map_err(anyhow::Error::msg)
}

/// Create or replace a staff account (used by `andectl user add/passwd`); a replaced password
/// revokes the account's tokens. Refuses a password [`password_problem`] objects to.
pub async fn set_staff_password(
    pool: &PgPool,
    username: &str,
    password: SecretString,
) -> anyhow::Result<bool> {
    let hash = checked_hash(username, password).await?;
    let inserted = sqlx::query_scalar!(
        r#"INSERT INTO staff_users (username, password_hash) VALUES ($1, $2)
         ON CONFLICT (username) DO UPDATE SET password_hash = $2, updated_at = now(),
             token_version = staff_users.token_version + 1
         RETURNING (xmax = 0) AS "inserted!""#,
        username,
        hash,
    )
    .fetch_one(pool)
    .await?;
    Ok(inserted)
}

/// Create a staff account with a role (and for a sales user, optionally its advisor); `false`
/// when the name is taken. Refuses a password [`password_problem`] objects to.
pub async fn add_staff(
    pool: &PgPool,
    username: &str,
    password: SecretString,
    role: Role,
    advisor_id: Option<&str>,
) -> anyhow::Result<bool> {
    let hash = checked_hash(username, password).await?;
    let created = sqlx::query!(
        "INSERT INTO staff_users (username, password_hash, role, advisor_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO NOTHING",
        username,
        hash,
        role.as_str(),
        advisor_id
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(created == 1)
}

/// Set an account's role and/or its advisor (a sales user's advisor limits what it sees);
/// `false` when there is no such account. `role`: `None` keeps it; `advisor_id`: `None` keeps
/// it, `Some(None)` clears it; an admin has none (it sees every advisor).
pub async fn set_role(
    pool: &PgPool,
    username: &str,
    role: Option<Role>,
    advisor_id: Option<Option<&str>>,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query!(
        "UPDATE staff_users SET role = COALESCE($2, role), updated_at = now(),
                advisor_id = CASE WHEN COALESCE($2, role) = 'admin' THEN NULL
                                  WHEN $4 THEN $3 ELSE advisor_id END
         WHERE username = $1",
        username,
        role.map(Role::as_str),
        advisor_id.flatten(),
        advisor_id.is_some()
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// The token version of an enabled account.
pub async fn token_version(pool: &PgPool, username: &str) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT token_version FROM staff_users WHERE username = $1 AND NOT disabled",
        username
    )
    .fetch_optional(pool)
    .await
}

pub async fn staff_exists(pool: &PgPool, username: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM staff_users WHERE username = $1) AS "exists!""#,
        username
    )
    .fetch_one(pool)
    .await
}

/// Check a login: the account's token version when the password is right and the account
/// enabled. A missing or disabled user costs the same hashing time as a wrong password, so
/// timing does not reveal which usernames exist.
pub async fn check_login(
    pool: &PgPool,
    username: &str,
    password: SecretString,
) -> Result<Option<i32>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT password_hash, token_version, disabled FROM staff_users WHERE username = $1",
        username
    )
    .fetch_optional(pool)
    .await?;
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$8mVbG6Kq7rDQ8bY0sRDo3N1bqu6P8xw2b7yH0yV0qWc";
    let hash = row
        .as_ref()
        .map_or_else(|| DUMMY.to_string(), |r| r.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    Ok(row.filter(|r| ok && !r.disabled).map(|r| r.token_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_do_not_mix() {
        let secret = SecretString::from("s3cret".to_string());
        let t = issue(
            &secret,
            MINIPROGRAM_AUDIENCE,
            "openid-1",
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(
            verify(&secret, MINIPROGRAM_AUDIENCE, &t).unwrap().sub,
            "openid-1"
        );
        assert!(
            verify(&secret, STAFF_AUDIENCE, &t).is_none(),
            "a customer session is not a staff token"
        );
        assert!(verify(
            &SecretString::from("other".to_string()),
            MINIPROGRAM_AUDIENCE,
            &t
        )
        .is_none());
        assert!(verify(&secret, MINIPROGRAM_AUDIENCE, "garbage").is_none());
    }

    #[test]
    fn expired_tokens_are_refused_past_the_leeway() {
        let secret = SecretString::from("s3cret".to_string());
        let now = chrono::Utc::now().timestamp();
        let key = EncodingKey::from_secret(b"s3cret").unwrap();
        let token = |exp: i64| {
            let c = Claims {
                sub: "o".into(),
                aud: MINIPROGRAM_AUDIENCE.into(),
                iat: now - 120,
                exp,
                phone: None,
                ver: None,
            };
            encode(&Header::new(Algorithm::HS256), &c, &key).unwrap()
        };
        assert!(
            verify(&secret, MINIPROGRAM_AUDIENCE, &token(now - 60)).is_none(),
            "expired a minute ago"
        );
        assert!(verify(&secret, MINIPROGRAM_AUDIENCE, &token(now + 60)).is_some());
        let none_alg = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            token(now + 60).split('.').nth(1).unwrap()
        );
        assert!(
            verify(&secret, MINIPROGRAM_AUDIENCE, &none_alg).is_none(),
            "alg none is never accepted"
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let pw = SecretString::from("correct horse".to_string());
        let h = hash_password(&pw).unwrap();
        assert!(verify_password(&pw, &h));
        assert!(!verify_password(
            &SecretString::from("wrong".to_string()),
            &h
        ));
        assert!(!verify_password(&pw, "not a hash"));
    }
}
