//! The staff API (`/api/staff/…`) against the real stack: who may call what (nobody, a
//! customer's session, a sales account bound to an advisor, an admin), the lead list's filters,
//! search, sort and cursor pages over a few thousand leads (with the query plans and timings
//! printed), lead changes recorded as events and applied once even when replayed, the cookie
//! session and its CSRF rule, accounts.

use std::time::{Duration, Instant};

use ande_gateway::auth::{self, Role};
use ande_platform::SecretString;
use andectl::testing::{self as common, TestStack};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("api-admin", "Admin-pass-2026!");
const SALES: (&str, &str) = ("api-sales", "Sales-pass-2026!");
const SALES_ADVISOR: &str = "adv-1";

struct Staff {
    admin: String,
    sales: String,
    customer: String,
}

async fn accounts(t: &TestStack) -> Staff {
    let pool = &t.stack.gateway_pool;
    for (name, password, role, advisor) in [
        (ADMIN.0, ADMIN.1, Role::Admin, None),
        (SALES.0, SALES.1, Role::Sales, Some(SALES_ADVISOR)),
    ] {
        let pw = SecretString::from(password.to_string());
        assert!(auth::add_staff(pool, name, pw, role, advisor)
            .await
            .unwrap());
    }
    Staff {
        admin: login(t, ADMIN).await,
        sales: login(t, SALES).await,
        customer: t.session("o_customer_1").await,
    }
}

