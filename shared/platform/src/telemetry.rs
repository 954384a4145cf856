//! Tracing for every service, W3C trace context across NATS, and OTLP export.
//!
//! Spans are recorded with `tracing`; the OpenTelemetry layer turns them into OpenTelemetry
//! spans, so that the `traceparent` header injected on publish ([`inject`]) and extracted on
//! consume ([`extract_into`]) makes one trace of gateway → leads → notifier.
//!
//! Export follows the OpenTelemetry SDK variables: it is on when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not `true`;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` chooses `http/protobuf` (default) or `grpc`; `OTEL_SERVICE_NAME`
//! defaults to `ande-<service>`; `OTEL_TRACES_SAMPLER`/`_ARG` pick the sampler (parent-based
//! always-on by default). Spans go through a bounded batch queue exported from its own thread:
//! a request never waits for the collector, and when the collector is down the queue drops
//! spans (the SDK logs the count) and failed exports are counted in
//! `ande_trace_spans_failed_total`. [`shutdown`] flushes what is queued.
//!
//! Logging rules: identifiers go in span fields; errors are logged once, where they are handled;
//! secrets and access tokens never appear (they are `SecretString`s, and URLs with tokens are
//! never logged). `LOG_FORMAT=json` switches to JSON lines, each carrying the `trace_id` and
//! `span_id` of the span it was logged in; `RUST_LOG` sets the filter.

use std::sync::OnceLock;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const DEFAULT_FILTER: &str = "info,async_nats=warn,sqlx=warn,hyper=warn";

/// The provider installed by [`init`], kept to flush it on [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Install the global subscriber. Safe to call more than once (later calls do nothing), so that
/// `andectl up`, which runs every service in one process, and tests can call it freely. Call it
/// inside the Tokio runtime (the gRPC exporter needs one).
pub fn init(service: &'static str, json: bool) {
    init_with_filter(service, json, DEFAULT_FILTER)
}

/// [`init`] with another filter for when `RUST_LOG` is unset.
pub fn init_with_filter(service: &'static str, json: bool, default_filter: &str) {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    init_with_vars(service, json, default_filter, &vars)
}

/// [`init_with_filter`] reading the `OTEL_*` settings from `vars` rather than the process
/// environment (for tests, which cannot safely change the environment of a running process).
pub fn init_with_vars(
    service: &'static str,
    json: bool,
    default_filter: &str,
    vars: &[(String, String)],
) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (provider, export_error) = tracer_provider(vars, service);
    // Traces follow info-level spans whatever the log filter says: turning logs down to `warn`
    // must not break trace propagation across services.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(LevelFilter::INFO);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let registry = tracing_subscriber::registry().with(otel);
    let result = if json {
        let fmt = tracing_subscriber::fmt::layer()
            .event_format(json_log::WithTraceIds::default())
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new());
        registry
            .with(json_log::DispatchKeeper)
            .with(fmt.with_filter(filter))
            .try_init()
    } else {
        let fmt = tracing_subscriber::fmt::layer().with_target(false);
        registry.with(fmt.with_filter(filter)).try_init()
    };
    if result.is_ok() {
        let _ = PROVIDER.set(provider);
        if let Some(e) = export_error {
            tracing::warn!(error = %e, "trace export is off: the OTLP exporter could not be built");
        }
        tracing::debug!(service, "telemetry initialised");
    }
}

/// Export what is still queued and stop the exporter; the end of every service's `main`.
/// (The SDK's shutdown blocks until the export thread is done: off the async workers.)
pub async fn shutdown() {
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    match tokio::task::spawn_blocking(|| provider.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "trace export did not finish cleanly"),
        Err(e) => tracing::warn!(error = %e, "trace export did not finish cleanly"),
    }
}

/// What `OTEL_*` asks for, read from `vars` (the process environment, or a test's).
#[derive(Debug, PartialEq)]
pub struct ExportSettings {
    pub service_name: String,
    /// `None`: no endpoint set, or the SDK disabled.
    pub protocol: Option<Protocol>,
    /// Where spans go: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended for HTTP.
    pub endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

impl ExportSettings {
    pub fn from_vars(vars: &[(String, String)], service: &str) -> Result<Self, String> {
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        let service_name = get("OTEL_SERVICE_NAME").map_or_else(
            || match service.strip_prefix("ande-") {
                Some(_) => service.to_string(),
                None => format!("ande-{service}"),
            },
            str::to_string,
        );
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let base_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if disabled || (traces_endpoint.is_none() && base_endpoint.is_none()) {
            return Ok(Self {
                service_name,
                protocol: None,
                endpoint: String::new(),
            });
        }
        let protocol = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or("http/protobuf")
        {
            "http/protobuf" => Protocol::HttpProtobuf,
            "grpc" => Protocol::Grpc,
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other}: use http/protobuf or grpc"
                ))
            }
        };
        let endpoint = match (traces_endpoint, base_endpoint, protocol) {
            (Some(e), _, _) => e.to_string(),
            (None, Some(base), Protocol::HttpProtobuf) => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, Some(base), Protocol::Grpc) => base.to_string(),
            (None, None, _) => unreachable!("checked above"),
        };
        Ok(Self {
            service_name,
            protocol: Some(protocol),
            endpoint,
        })
    }
}

