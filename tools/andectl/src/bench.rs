//! `andectl bench`: how fast the pipeline is, measured against the raw infrastructure in the same
//! run, on the same machine, so the numbers mean something whatever the machine:
//!
//! 1. gateway `POST /api/customer/action` latency vs a raw JetStream publish-and-ack;
//! 2. leads throughput on a backlog (batched transactions) vs raw Postgres doing one
//!    INSERT + COMMIT per event, and vs leads itself with batches of one;
//! 3. end-to-end latency: HTTP action → lead → outcome → subscribe message at the simulator;
//! 4. the notifier's sends per second at 0 and 20 ms of WeChat latency vs its ceiling
//!    ([`crate::bench_notifier`]);
//! 5. the gateway under 1, 16 and 64 connections vs a minimal reference server doing the
//!    unavoidable work ([`crate::bench_gateway`]);
//! 6. end to end in an open loop at 250 to 2,000 actions/s, every service its own process, per
//!    stage, with each service's RSS and CPU ([`crate::bench_open`]).
//!
//! `--json FILE` writes parts 5 and 6 machine-readable, `--svg DIR` their charts
//! ([`crate::bench_chart`]); `.ci/bench` regenerates the README's figures.
//!
//! Run with `cargo run --release -p andectl -- bench` (NATS and Postgres must be running; each
//! part uses its own database and prefix). `--events N` sets the size (default 2000 events for
//! throughput, a quarter of it for latency).

use std::time::{Duration, Instant};

use crate::stack::{Stack, StackOptions};
use ande_events::{new_meta, ActionRecorded, Message};
use ande_leads::LeadsConfig;
use ande_platform::bus::Bus;
use ande_platform::ExposeSecret;
use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Latency {
    p50: Duration,
    p99: Duration,
}

fn summarize(mut v: Vec<Duration>) -> Latency {
    v.sort();
    Latency {
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn action(phone: &str) -> ActionRecorded {
    let id = Uuid::now_v7().to_string();
    ActionRecorded {
        meta: Some(new_meta(&id, "bench", chrono::Utc::now())),
        action_id: id,
        customer_id: "bench-customer".into(),
        advisor_id: "bench-advisor".into(),
        action_type: "view_resume".into(),
        action_data_json: json!({"resumeId": "r-1"}).to_string(),
        customer_name: "压测".into(),
        customer_phone: phone.into(),
        client_ip: "127.0.0.1".into(),
        user_agent: "andectl-bench".into(),
        extra_json: "{}".into(),
        openid: String::new(),
    }
}

/// What `andectl bench` was asked for.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub events: usize,
    /// The parts to run; every part when empty.
    pub parts: Vec<u8>,
    /// Per run of part 5 (each level, each server).
    pub seconds: Duration,
    /// Per rate of part 6.
    pub open_seconds: u64,
    /// Offered rates of part 6 (actions/s) and the simulator's latencies (ms).
    pub rates: Vec<u32>,
    pub wechat_ms: Vec<u64>,
    /// Write the machine-readable results here.
    pub json: Option<std::path::PathBuf>,
    /// Write the charts into this directory.
    pub svg: Option<std::path::PathBuf>,
}

/// The machine-readable results of parts 5 and 6.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub machine: String,
    pub date: String,
    pub gateway_vs_reference: Option<Vec<crate::bench_gateway::Level>>,
    pub open_loop: Option<crate::bench_open::OpenLoop>,
}

/// Cores, CPU model and memory, as the report states them.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

