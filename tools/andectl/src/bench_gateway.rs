//! `andectl bench --part 5`: the gateway under concurrency against the least any gateway of this
//! design must do, measured side by side in the same run.
//!
//! The reference is a minimal axum handler in this process: decode the body into JSON, publish
//! it with JetStream's ack (to `<prefix>.events.bench.reference`, in the same stream as the
//! gateway's events, so storage costs the same), answer JSON. The gateway runs alone (no leads,
//! no notifier) against the same NATS and Postgres. A closed loop of C keep-alive HTTP/1.1
//! connections (hyper, one task each) sends the same action body back to back for a fixed time;
//! the two servers alternate at each level, so a machine that slows down during the run slows
//! both. Everything (load, servers, NATS client) shares this process's two cores, as a
//! deployment on one small machine would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Connections at each level.
pub const LEVELS: [usize; 3] = [1, 16, 64];
/// Turns each server takes at each level.
const ROUNDS: u32 = 4;

/// What one server's closed-loop runs at one level measured (its slices together).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Load {
    pub connections: usize,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// CPU time of this process (load, both servers, NATS client) per answered request, µs:
    /// steadier than req/s on a shared machine, and the same load generator is in both.
    pub cpu_us_per_request: f64,
    /// nats-server's CPU time per answered request, µs.
    pub nats_us_per_request: f64,
}

/// The gateway and the reference at one level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Level {
    pub gateway: Load,
    pub reference: Load,
    /// gateway req/s ÷ reference req/s.
    pub ratio: f64,
}

/// The body both servers get: an anonymous view, as the mini-program sends it.
pub fn body() -> Bytes {
    Bytes::from(
        json!({"customerId": "bench-c", "advisorId": "bench-advisor", "actionType": "view_resume",
               "actionData": {"resumeId": "r-1"}, "customerName": "压测"})
        .to_string(),
    )
}

/// One connection sending back to back until `until`; latencies of good answers, and errors.
async fn connection(
    addr: SocketAddr,
    path: &'static str,
    body: Bytes,
    until: Instant,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut lat = Vec::with_capacity(8192);
    let mut errors = 0;
    while Instant::now() < until {
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        let t = Instant::now();
        let resp = sender.send_request(req).await?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await?;
        if ok {
            lat.push(t.elapsed());
        } else {
            errors += 1;
        }
    }
    Ok((lat, errors))
}

/// What one slice of a run measured: latencies of good answers, errors, and how long it took.
#[derive(Default)]
struct Slice {
    latencies: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
    /// CPU seconds of this process and of nats-server during the slice.
    cpu_s: f64,
    nats_s: f64,
}

/// `connections` connections for `secs` against `addr`.
async fn drive(
    addr: SocketAddr,
    path: &'static str,
    connections: usize,
    secs: Duration,
) -> anyhow::Result<Slice> {
    let cpu = crate::bench_open::shared_cpu();
    let until = Instant::now() + secs;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(addr, path, body(), until)))
        .collect();
    let mut slice = Slice::default();
    for t in tasks {
        let (lat, e) = t.await.context("load task")??;
        slice.latencies.extend(lat);
        slice.errors += e;
    }
    slice.elapsed = started.elapsed();
    let after = crate::bench_open::shared_cpu();
    let used = |n: &str| after.get(n).unwrap_or(&0.0) - cpu.get(n).unwrap_or(&0.0);
    slice.cpu_s = used("bench");
    slice.nats_s = used("nats-server");
    Ok(slice)
}

impl Slice {
    /// Add another slice of the same server and level.
    fn add(&mut self, other: Slice) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu_s += other.cpu_s;
        self.nats_s += other.nats_s;
    }

    fn load(mut self, connections: usize) -> Load {
        let all = &mut self.latencies;
        all.sort();
        let pct = |p: f64| {
            let i = ((all.len().max(1) - 1) as f64 * p).round() as usize;
            all.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let per_request = |s: f64| s * 1e6 / all.len().max(1) as f64;
        Load {
            cpu_us_per_request: per_request(self.cpu_s),
            nats_us_per_request: per_request(self.nats_s),
            connections,
            requests: all.len() as u64,
            errors: self.errors,
            rps: all.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
        }
    }
}

/// The gateway and the reference at `connections`, `secs` each: in [`ROUNDS`] slices taking
/// turns (reference first, then gateway first, …), so a drift of the machine during the level
/// (another process, NATS compacting its files) falls on both alike.
async fn level(
    gateway: SocketAddr,
    reference: SocketAddr,
    connections: usize,
    secs: Duration,
) -> anyhow::Result<(Load, Load)> {
    let slice = secs / ROUNDS;
    let (mut gw, mut rf) = (Slice::default(), Slice::default());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            rf.add(drive(reference, "/reference", connections, slice).await?);
            gw.add(drive(gateway, "/api/customer/action", connections, slice).await?);
        } else {
            gw.add(drive(gateway, "/api/customer/action", connections, slice).await?);
            rf.add(drive(reference, "/reference", connections, slice).await?);
        }
    }
    Ok((gw.load(connections), rf.load(connections)))
}