/// The tracer provider `vars` ask for; without an exporter when export is off or cannot be
/// built (then with the reason, for [`init`] to log once logging works).
fn tracer_provider(
    vars: &[(String, String)],
    service: &str,
) -> (SdkTracerProvider, Option<String>) {
    let settings = match ExportSettings::from_vars(vars, service) {
        Ok(s) => s,
        Err(e) => {
            let name = format!("ande-{service}");
            return (provider_builder(&name).build(), Some(e));
        }
    };
    let builder = provider_builder(&settings.service_name);
    if settings.protocol.is_none() {
        return (builder.build(), None);
    }
    // The HTTP client needs a TLS provider even for a plain-HTTP collector (the same one the
    // WeChat client installs; whichever is first serves both).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = match settings.protocol {
        None => return (builder.build(), None),
        Some(Protocol::HttpProtobuf) => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(settings.endpoint)
            .build(),
        Some(Protocol::Grpc) => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint)
            .build(),
    };
    match exporter {
        Ok(exporter) => (
            builder
                .with_batch_exporter(CountingExporter(exporter))
                .build(),
            None,
        ),
        Err(e) => (builder.build(), Some(e.to_string())),
    }
}

fn provider_builder(service_name: &str) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    // `Resource::builder` reads OTEL_RESOURCE_ATTRIBUTES; the service name is ours unless
    // OTEL_SERVICE_NAME said otherwise (already folded into `service_name`).
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    // The default config reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
    SdkTracerProvider::builder().with_resource(resource)
}

/// The OTLP exporter, counting the spans of every batch the collector did not take.
#[derive(Debug)]
struct CountingExporter(opentelemetry_otlp::SpanExporter);

impl opentelemetry_sdk::trace::SpanExporter for CountingExporter {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.0.export(batch).await;
        if result.is_err() {
            crate::metrics::TRACE_SPANS_FAILED.inc_by(n);
        }
        result
    }
    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource)
    }
}

/// JSON log lines with the trace and span ids of the span they were logged in.
mod json_log {
    use std::fmt;
    use std::sync::OnceLock;

    use opentelemetry::trace::TraceContextExt;
    use tracing::dispatcher::WeakDispatch;
    use tracing::{Event, Subscriber};
    use tracing_subscriber::fmt::format::{Format, Json, Writer};
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    /// The subscriber, for reading a span's OpenTelemetry context while formatting (inside a
    /// subscriber callback `Span::current()` is not available).
    static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

    /// Keeps the dispatch it is registered with.
    pub struct DispatchKeeper;
    impl<S: Subscriber> tracing_subscriber::Layer<S> for DispatchKeeper {
        fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
            let _ = DISPATCH.set(subscriber.downgrade());
        }
    }

    /// The JSON format of `tracing-subscriber` (current span and its parents) plus `trace_id`
    /// and `span_id`.
    pub struct WithTraceIds(Format<Json>);
    impl Default for WithTraceIds {
        fn default() -> Self {
            Self(Format::default().json().with_current_span(true))
        }
    }

    impl<S, N> FormatEvent<S, N> for WithTraceIds
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let ids = ctx.lookup_current().and_then(|span| {
                let dispatch = DISPATCH.get()?.upgrade()?;
                let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
                let sc = cx.span().span_context().clone();
                sc.is_valid()
                    .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
            });
            let Some((trace_id, span_id)) = ids else {
                return self.0.format_event(ctx, writer, event);
            };
            let mut line = String::new();
            self.0.format_event(ctx, Writer::new(&mut line), event)?;
            // The line is one JSON object and a newline: add the ids before its closing brace
            // (hex strings: nothing to escape).
            match line.trim_end().strip_suffix('}') {
                Some(body) => writeln!(
                    writer,
                    "{body},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
                ),
                None => writer.write_str(&line),
            }
        }
    }
}

/// For tests: logs only when `TEST_LOG` is set, so test output stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init("test", false);
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);
impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);
impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Write the current span's trace context into NATS headers (`traceparent`, `tracestate`).
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Make `span` a child of the trace context found in `headers`, if any.
pub fn extract_into(headers: Option<&HeaderMap>, span: &tracing::Span) {
    if let Some(h) = headers {
        adopt(
            span,
            TraceContextPropagator::new().extract(&HeaderExtractor(h)),
        );
    }
}

