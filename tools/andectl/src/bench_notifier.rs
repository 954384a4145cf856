//! `andectl bench`, part 4: the notifier's sends per second, with WeChat (the simulator)
//! answering at once and after 20 ms (about what a server in China sees), against the most the
//! design allows: its workers each keep one send in flight, so `workers ÷ latency` is the ceiling.
//! This is the baseline the notifier-throughput issue measures its work against.

use std::time::{Duration, Instant};

use ande_events::{new_meta, to_timestamp, LeadOutcome, LeadOutcomeKind};
use ande_platform::bus::Bus;
use ande_platform::ExposeSecret;
use anyhow::Context;
use serde_json::json;
use uuid::Uuid;

use crate::stack::{Stack, StackOptions};

/// Advisors the notifications are spread over (one advisor's sends are not the bottleneck).
const ADVISORS: usize = 20;

/// Measure and print part 4.
pub async fn run(n: usize) -> anyhow::Result<()> {
    println!("\n4. notifier sends ({n} notifications over {ADVISORS} advisors, one process)");
    let (at_once, workers) = sends_per_second(n, 0).await?;
    println!("   WeChat answering at once          {at_once:9.0} sends/s");
    let latency = 20;
    let (slow, _) = sends_per_second(n, latency).await?;
    let ideal = workers as f64 * 1000.0 / latency as f64;
    println!(
        "   WeChat answering after {latency} ms      {slow:9.0} sends/s   ideal ({workers} in flight ÷ {latency} ms) {ideal:.0}/s   {:.2}x ideal",
        slow / ideal
    );
    Ok(())
}

/// A stack whose simulator answers sends after `latency_ms`; `n` outcomes for bound advisors
/// with credit; the rate at which they are all sent. Also the number of workers.
async fn sends_per_second(n: usize, latency_ms: u64) -> anyhow::Result<(f64, usize)> {
    let common = ande_platform::testing::isolated_config().await;
    let opts = StackOptions::for_test(common.clone());
    let workers = opts.notifier.workers;
    let stack = Stack::start(opts).await?;
    let http = ande_wechat::http::client();
    let sim = stack.sim_url.clone().context("simulator")?;
    if latency_ms > 0 {
        http.post(format!("{sim}/sim/faults"))
            .json(&json!({"endpoint": "subscribe_send", "latency_ms": latency_ms}))
            .send()
            .await?
            .error_for_status()?;
    }
    let db = sqlx::PgPool::connect(common.database_url.expose_secret()).await?;
    let per = n / ADVISORS + 1;
    for a in 0..ADVISORS {
        let (advisor, openid) = (format!("bench-n{a}"), format!("o_bench_n{a}"));
        stack.bind_advisor(&advisor, &openid, "bench").await?;
        sqlx::query(
            "INSERT INTO notifier.subscriptions (advisor_id, openid, template_id, credits, last_status, accepts)
             VALUES ($1, $2, $3, $4, 'accept', $4)",
        )
        .bind(&advisor)
        .bind(&openid)
        .bind(ande_wechat::DEV_TEMPLATE_ID)
        .bind(per as i32)
        .execute(&db)
        .await?;
        http.post(format!("{sim}/sim/credits"))
            .json(&json!({"openid": openid, "template_id": ande_wechat::DEV_TEMPLATE_ID, "count": per}))
            .send()
            .await?
            .error_for_status()?;
    }
    let bus = Bus::connect(&common, "bench").await?;
    let start = Instant::now();
    for i in 0..n {
        bus.publish(&outcome(&format!("bench-n{}", i % ADVISORS)))
            .await?;
    }
    let deadline = start + Duration::from_secs(600);
    loop {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE state = 'sent'")
                .fetch_one(&db)
                .await?;
        if sent >= n as i64 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {sent} of {n} sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stack.stop().await?;
    Ok((rate, workers))
}

/// What leads publishes for a new customer of `advisor` who acted with a session.
fn outcome(advisor: &str) -> LeadOutcome {
    let action_id = Uuid::now_v7().to_string();
    LeadOutcome {
        meta: Some(new_meta(&action_id, "bench", chrono::Utc::now())),
        action_id,
        advisor_id: advisor.into(),
        customer_id: "bench-customer".into(),
        action_type: "view_resume".into(),
        kind: LeadOutcomeKind::Created as i32,
        no_lead_reason: String::new(),
        lead_id: Uuid::now_v7().to_string(),
        customer_code: "KH0000".into(),
        is_new_customer: true,
        customer_name: "压测".into(),
        customer_phone: "13800000000".into(),
        action_at: Some(to_timestamp(chrono::Utc::now())),
        anonymous: false,
    }
}
