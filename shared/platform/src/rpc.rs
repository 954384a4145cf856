//! Request/reply over NATS, typed by the contracts in `ande-contracts`: how the gateway and
//! andectl ask leads and notifier questions (an action's journey, a lead) and how a direct send
//! reaches the notifier's token cache.
//!
//! `call::<M>` and `Responder::method::<M>` are generic over the method, so the subject, the
//! request and the reply always belong together. Replies are `{"ok": …}` or
//! `{"error": {"code": …}}` ([`ande_contracts::Reply`]). Responders join a queue group named for
//! the service, so several processes share the load.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ande_contracts::Reply;
pub use ande_contracts::{Method, RpcError, Unavailable};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// At most this many requests are handled at once per method and process.
const MAX_IN_FLIGHT: usize = 64;

/// What a handler may fail with: an answer for the caller, or a database error that becomes
/// one here (unavailable or internal), logged once with its cause; the caller sees no SQL.
#[derive(Debug)]
pub enum Failure {
    Answer(RpcError),
    Database(sqlx::Error),
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Self {
        Failure::Answer(e)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Database(e)
    }
}

impl From<Failure> for RpcError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Answer(e) => e,
            Failure::Database(e) => {
                tracing::warn!(error = %e, "query failed");
                if crate::db::is_unavailable(&e) {
                    RpcError::unavailable(Unavailable::Database, "database unavailable")
                } else {
                    RpcError::internal("query failed")
                }
            }
        }
    }
}

/// Answer `M`'s requests on `subject` until shutdown.
async fn serve<M, F, Fut>(
    client: async_nats::Client,
    subject: String,
    shutdown: CancellationToken,
    handler: F,
) -> anyhow::Result<()>
where
    M: Method,
    F: Fn(M::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<M::Reply, Failure>> + Send + 'static,
{
    let mut sub = client
        .queue_subscribe(subject, M::SERVICE.to_string())
        .await?;
    let handler = Arc::new(handler);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let permit = limit.clone().acquire_owned().await?;
        let (client, handler) = (client.clone(), handler.clone());
        let span = tracing::info_span!("rpc.serve", otel.kind = "server", method = M::NAME);
        crate::telemetry::extract_into(msg.headers.as_ref(), &span);
        let answering = async move {
            let reply = match serde_json::from_slice::<M::Request>(&msg.payload) {
                Ok(req) => match handler(req).await {
                    Ok(r) => Reply::Ok(r),
                    Err(f) => Reply::Error(RpcError::from(f)),
                },
                Err(e) => Reply::Error(RpcError::invalid(format!("undecodable request: {e}"))),
            };
            let body = serde_json::to_vec(&reply).unwrap_or_else(|e| {
                tracing::error!(error = %e, method = M::NAME, "cannot encode a reply");
                br#"{"error":{"code":"internal","message":"cannot encode the reply"}}"#.to_vec()
            });
            if let Err(e) = client.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "cannot send reply");
            }
            drop(permit);
        };
        tokio::spawn(tracing::Instrument::instrument(answering, span));
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

/// Ask `M` and wait for the answer, at most `timeout`.
pub async fn call<M: Method>(
    client: &async_nats::Client,
    subjects: &ande_events::Subjects,
    req: &M::Request,
    timeout: Duration,
) -> Result<M::Reply, RpcError> {
    // A request type that cannot be encoded is our bug, not the caller's input.
    let body = serde_json::to_vec(req).map_err(|e| RpcError::internal(e.to_string()))?;
    let subject = subjects.rpc(M::SERVICE, M::NAME);
    let span = tracing::info_span!(
        "rpc.call",
        otel.kind = "client",
        service = M::SERVICE,
        method = M::NAME
    );
    let mut headers = async_nats::HeaderMap::new();
    span.in_scope(|| crate::telemetry::inject(&mut headers));
    let asking = client.request_with_headers(subject, headers, body.into());
    let answer = tokio::time::timeout(timeout, tracing::Instrument::instrument(asking, span))
        .await
        .map_err(|_| RpcError::unavailable(Unavailable::Timeout, "no answer in time"))?
        .map_err(|e| {
            use async_nats::RequestErrorKind as K;
            let cause = match e.kind() {
                K::NoResponders => Unavailable::NoResponders,
                K::TimedOut => Unavailable::Timeout,
                // A subject or payload NATS refuses is our bug, not the service's absence.
                K::InvalidSubject | K::MaxPayloadExceeded => {
                    return RpcError::internal(e.to_string());
                }
                K::Other => Unavailable::Transport,
            };
            RpcError::unavailable(cause, e.to_string())
        })?;
    match serde_json::from_slice::<Reply<M::Reply>>(&answer.payload) {
        Ok(Reply::Ok(r)) => Ok(r),
        Ok(Reply::Error(e)) => Err(e),
        Err(e) => Err(RpcError::internal(format!(
            "undecodable reply from {}.{}: {e}",
            M::SERVICE,
            M::NAME
        ))),
    }
}

/// The request/reply methods of one service (`<prefix>.rpc.<service>.<method>`), each handler
/// given a clone of the service's shared state, all served until shutdown.
pub struct Responder<S> {
    client: async_nats::Client,
    subjects: ande_events::Subjects,
    shutdown: CancellationToken,
    state: S,
    methods: Vec<futures::future::BoxFuture<'static, anyhow::Result<()>>>,
}

impl<S: Clone + Send + Sync + 'static> Responder<S> {
    pub fn new(
        client: async_nats::Client,
        subjects: ande_events::Subjects,
        shutdown: CancellationToken,
        state: S,
    ) -> Self {
        Self {
            client,
            subjects,
            shutdown,
            state,
            methods: Vec::new(),
        }
    }

    /// Serve `M` with `handler`.
    pub fn method<M, F, Fut>(mut self, handler: F) -> Self
    where
        M: Method,
        F: Fn(S, M::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Reply, Failure>> + Send + 'static,
    {
        let state = self.state.clone();
        let serving = serve::<M, _, _>(
            self.client.clone(),
            self.subjects.rpc(M::SERVICE, M::NAME),
            self.shutdown.clone(),
            move |req| handler(state.clone(), req),
        );
        self.methods.push(Box::pin(serving));
        self
    }

    pub async fn run(self) -> anyhow::Result<()> {
        futures::future::try_join_all(self.methods).await?;
        Ok(())
    }
}
