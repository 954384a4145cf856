use ande_leads::LeadsConfig;
use ande_platform::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = LeadsConfig::from_env(&Env::from_process())?;
    ande_platform::telemetry::init("leads", config.common.log_json);
    let result = ande_leads::run(config, ande_platform::shutdown::on_signals()).await;
    ande_platform::telemetry::shutdown().await;
    result
}
