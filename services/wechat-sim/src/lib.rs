//! A faithful stand-in for the WeChat server API (`api.weixin.qq.com`).
//!
//! Nothing in this project can reach WeChat, and CI never will, so every test and every local
//! run talks to this simulator instead: its fidelity decides whether our tests mean anything. It
//! answers the five endpoints we use with WeChat's field names and errcodes (HTTP 200 with
//! `errcode`/`errmsg` on error), enforces WeChat's rules (single-use codes, classic tokens that
//! invalidate each other, stable tokens that renew early, one-time subscription credits, keyword
//! limits), and adds a control API under `/sim/` for what happens inside WeChat (a user accepting
//! a template) and for faults. The rules come from `docs/wechat.md`.
//!
//! Map of the crate:
//! - [`api`]: the WeChat endpoints, and the order of fault → work → counter → latency;
//! - [`control`]: the `/sim/` routes;
//! - [`state`]: all state behind one lock, and the control operations;
//! - [`tokens`], [`codes`], [`subscriptions`], [`faults`]: WeChat's rules, unit-tested with a
//!   fake clock;
//! - [`ids`]: openids, phones, tokens and codes shaped like WeChat's;
//! - [`push`]: WeChat's message push of subscription events to our `/api/wechat/events`;
//! - [`wire`]: the error envelope and errmsgs;
//! - [`config`]: [`SimConfig`] from the environment.
//!
//! In tests, [`spawn`] starts one on a free port of 127.0.0.1; the binary calls [`run`].

pub mod api;
pub mod codes;
pub mod config;
pub mod control;
pub mod faults;
pub mod ids;
pub mod push;
pub mod state;
pub mod subscriptions;
pub mod tokens;
pub mod wire;

use std::net::SocketAddr;

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{
    SimConfig, DEFAULT_ADDR, WECHAT_SIM_ADDR, WECHAT_SIM_CODE_TTL, WECHAT_SIM_TOKEN_TTL,
};
pub use faults::{Endpoint, Fault};
pub use state::{Lifetimes, Phone, SimError, SimState};
pub use subscriptions::{SentMessage, Template};
pub use wire::{errcode, WxError};

/// The WeChat routes at WeChat's paths, and the control API under `/sim`.
pub fn router(state: SimState) -> Router {
    Router::new()
        .route("/sns/jscode2session", get(api::jscode2session))
        .route("/cgi-bin/token", get(api::token))
        .route("/cgi-bin/stable_token", post(api::stable_token))
        .route("/cgi-bin/message/subscribe/send", post(api::subscribe_send))
        .route("/wxa/business/getuserphonenumber", post(api::phone_number))
        .nest("/sim", control::routes())
        .with_state(state)
}

/// Serve the simulator on `listener` until `shutdown` is cancelled, then finish what is in
/// flight and return.
pub async fn run(
    config: SimConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve(SimState::new(config), listener, shutdown).await
}

async fn serve(
    state: SimState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!(%addr, app_id = %state.config().app_id, "WeChat simulator listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the WeChat simulator")?;
    tracing::info!("WeChat simulator stopped");
    Ok(())
}

/// A simulator running inside the current process (for tests). Dropping it stops it.
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, to be used as the WeChat API base.
    pub base_url: String,
    pub shutdown: CancellationToken,
    /// The simulator's state, for tests that would rather call the control operations directly.
    pub state: SimState,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SimHandle {
    /// `base_url` joined with a path such as `/sim/calls`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Stop serving and wait until the server has finished.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.context("the simulator task panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start a simulator on a free port of 127.0.0.1 in this process.
pub async fn spawn(config: SimConfig) -> anyhow::Result<SimHandle> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator to 127.0.0.1:0")?;
    let addr = listener
        .local_addr()
        .context("reading the simulator's address")?;
    let state = SimState::new(config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(state.clone(), listener, shutdown.clone()));
    Ok(SimHandle {
        addr,
        base_url: format!("http://{addr}"),
        shutdown,
        state,
        task: Some(task),
    })
}