/// Run the parts asked for, print them, and write the JSON and charts if asked.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut report = Report {
        machine: machine(),
        date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        ..Report::default()
    };
    println!("andectl bench on {}, {}\n", report.machine, report.date);
    let wants = |p: u8| args.parts.is_empty() || args.parts.contains(&p);
    if args.parts.is_empty() {
        run_classic(args.events, None).await?;
    } else {
        // Parts 1 and 3 share one stack.
        for p in [1, 2, 4] {
            if wants(p) || (p == 1 && wants(3)) {
                run_classic(args.events, Some(p)).await?;
            }
        }
    }
    if wants(5) {
        report.gateway_vs_reference = Some(crate::bench_gateway::run(args.seconds).await?);
    }
    if wants(6) {
        report.open_loop =
            Some(crate::bench_open::run(args.open_seconds, &args.rates, &args.wechat_ms).await?);
    }
    if let Some(path) = &args.json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nresults written to {}", path.display());
    }
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir)?;
        for (name, svg) in charts(&report) {
            let path = dir.join(name);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            println!("chart written to {}", path.display());
        }
        let path = dir.join("results.md");
        std::fs::write(&path, markdown(&report))?;
        println!("tables written to {}", path.display());
    }
    Ok(())
}

/// The tables of parts 5 and 6 in Markdown, with the machine and the date (the README links
/// them beside the charts).
pub fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut md = format!(
        "# andectl bench: parts 5 and 6\n\n{}, {} (written by `andectl bench --svg`).\n",
        r.machine, r.date
    );
    if let Some(levels) = &r.gateway_vs_reference {
        md.push_str("\n## Gateway vs the reference (target: ≥ 0.8×; p99 ≤ 10 ms at 64)\n\n");
        md.push_str("| connections | gateway req/s | p50 / p99 / p99.9 ms | reference req/s | p50 / p99 / p99.9 ms | ratio | CPU µs per request, bench process + NATS: gateway / reference |\n|---|---|---|---|---|---|---|\n");
        for l in levels {
            let (g, f) = (&l.gateway, &l.reference);
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} / {:.2} / {:.2} | {:.0} | {:.2} / {:.2} / {:.2} | {:.2}× | {:.0} + {:.0} / {:.0} + {:.0} |",
                g.connections,
                g.rps,
                g.p50_ms,
                g.p99_ms,
                g.p999_ms,
                f.rps,
                f.p50_ms,
                f.p99_ms,
                f.p999_ms,
                l.ratio,
                g.cpu_us_per_request,
                g.nats_us_per_request,
                f.cpu_us_per_request,
                f.nats_us_per_request,
            );
        }
    }
    if let Some(open) = &r.open_loop {
        md.push_str(
            "\n## End to end, open loop (target: message p99 ≤ 100 ms at 1,000/s, WeChat 0 ms)\n\n",
        );
        md.push_str("| WeChat ms | rate/s | accepted p50/p99 | stored p50/p99 | outcome p50/p99 | message p50/p99/max | leads max pending | CPU s per 1,000 actions (gw/leads/notifier/sim/NATS/Postgres/bench) | peak RSS MB (gw/leads/notifier) |\n|---|---|---|---|---|---|---|---|---|\n");
        for run in &open.runs {
            let cpu = |n: &str| {
                run.resources.get(n).map_or(0.0, |x| x.cpu_seconds) * 1000.0
                    / run.sent.max(1) as f64
            };
            let rss = |n: &str| run.resources.get(n).map_or(0.0, |x| x.peak_rss_mb);
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {} | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {:.0} / {:.0} / {:.0} |",
                run.wechat_ms, run.rate, run.accepted.p50_ms, run.accepted.p99_ms, run.stored.p50_ms, run.stored.p99_ms,
                run.outcome.p50_ms, run.outcome.p99_ms, run.message.p50_ms, run.message.p99_ms, run.message.max_ms,
                run.leads_max_pending, cpu("gateway"), cpu("leads"), cpu("notifier"), cpu("wechat-sim"),
                cpu("nats-server"), cpu("postgres"), cpu("bench"), rss("gateway"), rss("leads"), rss("notifier")
            );
        }
        let mut ready: Vec<_> = open.ready_ms.iter().collect();
        ready.sort_by(|a, b| a.0.cmp(b.0));
        let ready: Vec<String> = ready
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.0} ms"))
            .collect();
        let _ = writeln!(md, "\nReady after start: {}.", ready.join(", "));
        let mut highest: Vec<_> = open.highest_under_100ms.iter().collect();
        highest.sort();
        for (ms, rate) in highest {
            let _ = writeln!(
                md,
                "\nHighest offered rate with message p99 under 100 ms at WeChat {ms} ms: {rate}/s."
            );
        }
    }
    md
}

