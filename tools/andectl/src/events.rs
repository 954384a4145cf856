//! `andectl events tail` and `andectl events show`: the event log, decoded, as JSON lines.
//!
//! Reading never touches the services' durable consumers. `tail` uses an ordered consumer (an
//! ephemeral consumer that the client re-creates on any gap, so lines come in stream order with
//! none missing); `show` and the other commands read ranges through [`Scan`], an ephemeral pull
//! consumer without acks that the server removes once it is idle. A scan stops at the stream's
//! last sequence as it was when the scan began, so it terminates however busy the stream is.

use std::io::Write;
use std::time::Duration;

use ande_events::{EventKind, Subjects};
use ande_platform::bus::Bus;
use anyhow::{bail, Context};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::decode::{rfc3339, StoredMsg};

/// How far before an action id's own time (UUIDv7) `show --action` starts reading, for clock
/// skew between the gateway and the NATS server.
const ACTION_LOOKBACK: Duration = Duration::from_secs(300);

pub use ande_ops::scan::{count, Scan, Start};

/// A subject as an operator may write it: a full subject (wildcards allowed), a suffix after the
/// prefix (`events.v1.lead.outcome`), or a short name (`action`, `subscription`, `outcome`,
/// `wechat`).
pub fn resolve_subject(subjects: &Subjects, s: &str) -> anyhow::Result<String> {
    let s = s.trim();
    let short = match s {
        "action" | "action.recorded" => Some(EventKind::ActionRecorded),
        "subscription" | "subscription.changed" => Some(EventKind::SubscriptionChanged),
        "outcome" | "lead.outcome" => Some(EventKind::LeadOutcome),
        "wechat" | "wechat.subscription" => Some(EventKind::WechatSubscription),
        "change" | "lead.changed" => Some(EventKind::LeadChanged),
        _ => None,
    };
    if let Some(k) = short {
        return Ok(subjects.event(k));
    }
    if s.starts_with(&format!("{}.", subjects.prefix())) {
        return Ok(s.to_string());
    }
    if s.starts_with("events.") {
        return Ok(format!("{}.{s}", subjects.prefix()));
    }
    bail!(
        "unknown subject {s:?}: give a full subject ({}), a suffix (events.v1.lead.outcome) or one of action, subscription, outcome, wechat",
        subjects.event(EventKind::ActionRecorded)
    )
}

#[derive(Clone, Debug, Default)]
pub struct TailOptions {
    /// Only this subject (see [`resolve_subject`]); all events when `None`.
    pub subject: Option<String>,
    /// Only events of this correlation id (action id).
    pub correlation: Option<String>,
    /// Start this far back instead of with the next new event.
    pub since: Option<DateTime<Utc>>,
}

/// Print events as they arrive, one JSON line each, until `stop`. Returns how many were printed.
pub async fn tail<W: Write + Send>(
    bus: &Bus,
    opts: &TailOptions,
    out: &mut W,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let stream = crate::conn::events_stream(bus).await?;
    let filter = match &opts.subject {
        Some(s) => resolve_subject(&bus.subjects, s)?,
        None => bus.subjects.all_events(),
    };
    let deliver_policy = match opts.since {
        Some(t) => Start::Time(t).deliver_policy()?,
        None => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .with_context(|| format!("following {filter}"))?;
    let mut messages = consumer.messages().await.context("following the stream")?;
    let mut printed = 0;
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => break,
            m = messages.next() => m,
        };
        let Some(item) = item else { break };
        let msg = item.context("following the stream")?;
        let (stored, _) = StoredMsg::from_delivery(&msg)?;
        if let Some(c) = &opts.correlation {
            if stored.correlation_id().as_deref() != Some(c.as_str()) {
                continue;
            }
        }
        writeln!(out, "{}", stored.to_line())?;
        out.flush()?;
        printed += 1;
    }
    Ok(printed)
}

/// What `events show` prints.
#[derive(Clone, Debug)]
pub enum ShowQuery {
    Seq(u64),
    Range {
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    },
    /// Every event of one action (its correlation id), and its dead letters if any.
    Action(String),
}

/// Print the events the query selects as JSON lines; returns how many.
pub async fn show<W: Write>(bus: &Bus, query: &ShowQuery, out: &mut W) -> anyhow::Result<u64> {
    let stream = crate::conn::events_stream(bus).await?;
    let name = bus.subjects.stream();
    match query {
        ShowQuery::Seq(seq) => {
            let m = stream
                .get_raw_message(*seq)
                .await
                .with_context(|| format!("no message with sequence {seq} in {name}"))?;
            writeln!(
                out,
                "{}",
                StoredMsg::from_stream_message(&name, m).to_line()
            )?;
            Ok(1)
        }
        ShowQuery::Range { since, until } => {
            let mut scan =
                Scan::open(&stream, &bus.subjects.all_events(), Start::Time(*since)).await?;
            let mut n = 0;
            while let Some(m) = scan.next().await? {
                if until.is_some_and(|u| m.time > u) {
                    break;
                }
                writeln!(out, "{}", m.to_line())?;
                n += 1;
            }
            scan.close().await;
            Ok(n)
        }
        ShowQuery::Action(id) => {
            let id = id.trim();
            // An action id is a UUIDv7: it says when the chain began, so the read starts there.
            let start = uuid::Uuid::parse_str(id)
                .ok()
                .and_then(|u| u.get_timestamp())
                .and_then(|ts| {
                    let (secs, nanos) = ts.to_unix();
                    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
                })
                .map_or(Start::All, |t| {
                    Start::Time(t - chrono::Duration::from_std(ACTION_LOOKBACK).unwrap_or_default())
                });
            let mut n = 0;
            let mut sources = vec![(stream, bus.subjects.all_events())];
            if let Ok(dlq) = crate::conn::dlq_stream(bus).await {
                sources.push((dlq, bus.subjects.all_dead_letters()));
            }
            for (s, filter) in sources {
                let mut scan = Scan::open(&s, &filter, start).await?;
                while let Some(m) = scan.next().await? {
                    if m.correlation_id().as_deref() == Some(id) {
                        writeln!(out, "{}", m.to_line())?;
                        n += 1;
                    }
                }
                scan.close().await;
            }
            if n == 0 {
                bail!(
                    "no event with correlation id {id} in {name} (since {})",
                    describe_start(start)
                );
            }
            Ok(n)
        }
    }
}

pub fn describe_start(s: Start) -> String {
    match s {
        Start::All => "the beginning".into(),
        Start::Seq(n) => format!("sequence {n}"),
        Start::Time(t) => rfc3339(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_resolve_from_short_names_and_suffixes() {
        let s = Subjects::new("p1").unwrap();
        assert_eq!(
            resolve_subject(&s, "outcome").unwrap(),
            "p1.events.v1.lead.outcome"
        );
        assert_eq!(
            resolve_subject(&s, "events.v1.action.recorded").unwrap(),
            "p1.events.v1.action.recorded"
        );
        assert_eq!(resolve_subject(&s, "p1.events.>").unwrap(), "p1.events.>");
        assert!(resolve_subject(&s, "other.events.>").is_err());
    }
}
