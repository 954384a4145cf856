use ande_gateway::GatewayConfig;
use ande_platform::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::from_env(&Env::from_process())?;
    ande_platform::telemetry::init("gateway", config.common.log_json);
    let result = ande_gateway::run(config, ande_platform::shutdown::on_signals()).await;
    ande_platform::telemetry::shutdown().await;
    result
}
