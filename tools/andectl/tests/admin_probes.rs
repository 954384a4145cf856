//! The admin listener (`METRICS_ADDR`): `/healthz`, `/readyz` and `/metrics` of running services,
//! against the machine's NATS and Postgres. The metrics move with real traffic, their labels are
//! bounded sets (never an id, an openid or a phone), and readiness fails, with the reason, when
//! NATS or Postgres is gone.

use andectl::testing as common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

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
    let (gateway_admin, notifier_admin) = (common::free_addr(), common::free_addr());
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
    // An advisor nobody subscribed for: that notification waits for a credit.
    let (status, body) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "c-waits", "advisorId": "adv-no-credit", "actionType": "view_resume"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    t.wait_messages("o_advisor_metrics", 1).await;

    for addr in [gateway_admin, notifier_admin] {
        assert_eq!(get(&t.http, addr, "/healthz").await.0, 200);
        let (status, body) = get(&t.http, addr, "/readyz").await;
        assert_eq!(status, 200, "{addr} not ready: {body}");
    }
    // Counters move as the work is done; the queue gauges are sampled every 5 s.
    let mut metrics = String::new();
    for _ in 0..100 {
        // One process, one registry: the gateway's listener shows every service's families
        // (as under `andectl up`, where it is the only one).
        metrics = get(&t.http, gateway_admin, "/metrics").await.1;
        let sent = sample(
            &metrics,
            "ande_wechat_requests_total",
            &[r#"api="subscribe_send""#, r#"errcode="0""#],
        );
        let waiting = sample(
            &metrics,
            "ande_notifications",
            &[r#"state="waiting_credit""#],
        );
        if sent >= 1.0
            && sample(&metrics, "ande_leads_outcomes_total", &[]) >= 3.0
            && waiting >= 1.0
        {
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
    assert!(
        sample(
            &metrics,
            "ande_notifications",
            &[r#"state="waiting_credit""#]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "ande_consume_batch_duration_seconds_count", &[]) >= 1.0);
    for consumer in andectl::replay::CONSUMER_NAMES {
        let label = format!(r#"consumer="{consumer}""#);
        assert!(
            metrics.contains(&format!("ande_consumer_pending{{{label}}}")),
            "{consumer} not sampled: {metrics}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wechat_refusal_a_quota_pause_and_a_dead_letter_show_in_the_metrics() {
    use ande_events::EventKind;
    let admin = common::free_addr();
    let t = common::start_with(|o| o.notifier.admin_addr = Some(admin)).await;
    t.advisor_accepts(
        "adv-faults",
        "o_advisor_faults",
        ande_wechat::DEV_TEMPLATE_ID,
    )
    .await;
    // WeChat says the day's quota is spent (45009), once: the notifier pauses sending.
    t.sim_fault(json!({"endpoint": "subscribe_send", "errcode": 45009, "count": 1}))
        .await;
    let (status, body) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "c-f", "advisorId": "adv-faults", "actionType": "view_resume"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Something no consumer can decode: leads dead-letters it.
    let bus = ande_platform::bus::Bus::connect(&t.stack.common, "test")
        .await
        .unwrap();
    bus.js
        .publish(
            bus.subjects.event(EventKind::ActionRecorded),
            bytes::Bytes::from_static(b"\xff\xfe not protobuf"),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let refused = [r#"api="subscribe_send""#, r#"errcode="45009""#];
    let dead = [r#"consumer="leads""#, r#"reason="undecodable""#];
    let mut metrics = String::new();
    // The pause gauge is sampled every 5 s.
    for _ in 0..150 {
        metrics = get(&t.http, admin, "/metrics").await.1;
        if sample(&metrics, "ande_wechat_requests_total", &refused) >= 1.0
            && sample(&metrics, "ande_dead_letters_total", &dead) >= 1.0
            && sample(&metrics, "ande_notifier_paused", &[]) == 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&metrics, "ande_wechat_requests_total", &refused),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ande_dead_letters_total", &dead),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ande_notifier_paused", &[]),
        1.0,
        "{metrics}"
    );
}

/// A TCP relay to `target` that can be cut (dropping every connection through it) and restored:
/// Postgres going away and coming back, without stopping the machine's Postgres.
struct Relay {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(target: &'static str) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (is_open, cuts) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut_now = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_now.changed() => {}
                    }
                });
            }
        });
        Relay { addr, open, cut }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
        if !open {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

fn start_nats(port: u16, dir: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server on PATH");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Poll `/readyz` until it answers `status`; the last answer.
async fn readyz_until(http: &reqwest::Client, addr: SocketAddr, status: u16) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..150 {
        last = get(http, addr, "/readyz").await;
        if last.0 == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_with_the_reason_while_nats_or_postgres_is_gone_and_recovers() {
    use ande_platform::admin::{start, Readiness};
    let http = ande_wechat::http::client();
    let mut config = ande_platform::testing::isolated_config().await;
    // A NATS of our own, to stop and start again.
    let port = common::free_addr().port();
    let dir = std::env::temp_dir().join(format!("ande-readyz-{port}"));
    let mut nats = start_nats(port, &dir);
    config.nats_url = format!("nats://127.0.0.1:{port}");
    let bus = ande_platform::bus::Bus::connect(&config, "readyz-test")
        .await
        .unwrap();
    bus.ensure_streams(Duration::from_secs(3600)).await.unwrap();
    // The machine's Postgres, through a relay we can cut.
    let relay = Relay::start("127.0.0.1:5432").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://postgres@{}/postgres", relay.addr))
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ready = Readiness {
        bus: Some(bus),
        pool: Some(pool),
        consumers: vec![],
    };
    let admin = start("127.0.0.1:0".parse().unwrap(), ready, shutdown.clone())
        .await
        .unwrap();
    let (status, body) = readyz_until(&http, admin, 200).await;
    assert_eq!(status, 200, "{body}");

    relay.set_open(false);
    let (status, body) = readyz_until(&http, admin, 503).await;
    assert_eq!(status, 503, "still ready without Postgres: {body}");
    assert!(
        body.contains("postgres") && !body.contains("nats"),
        "{body}"
    );
    assert_eq!(
        get(&http, admin, "/healthz").await.0,
        200,
        "alive, if not ready"
    );
    relay.set_open(true);
    let (status, body) = readyz_until(&http, admin, 200).await;
    assert_eq!(status, 200, "Postgres is back: {body}");

    let _ = nats.kill();
    let _ = nats.wait();
    let (status, body) = readyz_until(&http, admin, 503).await;
    assert_eq!(status, 503, "still ready without NATS: {body}");
    assert!(body.contains("nats"), "{body}");
    let mut nats = start_nats(port, &dir);
    let (status, body) = readyz_until(&http, admin, 200).await;
    assert_eq!(status, 200, "NATS is back: {body}");

    shutdown.cancel();
    let _ = nats.kill();
    let _ = nats.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_pending_rises_with_a_backlog_and_falls_once_it_is_worked_off() {
    use ande_events::EventKind;
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use futures::StreamExt;
    let http = ande_wechat::http::client();
    let config = ande_platform::testing::isolated_config().await;
    let bus = ande_platform::bus::Bus::connect(&config, "pending-test")
        .await
        .unwrap();
    bus.ensure_streams(config.event_max_age).await.unwrap();
    let stream = bus.js.get_stream(bus.subjects.stream()).await.unwrap();
    // A consumer of its own, nobody working it yet (the registry is the process's: the name is
    // unique so no other test moves this series).
    let durable = format!("pending-probe-{}", common::free_port());
    let subject = bus.subjects.event(EventKind::ActionRecorded);
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(ande_platform::admin::sample_consumers(
        bus.clone(),
        vec![durable.clone()],
        shutdown.clone(),
    ));
    let ready = ande_platform::admin::Readiness {
        bus: Some(bus.clone()),
        pool: None,
        consumers: vec![durable.clone()],
    };
    let admin =
        ande_platform::admin::start("127.0.0.1:0".parse().unwrap(), ready, shutdown.clone())
            .await
            .unwrap();
    for i in 0..5u8 {
        bus.js
            .publish(subject.clone(), vec![i].into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let label = format!(r#"consumer="{durable}""#);
    // Sampled every 5 s: wait for a sample to show the backlog, then for one to show it gone.
    let gauge = |metrics: &str, family: &str| sample(metrics, family, &[&label]);
    let mut metrics = String::new();
    for _ in 0..150 {
        metrics = get(&http, admin, "/metrics").await.1;
        if gauge(&metrics, "ande_consumer_pending") == 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge(&metrics, "ande_consumer_pending"), 5.0, "{metrics}");
    let mut messages = consumer.fetch().max_messages(5).messages().await.unwrap();
    let mut acked = 0;
    while let Some(Ok(m)) = messages.next().await {
        m.double_ack().await.unwrap();
        acked += 1;
    }
    assert_eq!(acked, 5);
    for _ in 0..150 {
        metrics = get(&http, admin, "/metrics").await.1;
        if gauge(&metrics, "ande_consumer_pending") == 0.0
            && gauge(&metrics, "ande_consumer_ack_pending") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge(&metrics, "ande_consumer_pending"), 0.0, "{metrics}");
    assert_eq!(
        gauge(&metrics, "ande_consumer_ack_pending"),
        0.0,
        "{metrics}"
    );
    shutdown.cancel();
    let _ = stream.delete_consumer(&durable).await;
}

/// The admin listener has no login: what keeps strangers out is where it listens. Each service's
/// default is loopback; another interface (a container's) must be asked for with METRICS_ADDR.
#[test]
fn every_service_listens_for_probes_on_loopback_unless_told_otherwise() {
    use ande_platform::config::Env;
    let env = Env::from_pairs([("ANDE_ENV", "development")]);
    let addrs = [
        ande_gateway::GatewayConfig::from_env(&env)
            .unwrap()
            .admin_addr,
        ande_leads::LeadsConfig::from_env(&env).unwrap().admin_addr,
        ande_notifier::NotifierConfig::from_env(&env)
            .unwrap()
            .admin_addr,
    ];
    for addr in addrs {
        let addr = addr.expect("on by default");
        assert!(addr.ip().is_loopback(), "{addr}");
    }
    let elsewhere = Env::from_pairs([
        ("ANDE_ENV", "development"),
        ("METRICS_ADDR", "0.0.0.0:9102"),
    ]);
    let leads = ande_leads::LeadsConfig::from_env(&elsewhere).unwrap();
    assert_eq!(leads.admin_addr, Some("0.0.0.0:9102".parse().unwrap()));
}
