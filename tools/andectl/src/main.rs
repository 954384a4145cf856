//! `andectl`: run the stack, inspect and replay events, dead letters, lag, staff accounts.
//! Exit codes: 0 success, 1 failure, 2 usage, 3 NATS or Postgres unreachable.

use std::process::ExitCode;

use ande_platform::config::Env;
use andectl::stack::{Stack, StackOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "andectl", about = "Operate the Ande lead pipeline", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every service and the WeChat simulator locally (Ctrl-C stops everything).
    Up,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let result = match cli.command {
        Cmd::Up => up(&env).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("andectl: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn up(env: &Env) -> anyhow::Result<()> {
    let opts = StackOptions::from_env(env)?;
    ande_platform::telemetry::init("andectl", opts.common.log_json);
    let data_dir = std::path::Path::new("target/andectl");
    let started = andectl::infra::ensure(&opts.common, data_dir).await?;
    let stack = Stack::start(opts).await?;
    print_walkthrough(&stack, &started.names());
    let stop = ande_platform::shutdown::on_signals();
    let token = stack.shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        token.cancel();
    });
    let result = stack.wait().await;
    drop(started);
    println!("stopped.");
    result
}

fn print_walkthrough(stack: &Stack, started: &[&str]) {
    let g = &stack.gateway_url;
    let sim = stack.sim_url.clone().unwrap_or_else(|| "(external WeChat API)".into());
    let tpl = ande_wechat::DEV_TEMPLATE_ID;
    println!(
        r#"
Ande stack is up.
  gateway       {g}        (OpenAPI: {g}/api/openapi.json)
  wechat-sim    {sim}
  NATS          {nats}   stream {stream}
  Postgres      schemas gateway, leads, notifier
  started here  {started}

Try it (paste into another terminal):
  # 1. the advisor accepts the subscription in the mini-program (one send credit) ...
  curl -s -XPOST {g}/api/advisor/subscribe -H 'content-type: application/json' \
    -d '{{"advisorId":"adv-1","openid":"o_advisor_1","templateId":"{tpl}","subscribed":true,"subscribeData":{{"subscriptionStatus":"accept"}}}}'
  # ... which inside WeChat gives the same credit:
  curl -s -XPOST {sim}/sim/credits -H 'content-type: application/json' -d '{{"openid":"o_advisor_1","template_id":"{tpl}","count":1}}'
  # 2. a customer views the advisor's resume and leaves a phone number
  curl -s -XPOST {g}/api/customer/action -H 'content-type: application/json' \
    -d '{{"customerId":"cust-1","advisorId":"adv-1","actionType":"view_resume","actionData":{{"resumeId":"r-1"}},"customerName":"张三","customerPhone":"138 0013 8000"}}'
  # 3. the advisor's phone got the subscribe message
  curl -s '{sim}/sim/messages?touser=o_advisor_1'
  # 4. the lead in Postgres
  psql postgres://postgres@127.0.0.1:5432/postgres -c 'select customer_code, name, phone, status, level from leads.leads'

Ctrl-C stops everything."#,
        nats = stack.common.nats_url,
        stream = stack.common.subjects().stream(),
        started = if started.is_empty() { "nothing (NATS and Postgres were already running)".to_string() } else { started.join(", ") },
    );
}
