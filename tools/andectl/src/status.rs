//! `andectl status`: is the pipeline keeping up, and is everything answering?
//!
//! - the event stream: messages, bytes, first and last sequence and time, age of the oldest;
//! - each consumer on it: pending (not yet delivered), ack pending (delivered, not yet acked),
//!   redelivered, waiting pulls (processes pulling now), ack floor; the services' durables that
//!   are missing are listed as such;
//! - dead letters per consumer;
//! - the notification queue: notifications by state, the age of the oldest due one, and a
//!   pause (an operator's, or WeChat's 45009 daily quota) with its end;
//! - each service: the gateway's `GET /api/health` (at `API_HOST:API_PORT`), and leads and
//!   notifier through a request/reply query for an action that does not exist (a `not_found`
//!   answer means the service is up and its database answers) — no new RPC needed.
//!
//! The report is printed whole; the exit code is 1 when something is unhealthy (a service does
//! not answer, a durable consumer is missing), so scripts can use `andectl status` as a check.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use ande_contracts::leads::ActionQuery;
use ande_platform::bus::Bus;
use ande_platform::config::Env;
use ande_platform::rpc::{self, Method, RpcError, Unavailable};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::decode::{rfc3339, to_chrono};
use crate::events::{count, Start};
use crate::replay::CONSUMER_NAMES;

/// How long each health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// An action id nobody has: asking for its journey exercises a service and its database.
const PROBE_ACTION: uuid::Uuid = uuid::Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0000);

/// The status report, as JSON (`--json`) and for the text view.
pub struct Report {
    pub json: Value,
    pub healthy: bool,
}

pub async fn report(bus: &Bus, env: &Env) -> anyhow::Result<Report> {
    let (events, mut healthy) = stream_status(bus).await?;
    let dlq = dead_letter_status(bus).await?;
    let gateway = gateway_health(env).await;
    let leads = rpc_health::<ande_contracts::leads::Journey>(bus).await;
    let notifier = rpc_health::<ande_contracts::notifier::Journey>(bus).await;
    for s in [&gateway, &leads, &notifier] {
        healthy &= s["status"] == "ok";
    }
    let queue = queue_status(bus).await;
    let json = json!({
        "prefix": bus.subjects.prefix(),
        "stream": events,
        "deadLetters": dlq,
        "notifications": queue,
        "services": { "gateway": gateway, "leads": leads, "notifier": notifier },
        "healthy": healthy,
    });
    Ok(Report { json, healthy })
}

/// The notifier's queue, or why it could not be read (the notifier's health says whether that
/// is a problem).
async fn queue_status(bus: &Bus) -> Value {
    use ande_contracts::notifier::{QueueQuery, QueueStatus};
    match rpc::call::<QueueStatus>(&bus.client, &bus.subjects, &QueueQuery {}, PROBE_TIMEOUT).await
    {
        Ok(q) => json!({
            "byState": q.by_state,
            "oldestQueuedSeconds": q.oldest_queued_secs,
            "noCreditLastHour": q.no_credit_last_hour,
            "pausedUntil": q.pause.paused_until,
            "pauseReason": q.pause.reason,
            "sending": crate::notifier::describe(&q.pause),
        }),
        Err(e) => json!({"unavailable": e.to_string()}),
    }
}

/// The event stream and its consumers; unhealthy when the stream or a service's durable is missing.
async fn stream_status(bus: &Bus) -> anyhow::Result<(Value, bool)> {
    let mut s = match bus.js.get_stream(bus.subjects.stream()).await {
        Ok(s) => s,
        Err(e) => {
            let missing =
                json!({ "name": bus.subjects.stream(), "missing": true, "reason": e.to_string() });
            return Ok((missing, false));
        }
    };
    let mut healthy = true;
    let info = s.info().await?.clone();
    let st = &info.state;
    let mut consumers = BTreeMap::new();
    let mut list = s.consumers();
    while let Some(c) = list.next().await {
        let c = c?;
        consumers.insert(
            c.name.clone(),
            json!({
                "filter": c.config.filter_subject,
                "durable": c.config.durable_name.is_some(),
                "pending": c.num_pending,
                "ackPending": c.num_ack_pending,
                "redelivered": c.num_redelivered,
                "waiting": c.num_waiting,
                "ackFloor": c.ack_floor.stream_sequence,
                "lastActive": c.delivered.last_active.map(|t| rfc3339(to_chrono(t))),
            }),
        );
    }
    for name in CONSUMER_NAMES {
        if !consumers.contains_key(name) {
            healthy = false;
            consumers.insert(name.to_string(), json!({ "missing": true }));
        }
    }
    let (first, last) = (to_chrono(st.first_timestamp), to_chrono(st.last_timestamp));
    let json = json!({
        "name": info.config.name,
        "messages": st.messages,
        "bytes": st.bytes,
        "firstSeq": st.first_sequence,
        "lastSeq": st.last_sequence,
        "firstTime": (st.messages > 0).then(|| rfc3339(first)),
        "lastTime": (st.messages > 0).then(|| rfc3339(last)),
        "ageSeconds": (st.messages > 0).then(|| (Utc::now() - first).num_seconds()),
        "maxAgeSeconds": info.config.max_age.as_secs(),
        "consumers": consumers,
    });
    Ok((json, healthy))
}

