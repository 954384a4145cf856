//! The staff console in a real browser: headless Chromium driven by Playwright for Python
//! (`tests/console/browser.py`) against the whole stack on real NATS and Postgres.
//!
//! Needs `python3` with `playwright` and a Chromium at `/usr/bin/chromium` (or `CHROMIUM`);
//! `.ci/run` installs both (`apt-get install chromium`, `pip install playwright`). Without them
//! this test fails and says what to install: it is never skipped.
//! Screenshots land in `target/console-screenshots/` (the README's are copies of two).

use std::process::Command;
use std::time::Duration;

use ande_gateway::auth::{self, Role};
use ande_platform::SecretString;
use andectl::testing as common;
use serde_json::json;

const ADMIN: (&str, &str) = ("console-admin", "Admin-pass-2026!");
const SALES: (&str, &str) = ("console-sales", "Sales-pass-2026!");
const ADVISOR: &str = "adv-console";
const OPENID: &str = "o_adv_console";
const PHONE: &str = "13900139001";
const OTHER_PHONE: &str = "13700137002";

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staff_work_leads_and_notifications_in_the_console() {
    let t = common::start().await;
    let pool = &t.stack.gateway_pool;
    for (name, password, role, advisor) in [
        (ADMIN.0, ADMIN.1, Role::Admin, None),
        (SALES.0, SALES.1, Role::Sales, Some(ADVISOR)),
    ] {
        let pw = SecretString::from(password.to_string());
        assert!(auth::add_staff(pool, name, pw, role, advisor)
            .await
            .unwrap());
    }
    // The advisor can receive one message; WeChat refuses the first send for good (40003), so
    // the notification fails and waits for staff to retry it.
    t.advisor_accepts(ADVISOR, OPENID, ande_wechat::DEV_TEMPLATE_ID)
        .await;
    t.sim_fault(json!({"endpoint": "subscribe_send", "errcode": 40003, "count": 1}))
        .await;
    for (advisor, phone) in [(ADVISOR, PHONE), ("adv-elsewhere", OTHER_PHONE)] {
        let (status, body) = t
            .post(
                "/api/customer/action",
                json!({"customerId": format!("cust-{phone}"), "advisorId": advisor, "actionType": "view_resume",
                       "actionData": {"resumeId": "r-1"}, "customerName": "王女士", "customerPhone": phone}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let db = t.db().await;
    let other_lead = wait_failed_and_lead(&db).await;

    let shots = workspace_root().join("target/console-screenshots");
    let script = workspace_root().join("tools/andectl/tests/console/browser.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("CONSOLE_URL", &t.stack.gateway_url)
        .env("SIM_URL", t.stack.sim_url.clone().unwrap())
        .env("CONSOLE_SHOTS", &shots)
        .env("ADMIN_USER", ADMIN.0)
        .env("ADMIN_PASSWORD", ADMIN.1)
        .env("SALES_USER", SALES.0)
        .env("SALES_PASSWORD", SALES.1)
        .env("ADVISOR", ADVISOR)
        .env("OPENID", OPENID)
        .env("PHONE", PHONE)
        .env("OTHER_PHONE", OTHER_PHONE)
        .env("OTHER_LEAD", other_lead.to_string())
        .output()
        .expect("python3 runs (install it, and `pip install playwright`)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the browser test failed (needs `pip install playwright` and `apt-get install chromium`):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    for name in ["leads.png", "lead.png", "overview.png", "leads-phone.png"] {
        assert!(shots.join(name).exists(), "screenshot {name} saved");
    }
    t.stack.stop().await.unwrap();
}

/// Wait until the first action's notification failed and the other lead exists; its id.
async fn wait_failed_and_lead(db: &sqlx::PgPool) -> uuid::Uuid {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifier.notifications WHERE state = 'failed'",
        )
        .fetch_one(db)
        .await
        .unwrap();
        let other: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM leads.leads WHERE phone = $1")
                .bind(OTHER_PHONE)
                .fetch_optional(db)
                .await
                .unwrap();
        if let (1, Some(id)) = (failed, other) {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed notification and the other lead never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