/// Make `span` a child of `cx` when `cx` names a span; otherwise `span` starts a trace.
fn adopt(span: &tracing::Span, cx: opentelemetry::Context) {
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled (filtered out): nothing to attach then.
        if let Err(e) = span.set_parent(cx) {
            tracing::trace!(error = %e, "trace context not attached");
        }
    }
}

struct HttpExtractor<'a>(&'a axum::http::HeaderMap);
impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Make `span` a child of the caller's W3C `traceparent` (and `tracestate`), when it sent one
/// that parses; otherwise the span starts a trace.
pub fn extract_http(headers: &axum::http::HeaderMap, span: &tracing::Span) {
    // Most callers send none: skip building a context (allocations) only to find it empty.
    if !headers.contains_key("traceparent") {
        return;
    }
    adopt(
        span,
        TraceContextPropagator::new().extract(&HttpExtractor(headers)),
    );
}

/// A span's W3C `traceparent`, to store with work that continues later (a queued send).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Make `span` a child of a stored `traceparent` (see [`traceparent`]), when there is one.
pub fn continue_trace(traceparent: Option<&str>, span: &tracing::Span) {
    let Some(tp) = traceparent else { return };
    let carrier = std::collections::HashMap::from([("traceparent".to_string(), tp.to_string())]);
    adopt(span, TraceContextPropagator::new().extract(&carrier));
}

/// The trace id of a span, as hex, when tracing is active (for logs and the journey view).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let id = cx.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn export_follows_the_otel_variables() {
        let off = ExportSettings::from_vars(&[], "gateway").unwrap();
        assert_eq!(off.service_name, "ande-gateway");
        assert_eq!(off.protocol, None, "no endpoint: nothing to export to");
        let on = ExportSettings::from_vars(
            &vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
            "leads",
        )
        .unwrap();
        assert_eq!(on.protocol, Some(Protocol::HttpProtobuf));
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(on.service_name, "ande-leads");
        let grpc = ExportSettings::from_vars(
            &vars(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4317",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "notifier-eu"),
            ]),
            "notifier",
        )
        .unwrap();
        assert_eq!(grpc.protocol, Some(Protocol::Grpc));
        assert_eq!(grpc.endpoint, "http://collector:4317");
        assert_eq!(grpc.service_name, "notifier-eu");
        let disabled = ExportSettings::from_vars(
            &vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SDK_DISABLED", "TRUE"),
            ]),
            "gateway",
        )
        .unwrap();
        assert_eq!(disabled.protocol, None);
        let wrong = ExportSettings::from_vars(
            &vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
            "gateway",
        );
        assert!(wrong.unwrap_err().contains("http/protobuf or grpc"));
    }

    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids_of_their_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let out = Lines::default();
        let writer = out.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .event_format(json_log::WithTraceIds::default())
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")))
            .with(json_log::DispatchKeeper)
            .with(fmt);
        let (want_trace, want_span) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work", action_id = "a-1");
            let ids = span.in_scope(|| {
                tracing::info!(n = 1, "inside");
                let sc = tracing::Span::current()
                    .context()
                    .span()
                    .span_context()
                    .clone();
                (sc.trace_id().to_string(), sc.span_id().to_string())
            });
            ids
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].get("trace_id").is_none(),
            "no span, no ids: {text}"
        );
        assert_eq!(lines[1]["trace_id"], want_trace.as_str(), "{text}");
        assert_eq!(lines[1]["span_id"], want_span.as_str(), "{text}");
        assert_eq!(
            lines[1]["span"]["action_id"], "a-1",
            "span fields kept: {text}"
        );
        assert_eq!(lines[1]["fields"]["message"], "inside");
    }

    #[test]
    fn a_stored_traceparent_continues_its_trace() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let consume = tracing::info_span!("consume");
            let stored = traceparent(&consume).expect("a traced span has a traceparent");
            let send = tracing::info_span!("send");
            continue_trace(Some(&stored), &send);
            assert_eq!(trace_id(&send), trace_id(&consume));
            let fresh = tracing::info_span!("fresh");
            continue_trace(Some("garbage"), &fresh);
            assert_ne!(trace_id(&fresh), trace_id(&consume));
        });
    }

    #[test]
    fn trace_context_crosses_headers() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let producer = tracing::info_span!("publish");
            let mut headers = HeaderMap::new();
            producer.in_scope(|| inject(&mut headers));
            let traceparent = headers
                .get("traceparent")
                .expect("traceparent injected")
                .as_str()
                .to_string();
            assert!(traceparent.starts_with("00-"), "{traceparent}");
            let consumer = tracing::info_span!("consume");
            extract_into(Some(&headers), &consumer);
            assert_eq!(trace_id(&consumer), trace_id(&producer));
            assert!(trace_id(&consumer).is_some());
            // No headers: a fresh trace, not an error.
            let lone = tracing::info_span!("lone");
            extract_into(None, &lone);
            assert_ne!(trace_id(&lone), trace_id(&producer));
        });
    }
}
