//! The dead letters consumers set aside: list, show, retry, purge (`andectl dlq`, and the staff
//! console for admins).
//!
//! A dead letter (`ande_platform::bus::Bus::dead_letter`) is the original message, payload and
//! headers, published on `<prefix>.dlq.<consumer>` in the `<PREFIX>_DLQ` stream with headers
//! saying why (`Ande-Dlq-Reason`), which consumer, the original subject and stream sequence, how
//! many deliveries it had and when.
//!
//! Retry republishes the original payload and headers to the original subject (the event stream
//! stores it as a new message), then deletes the dead letter. Its `Nats-Msg-Id` is new,
//! `<original event id>-retry-<dead letter seq>`, because JetStream would drop a publish with the
//! original id as a duplicate inside its duplicate window; the consumers' own idempotency (by
//! action id, by event id) still makes a retried event count once. Every consumer of that subject
//! sees the retried message; each subject has one consumer today, and they are idempotent anyway.
//! Retry does not fix anything: fix the cause (a bug, a bad row) first, or the event comes back.

use std::collections::BTreeMap;
use std::io::Write;

use ande_events::headers;
use ande_platform::bus::{dlq_headers, Bus};
use anyhow::{bail, Context};
use async_nats::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use crate::decode::{rfc3339, short_type, StoredMsg};
use crate::scan::{Scan, Start};
use crate::streams as conn;

/// A dead letter with its bookkeeping headers read.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub msg: StoredMsg,
    pub consumer: String,
    pub reason: String,
    pub original_subject: String,
    pub original_seq: Option<u64>,
    pub deliveries: Option<i64>,
    pub at: Option<String>,
}

impl DeadLetter {
    pub fn from_msg(msg: StoredMsg) -> Self {
        let h = |n: &str| msg.header(n).map(String::from);
        let consumer = h(dlq_headers::CONSUMER)
            .unwrap_or_else(|| msg.subject.rsplit('.').next().unwrap_or("?").to_string());
        Self {
            consumer,
            reason: h(dlq_headers::REASON).unwrap_or_default(),
            original_subject: h(dlq_headers::SUBJECT).unwrap_or_default(),
            original_seq: h(dlq_headers::STREAM_SEQ).and_then(|s| s.parse().ok()),
            deliveries: h(dlq_headers::DELIVERIES).and_then(|s| s.parse().ok()),
            at: h(dlq_headers::AT),
            msg,
        }
    }

    pub fn seq(&self) -> u64 {
        self.msg.seq
    }

    /// The original event, decoded.
    pub fn event(&self) -> Result<Value, String> {
        self.msg.event_json()
    }

    /// The dead letter as operators see it, fields in reading order.
    pub fn view(&self) -> DeadLetterView<'_> {
        let raw = self.msg.view();
        DeadLetterView {
            seq: self.msg.seq,
            stored_at: rfc3339(self.msg.time),
            consumer: &self.consumer,
            reason: &self.reason,
            deliveries: self.deliveries,
            dead_lettered_at: self.at.as_deref(),
            original: Original {
                subject: &self.original_subject,
                seq: self.original_seq,
            },
            kind: raw.kind,
            correlation_id: self.msg.correlation_id(),
            headers: raw.headers,
            event: raw.event,
            decode_error: raw.error,
            payload_bytes: raw.payload_bytes,
            payload_hex: raw.payload_hex,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView<'a> {
    pub seq: u64,
    pub stored_at: String,
    pub consumer: &'a str,
    pub reason: &'a str,
    pub deliveries: Option<i64>,
    pub dead_lettered_at: Option<&'a str>,
    pub original: Original<'a>,
    #[serde(rename = "type")]
    pub kind: Option<&'static str>,
    pub correlation_id: Option<String>,
    pub headers: BTreeMap<&'static str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
}

#[derive(Serialize)]
pub struct Original<'a> {
    pub subject: &'a str,
    pub seq: Option<u64>,
}

/// Every dead letter, oldest first; only `consumer`'s when given.
pub async fn list(bus: &Bus, consumer: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
    let stream = conn::dlq_stream(bus).await?;
    let filter = match consumer {
        Some(c) => bus.subjects.dead_letters(c),
        None => bus.subjects.all_dead_letters(),
    };
    let mut scan = Scan::open(&stream, &filter, Start::All).await?;
    let mut out = Vec::new();
    while let Some(m) = scan.next().await? {
        out.push(DeadLetter::from_msg(m));
    }
    scan.close().await;
    Ok(out)
}

pub async fn get(bus: &Bus, seq: u64) -> anyhow::Result<DeadLetter> {
    let stream = conn::dlq_stream(bus).await?;
    let name = bus.subjects.dlq_stream();
    let m = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("no dead letter with sequence {seq} in {name}"))?;
    Ok(DeadLetter::from_msg(StoredMsg::from_stream_message(
        &name, m,
    )))
}