struct Reference {
    js: async_nats::jetstream::Context,
    subject: String,
}

async fn reference(
    State(r): State<Arc<Reference>>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_vec(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    r.js.publish_with_headers(r.subject.clone(), headers, payload.into())
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"success": true, "data": {"eventId": id}})),
    ))
}

/// Serve the reference on a free port until `stop`.
pub async fn serve_reference(
    bus: &ande_platform::bus::Bus,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let r = Arc::new(Reference {
        js: bus.js.clone(),
        subject: format!("{}.events.bench.reference", bus.subjects.prefix()),
    });
    let app = axum::Router::new()
        .route("/reference", axum::routing::post(reference))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(addr)
}

/// The whole comparison: the gateway alone and the reference, alternating at each level.
pub async fn run(secs: Duration) -> anyhow::Result<Vec<Level>> {
    let common = ande_platform::testing::isolated_config().await;
    let mut config = ande_gateway::GatewayConfig::with_common(common.clone(), "http://127.0.0.1:9");
    config.port = 0;
    // One client sending many requests: not what the per-IP limits are for.
    config.rate_per_ip = u32::MAX;
    config.rate_per_openid = u32::MAX;
    let gateway = ande_gateway::Gateway::bind(config).await?;
    let gateway_addr = gateway.addr;
    let stop = CancellationToken::new();
    let gw_stop = stop.clone();
    let serving = tokio::spawn(async move { gateway.run(gw_stop).await });
    let bus = ande_platform::bus::Bus::connect(&common, "bench").await?;
    bus.ensure_streams(common.event_max_age).await?;
    let reference_addr = serve_reference(&bus, stop.clone()).await?;
    // Warm both up (connections, JIT-free but caches and pools).
    drive(
        gateway_addr,
        "/api/customer/action",
        4,
        Duration::from_millis(500),
    )
    .await?;
    drive(reference_addr, "/reference", 4, Duration::from_millis(500)).await?;
    println!(
        "5. gateway vs the reference (decode JSON, publish with ack, answer JSON), {} s per server and level in {ROUNDS} turns",
        secs.as_secs_f64()
    );
    println!("   conns   gateway req/s  p50 ms  p99 ms p99.9 ms | reference req/s  p50 ms  p99 ms p99.9 ms | ratio | CPU µs/req (this process + NATS): gateway, reference");
    let mut levels = Vec::new();
    for c in LEVELS {
        let (gateway, reference) = level(gateway_addr, reference_addr, c, secs).await?;
        let ratio = gateway.rps / reference.rps.max(1e-9);
        println!(
            "   {c:5} {:15.0} {:7.2} {:7.2} {:8.2} | {:15.0} {:7.2} {:7.2} {:8.2} | {ratio:4.2}x | {:.0} + {:.0}, {:.0} + {:.0}",
            gateway.rps,
            gateway.p50_ms,
            gateway.p99_ms,
            gateway.p999_ms,
            reference.rps,
            reference.p50_ms,
            reference.p99_ms,
            reference.p999_ms,
            gateway.cpu_us_per_request,
            gateway.nats_us_per_request,
            reference.cpu_us_per_request,
            reference.nats_us_per_request,
        );
        anyhow::ensure!(
            gateway.errors == 0 && reference.errors == 0,
            "errors: gateway {}, reference {}",
            gateway.errors,
            reference.errors
        );
        levels.push(Level {
            gateway,
            reference,
            ratio,
        });
    }
    stop.cancel();
    serving.await.context("gateway task")??;
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(ms: &[u64], errors: u64, secs: u64, cpu_s: f64) -> Slice {
        Slice {
            latencies: ms.iter().map(|m| Duration::from_millis(*m)).collect(),
            errors,
            elapsed: Duration::from_secs(secs),
            cpu_s,
            nats_s: cpu_s / 2.0,
        }
    }

    #[test]
    fn slices_of_one_server_add_up_to_one_load() {
        // Four answers in 2 s and one in 3 s: 5 requests in 5 s (1/s; the mean of the two
        // slices' rates would be 1.17/s).
        let mut s = slice(&[4, 1, 3, 2], 1, 2, 0.004);
        s.add(slice(&[5], 0, 3, 0.001));
        let l = s.load(16);
        assert_eq!((l.connections, l.requests, l.errors), (16, 5, 1));
        assert!((l.rps - 1.0).abs() < 1e-9, "{}", l.rps);
        // Percentiles over all latencies together, not an average of each slice's.
        assert_eq!((l.p50_ms, l.p99_ms), (3.0, 5.0));
        // CPU per answered request: 5 ms over 5 requests.
        assert!((l.cpu_us_per_request - 1000.0).abs() < 1e-6);
        assert!((l.nats_us_per_request - 500.0).abs() < 1e-6);
    }
}
