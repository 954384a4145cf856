//! `andectl notifier`: the notification queue, through the notifier's request/reply methods
//! (`<prefix>.rpc.notifier.*`): list by state, retry failed ones, pause and resume sending.

use std::io::Write;

use ande_contracts::notifier::{
    ListNotifications, NotificationFilter, Pause, PauseRequest, PauseState, Resume, ResumeRequest,
    Retry, RetryRequest,
};
use ande_contracts::vocab::NotificationState;
use ande_platform::bus::Bus;
use chrono::{DateTime, Utc};

use crate::conn::ask;

/// Oldest first, one JSON line per notification.
pub async fn list(
    bus: &Bus,
    state: NotificationState,
    advisor: Option<String>,
    limit: u32,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let f = NotificationFilter {
        state,
        advisor_id: advisor,
        limit: Some(limit),
    };
    for n in ask::<ListNotifications>(bus, &f).await?.notifications {
        writeln!(out, "{}", serde_json::to_string(&n)?)?;
    }
    Ok(())
}

pub async fn retry(bus: &Bus, which: RetryRequest, out: &mut impl Write) -> anyhow::Result<()> {
    let r = ask::<Retry>(bus, &which).await?;
    writeln!(out, "{} failed notification(s) queued again", r.requeued)?;
    Ok(())
}

pub async fn pause(
    bus: &Bus,
    until: Option<DateTime<Utc>>,
    reason: Option<String>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let p = ask::<Pause>(bus, &PauseRequest { until, reason }).await?;
    writeln!(out, "{}", describe(&p))?;
    Ok(())
}

pub async fn resume(bus: &Bus, out: &mut impl Write) -> anyhow::Result<()> {
    let r = ask::<Resume>(bus, &ResumeRequest::default()).await?;
    writeln!(
        out,
        "sending resumed; {} queued notification(s) due now",
        r.requeued
    )?;
    Ok(())
}

/// "sending" or "paused until … (reason)".
pub fn describe(p: &PauseState) -> String {
    match p.paused_until {
        None => "sending".into(),
        Some(_) if p.without_end() => format!("paused until resumed ({})", reason(p)),
        Some(u) => format!("paused until {} ({})", u.to_rfc3339(), reason(p)),
    }
}

fn reason(p: &PauseState) -> &str {
    p.reason.as_deref().unwrap_or("no reason given")
}