/// The charts of the report's parts: (file name, SVG).
pub fn charts(r: &Report) -> Vec<(String, String)> {
    let mut out = gateway_charts(r);
    out.extend(open_loop_charts(r));
    out
}

fn gateway_charts(r: &Report) -> Vec<(String, String)> {
    use crate::bench_chart::{bars, lines, Series};
    let mut out = Vec::new();
    if let Some(levels) = &r.gateway_vs_reference {
        let cats: Vec<String> = levels
            .iter()
            .map(|l| format!("{} conn.", l.gateway.connections))
            .collect();
        let rps = [
            Series {
                name: "gateway",
                values: levels.iter().map(|l| l.gateway.rps).collect(),
            },
            Series {
                name: "reference",
                values: levels.iter().map(|l| l.reference.rps).collect(),
            },
        ];
        out.push((
            "gateway-throughput.svg".into(),
            bars(
                &format!("POST /api/customer/action vs the reference ({})", r.date),
                "requests/s",
                &cats,
                &rps,
            ),
        ));
        let p99 = [
            Series {
                name: "gateway p99",
                values: levels.iter().map(|l| l.gateway.p99_ms).collect(),
            },
            Series {
                name: "reference p99",
                values: levels.iter().map(|l| l.reference.p99_ms).collect(),
            },
            Series {
                name: "gateway p50",
                values: levels.iter().map(|l| l.gateway.p50_ms).collect(),
            },
            Series {
                name: "reference p50",
                values: levels.iter().map(|l| l.reference.p50_ms).collect(),
            },
        ];
        out.push((
            "gateway-latency.svg".into(),
            lines(
                "Latency under concurrency",
                "ms",
                &cats,
                &p99,
                Some((10.0, "p99 target at 64")),
            ),
        ));
    }
    out
}

fn open_loop_charts(r: &Report) -> Vec<(String, String)> {
    use crate::bench_chart::{lines, Series};
    let mut out = Vec::new();
    if let Some(open) = &r.open_loop {
        for ms in crate::bench_open::WECHAT_LATENCIES {
            let runs: Vec<_> = open.runs.iter().filter(|x| x.wechat_ms == ms).collect();
            if runs.is_empty() {
                continue;
            }
            let cats: Vec<String> = runs.iter().map(|x| format!("{}/s", x.rate)).collect();
            let stage = |name, f: fn(&crate::bench_open::Run) -> f64| Series {
                name,
                values: runs.iter().map(|x| f(x)).collect(),
            };
            let series = [
                stage("accepted p99", |x| x.accepted.p99_ms),
                stage("lead stored p99", |x| x.stored.p99_ms),
                stage("outcome p99", |x| x.outcome.p99_ms),
                stage("message p99", |x| x.message.p99_ms),
                stage("message p50", |x| x.message.p50_ms),
            ];
            out.push((
                format!("open-loop-wechat-{ms}ms.svg"),
                lines(
                    &format!("End to end, open loop, WeChat at {ms} ms"),
                    "ms after the scheduled send",
                    &cats,
                    &series,
                    Some((100.0, "100 ms target")),
                ),
            ));
        }
    }
    out
}

