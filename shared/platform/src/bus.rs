//! The event bus: one JetStream stream per environment, events published with their id as
//! `Nats-Msg-Id` (the rest of the envelope is in the payload), and dead letters in a stream of
//! their own.
//!
//! Streams use limits retention: events stay for `event_max_age` after every consumer has acked
//! them, which is what makes replay possible. The duplicate window makes a publish retried with
//! the same event id (`Nats-Msg-Id`) land once.

use std::time::Duration;

use ande_events::{Event, Subjects};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::config::CommonConfig;

/// How long JetStream remembers event ids to drop duplicate publishes. Two minutes is the server
/// default; longer costs memory per message. Beyond it, consumers' own idempotency takes over.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a publish waits for JetStream's ack before the caller treats the bus as down.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers of a dead letter, beside the original event's own headers.
pub mod dlq_headers {
    pub const REASON: &str = "Ande-Dlq-Reason";
    pub const CONSUMER: &str = "Ande-Dlq-Consumer";
    pub const SUBJECT: &str = "Ande-Dlq-Subject";
    pub const STREAM_SEQ: &str = "Ande-Dlq-Stream-Seq";
    pub const DELIVERIES: &str = "Ande-Dlq-Deliveries";
    pub const AT: &str = "Ande-Dlq-At";
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("JetStream did not acknowledge the publish in time")]
    AckTimeout,
}

/// A connected client plus JetStream context and this environment's subjects.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// How long dead letters are kept (`ANDE_RETENTION_DLQ`).
    pub dlq_max_age: Duration,
    /// Replicas of the streams this bus creates (their consumers inherit them).
    pub replicas: usize,
}

impl Bus {
    /// Connect, waiting for NATS to answer (services that must not start without it).
    pub async fn connect(config: &CommonConfig, name: &str) -> Result<Self, BusError> {
        Self::connect_with(
            config,
            async_nats::ConnectOptions::new()
                .name(name)
                .connection_timeout(Duration::from_secs(3)),
        )
        .await
    }

    /// Connect in the background: returns at once and keeps trying, so a service (the gateway)
    /// can start and answer 503 until NATS is there, then recover by itself.
    pub async fn connect_lazy(config: &CommonConfig, name: &str) -> Result<Self, BusError> {
        Self::connect_with(
            config,
            async_nats::ConnectOptions::new()
                .name(name)
                .retry_on_initial_connect(),
        )
        .await
    }

    async fn connect_with(
        config: &CommonConfig,
        options: async_nats::ConnectOptions,
    ) -> Result<Self, BusError> {
        let (urls, credentials) = split_servers(&config.nats_url);
        let options = match credentials {
            // Each service reads replies on its own inbox prefix, which the NATS permissions
            // (deploy/nats/ande-auth.conf) let only that user subscribe to.
            Some((user, password)) => options
                .custom_inbox_prefix(format!("_INBOX.{user}"))
                .user_and_password(user, password),
            None => options,
        };
        let client = options.connect(urls).await.map_err(|e| BusError::Connect {
            url: crate::config::redact_url(&config.nats_url),
            reason: e.to_string(),
        })?;
        Ok(Self::from_client(client, config))
    }

