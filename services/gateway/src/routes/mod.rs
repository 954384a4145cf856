//! The routes, and the middleware every request passes: request id, per-IP rate limit, body
//! limit, CORS, tracing.

pub mod actions;
pub mod advisors;
pub mod console;
pub mod dead_letters;
pub mod digests;
pub mod health;
pub mod messages;
pub mod push;
pub mod staff;
pub mod subscribe;
pub mod wechat;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::error::{ApiError, REQUEST_ID};
use crate::AppState;

pub fn router(state: AppState) -> Router {
    let cors = if state.config.cors_origins.is_empty() {
        CorsLayer::new().allow_origin(Any)
    } else {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        CorsLayer::new().allow_origin(AllowOrigin::list(origins))
    }
    .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
    .allow_headers(Any)
    .expose_headers([REQUEST_ID_HEADER.clone()]);

    let mut router = Router::new();
    for e in crate::openapi::ENDPOINTS {
        router = router.route(e.path, (e.route)());
    }
    router
        .merge(console::routes())
        .fallback(not_found)
        // After the routes: it applies to the paths registered above (axum keeps the Allow header).
        .method_not_allowed_fallback(method_not_allowed)
        // One `layer` call with the whole stack (outermost first): axum wraps every route in a
        // boxed service per call and clones the boxes on every request, so four calls cost four
        // allocations per request more than one (seen in `andectl bench --part 5`).
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(observe))
                .layer(cors)
                .layer(middleware::from_fn_with_state(state.clone(), limit))
                .layer(DefaultBodyLimit::max(state.config.body_limit)),
        )
        .with_state(state)
}

/// The response header that carries the request id.
static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path with the wrong method: the envelope, not axum's empty 405.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// What every request passes first (one middleware: each layer costs a boxed future per
/// request). Accept the caller's `x-request-id` (when sane) or make one; answer it; make it
/// available to the envelope and the logs. Count the request and time it, by route template
/// (`/api/actions/{id}`, never the id; a path no route knows is `unmatched`), method and status.
async fn observe(req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    // MatchedPath is a shared string: cloning it allocates nothing on this hot path.
    let matched = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let route = matched.as_ref().map_or("unmatched", |p| p.as_str());
    let method = req.method().clone();
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!("http", otel.kind = "server", method = %method, path = %req.uri().path(), request_id = %id);
    ande_platform::telemetry::extract_http(req.headers(), &span);
    let header = HeaderValue::from_str(&id);
    let mut resp = REQUEST_ID
        .scope(id, tracing::Instrument::instrument(next.run(req), span))
        .await;
    if let Ok(v) = header {
        resp.headers_mut().insert(REQUEST_ID_HEADER.clone(), v);
    }
    let m = ande_platform::metrics::HTTP_REQUESTS.with_label_values(&[
        route,
        method.as_str(),
        resp.status().as_str(),
    ]);
    m.inc();
    ande_platform::metrics::HTTP_DURATION
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// No request may take longer than this, whether the client sends its body slowly or a back
/// end hangs: the connection and its task are freed, the client gets an answer.
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The per-IP rate limit, then the deadline (one middleware, as for [`observe`]).
async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let ip = crate::extract::client_ip(&parts, &state.config.trusted_proxies);
    if let Err(wait) = state.ip_limiter.check(&crate::clientip::limit_net(ip)) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        )
        .retry_after(wait)
        .into_response();
    }
    let req = Request::from_parts(parts, body);
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long",
        )
        .into_response(),
    }
}
