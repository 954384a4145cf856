//! `andectl user add|role|passwd|ls|disable|enable`: staff accounts (role `admin` or `sales`) for `POST /api/auth/login`,
//! stored by the gateway's own functions in its schema. Changing a password or disabling an
//! account revokes its tokens at once.
//!
//! The password is read from stdin, one line, so it never appears in the process list or the
//! shell history: `printf '%s\n' "$PW" | andectl user add alice`. At a terminal it is prompted
//! for without echo. The gateway's policy applies (at least 12 characters, 5 different ones,
//! not containing the username).

use std::io::BufRead;

use ande_gateway::auth::Role;
use anyhow::bail;
use secrecy::SecretString;
use sqlx::PgPool;

/// Longest accepted username, in characters.
const MAX_USERNAME: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserError {
    #[error(
        "staff user {0:?} already exists (use `andectl user passwd {0}` to change the password)"
    )]
    Exists(String),
    #[error("no staff user {0:?} (create it with `andectl user add {0}`)")]
    Missing(String),
    #[error("a username is 1 to 64 characters without spaces or control characters")]
    BadName,
    #[error("refusing an empty password")]
    EmptyPassword,
    #[error("no password on stdin (expected one line)")]
    NoInput,
}

pub fn validate_username(name: &str) -> Result<&str, UserError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_USERNAME
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(name)
    } else {
        Err(UserError::BadName)
    }
}

/// One line from `input`, without its line ending; empty is refused.
pub fn read_password(mut input: impl BufRead) -> anyhow::Result<SecretString> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        bail!(UserError::NoInput);
    }
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        bail!(UserError::EmptyPassword);
    }
    Ok(SecretString::from(pw.to_string()))
}

/// The role of `--role`, refusing an advisor for an admin (admins see every advisor).
pub fn role(name: &str, advisor: Option<&str>) -> anyhow::Result<Role> {
    let Some(role) = Role::parse(name) else {
        bail!("a role is admin or sales");
    };
    if role == Role::Admin && advisor.is_some() {
        bail!("--advisor is for sales users (an admin sees every advisor)");
    }
    if advisor.is_some_and(|a| a.trim().is_empty() || a.chars().count() > 128) {
        bail!("an advisor id is 1 to 128 characters");
    }
    Ok(role)
}

/// Create a staff account with its role; fails if it exists.
pub async fn add(
    pool: &PgPool,
    name: &str,
    password: SecretString,
    role: Role,
    advisor: Option<&str>,
) -> anyhow::Result<()> {
    let name = validate_username(name)?;
    if !ande_gateway::auth::add_staff(pool, name, password, role, advisor).await? {
        bail!(UserError::Exists(name.into()));
    }
    Ok(())
}

/// Change an account's role and advisor.
pub async fn set_role(
    pool: &PgPool,
    name: &str,
    role: Role,
    advisor: Option<&str>,
) -> anyhow::Result<()> {
    let name = validate_username(name)?;
    // Without --advisor a sales account keeps its advisor.
    let advisor = advisor.map(Some);
    if !ande_gateway::auth::set_role(pool, name, Some(role), advisor).await? {
        bail!(UserError::Missing(name.into()));
    }
    Ok(())
}

/// Disable (or enable again) an account; its tokens stop working either way.
pub async fn set_disabled(pool: &PgPool, name: &str, disabled: bool) -> anyhow::Result<()> {
    let name = validate_username(name)?;
    if !ande_gateway::auth::set_disabled(pool, name, disabled).await? {
        bail!(UserError::Missing(name.into()));
    }
    Ok(())
}

/// Change a staff account's password; fails if it does not exist.
pub async fn passwd(pool: &PgPool, name: &str, password: SecretString) -> anyhow::Result<()> {
    let name = validate_username(name)?;
    if !ande_gateway::auth::staff_exists(pool, name).await? {
        bail!(UserError::Missing(name.into()));
    }
    ande_gateway::auth::set_staff_password(pool, name, password).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn passwords_are_one_line_and_not_empty() {
        assert_eq!(
            read_password(&b"s3cret\n"[..]).unwrap().expose_secret(),
            "s3cret"
        );
        assert_eq!(
            read_password(&b"with space\r\nnext line"[..])
                .unwrap()
                .expose_secret(),
            "with space"
        );
        assert_eq!(
            read_password(&b"no newline"[..]).unwrap().expose_secret(),
            "no newline"
        );
        let empty = read_password(&b"\n"[..]).unwrap_err();
        assert_eq!(
            empty.downcast_ref::<UserError>(),
            Some(&UserError::EmptyPassword)
        );
        assert!(read_password(&b""[..]).is_err());
    }

    #[test]
    fn usernames_are_single_tokens() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username(&"x".repeat(65)).is_err());
    }
}
