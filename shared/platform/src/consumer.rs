//! The durable pull-consumer loop that every consuming service runs.
//!
//! One mechanism for the whole workspace, so the rules hold everywhere:
//! - explicit acks, sent only after the handler returns, i.e. after its effects are committed;
//! - messages arrive in batches (`ready_chunks`): one when idle (low latency), many under a
//!   backlog, so a handler can commit several events in one transaction;
//! - a message that cannot be decoded is dead-lettered and acked: it never blocks the queue;
//! - a handler error means "infrastructure unavailable" (Postgres down, NATS publish failing):
//!   the whole batch is retried with backoff while the messages are kept alive with progress
//!   acks, so nothing is lost and nothing burns its delivery count;
//! - per-message `Retry` naks with a delay; when the delivery count reaches `max_deliver` the
//!   message is dead-lettered instead of retried forever; so is a message that keeps coming
//!   back unsettled (its consumer crashed or hung on it), before it is processed again;
//! - a batch still being worked on is kept alive with progress acks, so a slow transaction is
//!   not redelivered to another worker meanwhile;
//! - on shutdown the loop stops taking messages and finishes the batch in hand; a batch stuck
//!   retrying is nak'd, and so are messages prefetched but not started, so another worker takes
//!   them at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ande_events::Event;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{Bus, BusError};

/// How a consumer is set up on the server. Creating it is idempotent: every worker process of a
/// service uses the same durable name and so shares the same consumer (work is split between them).
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub durable: String,
    pub filter_subject: String,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub batch: usize,
}

impl ConsumerSpec {
    pub fn new(durable: &str, filter_subject: String) -> Self {
        Self {
            durable: durable.to_string(),
            filter_subject,
            max_deliver: 10,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            batch: 64,
        }
    }
}

/// One decoded message handed to a handler.
pub struct Delivery<E> {
    pub event: E,
    pub msg: Message,
    /// A span whose parent is the producer's trace; run the message's work inside it.
    pub span: tracing::Span,
    pub stream_seq: u64,
    /// 1 on first delivery.
    pub delivered: i64,
}

/// What to do with a message once the handler has looked at it.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Effects committed (or the message was a duplicate): acknowledge.
    Ack,
    /// Try again later (a retryable failure of this message alone).
    Retry { after: Duration, reason: String },
    /// Will never succeed: keep it for an operator.
    DeadLetter(String),
}

/// A service's message handler. `Err` means the infrastructure failed (retry the whole batch);
/// `Ok` carries one disposition per delivery, in order.
pub trait Handler: Send + Sync + 'static {
    type Event: Event + Send + Sync + 'static;
    fn handle(
        &self,
        batch: &[Delivery<Self::Event>],
    ) -> impl Future<Output = anyhow::Result<Vec<Disposition>>> + Send;
}

/// The consumer's configuration on the server, starting at the beginning of the stream (replay
/// changes `deliver_policy` and nothing else).
pub fn server_config(spec: &ConsumerSpec) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: spec.ack_wait,
        // The server gives up a little after we do: a message delivered `max_deliver` times
        // without being settled (its consumer crashed on it, or timed out) is dead-lettered by
        // `process` on its next delivery, never silently dropped.
        max_deliver: spec.max_deliver + SERVER_DELIVERY_MARGIN,
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    }
}

