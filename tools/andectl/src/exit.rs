//! Exit codes that scripts can rely on, and how an error maps to one.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | the command failed (nothing found, refused, a service is unhealthy, …) |
//! | 2 | usage: bad arguments (clap exits with it) |
//! | 3 | NATS or Postgres cannot be reached |
//!
//! Commands return `anyhow::Error`; [`code_for`] looks through the cause chain for a connection
//! failure, whichever layer produced it (the platform's [`BusError::Connect`] and
//! [`DbError::Connect`], an I/O error from sqlx, or this module's [`Unreachable`]).

use ande_platform::bus::BusError;
use ande_platform::db::DbError;

pub const SUCCESS: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNREACHABLE: u8 = 3;

/// A dependency (NATS, Postgres) that does not answer.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {what}: {reason}")]
pub struct Unreachable {
    pub what: &'static str,
    pub reason: String,
}

/// The exit code for an error: [`UNREACHABLE`] when NATS or Postgres could not be reached,
/// [`FAILURE`] otherwise.
pub fn code_for(e: &anyhow::Error) -> u8 {
    let unreachable = e.chain().any(|cause| {
        cause.is::<Unreachable>()
            || matches!(
                cause.downcast_ref::<BusError>(),
                Some(BusError::Connect { .. })
            )
            || matches!(cause.downcast_ref::<DbError>(), Some(DbError::Connect(_)))
            || matches!(
                cause.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
            )
    });
    if unreachable {
        UNREACHABLE
    } else {
        FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn connection_failures_map_to_3_through_context() {
        let bus: anyhow::Error = BusError::Connect {
            url: "nats://x".into(),
            reason: "refused".into(),
        }
        .into();
        assert_eq!(code_for(&bus.context("events tail")), UNREACHABLE);
        let db = Err::<(), _>(DbError::Connect(sqlx::Error::PoolTimedOut))
            .context("user add")
            .unwrap_err();
        assert_eq!(code_for(&db), UNREACHABLE);
        let other: anyhow::Error = BusError::JetStream("stream not found".into()).into();
        assert_eq!(code_for(&other), FAILURE);
        assert_eq!(code_for(&anyhow::anyhow!("no such dead letter")), FAILURE);
    }
}
