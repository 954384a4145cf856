//! The pipeline on a three-server JetStream cluster with replicated streams
//! (`ANDE_STREAM_REPLICAS=3`, `NATS_URL` listing the three): the stream's leader is killed with
//! SIGKILL in the middle of a steady load. Every action the gateway accepted (2xx) is stored once,
//! as one lead per phone and one notification per action; while the cluster elects a new leader
//! the gateway answers 503, never a 2xx it cannot keep. The killed server then comes back with an
//! empty store (a replaced disk) and catches up with the stream.

use andectl::stack::{Stack, StackOptions};
use andectl::testing::free_port;
use andectl::testing::TestStack;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

struct Cluster {
    servers: Vec<(String, u16, Option<Child>)>,
    dir: std::path::PathBuf,
}

fn spawn_server(conf: &std::path::Path) -> Child {
    Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on PATH")
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("ande-cluster-{}", uuid::Uuid::now_v7()));
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, cluster)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            std::fs::create_dir_all(&store).unwrap();
            let conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: ande-test\n listen: 127.0.0.1:{cluster}\n routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            );
            let path = dir.join(format!("{name}.conf"));
            std::fs::write(&path, conf).unwrap();
            servers.push((name, *client, Some(spawn_server(&path))));
        }
        Cluster { servers, dir }
    }

    fn url(&self) -> String {
        self.servers
            .iter()
            .map(|(_, port, _)| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start a killed server again, its store emptied first (a replaced disk): it must catch up
    /// from the others.
    fn restart_empty(&mut self, name: &str) {
        let store = self.dir.join(name);
        std::fs::remove_dir_all(&store).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        let child = spawn_server(&self.dir.join(format!("{name}.conf")));
        let slot = self.servers.iter_mut().find(|(n, _, _)| n == name).unwrap();
        slot.2 = Some(child);
    }

    fn kill(&mut self, name: &str) {
        let (_, _, child) = self
            .servers
            .iter_mut()
            .find(|(n, _, _)| n == name)
            .expect("a server of the cluster");
        let mut child = child.take().expect("running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.servers {
            if let Some(c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_stream_leader_under_load_loses_and_doubles_nothing() {
    let mut cluster = Cluster::start();
    let mut common = ande_platform::testing::isolated_config().await;
    common.nats_url = cluster.url();
    common.stream_replicas = 3;
    // The cluster needs a meta leader before a replicated stream can be created.
    let mut stack = None;
    for _ in 0..40 {
        match Stack::start(StackOptions::for_test(common.clone())).await {
            Ok(s) => {
                stack = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let t = TestStack {
        stack: stack.expect("the stack starts on the cluster"),
        http: ande_wechat::http::client(),
    };
    let bus = ande_platform::bus::Bus::connect(&t.stack.common, "test")
        .await
        .unwrap();
    let mut stream = bus.js.get_stream(bus.subjects.stream()).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.config.num_replicas, 3,
        "the events stream is replicated"
    );
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();

    // A steady load, each action with its own phone; the leader dies at 3 s.
    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let (mut first_refusal, mut first_success_after) = (None::<Instant>, None::<Instant>);
    let mut killed_at = None;
    // 40 a second: 3 s before the kill, then until the gateway has accepted again for 2 s (at
    // most 40 s in all).
    let mut offered = 0u32;
    for i in 0..1600u32 {
        if first_success_after.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        offered += 1;
        let due = started + Duration::from_millis(25 * u64::from(i));
        tokio::time::sleep_until(due.into()).await;
        if killed_at.is_none() && started.elapsed() >= Duration::from_secs(3) {
            cluster.kill(&leader);
            killed_at = Some(Instant::now());
        }
        let phone = format!("137{i:08}");
        let (status, body) = t
            .post(
                "/api/customer/action",
                json!({"customerId": format!("c-{i}"), "advisorId": "adv-cluster",
                       "actionType": "view_resume", "customerPhone": phone}),
            )
            .await;
        *statuses.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            accepted.push(body["data"]["actionId"].as_str().unwrap().to_string());
            if first_refusal.is_some() && first_success_after.is_none() {
                first_success_after = Some(Instant::now());
            }
        } else {
            assert_eq!(status, 503, "only 503 while the cluster elects: {body}");
            first_refusal.get_or_insert_with(Instant::now);
        }
    }
    let killed_at = killed_at.expect("the leader was killed");
    let recovered = first_success_after.expect("the gateway accepts again after the election");
    // The test's own connection may be failing over too: ask until the cluster answers.
    let mut new_leader = None;
    for _ in 0..50 {
        if let Ok(info) = stream.info().await {
            new_leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
            if new_leader.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(new_leader.as_deref(), Some(leader.as_str()), "a new leader");

    // Every accepted action becomes one stored action, one lead and one notification.
    let db = t.db().await;
    let ids: Vec<uuid::Uuid> = accepted.iter().map(|a| a.parse().unwrap()).collect();
    let mut stored = 0i64;
    for _ in 0..600 {
        stored = sqlx::query_scalar("SELECT count(*) FROM leads.actions WHERE action_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&db)
            .await
            .unwrap();
        let notified: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notifier.notifications WHERE action_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(&db)
        .await
        .unwrap();
        if stored == ids.len() as i64 && notified == ids.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, ids.len() as i64, "every accepted action stored");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "distinct action ids"
    );
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT phone FROM leads.leads GROUP BY phone HAVING count(*) > 1) d",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(doubled, 0, "one lead per phone");
    let leads: i64 = sqlx::query_scalar("SELECT count(*) FROM leads.leads")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        leads,
        ids.len() as i64,
        "a lead for each accepted action's phone"
    );
    let notifications_doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT action_id FROM notifier.notifications
           GROUP BY action_id HAVING count(*) > 1) d",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(notifications_doubled, 0, "one notification per action");
    // The killed server comes back with an empty store and catches up with the stream.
    cluster.restart_empty(&leader);
    let mut caught_up = false;
    for _ in 0..150 {
        if let Ok(info) = stream.info().await {
            let peer = info
                .cluster
                .as_ref()
                .and_then(|c| c.replicas.iter().find(|r| r.name == leader));
            if peer.is_some_and(|p| p.current && p.lag.unwrap_or(0) == 0) {
                caught_up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(caught_up, "{leader} restarted empty did not catch up");
    println!(
        "cluster failover: {offered} offered, {} accepted and stored once, statuses {statuses:?}, \
         accepting again {} ms after the kill, leader {leader} -> {new_leader:?}",
        ids.len(),
        (recovered - killed_at).as_millis()
    );
    t.stack.shutdown.cancel();
}