/// Create the durable consumer if missing (idempotent).
pub async fn ensure_consumer(bus: &Bus, spec: &ConsumerSpec) -> Result<PullConsumer, BusError> {
    let stream = bus
        .js
        .get_stream(bus.subjects.stream())
        .await
        .map_err(|e| BusError::JetStream(format!("stream {}: {e}", bus.subjects.stream())))?;
    stream
        .get_or_create_consumer(&spec.durable, server_config(spec))
        .await
        .map_err(|e| BusError::JetStream(format!("consumer {}: {e}", spec.durable)))
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// See `ensure_consumer`.
const SERVER_DELIVERY_MARGIN: i64 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The server sends a heartbeat this often while idle; a missed one means the connection is
/// stale and the message stream is rebuilt.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Run the consumer until `shutdown` is cancelled.
pub async fn run<H: Handler>(
    bus: Bus,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer = ensure_consumer(&bus, &spec).await?;
    tracing::info!(consumer = %spec.durable, subject = %spec.filter_subject, "consuming");
    while !shutdown.is_cancelled() {
        let messages = match consumer
            .stream()
            .max_messages_per_batch(spec.batch)
            .heartbeat(HEARTBEAT)
            .expires(HEARTBEAT * 6)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, error = %e, "cannot pull; retrying");
                sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        let mut chunks = messages.ready_chunks(spec.batch);
        loop {
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => break,
                c = chunks.next() => c,
            };
            let Some(chunk) = chunk else { break };
            let mut batch = Vec::with_capacity(chunk.len());
            let mut broken = false;
            for item in chunk {
                match item {
                    Ok(m) => batch.push(m),
                    Err(e) => {
                        tracing::warn!(consumer = %spec.durable, error = %e, "message stream error");
                        broken = true;
                    }
                }
            }
            process(&bus, &spec, handler.as_ref(), batch, &shutdown).await;
            if broken {
                break;
            }
        }
        if shutdown.is_cancelled() {
            // Hand back what was prefetched but not started, so another worker takes it now
            // rather than after ack_wait.
            use futures::FutureExt;
            while let Some(Some(chunk)) = chunks.next().now_or_never() {
                for m in chunk.into_iter().flatten() {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                }
            }
        } else {
            sleep_or_shutdown(Duration::from_millis(500), &shutdown).await;
        }
    }
    tracing::info!(consumer = %spec.durable, "consumer stopped");
    Ok(())
}

async fn process<H: Handler>(
    bus: &Bus,
    spec: &ConsumerSpec,
    handler: &H,
    batch: Vec<Message>,
    shutdown: &CancellationToken,
) {
    let deliveries = decode::<H::Event>(bus, spec, batch).await;
    if deliveries.is_empty() {
        return;
    }
    let Some(dispositions) = handle_until_done(spec, handler, &deliveries, shutdown).await else {
        return;
    };
    debug_assert_eq!(dispositions.len(), deliveries.len());
    settle(bus, spec, &deliveries, dispositions).await;
}

/// The batch's messages as deliveries of `E`; one that came back too often unsettled, or cannot
/// be decoded, is dead-lettered here and left out.
async fn decode<E: Event>(bus: &Bus, spec: &ConsumerSpec, batch: Vec<Message>) -> Vec<Delivery<E>> {
    let mut deliveries = Vec::with_capacity(batch.len());
    for msg in batch {
        let (stream_seq, delivered) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        if delivered > 1 {
            crate::metrics::CONSUMER_REDELIVERED
                .with_label_values(&[&spec.durable])
                .inc();
        }
        if delivered > spec.max_deliver {
            let why = format!("delivered {delivered} times without being settled (the consumer may be crashing on it)");
            tracing::warn!(consumer = %spec.durable, seq = stream_seq, "{why}; dead-lettering");
            settle_dead_letter(bus, spec, &msg, "max_deliver", &why).await;
            continue;
        }
        match E::decode_checked(&msg.payload) {
            Ok(event) => {
                let event_id = event.meta().map(|m| m.event_id.clone()).unwrap_or_default();
                let correlation_id = event
                    .meta()
                    .map(|m| m.correlation_id.clone())
                    .unwrap_or_default();
                let span = tracing::info_span!("consume", otel.kind = "consumer", consumer = %spec.durable, seq = stream_seq, delivered, %event_id, %correlation_id);
                crate::telemetry::extract_into(msg.headers.as_ref(), &span);
                deliveries.push(Delivery {
                    event,
                    msg,
                    span,
                    stream_seq,
                    delivered,
                });
            }
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, seq = stream_seq, error = %e, "dead-lettering an undecodable message");
                settle_dead_letter(bus, spec, &msg, "undecodable", &e.to_string()).await;
            }
        }
    }
    deliveries
}