/// Parts 1 to 4 (or one of them), as before.
async fn run_classic(n: usize, part: Option<u8>) -> anyhow::Result<()> {
    let n = n.max(50);
    let lat_n = (n / 4).max(50);
    println!("andectl bench: {n} events for throughput, {lat_n} requests for latency\n");
    match part {
        Some(2) => {
            return leads_throughput(&ande_platform::testing::isolated_config().await, n).await
        }
        Some(4) => return crate::bench_notifier::run(n).await,
        _ => {}
    }

    // Parts 1 and 3 share one stack; part 2 runs leads alone, each time on a fresh database.
    let common = ande_platform::testing::isolated_config().await;
    let mut opts = StackOptions::for_test(common.clone());
    // The benchmark is one client sending many requests: not what the per-IP limit is for.
    opts.gateway.rate_per_ip = u32::MAX;
    opts.gateway.rate_per_openid = u32::MAX;
    let stack = Stack::start(opts).await?;
    let bus = Bus::connect(&common, "bench").await?;
    let http = ande_wechat::http::client();
    let raw = record_latency(&common, &stack, &bus, &http, lat_n).await?;
    end_to_end_latency(&stack, &http, lat_n, &raw).await?;
    stack.stop().await?;
    if part.is_some() {
        return Ok(()); // parts 1 and 3 run together
    }
    leads_throughput(&common, n).await?;
    crate::bench_notifier::run(n).await
}

/// Part 1: gateway action latency vs a raw JetStream publish+ack (returned, for part 3).
async fn record_latency(
    common: &ande_platform::config::CommonConfig,
    stack: &Stack,
    bus: &Bus,
    http: &reqwest::Client,
    lat_n: usize,
) -> anyhow::Result<Latency> {
    let raw_subject = format!("{}.events.bench.raw", common.prefix);
    let payload = bytes::Bytes::from(action("13800000000").encode_to_vec());
    let mut raw = Vec::with_capacity(lat_n);
    for _ in 0..lat_n {
        let t = Instant::now();
        bus.js
            .publish(raw_subject.clone(), payload.clone())
            .await?
            .await?;
        raw.push(t.elapsed());
    }
    let raw = summarize(raw);
    let url = format!("{}/api/customer/action", stack.gateway_url);
    let mut gw = Vec::with_capacity(lat_n);
    for i in 0..lat_n {
        let body = json!({"customerId": format!("c{i}"), "advisorId": "bench-advisor", "actionType": "view_resume", "actionData": {"resumeId": "r"}});
        let t = Instant::now();
        let r = http.post(&url).json(&body).send().await?;
        anyhow::ensure!(
            r.status().as_u16() == 201,
            "gateway answered {}",
            r.status()
        );
        gw.push(t.elapsed());
    }
    let gw = summarize(gw);
    println!("1. record an action (sequential, {lat_n} requests)");
    println!(
        "   raw JetStream publish+ack   p50 {:7.2} ms   p99 {:7.2} ms",
        ms(raw.p50),
        ms(raw.p99)
    );
    println!(
        "   gateway POST /customer/action p50 {:7.2} ms   p99 {:7.2} ms   ratio p50 {:.1}x",
        ms(gw.p50),
        ms(gw.p99),
        ms(gw.p50) / ms(raw.p50).max(1e-9)
    );
    Ok(raw)
}