/// The table `dlq ls` prints.
pub fn print_table<W: Write>(letters: &[DeadLetter], out: &mut W) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6}  {:<24}  {:<22}  {:>4}  {:<28}  {:<14}  {:<36}  REASON",
        "SEQ", "DEAD-LETTERED", "CONSUMER", "DLV", "ORIGINAL", "TYPE", "CORRELATION"
    )?;
    for d in letters {
        let original = format!(
            "{}#{}",
            d.original_subject
                .rsplit_once(".events.")
                .map_or(d.original_subject.as_str(), |(_, s)| s),
            d.original_seq.map_or("?".into(), |s| s.to_string())
        );
        let reason: String = d.reason.chars().take(80).collect();
        writeln!(
            out,
            "{:>6}  {:<24}  {:<22}  {:>4}  {:<28}  {:<14}  {:<36}  {reason}",
            d.seq(),
            rfc3339(d.msg.time),
            d.consumer,
            d.deliveries.map_or("?".into(), |n| n.to_string()),
            original,
            d.msg.kind().map_or("?", short_type),
            d.msg.correlation_id().unwrap_or_else(|| "-".into()),
        )?;
    }
    writeln!(out, "{} dead letter(s)", letters.len())
}

#[derive(Clone, Debug)]
pub struct Retried {
    pub dlq_seq: u64,
    pub subject: String,
    /// The event stream's sequence of the republished message.
    pub new_seq: u64,
    pub msg_id: String,
}

/// Republish one dead letter's original message to its original subject, then delete it.
pub async fn retry(bus: &Bus, seq: u64) -> anyhow::Result<Retried> {
    let d = get(bus, seq).await?;
    retry_letter(bus, &d).await
}

async fn retry_letter(bus: &Bus, d: &DeadLetter) -> anyhow::Result<Retried> {
    let events_prefix = format!("{}.events.", bus.subjects.prefix());
    if !d.original_subject.starts_with(&events_prefix) {
        bail!("dead letter {} came from {:?}, which is not an event subject of this environment; not retrying it", d.seq(), d.original_subject);
    }
    let original_id = original_event_id(bus, d).await;
    let msg_id = format!("{original_id}-retry-{}", d.seq());
    let mut h = HeaderMap::new();
    for (name, values) in d.msg.headers.iter() {
        let name: &str = name.as_ref();
        if name.starts_with("Ande-Dlq-") || name.eq_ignore_ascii_case("Nats-Msg-Id") {
            continue;
        }
        for v in values {
            h.append(name, v.as_str());
        }
    }
    h.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    let ack = bus
        .js
        .publish_with_headers(d.original_subject.clone(), h, d.msg.payload.clone())
        .await
        .context("republishing")?
        .await
        .context("the event stream did not store the retried event")?;
    if ack.duplicate {
        bail!("dead letter {} was already retried moments ago (JetStream saw {msg_id} as a duplicate); it is kept", d.seq());
    }
    let dlq = conn::dlq_stream(bus).await?;
    dlq.delete_message(d.seq()).await.with_context(|| {
        format!(
            "retried as stream seq {}, but could not delete dead letter {}",
            ack.sequence,
            d.seq()
        )
    })?;
    Ok(Retried {
        dlq_seq: d.seq(),
        subject: d.original_subject.clone(),
        new_seq: ack.sequence,
        msg_id,
    })
}

/// The id the original publish carried: the event's own id, else the original message's
/// `Nats-Msg-Id` if the event stream still has it, else a placeholder.
async fn original_event_id(bus: &Bus, d: &DeadLetter) -> String {
    if let Ok(ev) = d.event() {
        if let Some(id) = ev["meta"]["eventId"].as_str().filter(|s| !s.is_empty()) {
            return id.to_string();
        }
    }
    if let (Some(seq), Ok(stream)) = (d.original_seq, conn::events_stream(bus).await) {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if let Some(id) = crate::decode::header(&m.headers, "Nats-Msg-Id") {
                return id.to_string();
            }
        }
    }
    format!(
        "dlq-{}",
        d.msg.header(headers::CORRELATION_ID).unwrap_or("event")
    )
}

/// Retry every dead letter (of `consumer` if given), oldest first; stops at the first failure.
pub async fn retry_all(bus: &Bus, consumer: Option<&str>) -> anyhow::Result<Vec<Retried>> {
    let mut done = Vec::new();
    for d in list(bus, consumer).await? {
        let r = retry_letter(bus, &d)
            .await
            .with_context(|| format!("after retrying {} dead letter(s)", done.len()))?;
        done.push(r);
    }
    Ok(done)
}

/// Delete one dead letter.
pub async fn purge(bus: &Bus, seq: u64) -> anyhow::Result<()> {
    let stream = conn::dlq_stream(bus).await?;
    stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("no dead letter with sequence {seq}"))?;
    stream
        .delete_message(seq)
        .await
        .with_context(|| format!("deleting dead letter {seq}"))?;
    Ok(())
}

/// Delete every dead letter (of `consumer` if given); returns how many.
pub async fn purge_all(bus: &Bus, consumer: Option<&str>) -> anyhow::Result<u64> {
    let stream = conn::dlq_stream(bus).await?;
    let purge = match consumer {
        Some(c) => stream.purge().filter(bus.subjects.dead_letters(c)).await,
        None => stream.purge().await,
    };
    Ok(purge.context("purging dead letters")?.purged)
}
