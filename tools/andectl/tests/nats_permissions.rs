//! The data plane needs credentials: the whole stack on a NATS configured with
//! `deploy/nats/ande-auth.conf` (one user per service), and what a client without credentials,
//! or with another service's, is refused.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use andectl::stack::ServiceNats;
use andectl::testing as common;
use futures::StreamExt;
use serde_json::json;

/// A nats-server on a free port with the deployment's users and permissions, rewritten for the
/// test's prefix (the file is written for `ande`).
struct AuthNats {
    child: Child,
    port: u16,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const PASSWORD: &str = "test-password-0123456789";

impl AuthNats {
    fn start(prefix: &str) -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let auth = std::fs::read_to_string(root.join("deploy/nats/ande-auth.conf")).unwrap();
        let auth = auth
            .replace("\"ande.", &format!("\"{prefix}."))
            .replace("ANDE_EVENTS", &format!("{}_EVENTS", prefix.to_uppercase()))
            .replace("ANDE_DLQ", &format!("{}_DLQ", prefix.to_uppercase()));
        let dir = std::env::temp_dir().join(format!("ande-nats-{prefix}"));
        std::fs::create_dir_all(dir.join("js")).unwrap();
        std::fs::write(dir.join("ande-auth.conf"), auth).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ninclude ande-auth.conf\n",
            dir.join("js").display()
        );
        std::fs::write(dir.join("nats.conf"), conf).unwrap();
        let mut cmd = Command::new("nats-server");
        cmd.arg("-c").arg(dir.join("nats.conf"));
        for user in ["GATEWAY", "LEADS", "NOTIFIER", "ANDECTL"] {
            cmd.env(format!("ANDE_NATS_{user}_PASSWORD"), PASSWORD);
        }
        let child = cmd
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
        Self {
            child,
            port,
            _dir: tempdir::Dir(dir),
        }
    }

    fn url(&self, user: &str) -> String {
        format!("nats://{user}:{PASSWORD}@127.0.0.1:{}", self.port)
    }

    fn bare(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for AuthNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(nats: &AuthNats, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .user_and_password(user.into(), PASSWORD.into())
        .custom_inbox_prefix(format!("_INBOX.{user}"))
        .connect(nats.bare())
        .await
        .unwrap()
}

/// Whether a JetStream publish by `c` on `subject` was stored (acked) within 3 s.
async fn stored(c: &async_nats::Client, subject: String) -> bool {
    let js = async_nats::jetstream::new(c.clone());
    let attempt = tokio::time::timeout(Duration::from_secs(3), async {
        match js.publish(subject, b"x".to_vec().into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    matches!(attempt, Ok(true))
}

/// A request that must not be answered: refused by the server's permissions, it times out or
/// fails, never gets a reply.
async fn refused_request(c: &async_nats::Client, subject: String) {
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        c.request(subject.clone(), b"{}".to_vec().into()),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "{subject} answered a client that may not call it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_work_with_their_own_users_and_nobody_else_gets_in() {
    let mut server = None;
    let t = common::start_with(|o| {
        let nats = AuthNats::start(&o.common.prefix);
        o.common.nats_url = nats.url("andectl");
        o.service_nats = Some(ServiceNats {
            gateway: nats.url("gateway"),
            leads: nats.url("leads"),
            notifier: nats.url("notifier"),
        });
        // WeChat's pushes too: the gateway publishes them, the notifier consumes them.
        o.push = Some(andectl::stack::SimPush::random());
        server = Some(nats);
    })
    .await;
    let nats = server.unwrap();
    let prefix = t.stack.common.prefix.clone();

    // The pipeline runs end to end with each service on its own user.
    let tpl = ande_wechat::DEV_TEMPLATE_ID;
    t.advisor_accepts("adv-perm", "o_adv_perm", tpl).await;
    let (status, body) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "c-perm", "advisorId": "adv-perm", "actionType": "view_resume", "customerPhone": "13800000001"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(t.wait_messages("o_adv_perm", 1).await.len(), 1);
    // The accept and the sent report that WeChat pushed went through the gateway's and the
    // notifier's users too.
    let db = t.db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let kinds: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM notifier.wechat_push_events ORDER BY kind")
                .fetch_all(&db)
                .await
                .unwrap();
        if kinds == ["popup", "sent"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushes applied: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without credentials: refused at connect.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.bare())
        .await;
    assert!(anonymous.is_err(), "a client without a user connected");
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password("gateway".into(), "guess".into())
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.bare())
        .await;
    assert!(wrong.is_err(), "a wrong password connected");

    // The staff console works through the gateway's user: lists, a lead's timeline, a change
    // (an event leads applies with its own user), the queue, pause and resume, the overview.
    let admin = staff_console_works(&t).await;

    // The gateway's user cannot dump leads through the old unscoped list, nor read the event
    // log (the staff lists go through `leads.search`, scoped by the gateway per account).
    let gateway = client(&nats, "gateway").await;
    refused_request(&gateway, format!("{prefix}.rpc.leads.list")).await;
    // Nor lift a pause WeChat imposed through anything but the staff routes' methods, nor
    // consume staff changes itself.
    refused_request(
        &gateway,
        format!(
            "$JS.API.CONSUMER.INFO.{}_EVENTS.leads-changes",
            prefix.to_uppercase()
        ),
    )
    .await;
    let mut snoop = gateway
        .subscribe(format!("{prefix}.events.>"))
        .await
        .unwrap();
    // Leads' user cannot message anyone or lift a pause.
    let leads = client(&nats, "leads").await;
    refused_request(&leads, format!("{prefix}.rpc.notifier.send")).await;
    refused_request(&leads, format!("{prefix}.rpc.notifier.resume")).await;
    refused_request(&leads, format!("{prefix}.rpc.notifier.credits")).await;
    // Nor change an advisor's quiet hours (staff, through the gateway, or operators).
    refused_request(
        &leads,
        format!("{prefix}.rpc.notifier.set_advisor_settings"),
    )
    .await;
    // The gateway's user cannot forge a lead outcome into the stream.
    assert!(
        !stored(&gateway, format!("{prefix}.events.v1.lead.outcome")).await,
        "the gateway's user stored a lead outcome"
    );
    // Only the gateway (which checked the staff member's role) may publish a lead change.
    assert!(
        !stored(&leads, format!("{prefix}.events.v1.lead.changed")).await,
        "the leads user stored a lead change"
    );
    let notifier = client(&nats, "notifier").await;
    assert!(
        !stored(&notifier, format!("{prefix}.events.v1.lead.changed")).await,
        "the notifier user stored a lead change"
    );
    // Only the gateway (which checked WeChat's signature) may publish WeChat's events.
    assert!(
        !stored(&leads, format!("{prefix}.events.v1.wechat.subscription")).await,
        "the leads user stored a WeChat push"
    );

    // The operator's user (andectl) sees events: a positive signal that one was published
    // while the gateway's user was subscribed, and the gateway's user still saw nothing.
    let operator = client(&nats, "andectl").await;
    // A dead letter, listed, retried and purged by an admin through the gateway's user.
    let dlq_subject = format!("{prefix}.events.v1.action.recorded");
    let js = async_nats::jetstream::new(operator.clone());
    js.publish(dlq_subject.clone(), "not protobuf".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dlq = |m: reqwest::Method, path: String| {
        let r = t.http.request(m, t.api(&path)).bearer_auth(&admin);
        async move {
            let resp = r.send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let seq = loop {
        let (status, body) = dlq(reqwest::Method::GET, "/api/staff/dead-letters".into()).await;
        assert_eq!(status, 200, "{body}");
        if let Some(seq) = body["data"]["deadLetters"][0]["seq"].as_u64() {
            break seq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, body) = dlq(
        reqwest::Method::POST,
        format!("/api/staff/dead-letters/{seq}/retry"),
    )
    .await;
    assert_eq!(status, 200, "retried with the gateway's user: {body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let again = loop {
        let (_, body) = dlq(reqwest::Method::GET, "/api/staff/dead-letters".into()).await;
        if let Some(n) = body["data"]["deadLetters"][0]["seq"].as_u64() {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, body) = dlq(
        reqwest::Method::POST,
        format!("/api/staff/dead-letters/{again}/purge"),
    )
    .await;
    assert_eq!(status, 200, "purged with the gateway's user: {body}");
    let mut watch = operator
        .subscribe(format!("{prefix}.events.>"))
        .await
        .unwrap();
    operator.flush().await.unwrap();
    let (status, _) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "c-perm2", "advisorId": "adv-perm", "actionType": "view_resume"}),
        )
        .await;
    assert_eq!(status, 201);
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert!(matches!(seen, Ok(Some(_))), "the operator saw the event");
    let leaked = tokio::time::timeout(Duration::from_millis(300), snoop.next()).await;
    assert!(
        !matches!(leaked, Ok(Some(_))),
        "the gateway's user read the event log"
    );
    t.stack.stop().await.unwrap();
}

/// An admin's console calls through the stack: every NATS subject they need is allowed.
async fn staff_console_works(t: &common::TestStack) -> String {
    let pw = ande_platform::SecretString::from("Console-check-2026!".to_string());
    let pool = &t.stack.gateway_pool;
    let admin = ande_gateway::auth::Role::Admin;
    assert!(
        ande_gateway::auth::add_staff(pool, "perm-admin", pw, admin, None)
            .await
            .unwrap()
    );
    let (_, login) = t
        .post(
            "/api/auth/login",
            json!({"username": "perm-admin", "password": "Console-check-2026!"}),
        )
        .await;
    let token = login["data"]["token"].as_str().unwrap().to_string();
    let call = |m: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut r = t.http.request(m, t.api(path)).bearer_auth(&token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, page) = call(reqwest::Method::GET, "/api/staff/leads", None).await;
    assert_eq!(status, 200, "{page}");
    let id = page["data"]["leads"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/api/staff/leads/{id}");
    let (status, changed) = call(
        reqwest::Method::POST,
        &path,
        Some(json!({"status": "跟进中"})),
    )
    .await;
    assert_eq!(status, 202, "{changed}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, detail) = call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{detail}");
        if detail["data"]["lead"]["status"] == "跟进中" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in [
        "/api/staff/notifications?state=sent",
        "/api/staff/advisors",
        "/api/staff/overview",
        "/api/staff/dead-letters",
    ] {
        let (status, body) = call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, overview) = call(reqwest::Method::GET, "/api/staff/overview", None).await;
    assert_eq!(
        overview["data"]["consumers"].as_array().map(Vec::len),
        Some(andectl::replay::CONSUMER_NAMES.len()),
        "{overview}"
    );
    for paused in [true, false] {
        let (status, body) = call(
            reqwest::Method::POST,
            "/api/staff/sending",
            Some(json!({"paused": paused})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    token
}