/// The dead-letter stream: its size and how many dead letters each known consumer has.
async fn dead_letter_status(bus: &Bus) -> anyhow::Result<Value> {
    let dlq = match bus.js.get_stream(bus.subjects.dlq_stream()).await {
        Ok(mut s) => {
            let total = s.info().await?.state.messages;
            let mut per = BTreeMap::new();
            for c in CONSUMER_NAMES {
                per.insert(
                    c.to_string(),
                    count(&s, &bus.subjects.dead_letters(c), Start::All)
                        .await
                        .unwrap_or(0),
                );
            }
            json!({ "name": bus.subjects.dlq_stream(), "messages": total, "byConsumer": per })
        }
        Err(e) => {
            json!({ "name": bus.subjects.dlq_stream(), "missing": true, "reason": e.to_string() })
        }
    };
    Ok(dlq)
}

async fn gateway_health(env: &Env) -> Value {
    let host = env.string(ande_gateway::config::API_HOST, "127.0.0.1");
    // A gateway listening on every address is reached on loopback.
    let host = match host.as_str() {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" | "[::]" => "[::1]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    let port = env.string(ande_gateway::config::API_PORT, "3001");
    let url = format!("http://{host}:{port}/api/health");
    let started = Instant::now();
    let client = match ande_wechat::http::builder().timeout(PROBE_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return json!({ "status": "error", "url": url, "reason": e.to_string() }),
    };
    match client.get(&url).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let data = &body["data"];
            let ok = code == 200 && data["status"] == "ok";
            json!({
                "status": if ok { "ok" } else { "degraded" },
                "url": url,
                "http": code,
                "millis": started.elapsed().as_millis() as u64,
                "nats": data["nats"],
                "database": data["database"],
            })
        }
        Err(e) => json!({ "status": "down", "url": url, "reason": e.to_string() }),
    }
}

