//! `GET /api/health` (liveness, with each dependency's state) and `GET /api/health/ready`
//! (503 until everything the gateway needs answers).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::ok_with;
use crate::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

async fn checks(state: &AppState) -> (bool, Value) {
    let nats = state.bus.is_connected();
    let stream = if nats {
        match tokio::time::timeout(
            PROBE_TIMEOUT,
            state.bus.js.get_stream(state.bus.subjects.stream()),
        )
        .await
        {
            Ok(Ok(mut s)) => match s.info().await {
                Ok(i) => {
                    json!({ "status": "ok", "name": i.config.name, "messages": i.state.messages })
                }
                Err(e) => json!({ "status": "error", "reason": e.to_string() }),
            },
            Ok(Err(e)) => json!({ "status": "missing", "reason": e.to_string() }),
            Err(_) => json!({ "status": "timeout" }),
        }
    } else {
        json!({ "status": "unknown" })
    };
    let db = match tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query!("SELECT 1 AS one").fetch_one(&state.pool),
    )
    .await
    {
        Ok(Ok(_)) => "ok",
        _ => "unavailable",
    };
    let ready = nats && stream["status"] == "ok" && db == "ok";
    (
        ready,
        json!({
            "status": if ready { "ok" } else { "degraded" },
            "service": "gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "nats": if nats { "connected" } else { "disconnected" },
            "stream": stream,
            "database": db,
        }),
    )
}

/// Liveness: answers 200 while the process serves, with the readiness view in the body.
pub async fn health(State(state): State<AppState>) -> Response {
    let (_, body) = checks(&state).await;
    ok_with(StatusCode::OK, body, "ok")
}

/// Readiness: 503 while NATS, the stream or the database is not there.
pub async fn ready(State(state): State<AppState>) -> Response {
    let (ready, body) = checks(&state).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    ok_with(status, body, if ready { "ready" } else { "not ready" })
}