/// Hand the batch to the handler until it answers, retrying with backoff (and keeping the
/// messages from being redelivered meanwhile). `None` when shutdown came first: the messages
/// were handed back.
async fn handle_until_done<H: Handler>(
    spec: &ConsumerSpec,
    handler: &H,
    deliveries: &[Delivery<H::Event>],
    shutdown: &CancellationToken,
) -> Option<Vec<Disposition>> {
    let mut backoff = FIRST_BACKOFF;
    let _timer = crate::metrics::CONSUME_BATCH
        .with_label_values(&[&spec.durable])
        .start_timer();
    loop {
        let work = handler
            .handle(deliveries)
            .instrument(tracing::info_span!("batch", size = deliveries.len()));
        match keep_alive(work, deliveries, spec.ack_wait).await {
            Ok(d) => return Some(d),
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, error = format!("{e:#}"), retry_in = ?backoff, "batch failed; will retry");
                for d in deliveries {
                    let _ = d.msg.ack_with(AckKind::Progress).await;
                }
                if sleep_or_shutdown(backoff, shutdown).await {
                    for d in deliveries {
                        let _ = d.msg.ack_with(AckKind::Nak(None)).await;
                    }
                    return None;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Ack, retry or dead-letter each message as the handler decided.
async fn settle<E>(
    bus: &Bus,
    spec: &ConsumerSpec,
    deliveries: &[Delivery<E>],
    dispositions: Vec<Disposition>,
) {
    for (i, d) in deliveries.iter().enumerate() {
        let disposition = dispositions.get(i).cloned().unwrap_or(Disposition::Retry {
            after: FIRST_BACKOFF,
            reason: "handler gave no disposition".into(),
        });
        match disposition {
            Disposition::Ack => {
                if let Err(e) = d.msg.ack().await {
                    tracing::warn!(error = %e, seq = d.stream_seq, "ack failed; the message will be redelivered (handled idempotently)");
                }
            }
            Disposition::Retry { reason, .. } if d.delivered >= spec.max_deliver => {
                let why = format!("gave up after {} deliveries: {reason}", d.delivered);
                settle_dead_letter(bus, spec, &d.msg, "max_deliver", &why).await;
            }
            Disposition::Retry { after, reason } => {
                tracing::info!(parent: &d.span, %reason, ?after, "retrying later");
                let _ = d.msg.ack_with(AckKind::Nak(Some(after))).await;
            }
            Disposition::DeadLetter(reason) => {
                tracing::warn!(parent: &d.span, %reason, "dead-lettering");
                settle_dead_letter(bus, spec, &d.msg, "rejected", &reason).await;
            }
        }
    }
}

/// Run `work`, telling the server every third of `ack_wait` that the batch is still being
/// worked on, so a slow transaction is not redelivered to another worker while it still runs.
async fn keep_alive<T, E>(
    work: impl std::future::Future<Output = T>,
    deliveries: &[Delivery<E>],
    ack_wait: Duration,
) -> T {
    let mut work = std::pin::pin!(work);
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                for d in deliveries {
                    let _ = d.msg.ack_with(AckKind::Progress).await;
                }
            }
        }
    }
}

/// Dead-letter `msg` then ack it; if the dead letter cannot be stored, nak so the message is not
/// lost. `kind` is the reason's category for the metric (`max_deliver`, `undecodable`,
/// `rejected`), `reason` the text kept with the message.
async fn settle_dead_letter(
    bus: &Bus,
    spec: &ConsumerSpec,
    msg: &Message,
    kind: &'static str,
    reason: &str,
) {
    match bus.dead_letter(&spec.durable, msg, reason).await {
        Ok(()) => {
            crate::metrics::DEAD_LETTERS
                .with_label_values(&[spec.durable.as_str(), kind])
                .inc();
            let _ = msg.ack().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store dead letter; leaving the message for redelivery");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// Sleep, or return early (true) when shutdown is requested.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Exponential backoff for a message's n-th delivery: 1s, 2s, 4s … capped at 5 minutes.
pub fn backoff_for(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 9) as u32 - 1;
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(300))
}

/// What a handler that writes to Postgres stores for a batch, inside a transaction the caller
/// owns: per message, what was stored, or why it never can be (to dead-letter). Used through
/// [`store_batch`], which provides the one-by-one fallback.
pub trait StoreInTx<E>: Sync {
    type Stored: Send;
    fn store<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        batch: &'a [Delivery<E>],
    ) -> impl Future<Output = Result<Vec<Result<Self::Stored, String>>, sqlx::Error>> + Send + 'a;
}

/// Attempts at a batch, then at each message, that fail by contention (a statement timeout, a
/// deadlock …) before the batch is split, then before the message is dead-lettered.
pub const CONTENTION_ATTEMPTS: u32 = 3;
/// Pause between those attempts (doubling).
const CONTENTION_PAUSE: Duration = Duration::from_millis(200);