/// Ask a service's `journey` method about an action that does not exist: "not found" means it
/// answers from its database.
async fn rpc_health<M>(bus: &Bus) -> Value
where
    M: Method<Request = ActionQuery>,
{
    let started = Instant::now();
    let q = ActionQuery {
        action_id: PROBE_ACTION,
    };
    let answer = rpc::call::<M>(&bus.client, &bus.subjects, &q, PROBE_TIMEOUT).await;
    let millis = started.elapsed().as_millis() as u64;
    match answer {
        Ok(_) | Err(RpcError::NotFound { .. }) => json!({ "status": "ok", "millis": millis }),
        Err(RpcError::Unavailable { cause, message }) => match cause {
            Unavailable::Database => {
                json!({ "status": "degraded", "reason": "its database is unavailable" })
            }
            Unavailable::NoResponders => {
                json!({ "status": "down", "reason": "not running (nobody answers its requests on NATS)" })
            }
            Unavailable::Timeout | Unavailable::Transport => {
                json!({ "status": "down", "reason": format!("no answer over NATS: {message}") })
            }
        },
        Err(e) => json!({ "status": "degraded", "reason": e.to_string() }),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The report for a person.
pub fn print_text<W: Write>(r: &Report, out: &mut W) -> std::io::Result<()> {
    let j = &r.json;
    writeln!(out, "prefix {}", j["prefix"].as_str().unwrap_or("?"))?;
    print_stream(&j["stream"], out)?;
    print_dead_letters(&j["deadLetters"], out)?;
    print_queue(&j["notifications"], out)?;
    print_services(&j["services"], out)?;
    writeln!(
        out,
        "\n{}",
        if r.healthy { "healthy" } else { "NOT healthy" }
    )
}

/// The event stream's line, then its consumers' table.
fn print_stream<W: Write>(s: &Value, out: &mut W) -> std::io::Result<()> {
    if s["missing"] == true {
        return writeln!(
            out,
            "stream {}: MISSING ({})",
            s["name"].as_str().unwrap_or("?"),
            s["reason"].as_str().unwrap_or("")
        );
    }
    writeln!(
        out,
        "stream {}: {} messages, {}, seq {}..{}, oldest {} ago (kept {}), newest {}",
        s["name"].as_str().unwrap_or("?"),
        s["messages"],
        bytes(s["bytes"].as_u64().unwrap_or(0)),
        s["firstSeq"],
        s["lastSeq"],
        s["ageSeconds"].as_i64().map_or("-".into(), age),
        age(s["maxAgeSeconds"].as_i64().unwrap_or(0)),
        s["lastTime"].as_str().unwrap_or("-"),
    )?;
    writeln!(
        out,
        "\n{:<26} {:>9} {:>11} {:>11} {:>8} {:>10}  FILTER",
        "CONSUMER", "PENDING", "ACK-PENDING", "REDELIVERED", "WAITING", "ACK-FLOOR"
    )?;
    match s["consumers"].as_object() {
        Some(cs) => print_consumers(cs, out),
        None => Ok(()),
    }
}

/// A row per durable consumer (or MISSING); ephemeral readers only counted.
fn print_consumers<W: Write>(
    cs: &serde_json::Map<String, Value>,
    out: &mut W,
) -> std::io::Result<()> {
    let mut readers = 0;
    for (name, c) in cs {
        if c["missing"] == true {
            writeln!(out, "{name:<26} MISSING (its service has never run with this prefix, or was reset and not re-created)")?;
            continue;
        }
        if c["durable"] == false {
            readers += 1;
            continue;
        }
        writeln!(
            out,
            "{name:<26} {:>9} {:>11} {:>11} {:>8} {:>10}  {}",
            c["pending"].to_string(),
            c["ackPending"].to_string(),
            c["redelivered"].to_string(),
            c["waiting"].to_string(),
            c["ackFloor"].to_string(),
            c["filter"].as_str().unwrap_or("")
        )?;
    }
    if readers > 0 {
        writeln!(
            out,
            "(and {readers} ephemeral reader(s): `events tail` and other reads, removed when idle)"
        )?;
    }
    Ok(())
}

/// The dead letters' line: the total and the count per consumer.
fn print_dead_letters<W: Write>(d: &Value, out: &mut W) -> std::io::Result<()> {
    if d["missing"] == true {
        return writeln!(
            out,
            "\ndead letters: stream {} missing",
            d["name"].as_str().unwrap_or("?")
        );
    }
    let per: Vec<String> = d["byConsumer"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    writeln!(
        out,
        "\ndead letters: {} ({})",
        d["messages"],
        per.join(", ")
    )
}

/// The queue's lines: counts by state, the oldest due one, sending or paused.
fn print_queue<W: Write>(q: &Value, out: &mut W) -> std::io::Result<()> {
    if let Some(why) = q["unavailable"].as_str() {
        return writeln!(out, "\nnotifications: unavailable ({why})");
    }
    let states: Vec<String> = q["byState"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    writeln!(out, "\nnotifications: {}", states.join(", "))?;
    writeln!(
        out,
        "oldest due: {} ago; 43101 (no credit at WeChat) in the last hour: {}; {}",
        age(q["oldestQueuedSeconds"].as_i64().unwrap_or(0)),
        q["noCreditLastHour"],
        q["sending"].as_str().unwrap_or("?")
    )
}

/// A line per service: its status, and its latency or why it is not ok.
fn print_services<W: Write>(services: &Value, out: &mut W) -> std::io::Result<()> {
    writeln!(out, "\nservices:")?;
    for name in ["gateway", "leads", "notifier"] {
        let v = &services[name];
        let detail = match v["status"].as_str() {
            Some("ok") => format!("{} ms", v["millis"]),
            _ => v["reason"].as_str().map(String::from).unwrap_or_else(|| {
                format!(
                    "http {}, nats {}, database {}",
                    v["http"], v["nats"], v["database"]
                )
            }),
        };
        let at = v["url"]
            .as_str()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {name:<9} {:<9}{at} ({detail})",
            v["status"].as_str().unwrap_or("?")
        )?;
    }
    Ok(())
}
