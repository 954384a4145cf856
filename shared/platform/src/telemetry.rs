//! Tracing for every service, and W3C trace context across NATS.
//!
//! Spans are recorded with `tracing`; the OpenTelemetry layer gives each span a trace id so that
//! the `traceparent` header injected on publish ([`inject`]) and extracted on consume
//! ([`extract_into`]) makes one trace of gateway → leads → notifier. No exporter is configured
//! here (nothing to export to on these machines); adding an OTLP exporter only changes [`init`].
//!
//! Logging rules: identifiers go in span fields; errors are logged once, where they are handled;
//! secrets and access tokens never appear (they are `SecretString`s, and URLs with tokens are
//! never logged). `LOG_FORMAT=json` switches to JSON lines; `RUST_LOG` sets the filter.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const DEFAULT_FILTER: &str = "info,async_nats=warn,sqlx=warn,hyper=warn";

/// Install the global subscriber. Safe to call more than once (later calls do nothing), so that
/// `andectl up`, which runs every service in one process, and tests can call it freely.
pub fn init(service: &'static str, json: bool) {
    init_with_filter(service, json, DEFAULT_FILTER)
}

/// [`init`] with another filter for when `RUST_LOG` is unset.
pub fn init_with_filter(service: &'static str, json: bool, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    // Traces follow info-level spans whatever the log filter says: turning logs down to `warn`
    // must not break trace propagation across services.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(LevelFilter::INFO);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let registry = tracing_subscriber::registry().with(otel);
    let result = if json {
        let fmt = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true);
        registry.with(fmt.with_filter(filter)).try_init()
    } else {
        let fmt = tracing_subscriber::fmt::layer().with_target(false);
        registry.with(fmt.with_filter(filter)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
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
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(h));
        // Fails only when the span is disabled (filtered out): nothing to attach then.
        if let Err(e) = span.set_parent(cx) {
            tracing::trace!(error = %e, "trace context not attached");
        }
    }
}

/// The trace id of a span, as hex, when tracing is active (for logs and the journey view).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let id = cx.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