async fn login(t: &TestStack, (username, password): (&str, &str)) -> String {
    let (status, body) = t
        .post(
            "/api/auth/login",
            json!({"username": username, "password": password}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["token"].as_str().unwrap().to_string()
}

async fn call(
    t: &TestStack,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = t.http.request(method, t.api(path));
    if let Some(token) = token {
        r = r.bearer_auth(token);
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    let resp = r.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(t: &TestStack, path: &str, token: &str) -> (u16, Value) {
    call(t, Method::GET, path, Some(token), None).await
}

async fn post(t: &TestStack, path: &str, token: &str, body: Value) -> (u16, Value) {
    call(t, Method::POST, path, Some(token), Some(body)).await
}

/// Every staff route refuses no token (401) and a customer's session (403); the admin-only ones
/// refuse a sales account (403); each answers an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_staff_route_checks_who_calls() {
    let t = common::start().await;
    let s = accounts(&t).await;
    let some = uuid::Uuid::now_v7();
    let routes: Vec<(Method, String, Option<Value>, bool)> = vec![
        (Method::GET, "/api/staff/me".into(), None, false),
        (Method::GET, "/api/staff/leads".into(), None, false),
        (Method::GET, format!("/api/staff/leads/{some}"), None, false),
        (
            Method::POST,
            format!("/api/staff/leads/{some}"),
            Some(json!({"status": "跟进中"})),
            false,
        ),
        (Method::GET, "/api/staff/advisors".into(), None, false),
        (Method::GET, "/api/staff/notifications".into(), None, false),
        (
            Method::POST,
            format!("/api/staff/notifications/{some}/retry"),
            Some(json!({})),
            false,
        ),
        (Method::GET, "/api/staff/overview".into(), None, false),
        (
            Method::POST,
            "/api/staff/sending".into(),
            Some(json!({"paused": false})),
            true,
        ),
        (Method::GET, "/api/staff/users".into(), None, true),
        (Method::GET, "/api/staff/dead-letters".into(), None, true),
        (Method::GET, "/api/staff/dead-letters/1".into(), None, true),
        (
            Method::POST,
            "/api/staff/dead-letters/1/retry".into(),
            Some(json!({})),
            true,
        ),
        (
            Method::POST,
            "/api/staff/dead-letters/1/purge".into(),
            Some(json!({})),
            true,
        ),
        (
            Method::POST,
            "/api/staff/users".into(),
            Some(json!({"username": "x", "role": "sales"})),
            true,
        ),
        (
            Method::POST,
            "/api/staff/users/nobody".into(),
            Some(json!({"disabled": true})),
            true,
        ),
        // The bindings and direct sends that existed before roles: admins only now.
        (Method::GET, "/api/advisor-bindings".into(), None, true),
        (
            Method::POST,
            "/api/advisor-pairings".into(),
            Some(json!({"advisorId": "adv-1"})),
            true,
        ),
    ];
    for (method, path, body, admin_only) in &routes {
        let (none, _) = call(&t, method.clone(), path, None, body.clone()).await;
        assert_eq!(none, 401, "{method} {path} without a token");
        let (customer, _) = call(&t, method.clone(), path, Some(&s.customer), body.clone()).await;
        assert_eq!(customer, 403, "{method} {path} with a customer's session");
        let (sales, b) = call(&t, method.clone(), path, Some(&s.sales), body.clone()).await;
        if *admin_only {
            assert_eq!(sales, 403, "{method} {path} as sales: {b}");
        } else {
            assert!(
                [200, 202, 404].contains(&sales),
                "{method} {path} as sales: {sales} {b}"
            );
        }
        let (admin, b) = call(&t, method.clone(), path, Some(&s.admin), body.clone()).await;
        assert!(
            [200, 201, 202, 404].contains(&admin),
            "{method} {path} as admin: {admin} {b}"
        );
    }
    let (status, me) = get(&t, "/api/staff/me", &s.sales).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            me["data"]["role"].as_str(),
            me["data"]["advisorId"].as_str()
        ),
        (Some("sales"), Some(SALES_ADVISOR))
    );
    t.stack.stop().await.unwrap();
}

/// 3,000 leads over ten advisors, thirty days, four statuses and three levels, written straight
/// into the leads table (this tests reading them; the pipeline that writes leads has its own tests).
async fn seed_leads(db: &sqlx::PgPool, n: i32) {
    sqlx::query(
        "INSERT INTO leads.leads (id, customer_code, phone, name, owner_advisor_id, created_by, source,
                                  status, level, remark, touch_count, last_touch_at, created_at)
         SELECT gen_random_uuid(), 'KH2026' || lpad(i::text, 6, '0'), '139' || lpad(i::text, 8, '0'),
                CASE WHEN i % 7 = 0 THEN '李' || i ELSE '王' || i END, 'adv-' || (i % 10), 'seed', 'seed',
                (ARRAY['待定', '跟进中', '已签约', '无效'])[1 + i % 4], (ARRAY['A类', 'B类', 'C类'])[1 + i % 3], '',
                1 + i % 5, now() - make_interval(mins => (i * 37) % 43200), now() - make_interval(mins => i * 14)
         FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("ANALYZE leads.leads")
        .execute(db)
        .await
        .unwrap();
}

async fn count(db: &sqlx::PgPool, filter: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM leads.leads WHERE {filter}"
    )))
    .fetch_one(db)
    .await
    .unwrap()
}

