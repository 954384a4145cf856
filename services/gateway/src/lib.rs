//! The gateway: the only HTTP surface, for the mini-program and for staff tools.
//!
//! It validates, authenticates, assigns ids, publishes events and waits for JetStream's ack before
//! answering. It owns only its own schema (staff accounts, idempotency keys); everything else it
//! asks the leads and notifier services over NATS request/reply.
//!
//! - [`routes`]: the endpoints; [`middleware`]: request id, metrics, rate limit and deadline
//!   around every route; [`cors`]: CORS for browsers; [`error`]: the envelope and error mapping;
//! - [`extract`]: body, IP and token extractors; [`auth`]: JWTs and staff passwords;
//! - [`validate`]: input rules; [`limits`]: rate limits; [`openapi`]: the API document.

pub mod auth;
pub mod clientip;
pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod limits;
pub mod logins;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ande_platform::bus::Bus;
use ande_wechat::WechatClient;
use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
pub const SCHEMA: &str = "gateway";
/// How often the gateway tries again to create its streams when NATS was away at start.
const STREAMS_RETRY: Duration = Duration::from_secs(1);

/// What every handler shares. Cloned for each extractor and middleware of every request, so it
/// is one `Arc`: cloning the parts themselves (the NATS client, the pools, the caches) cost
/// dozens of atomic operations and allocations per request (about 6 % of the gateway's CPU
/// under load, measured with perf).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub config: Arc<GatewayConfig>,
    pub bus: Bus,
    pub pool: PgPool,
    pub wechat: WechatClient,
    pub ip_limiter: limits::RateLimiter<std::net::IpAddr>,
    pub openid_limiter: limits::RateLimiter,
    /// WeChat logins and phone lookups per client and per session.
    pub wechat_limiter: limits::RateLimiter,
    /// Staff login throttling (per client, per account and client, password checks at once).
    pub logins: logins::LoginGuard,
}

impl Shared {
    /// Ask a service over request/reply: 503 at once while NATS is away, the method's typed
    /// errors as their HTTP answers.
    pub async fn call<M: ande_platform::rpc::Method>(
        &self,
        request: &M::Request,
        timeout: Duration,
    ) -> Result<M::Reply, error::ApiError> {
        self.require_bus()?;
        Ok(
            ande_platform::rpc::call::<M>(&self.bus.client, &self.bus.subjects, request, timeout)
                .await?,
        )
    }

    /// Fail fast with 503 while NATS is disconnected: a publish or a request/reply would only
    /// wait for its timeout (up to 8 s for a send) before failing the same way.
    pub fn require_bus(&self) -> Result<(), error::ApiError> {
        if self.bus.is_connected() {
            Ok(())
        } else {
            Err(error::ApiError::bus_unavailable())
        }
    }
}

/// The gateway bound to its port, ready to serve.
pub struct Gateway {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    state: AppState,
    /// False when NATS was away at start: `run` keeps trying, since publishes fail until the
    /// stream exists even after NATS is back (nothing else guarantees another service made it).
    streams_ready: bool,
}

impl Gateway {
    /// Connect to Postgres (migrating the gateway's schema) and NATS, and bind the port (0 picks
    /// a free one). NATS is connected lazily: the gateway starts and answers 503 on publishes
    /// until NATS is there, and recovers by itself.
    pub async fn bind(config: GatewayConfig) -> anyhow::Result<Self> {
        let pool = ande_platform::db::connect_with(
            &config.common.database_url,
            SCHEMA,
            16,
            &MIGRATIONS,
            config.common.migrations,
        )
        .await?;
        let bus = Bus::connect_lazy(&config.common, "gateway").await?;
        let streams_ready = match bus.ensure_streams(config.common.event_max_age).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the streams yet; publishes will fail until NATS answers");
                false
            }
        };
        if secrecy::ExposeSecret::expose_secret(&config.jwt_secret) == config::DEV_JWT_SECRET {
            tracing::warn!(
                "JWT_SECRET is not set: using the development secret; never deploy like this"
            );
        }
        let wechat = WechatClient::new(config.wechat.clone()).context("WeChat client")?;
        let listener = tokio::net::TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let addr = listener.local_addr()?;
        let state = AppState(Arc::new(Shared {
            ip_limiter: limits::RateLimiter::per_minute(config.rate_per_ip),
            openid_limiter: limits::RateLimiter::per_minute(config.rate_per_openid),
            wechat_limiter: limits::RateLimiter::per_minute(config.rate_wechat),
            logins: logins::LoginGuard::default(),
            config: Arc::new(config),
            bus,
            pool,
            wechat,
        }));
        Ok(Self {
            addr,
            listener,
            state,
            streams_ready,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown`; in-flight requests finish first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "gateway listening");
        if !self.streams_ready {
            tokio::spawn(ensure_streams_when_connected(
                self.state.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(purge_idempotency_keys(
            self.state.pool.clone(),
            self.state.config.common.retention.idempotency_keys,
            shutdown.clone(),
        ));
        if let Some(addr) = self.state.config.admin_addr {
            let ready = ande_platform::admin::Readiness {
                bus: Some(self.state.bus.clone()),
                pool: Some(self.state.pool.clone()),
                consumers: Vec::new(),
            };
            ande_platform::admin::start(addr, ready, shutdown.clone()).await?;
        }
        let app = routes::router(self.state.clone());
        server::serve(self.listener, app, self.state.config.limits, shutdown).await?;
        self.state.pool.close().await;
        Ok(())
    }
}

/// Forget idempotency keys older than `ANDE_RETENTION_IDEMPOTENCY_KEYS` (a client retries
/// within minutes, not weeks), so the table does not grow forever.
async fn purge_idempotency_keys(pool: sqlx::PgPool, age: Duration, shutdown: CancellationToken) {
    ande_platform::retention::purge_hourly("idempotency keys", shutdown, || async {
        let done = sqlx::query!(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
            ande_platform::retention::secs(age)
        )
        .execute(&pool)
        .await?;
        Ok(done.rows_affected())
    })
    .await
}

/// Create the streams as soon as NATS answers (after a start without it), then stop.
async fn ensure_streams_when_connected(state: AppState, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(STREAMS_RETRY) => {}
        }
        if !state.bus.is_connected() {
            continue;
        }
        match state
            .bus
            .ensure_streams(state.config.common.event_max_age)
            .await
        {
            Ok(()) => {
                tracing::info!("NATS answered: streams ready");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "streams not ready yet"),
        }
    }
}

/// Bind and serve until `shutdown` is cancelled.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    Gateway::bind(config).await?.run(shutdown).await
}
