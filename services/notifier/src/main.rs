use ande_notifier::NotifierConfig;
use ande_platform::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = NotifierConfig::from_env(&Env::from_process())?;
    ande_platform::telemetry::init("notifier", config.common.log_json);
    let result = ande_notifier::run(config, ande_platform::shutdown::on_signals()).await;
    ande_platform::telemetry::shutdown().await;
    result
}