/// All pages of a query, following the cursor; the leads in order, and the slowest answer.
async fn all_pages(t: &TestStack, token: &str, query: &str) -> (Vec<Value>, Duration) {
    let (mut out, mut cursor, mut slowest) = (Vec::new(), None::<String>, Duration::ZERO);
    loop {
        let mut path = format!("/api/staff/leads?limit=200&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let started = Instant::now();
        let (status, body) = get(t, &path, token).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{path}: {body}");
        out.extend(body["data"]["leads"].as_array().unwrap().iter().cloned());
        match body["data"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (out, slowest),
        }
    }
}

fn urlencode(s: &str) -> String {
    ande_platform::config::percent_encode(s)
}

fn descending(leads: &[Value], key: &str) -> bool {
    leads.windows(2).all(|w| {
        let (a, b) = (w[0][key].as_str().unwrap(), w[1][key].as_str().unwrap());
        a >= b
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lead_lists_filter_search_sort_and_page_over_thousands_of_leads() {
    let t = common::start().await;
    let s = accounts(&t).await;
    let db = t.db().await;
    seed_leads(&db, 3000).await;

    let (everything, slowest) = all_pages(&t, &s.admin, "").await;
    assert_eq!(everything.len(), 3000, "every lead once across the pages");
    let mut ids: Vec<&str> = everything
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3000, "no lead on two pages");
    assert!(descending(&everything, "createdAt"), "newest first");
    println!("all 3,000 leads in 15 pages of 200: slowest page {slowest:?}");

    let (touched, _) = all_pages(&t, &s.admin, "sort=lastTouch&advisorId=adv-3").await;
    assert_eq!(
        touched.len() as i64,
        count(&db, "owner_advisor_id = 'adv-3'").await
    );
    assert!(touched.iter().all(|l| l["ownerAdvisorId"] == "adv-3"));
    assert!(descending(&touched, "lastTouchAt"));

    let (filtered, _) = all_pages(
        &t,
        &s.admin,
        &format!("status={}&level={}", urlencode("跟进中"), urlencode("B类")),
    )
    .await;
    assert_eq!(
        filtered.len() as i64,
        count(&db, "status = '跟进中' AND level = 'B类'").await
    );
    assert!(!filtered.is_empty());

    let (recent, _) = all_pages(
        &t,
        &s.admin,
        &format!(
            "createdFrom={}",
            urlencode(&(chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339())
        ),
    )
    .await;
    assert_eq!(
        recent.len() as i64,
        count(&db, "created_at >= now() - interval '7 days'").await
    );

    for (q, expected) in [
        ("13900000042", 1),
        ("KH2026000042", 1),
        ("%", 0),
        ("李", count(&db, "name LIKE '李%'").await),
    ] {
        let (found, _) = all_pages(&t, &s.admin, &format!("q={}", urlencode(q))).await;
        assert_eq!(found.len() as i64, expected, "search {q:?}");
    }

    // A sales account bound to adv-1 sees adv-1's leads only, and may not ask for another's.
    let (mine, _) = all_pages(&t, &s.sales, "").await;
    assert_eq!(
        mine.len() as i64,
        count(&db, "owner_advisor_id = 'adv-1'").await
    );
    assert!(mine.iter().all(|l| l["ownerAdvisorId"] == "adv-1"));
    let (status, _) = get(&t, "/api/staff/leads?advisorId=adv-2", &s.sales).await;
    assert_eq!(status, 403);

    for bad in [
        "sort=oldest",
        "limit=0",
        "limit=201",
        "createdFrom=yesterday",
        "cursor=forged",
    ] {
        let (status, body) = get(&t, &format!("/api/staff/leads?{bad}"), &s.admin).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    explain_and_time(&t, &s, &db).await;
    t.stack.stop().await.unwrap();
}

/// Print the plans of the list's queries and the answer times of the first page through the
/// whole stack (HTTP → NATS → leads → Postgres); the plans must use the indexes.
async fn explain_and_time(t: &TestStack, s: &Staff, db: &sqlx::PgPool) {
    use ande_contracts::leads::LeadSort;
    let cases = [
        ("newest first", "", LeadSort::Created, None),
        (
            "one advisor by last touch",
            "sort=lastTouch&advisorId=adv-3",
            LeadSort::LastTouch,
            Some(vec!["adv-3".to_string()]),
        ),
    ];
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET search_path TO leads")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (name, query, sort, advisors) in cases {
        // The service's own query with the values this request binds.
        let sql = format!("EXPLAIN {}", ande_leads::console::search_sql(sort));
        let none: Option<String> = None;
        let no_time: Option<chrono::DateTime<chrono::Utc>> = None;
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(advisors)
            .bind(none.clone())
            .bind(none.clone())
            .bind(no_time)
            .bind(no_time)
            .bind(no_time)
            .bind(no_time)
            .bind(none)
            .bind(no_time)
            .bind(None::<uuid::Uuid>)
            .bind(51i64)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        println!("EXPLAIN ({name}):\n  {}", plan.join("\n  "));
        assert!(
            plan.iter().any(|l| l.contains("Index")),
            "{name} uses an index: {plan:?}"
        );
        let mut times = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let (status, _) = get(t, &format!("/api/staff/leads?{query}"), &s.admin).await;
            assert_eq!(status, 200);
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "first page, {name}: p50 {:?}, max {:?}",
            times[10], times[19]
        );
    }
}

/// A change is a `lead.changed` event applied by leads: answered 202, visible in the lead's
/// history, and applied once however often it is delivered (a replay of the consumer from the
/// start changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lead_changes_are_events_applied_once_and_scoped_to_the_account() {
    let t = common::start().await;
    let s = accounts(&t).await;
    let (status, body) = t
        .post(
            "/api/customer/action",
            json!({"customerId": "c-1", "advisorId": SALES_ADVISOR, "actionType": "view_resume", "customerName": "赵先生", "customerPhone": "13600136001"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let lead = wait_lead(&t, &s.admin, "13600136001").await;
    let id = lead["id"].as_str().unwrap().to_string();
    let path = format!("/api/staff/leads/{id}");

    let (status, detail) = get(&t, &path, &s.sales).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["data"]["actions"][0]["actionType"], "view_resume");
    assert!(detail["data"]["actions"][0]["delivery"]["notifications"].is_array());

    let (status, _) = post(&t, &path, &s.sales, json!({"ownerAdvisorId": "adv-2"})).await;
    assert_eq!(status, 403, "a sales account cannot give a lead away");
    let (status, b) = post(&t, &path, &s.sales, json!({"status": "  "})).await;
    assert_eq!(status, 400, "{b}");
    // A remark as long as the API takes (500) is applied, not dropped by leads.
    let long = "约".repeat(500);
    let (status, b) = post(&t, &path, &s.sales, json!({ "remark": long })).await;
    assert_eq!(status, 202, "{b}");
    let applied = wait_change(&t, &s.admin, &path, b["data"]["eventId"].as_str().unwrap()).await;
    assert_eq!(applied["data"]["lead"]["remark"], long);
    let (status, changed) = post(
        &t,
        &path,
        &s.sales,
        json!({"status": "跟进中", "remark": "约了周六面谈"}),
    )
    .await;
    assert_eq!(status, 202, "{changed}");
    let event = changed["data"]["eventId"].as_str().unwrap().to_string();
    let applied = wait_change(&t, &s.admin, &path, &event).await;
    assert_eq!(applied["data"]["lead"]["status"], "跟进中");
    let (status, moved) = post(
        &t,
        &path,
        &s.admin,
        json!({"ownerAdvisorId": "adv-2", "level": "A类"}),
    )
    .await;
    assert_eq!(status, 202);
    wait_change(
        &t,
        &s.admin,
        &path,
        moved["data"]["eventId"].as_str().unwrap(),
    )
    .await;
    let (status, _) = get(&t, &path, &s.sales).await;
    assert_eq!(status, 404, "the lead left the sales account's advisor");

    // Replay every change from the start: nothing is applied twice.
    let bus = ande_platform::bus::Bus::connect(&t.stack.common, "staff-api-test")
        .await
        .unwrap();
    let args = andectl::replay::ReplayArgs {
        consumer: ande_leads::changes::DURABLE.into(),
        from: andectl::events::Start::All,
        dry_run: false,
        into_prefix: None,
        allow_skip: false,
        wait: true,
        timeout: Duration::from_secs(30),
    };
    andectl::replay::replay(&bus, &t.stack.common, &args, &mut Vec::new())
        .await
        .unwrap();
    let (_, after) = get(&t, &path, &s.admin).await;
    let changes = after["data"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{changes:?}");
    let l = &after["data"]["lead"];
    assert_eq!(
        (
            l["status"].as_str(),
            l["level"].as_str(),
            l["ownerAdvisorId"].as_str()
        ),
        (Some("跟进中"), Some("A类"), Some("adv-2"))
    );
    assert_eq!(
        changes[1]["changes"]["status"],
        json!({"from": "待定", "to": "跟进中"})
    );
    assert_eq!(changes[1]["changedBy"], format!("staff:{}", SALES.0));
    // A sales change allowed for the owner of the time is not applied once the lead moved.
    let stale_id = uuid::Uuid::now_v7();
    let stale = ande_events::LeadChanged {
        meta: Some(ande_events::meta_with_id(
            stale_id,
            &id,
            "test",
            chrono::Utc::now(),
        )),
        lead_id: id.clone(),
        changed_by: format!("staff:{}", SALES.0),
        status: "无效".into(),
        expected_owner: SALES_ADVISOR.into(),
        ..Default::default()
    };
    bus.publish(&stale).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, dl) = get(
            &t,
            "/api/staff/dead-letters?consumer=leads-changes",
            &s.admin,
        )
        .await;
        if dl["data"]["total"] == 1 {
            assert!(
                dl["data"]["deadLetters"][0]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("changed owner"),
                "{dl}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stale change was not set aside: {dl}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, after) = get(&t, &path, &s.admin).await;
    assert_eq!(after["data"]["lead"]["status"], "跟进中");
    t.stack.stop().await.unwrap();
}

async fn wait_lead(t: &TestStack, token: &str, phone: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(t, &format!("/api/staff/leads?q={phone}"), token).await;
        if let Some(l) = body["data"]["leads"].get(0) {
            return l.clone();
        }
        assert!(Instant::now() < deadline, "no lead for {phone}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_change(t: &TestStack, token: &str, path: &str, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(t, path, token).await;
        if body["data"]["changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["eventId"] == event))
        {
            return body;
        }
        assert!(Instant::now() < deadline, "change {event} never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The console's cookie: httpOnly and SameSite=Strict; a change made with it alone (as another
/// site's form would) is refused without the console's header; accounts are managed by admins,
/// and a disabled account's session stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_session_is_csrf_safe_and_accounts_are_managed_by_admins() {
    let t = common::start().await;
    let s = accounts(&t).await;
    let sign_in = |header: bool| {
        let mut r = t
            .http
            .post(t.api("/api/staff/session"))
            .json(&json!({"username": ADMIN.0, "password": ADMIN.1}));
        if header {
            r = r.header("x-ande-console", "1");
        }
        r.send()
    };
    assert_eq!(
        sign_in(false).await.unwrap().status().as_u16(),
        403,
        "a cross-site form cannot sign in"
    );
    let ok = sign_in(true).await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let body: Value = ok.json().await.unwrap();
    assert!(
        body["data"].get("token").is_none(),
        "the page never sees the token"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |m: Method, path: &str, header: bool| {
        let mut r = t
            .http
            .request(m, t.api(path))
            .header("cookie", pair.clone());
        if header {
            r = r.header("x-ande-console", "1");
        }
        r
    };
    assert_eq!(
        with_cookie(Method::GET, "/api/staff/users", false)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let change = json!({"username": "new-sales", "role": "sales", "advisorId": "adv-9"});
    let forged = with_cookie(Method::POST, "/api/staff/users", false)
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        403,
        "a change with the cookie alone is refused"
    );
    let made = with_cookie(Method::POST, "/api/staff/users", true)
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    // The generated password is good for signing in, once handed over.
    let generated = made["data"]["password"].as_str().unwrap().to_string();
    let token = login(&t, ("new-sales", &generated)).await;
    let (status, me) = get(&t, "/api/staff/me", &token).await;
    assert_eq!(
        (status, me["data"]["advisorId"].as_str()),
        (200, Some("adv-9"))
    );
    // The new colleague replaces it: the current one is checked, the policy applies, the old
    // token stops working and the new password signs in.
    let change_pw =
        |current: &str, new: &str| json!({"currentPassword": current, "newPassword": new});
    let (status, _) = post(
        &t,
        "/api/staff/me/password",
        &token,
        change_pw("wrong-one", "Fresh-pass-2026"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &t,
        "/api/staff/me/password",
        &token,
        change_pw(&generated, "aaaaaaaaaaaaaaa"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, b) = post(
        &t,
        "/api/staff/me/password",
        &token,
        change_pw(&generated, "Fresh-pass-2026"),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let (status, _) = get(&t, "/api/staff/me", &token).await;
    assert_eq!(status, 401, "the old token ended with the old password");
    login(&t, ("new-sales", "Fresh-pass-2026")).await;
    // A role change keeps the advisor unless one is given; an advisor alone changes just that.
    let path = "/api/staff/users/new-sales";
    let (status, b) = post(&t, path, &s.admin, json!({"role": "sales"})).await;
    assert_eq!(
        (status, b["data"]["advisorId"].as_str()),
        (200, Some("adv-9")),
        "{b}"
    );
    let (status, b) = post(&t, path, &s.admin, json!({"advisorId": "adv-8"})).await;
    assert_eq!(
        (status, b["data"]["advisorId"].as_str()),
        (200, Some("adv-8")),
        "{b}"
    );
    let fresh = login(&t, ("new-sales", "Fresh-pass-2026")).await;
    let (_, o) = get(&t, "/api/staff/overview", &fresh).await;
    assert_eq!(
        o["data"]["consumers"],
        json!([]),
        "the pipeline's state is for admins"
    );
    let again = with_cookie(Method::POST, "/api/staff/users", true)
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    for bad in ["with space", "", "tab\there"] {
        let (status, b) = post(
            &t,
            "/api/staff/users",
            &s.admin,
            json!({"username": bad, "role": "sales"}),
        )
        .await;
        assert_eq!(status, 400, "{bad:?}: {b}");
    }

    // Disabling the sales account ends its token at once; an admin cannot disable themselves.
    let (status, _) = post(
        &t,
        &format!("/api/staff/users/{}", SALES.0),
        &s.admin,
        json!({"disabled": true}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(&t, "/api/staff/leads", &s.sales).await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &t,
        &format!("/api/staff/users/{}", ADMIN.0),
        &s.admin,
        json!({"disabled": true}),
    )
    .await;
    assert_eq!(status, 409);

    // Pause and resume, seen by the overview.
    let (status, _) = post(
        &t,
        "/api/staff/sending",
        &s.admin,
        json!({"paused": true, "minutes": 5}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, o) = get(&t, "/api/staff/overview", &s.admin).await;
    assert!(
        o["data"]["queue"]["pause"]["pausedUntil"].is_string(),
        "{o}"
    );
    let names: Vec<&str> = o["data"]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for c in andectl::replay::CONSUMER_NAMES {
        assert!(names.contains(&c), "{c} in {names:?}");
    }
    // A message leads can never decode is dead-lettered, and the overview counts it.
    let bus = ande_platform::bus::Bus::connect(&t.stack.common, "staff-api-test")
        .await
        .unwrap();
    let subject = bus.subjects.event(ande_events::EventKind::ActionRecorded);
    bus.js
        .publish(subject, "not protobuf".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, o) = get(&t, "/api/staff/overview", &s.admin).await;
        if o["data"]["deadLetters"] == json!([{"consumer": "leads", "count": 1}]) {
            break;
        }
        assert!(Instant::now() < deadline, "dead letter never counted: {o}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = post(&t, "/api/staff/sending", &s.admin, json!({"paused": false})).await;
    assert_eq!(status, 200);
    let signed_out = t
        .http
        .post(t.api("/api/staff/session/end"))
        .send()
        .await
        .unwrap();
    assert!(signed_out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    t.stack.stop().await.unwrap();
}

/// Dead letters through the console's API (admins): listed and shown decoded, retried (the
/// event goes back to its consumer; here it fails again, so it comes back as a new dead letter),
/// purged; a dead lead outcome is not the gateway's to republish (409 naming andectl).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_decoded_retried_and_purged_by_admins() {
    use ande_events::{meta_with_id, ActionRecorded, EventKind, LeadOutcome};
    let t = common::start().await;
    let s = accounts(&t).await;
    let bus = ande_platform::bus::Bus::connect(&t.stack.common, "staff-api-dlq")
        .await
        .unwrap();
    // Leads can never store an action without a customer: dead-lettered with the reason.
    let id = uuid::Uuid::now_v7();
    let action = ActionRecorded {
        meta: Some(meta_with_id(
            id,
            &id.to_string(),
            "test",
            chrono::Utc::now(),
        )),
        action_id: id.to_string(),
        advisor_id: "adv-1".into(),
        action_type: "view_resume".into(),
        ..Default::default()
    };
    bus.publish(&action).await.unwrap();
    // The notifier cannot use an outcome without an action id.
    let oid = uuid::Uuid::now_v7();
    let outcome = LeadOutcome {
        meta: Some(meta_with_id(oid, "x", "test", chrono::Utc::now())),
        advisor_id: "adv-1".into(),
        ..Default::default()
    };
    bus.publish(&outcome).await.unwrap();
    let letters = wait_letters(&t, &s.admin, 2).await;
    let by = |consumer: &str| {
        letters
            .iter()
            .find(|l| l["consumer"] == consumer)
            .unwrap_or_else(|| panic!("a dead letter of {consumer}: {letters:?}"))
            .clone()
    };
    let (dead_action, dead_outcome) = (by("leads"), by("notifier-outcomes"));
    assert!(
        dead_action["reason"].as_str().unwrap().contains("customer"),
        "{dead_action}"
    );
    let seq = dead_action["seq"].as_u64().unwrap();
    let (status, shown) = get(&t, &format!("/api/staff/dead-letters/{seq}"), &s.admin).await;
    assert_eq!(status, 200);
    assert_eq!(
        shown["data"]["event"]["actionId"],
        id.to_string(),
        "{shown}"
    );
    assert_eq!(
        shown["data"]["original"]["subject"],
        bus.subjects.event(EventKind::ActionRecorded)
    );

    let (status, b) = post(
        &t,
        &format!("/api/staff/dead-letters/{seq}/retry"),
        &s.admin,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let (status, _) = get(&t, &format!("/api/staff/dead-letters/{seq}"), &s.admin).await;
    assert_eq!(status, 404, "a retried dead letter is gone");
    let again = wait_letters(&t, &s.admin, 2).await;
    let back = again
        .iter()
        .find(|l| l["consumer"] == "leads")
        .expect("dead-lettered again");
    assert_ne!(back["seq"], dead_action["seq"]);

    let oseq = dead_outcome["seq"].as_u64().unwrap();
    let (status, b) = post(
        &t,
        &format!("/api/staff/dead-letters/{oseq}/retry"),
        &s.admin,
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("andectl dlq retry"),
        "{b}"
    );
    for l in &again {
        let n = l["seq"].as_u64().unwrap();
        let (status, _) = post(
            &t,
            &format!("/api/staff/dead-letters/{n}/purge"),
            &s.admin,
            json!({}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, empty) = get(&t, "/api/staff/dead-letters", &s.admin).await;
    assert_eq!(empty["data"]["total"], 0, "{empty}");
    let (status, _) = post(
        &t,
        "/api/staff/dead-letters/999999/purge",
        &s.admin,
        json!({}),
    )
    .await;
    assert_eq!(status, 404);
    t.stack.stop().await.unwrap();
}

async fn wait_letters(t: &TestStack, token: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(t, "/api/staff/dead-letters", token).await;
        assert_eq!(status, 200, "{body}");
        let letters = body["data"]["deadLetters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if letters.len() >= n {
            return letters;
        }
        assert!(
            Instant::now() < deadline,
            "{n} dead letters never came: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
