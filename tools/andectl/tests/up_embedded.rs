//! `andectl up` on a machine where NATS and Postgres do not answer: it starts them itself from
//! the binaries on the PATH (Debian's Postgres binaries are found under /usr/lib/postgresql),
//! brings the stack to ready, and stops them again on SIGTERM.

use andectl::testing::free_port;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_andectl");

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_nats_and_postgres_itself_when_they_do_not_answer() {
    let (nats, pg, api, sim) = (free_port(), free_port(), free_port(), free_port());
    let data = std::env::temp_dir().join(format!(
        "andectl-up-embedded-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let mut child = Command::new(BIN)
        .arg("up")
        .env("NATS_URL", format!("nats://127.0.0.1:{nats}"))
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{pg}/postgres"),
        )
        .env("API_PORT", api.to_string())
        .env("WECHAT_SIM_ADDR", format!("127.0.0.1:{sim}"))
        .env("ANDE_PREFIX", "embedded")
        .env("ANDECTL_DATA_DIR", &data)
        .env_remove("WECHAT_API_BASE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{api}/api/health/ready");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = ande_wechat::http::client().get(&ready).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "andectl up exited early; see {}",
            data.display()
        );
        assert!(
            Instant::now() < deadline,
            "not ready in 90 s; see {}",
            data.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answers(nats) && answers(pg), "it started both servers");
    assert!(
        data.join("postgres/PG_VERSION").exists() && data.join("nats").exists(),
        "data under ANDECTL_DATA_DIR"
    );

    // The pipeline works on them.
    let http = ande_wechat::http::client();
    let r = http
        .post(format!("http://127.0.0.1:{api}/api/customer/action"))
        .json(&serde_json::json!({"customerId": "c", "advisorId": "a", "actionType": "view_resume", "customerPhone": "13800138000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < stop_deadline,
            "andectl up did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    for _ in 0..50 {
        if !answers(nats) && !answers(pg) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !answers(nats) && !answers(pg),
        "the servers it started are stopped with it"
    );
    let _ = std::fs::remove_dir_all(&data);
}
