//! Prometheus metrics: every family the services export, in one process-wide registry.
//!
//! The names are a contract (dashboards and the alert rules in `deploy/observability/` rely on
//! them), so they are all declared here, in one place, whichever service moves them. A service
//! running alone exports its own families (the others stay at zero or absent); `andectl up`, which
//! runs every service in one process, exports them all on one listener. Labels are bounded sets
//! (routes as templates, subjects, consumer names, error codes, reasons as categories), never ids.
//!
//! Rendered in the Prometheus text format by [`render`], with the process's own RSS, CPU and open
//! files read from `/proc` at scrape time.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Latency buckets (seconds) for HTTP requests, batches and WeChat calls: 1 ms to 10 s.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// End to end (action accepted → WeChat accepted): 10 ms to 10 minutes (a held notification
/// waits for quiet hours or a credit, which is the design, not a fault).
const END_TO_END: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name, which the statics below rule out.
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(HistogramVec::new(opts, labels).expect("valid metric"))
}

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ande_http_requests_total",
        "HTTP requests answered by the gateway, by route template, method and status.",
        &["route", "method", "status"],
    )
});
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "ande_http_request_duration_seconds",
        "Time from a request's arrival to its answer, by route template.",
        &["route"],
        LATENCY,
    )
});
pub static EVENTS_PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ande_events_published_total",
        "Events acknowledged by JetStream, by event subject (without the deployment prefix).",
        &["subject"],
    )
});
pub static PUBLISH_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "ande_publish_failures_total",
            "Publishes that JetStream did not acknowledge (the caller answered 503 or retries).",
        )
        .expect("valid metric"),
    )
});
pub static CONSUMER_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "ande_consumer_pending",
        "Messages not yet delivered to the consumer (its lag), sampled from JetStream.",
        &["consumer"],
    )
});
pub static CONSUMER_ACK_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "ande_consumer_ack_pending",
        "Messages delivered and not yet acknowledged, sampled from JetStream.",
        &["consumer"],
    )
});
pub static CONSUMER_REDELIVERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ande_consumer_redelivered_total",
        "Messages this process received again (delivery count above one).",
        &["consumer"],
    )
});
pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ande_dead_letters_total",
        "Messages moved to the dead-letter stream, by consumer and reason (undecodable, \
         max_deliver, rejected).",
        &["consumer", "reason"],
    )
});
pub static CONSUME_BATCH: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "ande_consume_batch_duration_seconds",
        "Time a consumer's handler took for one batch (until it answered, retries included).",
        &["consumer"],
        LATENCY,
    )
});
pub static LEADS_OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ande_leads_outcomes_total",
        "Lead outcomes published by leads, by kind (created, matched, none).",
        &["kind"],
    )
});
pub static NOTIFICATIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "ande_notifications",
        "Notifications by state, sampled from the notifier's queue.",
        &["state"],
    )
});
pub static OLDEST_QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "ande_notification_oldest_queued_seconds",
            "Age of the oldest notification due and not yet sent (0 when none).",
        )
        .expect("valid metric"),
    )
});
pub static WECHAT_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "ande_wechat_requests_total",
        "Calls to the WeChat API, by API and errcode (0: success; -2: no answer).",
        &["api", "errcode"],
    )
});
pub static WECHAT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "ande_wechat_request_duration_seconds",
        "Time of a WeChat API call, by API.",
        &["api"],
        LATENCY,
    )
});
pub static WECHAT_TOKEN_FETCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "ande_wechat_token_fetches_total",
            "Access tokens fetched from WeChat (the cache missed or the token was refused).",
        )
        .expect("valid metric"),
    )
});
pub static NOTIFIER_PAUSED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "ande_notifier_paused",
            "1 while sending is paused (WeChat's 45009 quota, or an operator), else 0.",
        )
        .expect("valid metric"),
    )
});
pub static END_TO_END_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "ande_end_to_end_seconds",
        "From the action's acceptance by the gateway to WeChat accepting its message.",
    )
    .buckets(END_TO_END.to_vec());
    register(Histogram::with_opts(opts).expect("valid metric"))
});

pub static TRACE_SPANS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "ande_trace_spans_failed_total",
            "Spans the OTLP collector did not take (down, refusing or too slow); they are dropped.",
        )
        .expect("valid metric"),
    )
});

/// Count and time one WeChat API call: `errcode` 0 for success, WeChat's code for its refusals,
/// -2 when no answer came (transport, timeout, HTTP status, undecodable body).
pub fn wechat_call(api: &str, errcode: i64, elapsed: std::time::Duration) {
    WECHAT_REQUESTS
        .with_label_values(&[api, &errcode.to_string()])
        .inc();
    WECHAT_DURATION
        .with_label_values(&[api])
        .observe(elapsed.as_secs_f64());
}

/// Register every family, so that a scrape shows each unlabelled one (at zero) from the start:
/// dashboards and `absent()` alerts then tell "nothing happened" from "not exported". (A
/// labelled family shows once its first series exists.)
pub fn init() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&EVENTS_PUBLISHED);
    LazyLock::force(&PUBLISH_FAILURES);
    LazyLock::force(&CONSUMER_PENDING);
    LazyLock::force(&CONSUMER_ACK_PENDING);
    LazyLock::force(&CONSUMER_REDELIVERED);
    LazyLock::force(&DEAD_LETTERS);
    LazyLock::force(&CONSUME_BATCH);
    LazyLock::force(&LEADS_OUTCOMES);
    LazyLock::force(&NOTIFICATIONS);
    LazyLock::force(&OLDEST_QUEUED);
    LazyLock::force(&WECHAT_REQUESTS);
    LazyLock::force(&WECHAT_DURATION);
    LazyLock::force(&WECHAT_TOKEN_FETCHES);
    LazyLock::force(&NOTIFIER_PAUSED);
    LazyLock::force(&END_TO_END_SECONDS);
    LazyLock::force(&TRACE_SPANS_FAILED);
}

/// Every family in the Prometheus text format, then the process's own.
pub fn render() -> String {
    init();
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail but for a family with an invalid name, ruled out above.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    let mut out = String::from_utf8(buf).unwrap_or_default();
    out.push_str(&process_metrics());
    out
}

/// `process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds` from
/// `/proc/self` (empty where there is no /proc).
fn process_metrics() -> String {
    let mut out = String::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kb) = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
    {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            kb * 1024
        ));
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    if let (Some(u), Some(s)) = (
        fields.get(11).and_then(|v| v.parse::<u64>().ok()),
        fields.get(12).and_then(|v| v.parse::<u64>().ok()),
    ) {
        // Linux reports in clock ticks of 1/100 s on every platform Rust targets here.
        out.push_str(&format!(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n",
            (u + s) as f64 / 100.0
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push_str(&format!(
            "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            fds.count()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_from_the_start() {
        let text = render();
        // Unlabelled families; a labelled one shows once a series of it exists (next test).
        for name in [
            "ande_trace_spans_failed_total",
            "ande_publish_failures_total",
            "ande_notification_oldest_queued_seconds",
            "ande_wechat_token_fetches_total",
            "ande_notifier_paused",
            "ande_end_to_end_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn labelled_series_appear_once_moved() {
        DEAD_LETTERS
            .with_label_values(&["t-consumer", "undecodable"])
            .inc();
        let text = render();
        assert!(
            text.contains(
                r#"ande_dead_letters_total{consumer="t-consumer",reason="undecodable"} 1"#
            ),
            "{text}"
        );
    }
}