/// Part 3: end to end on the same stack, an action until its message reaches the simulator.
async fn end_to_end_latency(
    stack: &Stack,
    http: &reqwest::Client,
    lat_n: usize,
    raw: &Latency,
) -> anyhow::Result<()> {
    let tpl = ande_wechat::DEV_TEMPLATE_ID;
    let openid = "o_bench_advisor";
    let sub = json!({"advisorId": "bench-e2e", "templateId": tpl, "subscribed": true});
    let sim = stack.sim_url.clone().context("simulator")?;
    stack.bind_advisor("bench-e2e", openid, "bench").await?;
    let session = stack.session(http, openid).await?;
    // The advisor has plenty of credit.
    http.post(format!("{sim}/sim/credits"))
        .json(&json!({"openid": openid, "template_id": tpl, "count": lat_n + 10}))
        .send()
        .await?;
    for _ in 0..lat_n.min(200) {
        http.post(format!("{}/api/advisor/subscribe", stack.gateway_url))
            .bearer_auth(&session)
            .json(&sub)
            .send()
            .await?;
    }
    let e2e_n = lat_n.min(200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = format!("{}/api/customer/action", stack.gateway_url);
    // Customers with a session (verified): anonymous ones are held to a budget of sends an hour.
    let customer = stack.session(http, "o_bench_customer").await?;
    let mut e2e = Vec::with_capacity(e2e_n);
    for i in 0..e2e_n {
        let body = json!({"customerId": format!("e{i}"), "advisorId": "bench-e2e", "actionType": "book_service", "customerPhone": format!("139{:08}", i)});
        let t = Instant::now();
        http.post(&url)
            .bearer_auth(&customer)
            .json(&body)
            .send()
            .await?;
        loop {
            let v: serde_json::Value = http
                .get(format!("{sim}/sim/messages?touser={openid}"))
                .send()
                .await?
                .json()
                .await?;
            if v["messages"].as_array().map_or(0, Vec::len) > i {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "message {i} did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        e2e.push(t.elapsed());
    }
    let e2e = summarize(e2e);
    println!(
        "\n3. end to end: action → lead → outcome → message at the simulator ({e2e_n} sequential)"
    );
    println!(
        "   p50 {:7.2} ms   p99 {:7.2} ms   (target: within a second)   vs raw publish p50: {:.1}x",
        ms(e2e.p50),
        ms(e2e.p99),
        ms(e2e.p50) / ms(raw.p50).max(1e-9)
    );
    Ok(())
}

/// Part 2: leads on a backlog, batched and with batches of one, vs one raw commit per event.
async fn leads_throughput(
    common: &ande_platform::config::CommonConfig,
    n: usize,
) -> anyhow::Result<()> {
    let raw_rate = raw_commit_rate(common, n).await?;
    let batched = leads_backlog_rate(n, None).await?;
    let single = leads_backlog_rate(n, Some(1)).await?;
    println!("\n2. leads throughput on a backlog of {n} actions (each with a new lead)");
    println!("   raw Postgres, INSERT + COMMIT per event   {raw_rate:9.0} events/s");
    println!(
        "   leads, pull batch 1 (a commit per event)  {single:9.0} events/s   {:.2}x raw",
        single / raw_rate
    );
    println!(
        "   leads, batched (default 64)               {batched:9.0} events/s   {:.2}x raw",
        batched / raw_rate
    );
    Ok(())
}

/// The baseline a consumer must beat: one INSERT of a comparable row and one COMMIT per event.
async fn raw_commit_rate(
    common: &ande_platform::config::CommonConfig,
    n: usize,
) -> anyhow::Result<f64> {
    let pool = sqlx::PgPool::connect(common.database_url.expose_secret()).await?;
    // Runtime-checked: the baseline's own scratch table, in no service's schema or migrations.
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_raw (id uuid PRIMARY KEY, phone text, data jsonb, at timestamptz DEFAULT now())").execute(&pool).await?;
    let t = Instant::now();
    for i in 0..n {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO bench_raw (id, phone, data) VALUES ($1, $2, $3)")
            .bind(Uuid::now_v7())
            .bind(format!("137{i:08}"))
            .bind(json!({"resumeId": "r-1"}))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Publish `n` actions first, then start leads and time until all are stored and published.
async fn leads_backlog_rate(n: usize, batch: Option<usize>) -> anyhow::Result<f64> {
    let common = ande_platform::testing::isolated_config().await;
    let bus = Bus::connect(&common, "bench").await?;
    bus.ensure_streams(Duration::from_secs(3600)).await?;
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        acks.push(bus.publish_start(&action(&format!("135{i:08}"))).await?);
        if acks.len() >= 256 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    let mut cfg = LeadsConfig::with_common(common.clone());
    if let Some(b) = batch {
        cfg.batch = b;
    }
    let stop = CancellationToken::new();
    // Create the schema first so the timing is of processing only.
    let pool = ande_platform::db::connect(
        &common.database_url,
        ande_leads::SCHEMA,
        2,
        &ande_leads::MIGRATIONS,
    )
    .await?;
    let t = Instant::now();
    let task = tokio::spawn(ande_leads::run(cfg, stop.clone()));
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM actions WHERE outcome_published_at IS NOT NULL",
        )
        .fetch_one(&pool)
        .await?;
        if done as usize >= n {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "backlog not processed in 10 minutes ({done}/{n})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    Ok(rate)
}
