//! The admin listener every service has beside its work: `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process answers: alive) and `GET /readyz` (NATS, the event stream, the
//! service's consumers and Postgres all reachable: 200, else 503 naming what is not). Bound to
//! `METRICS_ADDR` (defaults per service: gateway 127.0.0.1:9101, leads :9102, notifier :9103;
//! `off` for none). It is meant for the operator's network only: it shows counts, never data.
//!
//! Also here: the sampler that copies each consumer's pending and ack-pending counts from
//! JetStream into the gauges every few seconds, so that lag can be alerted on and scaled on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::{ConfigError, Env};

pub const METRICS_ADDR: &str = "METRICS_ADDR";
/// How long each readiness probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often consumer counts are copied into the gauges.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// `METRICS_ADDR`, or `default` when unset; `off` (or empty) for no admin listener.
pub fn addr_from_env(env: &Env, default: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = env.string(METRICS_ADDR, default);
    if v.is_empty() || v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.trim().parse().map(Some).map_err(|_| ConfigError {
        var: METRICS_ADDR.to_string(),
        shown: v.clone(),
        reason: "not an address like 127.0.0.1:9101 (or off)".to_string(),
    })
}

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    pub bus: Option<Bus>,
    pub pool: Option<sqlx::PgPool>,
    /// Durable consumer names that must exist on the event stream.
    pub consumers: Vec<String>,
}

impl Readiness {
    /// Everything that is not reachable, empty when ready.
    pub async fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(bus) = &self.bus {
            if bus.client.connection_state() != async_nats::connection::State::Connected {
                out.push("nats: not connected".to_string());
            } else {
                match tokio::time::timeout(PROBE_TIMEOUT, bus.js.get_stream(bus.subjects.stream()))
                    .await
                {
                    Ok(Ok(stream)) => {
                        for c in &self.consumers {
                            let info =
                                tokio::time::timeout(PROBE_TIMEOUT, stream.consumer_info(c)).await;
                            if !matches!(info, Ok(Ok(_))) {
                                out.push(format!("consumer {c}: not found or not answering"));
                            }
                        }
                    }
                    _ => {
                        out.push("nats: the event stream is not found or not answering".to_string())
                    }
                }
            }
        }
        if let Some(pool) = &self.pool {
            let ping = tokio::time::timeout(
                PROBE_TIMEOUT,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
            )
            .await;
            if !matches!(ping, Ok(Ok(_))) {
                out.push("postgres: not answering".to_string());
            }
        }
        out
    }
}

fn router(ready: Arc<Readiness>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    crate::metrics::render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    let problems = ready.problems().await;
                    if problems.is_empty() {
                        (StatusCode::OK, "ready\n".to_string()).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
                            .into_response()
                    }
                }
            }),
        )
}

/// Bind the admin listener (an error if the address is taken: better a clear refusal at start
/// than a service nobody can probe) and serve it until `shutdown`. It serves the process's one
/// registry: the gauges come from samplers each service runs whether or not it listens, so
/// under `andectl up` one listener shows every service's ([`sample_consumers`]).
pub async fn start(
    addr: SocketAddr,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    crate::metrics::init();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin listener {addr} ({METRICS_ADDR})"))?;
    let bound = listener.local_addr()?;
    let app = router(Arc::new(ready));
    tokio::spawn(async move {
        let done = shutdown.cancelled_owned();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(done)
            .await
        {
            tracing::warn!(error = %e, "admin listener stopped");
        }
    });
    tracing::info!(%bound, "admin listener: /metrics, /healthz, /readyz");
    Ok(bound)
}

/// Copy each consumer's pending and ack-pending counts into the gauges until `shutdown`.
pub async fn sample_consumers(bus: Bus, consumers: Vec<String>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Ok(stream) = bus.js.get_stream(bus.subjects.stream()).await {
            for c in &consumers {
                if let Ok(info) = stream.consumer_info(c).await {
                    let m = &crate::metrics::CONSUMER_PENDING;
                    m.with_label_values(&[c]).set(info.num_pending as i64);
                    crate::metrics::CONSUMER_ACK_PENDING
                        .with_label_values(&[c])
                        .set(info.num_ack_pending as i64);
                }
            }
        }
        if crate::consumer::sleep_or_shutdown(SAMPLE_EVERY, &shutdown).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_can_be_turned_off_and_a_wrong_one_names_the_variable() {
        let default = addr_from_env(&Env::from_pairs::<_, &str, &str>([]), "127.0.0.1:9101");
        assert_eq!(default.unwrap(), Some("127.0.0.1:9101".parse().unwrap()));
        let off = Env::from_pairs([(METRICS_ADDR, "off")]);
        assert_eq!(addr_from_env(&off, "127.0.0.1:9101").unwrap(), None);
        let wrong = Env::from_pairs([(METRICS_ADDR, "everywhere")]);
        let e = addr_from_env(&wrong, "127.0.0.1:9101").unwrap_err();
        assert!(e.to_string().contains(METRICS_ADDR), "{e}");
    }
}
