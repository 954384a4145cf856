//! The admin listener (`METRICS_ADDR`): `/healthz`, `/readyz` and `/metrics` of running services,
//! against the machine's NATS and Postgres. The metrics move with real traffic, their labels are
//! bounded sets (never an id, an openid or a phone), and readiness fails, with the reason, when
//! NATS or Postgres is gone.

use andectl::testing as common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn get(http: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("admin listener answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The sum of a family's samples whose labels include every `label="value"` in `with`.
fn sample(metrics: &str, family: &str, with: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_answer_probes_and_metrics_follow_the_traffic_without_ids() {
    let (gateway_admin, notifier_admin) = (free_addr(), free_addr());
    let t = common::start_with(|o| {
        o.gateway.admin_addr = Some(gateway_admin);
        o.notifier.admin_addr = Some(notifier_admin);
    })
    .await;
    t.advisor_accepts(
        "adv-metrics",
        "o_advisor_metrics",
        ande_wechat::DEV_TEMPLATE_ID,
    )
    .await;
    for i in 0..3 {
        let (status, body) = t
            .post(
                "/api/customer/action",
                json!({"customerId": format!("c-m{i}"), "advisorId": "adv-metrics",
                       "actionType": "view_resume", "customerPhone": format!("1390013900{i}")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    t.wait_messages("o_advisor_metrics", 1).await;

    for addr in [gateway_admin, notifier_admin] {
        assert_eq!(get(&t.http, addr, "/healthz").await.0, 200);
        let (status, body) = get(&t.http, addr, "/readyz").await;
        assert_eq!(status, 200, "{addr} not ready: {body}");
    }
    // Counters move as the work is done; the queue gauges are sampled every 5 s.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get(&t.http, notifier_admin, "/metrics").await.1;
        let sent = sample(
            &metrics,
            "ande_wechat_requests_total",
            &[r#"api="subscribe_send""#, r#"errcode="0""#],
        );
        if sent >= 1.0 && sample(&metrics, "ande_leads_outcomes_total", &[]) >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let route = [
        r#"route="/api/customer/action""#,
        r#"method="POST""#,
        r#"status="201""#,
    ];
    assert!(
        sample(&metrics, "ande_http_requests_total", &route) >= 3.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "ande_http_request_duration_seconds_count", &[]) >= 3.0);
    let published = |kind: &str| {
        sample(
            &metrics,
            "ande_events_published_total",
            &[&format!(r#"subject="ande.events.v1.{kind}""#)],
        )
    };
    assert!(published("ActionRecorded") >= 3.0, "{metrics}");
    assert!(published("LeadOutcome") >= 3.0, "{metrics}");
    assert!(sample(&metrics, "ande_leads_outcomes_total", &[]) >= 3.0);
    assert!(
        sample(&metrics, "ande_wechat_requests_total", &[r#"errcode="0""#]) >= 1.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "ande_wechat_request_duration_seconds_count", &[]) >= 1.0);
    assert!(
        sample(&metrics, "ande_end_to_end_seconds_count", &[]) >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ande_notifications{state="queued"}"#),
        "{metrics}"
    );
    assert!(sample(&metrics, "ande_consume_batch_duration_seconds_count", &[]) >= 1.0);
    assert!(sample(&metrics, "process_resident_memory_bytes", &[]) > 1e6);

    // Labels are bounded sets: no UUID, no phone, no openid, no advisor or customer id.
    let id = label_with_an_id(&metrics);
    assert!(id.is_none(), "a label carries an id: {id:?}");
}

/// The first label value that looks like an id (UUID, 11 digits, an openid or a test id).
fn label_with_an_id(metrics: &str) -> Option<String> {
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) else {
            continue;
        };
        for pair in labels.0.split(',') {
            let value = pair
                .split_once('=')
                .map_or("", |(_, v)| v.trim_matches('"'));
            let digits = value.chars().filter(char::is_ascii_digit).count();
            let uuid_like = value.len() == 36 && value.matches('-').count() == 4;
            if uuid_like
                || digits >= 11
                || value.starts_with("o_")
                || value.contains("adv-")
                || value.contains("c-m")
            {
                return Some(line.to_string());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_with_the_reason_when_nats_or_postgres_is_gone() {
    use ande_platform::admin::{start, Readiness};
    let http = ande_wechat::http::client();
    // A NATS of our own, to stop.
    let port = free_addr().port();
    let dir = std::env::temp_dir().join(format!("ande-readyz-{port}"));
    let mut nats = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server on PATH");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut config = ande_platform::testing::isolated_config().await;
    config.nats_url = format!("nats://127.0.0.1:{port}");
    let bus = ande_platform::bus::Bus::connect(&config, "readyz-test")
        .await
        .unwrap();
    bus.ensure_streams(Duration::from_secs(3600)).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let with_nats = Readiness {
        bus: Some(bus),
        pool: None,
        consumers: vec![],
    };
    let a = start("127.0.0.1:0".parse().unwrap(), with_nats, shutdown.clone())
        .await
        .unwrap();
    let (status, body) = get(&http, a, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    // Postgres that does not answer (nothing listens there).
    let dead_pg = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let with_pg = Readiness {
        bus: None,
        pool: Some(dead_pg),
        consumers: vec![],
    };
    let b = start("127.0.0.1:0".parse().unwrap(), with_pg, shutdown.clone())
        .await
        .unwrap();
    let (status, body) = get(&http, b, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("postgres"), "{body}");
    assert_eq!(
        get(&http, b, "/healthz").await.0,
        200,
        "alive, if not ready"
    );

    let _ = nats.kill();
    let _ = nats.wait();
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = get(&http, a, "/readyz").await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 503, "still ready without NATS: {}", last.1);
    assert!(last.1.contains("nats"), "{}", last.1);
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