/// Store a batch in one transaction (one commit for many messages). If that transaction fails
/// for a reason other than Postgres being unreachable (bad data in one message, or contention
/// that persists over [`CONTENTION_ATTEMPTS`]), redo the batch one message per transaction, so
/// only the offending message fails (to be dead-lettered, with the error) and the queue never
/// blocks on it. Postgres unreachable is an `Err`: the loop retries the batch later, for as
/// long as it takes.
pub async fn store_batch<E: Sync, S: StoreInTx<E>>(
    pool: &sqlx::PgPool,
    batch: &[Delivery<E>],
    store: &S,
) -> anyhow::Result<Vec<Result<S::Stored, String>>> {
    use anyhow::Context;
    match store_with_retries(pool, batch, store).await {
        Ok(out) => return Ok(out),
        Err(e) if crate::db::is_unreachable(&e) => return Err(e).context("storing a batch"),
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "batch transaction failed; redoing one by one")
        }
    }
    let mut out = Vec::with_capacity(batch.len());
    for one in batch.chunks(1) {
        match store_with_retries(pool, one, store).await {
            Ok(mut stored) => out.push(stored.pop().unwrap_or_else(|| Err("not processed".into()))),
            Err(e) if crate::db::is_unreachable(&e) => return Err(e).context("storing a message"),
            Err(e) => out.push(Err(format!("cannot be stored: {e}"))),
        }
    }
    Ok(out)
}

/// One transaction for `batch`, tried again (up to [`CONTENTION_ATTEMPTS`] in all) while it
/// fails by contention.
async fn store_with_retries<E: Sync, S: StoreInTx<E>>(
    pool: &sqlx::PgPool,
    batch: &[Delivery<E>],
    store: &S,
) -> Result<Vec<Result<S::Stored, String>>, sqlx::Error> {
    let mut pause = CONTENTION_PAUSE;
    let mut attempt = 1;
    loop {
        let result = async {
            let mut tx = pool.begin().await?;
            let out = store.store(&mut tx, batch).await?;
            tx.commit().await?;
            Ok(out)
        }
        .instrument(transaction_span(batch))
        .await;
        match result {
            Err(e) if crate::db::is_contention(&e) && attempt < CONTENTION_ATTEMPTS => {
                tracing::info!(error = %e, attempt, size = batch.len(), "contention; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The span of one transaction: in the first message's trace (for a batch of one, the usual
/// case at low load, that is the message's own), linked to the trace of every other message.
fn transaction_span<E>(batch: &[Delivery<E>]) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(first) = batch.first() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(parent: &first.span, "transaction", size = batch.len());
    for d in &batch[1..] {
        span.add_link(
            opentelemetry::trace::TraceContextExt::span(&d.span.context())
                .span_context()
                .clone(),
        );
    }
    span
}

/// Per-message work of a handler that writes to Postgres: see [`apply_batch`].
pub trait ApplyInTx<E>: Sync {
    fn apply<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        d: &'a Delivery<E>,
    ) -> impl Future<Output = Result<Disposition, sqlx::Error>> + Send + 'a;
}

/// An [`ApplyInTx`] handler seen as storing a batch message by message.
struct PerMessage<'h, A>(&'h A);

impl<E: Sync, A: ApplyInTx<E>> StoreInTx<E> for PerMessage<'_, A> {
    type Stored = Disposition;
    async fn store(
        &self,
        tx: &mut sqlx::PgConnection,
        batch: &[Delivery<E>],
    ) -> Result<Vec<Result<Disposition, String>>, sqlx::Error> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            out.push(Ok(self.0.apply(tx, d).await?));
        }
        Ok(out)
    }
}

/// Apply a batch with a per-message handler, in one transaction with [`store_batch`]'s fallback;
/// a message that can never be stored is dead-lettered.
pub async fn apply_batch<E: Sync, A: ApplyInTx<E>>(
    pool: &sqlx::PgPool,
    batch: &[Delivery<E>],
    handler: &A,
) -> anyhow::Result<Vec<Disposition>> {
    let stored = store_batch(pool, batch, &PerMessage(handler)).await?;
    Ok(stored
        .into_iter()
        .map(|r| r.unwrap_or_else(Disposition::DeadLetter))
        .collect())
}
