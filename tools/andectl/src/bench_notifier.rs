//! `andectl bench`, part 4: the notifier's sends per second, one process, with WeChat (the
//! simulator) answering at once, after 20 ms (about what a server in China sees) and after
//! 100 ms, against the most the design allows: `NOTIFIER_MAX_IN_FLIGHT` sends in flight, so
//! `in flight ÷ latency` is the ceiling, and no more than the rate at 0 ms (what Postgres and the
//! CPU allow). The notifications are queued while sending is paused and then released at once,
//! so the rate is the dispatcher's, from its first claim to its last recorded answer.

use std::time::{Duration, Instant};

use ande_events::{new_meta, to_timestamp, LeadOutcome, LeadOutcomeKind};
use ande_platform::bus::Bus;
use ande_platform::ExposeSecret;
use anyhow::Context;
use serde_json::json;
use uuid::Uuid;

use crate::conn::ask;
use crate::stack::{Stack, StackOptions};
use ande_contracts::notifier::{Pause, PauseRequest, Resume, ResumeRequest};

/// Notifications per advisor. An advisor's messages go out one after another (at most one per
/// WeChat round trip), so a burst over few advisors is bounded by them, not by the dispatcher;
/// a campaign or a backlog after an outage is a few messages each for many advisors.
const PER_ADVISOR: usize = 2;

/// Measure and print part 4.
pub async fn run(n: usize) -> anyhow::Result<()> {
    let n = n.max(100);
    println!(
        "\n4. notifier sends ({n} notifications, {PER_ADVISOR} per advisor, one process, defaults)"
    );
    let (at_once, in_flight) = sends_per_second(n, 0).await?;
    println!("   WeChat answering at once          {at_once:9.0} sends/s");
    for latency in [20u64, 100] {
        let (rate, _) = sends_per_second(n, latency).await?;
        let ceiling = in_flight as f64 * 1000.0 / latency as f64;
        let ideal = ceiling.min(at_once);
        println!(
            "   WeChat answering after {latency:3} ms     {rate:9.0} sends/s   ideal min({in_flight} in flight ÷ {latency} ms = {ceiling:.0}/s, 0 ms rate) {ideal:.0}/s   {:.2}x ideal",
            rate / ideal
        );
    }
    Ok(())
}

/// A stack whose simulator answers sends after `latency_ms`; `n` outcomes for bound advisors
/// with credit, queued while sending is paused; the rate at which they are sent once resumed.
/// Also the in-flight limit.
async fn sends_per_second(n: usize, latency_ms: u64) -> anyhow::Result<(f64, usize)> {
    let common = ande_platform::testing::isolated_config().await;
    let opts = StackOptions::for_test(common.clone());
    let in_flight = opts.notifier.max_in_flight;
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
    let advisors = n.div_ceil(PER_ADVISOR);
    let ids: Vec<String> = (0..advisors).map(|a| format!("bench-n{a}")).collect();
    let openids: Vec<String> = (0..advisors).map(|a| format!("o_bench_n{a}")).collect();
    // Bound advisors with credit, in bulk (what `andectl advisor bind` and accepts would leave).
    sqlx::query(
        "INSERT INTO notifier.advisor_bindings (advisor_id, openid, bound_by) SELECT a, o, 'bench' FROM unnest($1::text[], $2::text[]) AS u(a, o)",
    )
    .bind(&ids)
    .bind(&openids)
    .execute(&db)
    .await?;
    sqlx::query(
        "INSERT INTO notifier.subscriptions (advisor_id, openid, template_id, credits, last_status, accepts)
         SELECT a, o, $3, $4, 'accept', $4 FROM unnest($1::text[], $2::text[]) AS u(a, o)",
    )
    .bind(&ids)
    .bind(&openids)
    .bind(ande_wechat::DEV_TEMPLATE_ID)
    .bind(PER_ADVISOR as i32)
    .execute(&db)
    .await?;
    for openid in &openids {
        http.post(format!("{sim}/sim/credits"))
            .json(&json!({"openid": openid, "template_id": ande_wechat::DEV_TEMPLATE_ID, "count": PER_ADVISOR}))
            .send()
            .await?
            .error_for_status()?;
    }
    let bus = Bus::connect(&common, "bench").await?;
    // Queue everything while sending is paused, through the notifier's own methods.
    let hold = PauseRequest {
        until: None,
        reason: Some("bench".into()),
    };
    ask::<Pause>(&bus, &hold).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut acks = Vec::new();
        for i in chunk {
            acks.push(bus.publish_start(&outcome(&ids[i % advisors])).await?);
        }
        for a in acks {
            a.await?;
        }
    }
    wait_for(&db, "queued", n).await?;
    ask::<Resume>(&bus, &ResumeRequest::default()).await?;
    wait_for(&db, "sent", n).await?;
    // From the first claim to the last recorded answer.
    let window: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(updated_at) - min(claimed_at))::float8 FROM notifier.notifications WHERE state = 'sent'",
    )
    .fetch_one(&db)
    .await?;
    stack.stop().await?;
    Ok((n as f64 / window.max(1e-3), in_flight))
}

async fn wait_for(db: &sqlx::PgPool, state: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifier.notifications WHERE state = $1")
                .bind(state)
                .fetch_one(db)
                .await?;
        if count >= n as i64 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {count} of {n} {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        lead_owner: advisor.into(),
        ..Default::default()
    }
}
