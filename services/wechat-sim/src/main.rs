//! `wechat-sim`: the WeChat server API simulator as its own process (see the crate docs and
//! README). Configuration: `WECHAT_SIM_ADDR`, `WECHAT_APP_ID`, `WECHAT_APP_SECRET`,
//! `WECHAT_SIM_TOKEN_TTL`, `WECHAT_SIM_CODE_TTL`, `LOG_FORMAT`, `RUST_LOG`.

use ande_platform::config::{Env, LOG_FORMAT};
use anyhow::Context;
use wechat_sim::{SimConfig, DEFAULT_ADDR, WECHAT_SIM_ADDR};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    let json_logs = env
        .get(LOG_FORMAT)
        .is_some_and(|f| f.eq_ignore_ascii_case("json"));
    ande_platform::telemetry::init("wechat-sim", json_logs);

    let config = SimConfig::from_env(&env)?;
    let addr = env.string(WECHAT_SIM_ADDR, DEFAULT_ADDR);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {WECHAT_SIM_ADDR}={addr}"))?;
    let shutdown = ande_platform::shutdown::on_signals();
    let result = wechat_sim::run(config, listener, shutdown).await;
    ande_platform::telemetry::shutdown().await;
    result
}
