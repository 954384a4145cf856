//! Reading a range of a stream without touching the services' durable consumers: [`Scan`], an
//! ephemeral pull consumer without acks that the server removes once it is idle. A scan stops at
//! the stream's last sequence as it was when the scan began, so it terminates however busy the
//! stream is.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::decode::{to_offset, StoredMsg};

/// The server forgets a scan's consumer after this long without a pull (if andectl dies).
const SCAN_INACTIVE: Duration = Duration::from_secs(60);
/// A scan that expects more messages but receives none for this long has failed.
const SCAN_IDLE: Duration = Duration::from_secs(10);
/// Messages pulled per request by a scan.
const SCAN_BATCH: usize = 256;

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Start {
    All,
    Seq(u64),
    Time(DateTime<Utc>),
}

impl Start {
    pub fn deliver_policy(self) -> anyhow::Result<DeliverPolicy> {
        Ok(match self {
            Start::All => DeliverPolicy::All,
            Start::Seq(n) => DeliverPolicy::ByStartSequence {
                start_sequence: n.max(1),
            },
            Start::Time(t) => DeliverPolicy::ByStartTime {
                start_time: to_offset(t)?,
            },
        })
    }
}

/// A one-off read of the messages on `filter` from `start` to the stream's current end.
pub struct Scan {
    stream: Stream,
    consumer_name: String,
    messages: Option<pull::Stream>,
    /// Matching messages when the scan began (at most; it stops at `end_seq`).
    total: u64,
    end_seq: u64,
    received: u64,
    done: bool,
}

impl Scan {
    pub async fn open(stream: &Stream, filter: &str, start: Start) -> anyhow::Result<Self> {
        let name = stream.cached_info().config.name.clone();
        let end_seq = stream
            .get_info()
            .await
            .with_context(|| format!("stream {name}"))?
            .state
            .last_sequence;
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_string(),
                deliver_policy: start.deliver_policy()?,
                ack_policy: AckPolicy::None,
                inactive_threshold: SCAN_INACTIVE,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("reading {filter} from stream {name}"))?;
        let info = consumer.cached_info();
        let total = info.num_pending;
        let consumer_name = info.name.clone();
        let done = total == 0 || end_seq == 0;
        let messages = if done {
            None
        } else {
            Some(
                consumer
                    .stream()
                    .max_messages_per_batch(SCAN_BATCH)
                    .messages()
                    .await
                    .context("pulling messages")?,
            )
        };
        Ok(Self {
            stream: stream.clone(),
            consumer_name,
            messages,
            total,
            end_seq,
            received: 0,
            done,
        })
    }

    /// How many messages match (counted when the scan began; new ones past the end are not read).
    pub fn total(&self) -> u64 {
        self.total
    }

    pub async fn next(&mut self) -> anyhow::Result<Option<StoredMsg>> {
        if self.done {
            return Ok(None);
        }
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let item = tokio::time::timeout(SCAN_IDLE, messages.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no message for {SCAN_IDLE:?} while reading (received {} of {})",
                    self.received,
                    self.total
                )
            })?;
        let Some(item) = item else {
            self.done = true;
            return Ok(None);
        };
        let msg = item.context("reading the stream")?;
        let (stored, pending) = StoredMsg::from_delivery(&msg)?;
        if stored.seq > self.end_seq {
            self.done = true;
            return Ok(None);
        }
        self.received += 1;
        if pending == 0 || stored.seq >= self.end_seq || self.received >= self.total {
            self.done = true;
        }
        Ok(Some(stored))
    }

    /// Remove the scan's consumer now rather than when the server notices it is idle.
    pub async fn close(self) {
        drop(self.messages);
        let _ = self.stream.delete_consumer(&self.consumer_name).await;
    }
}

/// How many messages on `filter` the stream holds from `start` on.
pub async fn count(stream: &Stream, filter: &str, start: Start) -> anyhow::Result<u64> {
    let scan = Scan::open(stream, filter, start).await?;
    let n = scan.total();
    scan.close().await;
    Ok(n)
}