    pub fn from_client(client: async_nats::Client, config: &CommonConfig) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(PUBLISH_ACK_TIMEOUT);
        Self {
            client,
            js,
            subjects: config.subjects(),
            dlq_max_age: config.retention.dead_letters,
            replicas: config.stream_replicas,
        }
    }

    /// Create the event and dead-letter streams if missing; bring their limits up to date if not.
    /// Idempotent, so every service calls it at start.
    pub async fn ensure_streams(&self, event_max_age: Duration) -> Result<(), BusError> {
        let events = stream::Config {
            name: self.subjects.stream(),
            subjects: vec![self.subjects.all_events()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: event_max_age,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            description: Some("Ande pipeline events (kept for replay)".into()),
            ..Default::default()
        };
        let dlq = stream::Config {
            name: self.subjects.dlq_stream(),
            subjects: vec![self.subjects.all_dead_letters()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: self.dlq_max_age,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            description: Some("Ande dead letters".into()),
            ..Default::default()
        };
        for config in [events, dlq] {
            let mut s = self
                .js
                .get_or_create_stream(config.clone())
                .await
                .map_err(|e| BusError::JetStream(format!("stream {}: {e}", config.name)))?;
            let info = s
                .info()
                .await
                .map_err(|e| BusError::JetStream(e.to_string()))?;
            // NATS changes a stream's replicas in place on a cluster (it copies the data to the
            // new peers); on a single server it refuses more than one, and that error stops the
            // service with the stream named.
            if info.config.max_age != config.max_age
                || info.config.num_replicas != config.num_replicas
            {
                self.js
                    .update_stream(config.clone())
                    .await
                    .map_err(|e| BusError::JetStream(format!("update {}: {e}", config.name)))?;
            }
        }
        Ok(())
    }

    /// Publish an event with its id (`Nats-Msg-Id`) and trace context; returns once JetStream
    /// has stored it (or recognised it as a duplicate of the same event id).
    pub async fn publish<E: Event>(
        &self,
        event: &E,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        let acked = self.publish_start(event).await?.await.map_err(map_ack_err);
        Self::count::<E>(acked.is_ok());
        acked
    }

    /// Count a publish of `E` in the metrics: acknowledged, or not (for callers that await the
    /// acks of [`Bus::publish_start`] themselves).
    pub fn count<E: Event>(acked: bool) {
        if acked {
            crate::metrics::EVENTS_PUBLISHED
                .with_label_values(&[E::KIND.type_name()])
                .inc();
        } else {
            crate::metrics::PUBLISH_FAILURES.inc();
        }
    }

    /// Send an event and return the ack future without waiting, so a batch of publishes can be
    /// in flight together and awaited after.
    pub async fn publish_start<E: Event>(&self, event: &E) -> Result<PublishAckFuture, BusError> {
        // The event id, and nothing the envelope already carries: the type follows from the
        // subject, the correlation id and producer are in `meta`. Each header costs the server
        // (and every consumer) work per message; three more cost JetStream about a sixth of
        // its publish rate in `andectl bench --part 5`.
        let mut h = HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            event.meta().map_or("", |m| m.event_id.as_str()),
        );
        // The consumer's span is a child of this one (the publish, until JetStream has it).
        let span = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            event = E::KIND.type_name()
        );
        span.in_scope(|| crate::telemetry::inject(&mut h));
        let subject = self.subjects.event(E::KIND);
        let sending = self
            .js
            .publish_with_headers(subject, h, Bytes::from(event.encode_to_vec()));
        tracing::Instrument::instrument(sending, span)
            .await
            .map_err(map_ack_err)
    }

    /// Record a message that cannot be processed, with why, for an operator to inspect and retry.
    pub async fn dead_letter(
        &self,
        consumer: &str,
        msg: &jetstream::Message,
        reason: &str,
    ) -> Result<(), BusError> {
        let (seq, deliveries) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 0));
        let mut h = msg.headers.clone().unwrap_or_default();
        // Every dead-lettering is its own record: an id derived from the message alone would let
        // JetStream drop a second failure of the same message (after a purge and a replay, say)
        // as a duplicate. The well-known header name, so this replaces the original event's id
        // instead of adding a second Nats-Msg-Id beside it.
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("dlq-{consumer}-{seq}-{}", uuid::Uuid::now_v7().simple()).as_str(),
        );
        h.insert(dlq_headers::REASON, truncate(reason, 1000).as_str());
        h.insert(dlq_headers::CONSUMER, consumer);
        h.insert(dlq_headers::SUBJECT, msg.subject.as_str());
        h.insert(dlq_headers::STREAM_SEQ, seq.to_string().as_str());
        h.insert(dlq_headers::DELIVERIES, deliveries.to_string().as_str());
        h.insert(dlq_headers::AT, chrono::Utc::now().to_rfc3339().as_str());
        self.js
            .publish_with_headers(self.subjects.dead_letters(consumer), h, msg.payload.clone())
            .await
            .map_err(map_ack_err)?
            .await
            .map_err(map_ack_err)?;
        Ok(())
    }

    /// Is the NATS connection up right now?
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

fn map_ack_err(e: async_nats::jetstream::context::PublishError) -> BusError {
    use async_nats::jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::TimedOut => BusError::AckTimeout,
        _ => BusError::JetStream(e.to_string()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// `nats://user:password@host:port` → (`nats://host:port`, Some((user, password))): async-nats
/// does not read credentials from the URL itself. No percent-decoding: use passwords of URL-safe
/// characters (`openssl rand -hex 24`).
/// `NATS_URL` may list several servers of a cluster, comma-separated
/// (`nats://gateway:pw@n1:4222,nats://gateway:pw@n2:4222`): the client connects to one and fails
/// over to the others. The credentials are those of the first URL that carries any.
pub fn split_servers(urls: &str) -> (Vec<String>, Option<(String, String)>) {
    let mut credentials = None;
    let bare = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let (bare, c) = split_credentials(u);
            credentials = credentials.take().or(c);
            bare
        })
        .collect();
    (bare, credentials)
}

pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let bare = if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    };
    (bare, Some((user.to_string(), password.to_string())))
}

#[cfg(test)]
mod credential_tests {
    use super::{split_credentials, split_servers};

    #[test]
    fn several_servers_share_one_set_of_credentials() {
        let (urls, c) =
            split_servers("nats://leads:pw@n1:4222, nats://leads:pw@n2:4222,nats://n3:4222");
        assert_eq!(urls, ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]);
        assert_eq!(c, Some(("leads".to_string(), "pw".to_string())));
        let (urls, c) = split_servers("nats://127.0.0.1:4222");
        assert_eq!(urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(c, None);
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        assert_eq!(
            split_credentials("nats://gateway:s3cret@nats:4222"),
            (
                "nats://nats:4222".into(),
                Some(("gateway".into(), "s3cret".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".into(), None)
        );
        assert_eq!(
            split_credentials("127.0.0.1:4222"),
            ("127.0.0.1:4222".into(), None)
        );
    }
}
