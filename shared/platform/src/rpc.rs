//! JSON request/reply over NATS: how the gateway and andectl ask leads and notifier questions
//! (an action's journey, a lead) and how a direct send reaches the notifier's token cache.
//!
//! Replies are `{"ok": …}` or `{"error": {"code", "message", "details"}}`. Responders join a
//! queue group named for the service, so several worker processes share the load.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// At most this many requests are handled at once per responder.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error, PartialEq)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl RpcError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(codes::NOT_FOUND, what)
    }
    pub fn bad_request(why: impl Into<String>) -> Self {
        Self::new(codes::BAD_REQUEST, why)
    }
    pub fn internal() -> Self {
        Self::new(codes::INTERNAL, "internal error")
    }
}

/// A database failure answering a query: unavailable (retry later) or internal. Logged here,
/// once, with its cause; the caller sees no SQL.
impl From<sqlx::Error> for RpcError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "query failed");
        if crate::db::is_unavailable(&e) {
            RpcError::new(codes::UNAVAILABLE, "database unavailable")
        } else {
            RpcError::internal()
        }
    }
}

/// The query of every `journey` method: which action.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionQuery {
    pub action_id: String,
}

/// An id sent in a query: a UUID, or a bad request naming what was sent.
pub fn parse_id(s: &str) -> Result<uuid::Uuid, RpcError> {
    uuid::Uuid::parse_str(s.trim())
        .map_err(|_| RpcError::bad_request(format!("{s:?} is not a valid id")))
}

pub mod codes {
    pub const NOT_FOUND: &str = "not_found";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const INTERNAL: &str = "internal";
    /// Nobody answered: the service is down or NATS is unreachable.
    pub const UNAVAILABLE: &str = "unavailable";
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply<T> {
    Ok(T),
    Error(RpcError),
}

/// Answer requests on `subject` until shutdown.
pub async fn serve<Req, Resp, F, Fut>(
    client: async_nats::Client,
    subject: String,
    queue_group: &str,
    shutdown: CancellationToken,
    handler: F,
) -> anyhow::Result<()>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    let mut sub = client
        .queue_subscribe(subject.clone(), queue_group.to_string())
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
        tokio::spawn(async move {
            let reply = match serde_json::from_slice::<Req>(&msg.payload) {
                Ok(req) => match handler(req).await {
                    Ok(r) => Reply::Ok(r),
                    Err(e) => Reply::Error(e),
                },
                Err(e) => Reply::Error(RpcError::bad_request(format!("undecodable request: {e}"))),
            };
            let body = serde_json::to_vec(&reply).unwrap_or_else(|_| {
                b"{\"error\":{\"code\":\"internal\",\"message\":\"encode\"}}".to_vec()
            });
            if let Err(e) = client.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "cannot send reply");
            }
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

/// Ask and wait for the answer, at most `timeout`.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, RpcError> {
    let body = serde_json::to_vec(req).map_err(|e| RpcError::bad_request(e.to_string()))?;
    let answer = tokio::time::timeout(timeout, client.request(subject, body.into()))
        .await
        .map_err(|_| RpcError::new(codes::UNAVAILABLE, "no answer in time"))?
        .map_err(|e| RpcError::new(codes::UNAVAILABLE, e.to_string()))?;
    match serde_json::from_slice::<Reply<Resp>>(&answer.payload) {
        Ok(Reply::Ok(r)) => Ok(r),
        Ok(Reply::Error(e)) => Err(e),
        Err(e) => Err(RpcError::new(
            codes::INTERNAL,
            format!("undecodable reply: {e}"),
        )),
    }
}

/// The request/reply methods of one service (`<prefix>.rpc.<service>.<method>`), each handler
/// given a clone of the service's shared state, all served until shutdown.
pub struct Responder<S> {
    client: async_nats::Client,
    subjects: ande_events::Subjects,
    service: &'static str,
    shutdown: CancellationToken,
    state: S,
    methods: Vec<futures::future::BoxFuture<'static, anyhow::Result<()>>>,
}

impl<S: Clone + Send + Sync + 'static> Responder<S> {
    pub fn new(
        client: async_nats::Client,
        subjects: ande_events::Subjects,
        service: &'static str,
        shutdown: CancellationToken,
        state: S,
    ) -> Self {
        Self {
            client,
            subjects,
            service,
            shutdown,
            state,
            methods: Vec::new(),
        }
    }

    pub fn method<Req, Resp, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(S, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        let state = self.state.clone();
        let serving = serve(
            self.client.clone(),
            self.subjects.rpc(self.service, name),
            self.service,
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
