//! What every request passes before its route: [`Observe`] (request id, span, metrics) outermost,
//! then CORS, then [`Limit`] (the per-IP rate limit and the request deadline).
//!
//! Both are plain tower services with futures of their own rather than `axum::middleware::from_fn`
//! closures: `from_fn` clones the whole inner stack, boxes it as `Next` and boxes its future on
//! every request, which `andectl bench --part 5` showed as several per cent of the gateway's
//! time. What they do is unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tracing::instrument::Instrumented;

use crate::error::{ApiError, REQUEST_ID};
use crate::AppState;

/// The response header that carries the request id.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// No request may take longer than this, whether the client sends its body slowly or a back
/// end hangs: the connection and its task are freed, the client gets an answer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Accept the caller's `x-request-id` (when sane) or make one; answer it; make it available to
/// the envelope and the logs. Count the request and time it, by route template
/// (`/api/actions/{id}`, never the id; a path no route knows is `unmatched`), method and status.
#[derive(Clone, Copy)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        // A shared string: cloning it allocates nothing.
        let route = req.extensions().get::<MatchedPath>().cloned();
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
        let header = HeaderValue::from_str(&id).ok();
        // The route runs in the span and with the id set, as the handler's errors need it.
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ObserveFuture {
            inner: REQUEST_ID.scope(id, tracing::Instrument::instrument(inner, span)),
            started,
            route,
            method,
            header,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: TaskLocalFuture<String, Instrumented<F>>,
        started: Instant,
        route: Option<MatchedPath>,
        method: Method,
        header: Option<HeaderValue>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        if let Some(v) = this.header.take() {
            resp.headers_mut().insert(REQUEST_ID_HEADER.clone(), v);
        }
        let route = this.route.as_ref().map_or("unmatched", |p| p.as_str());
        ande_platform::metrics::HTTP_REQUESTS
            .with_label_values(&[route, this.method.as_str(), resp.status().as_str()])
            .inc();
        ande_platform::metrics::HTTP_DURATION
            .with_label_values(&[route])
            .observe(this.started.elapsed().as_secs_f64());
        Poll::Ready(Ok(resp))
    }
}

/// The per-IP rate limit, then the deadline.
#[derive(Clone)]
pub struct LimitLayer(pub AppState);

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            state: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    state: AppState,
    inner: S,
}

impl<S> Service<Request> for Limit<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let ip = crate::extract::client_ip(
            req.extensions(),
            req.headers(),
            &self.state.config.trusted_proxies,
        );
        match self.state.ip_limiter.check(&crate::clientip::limit_net(ip)) {
            // The answer is made when polled: inside the request id's scope, for its envelope.
            Err(wait) => LimitFuture::Refused { wait },
            Ok(()) => LimitFuture::Running {
                inner: tokio::time::timeout(REQUEST_DEADLINE, self.inner.call(req)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = LimitProj]
    pub enum LimitFuture<F> {
        Refused { wait: u64 },
        Running { #[pin] inner: tokio::time::Timeout<F> },
    }
}

impl<F, E> Future for LimitFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitProj::Refused { wait } => Poll::Ready(Ok(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; slow down",
            )
            .retry_after(*wait)
            .into_response())),
            LimitProj::Running { inner } => Poll::Ready(match ready!(inner.poll(cx)) {
                Ok(resp) => resp,
                Err(_) => Ok(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request took too long",
                )
                .into_response()),
            }),
        }
    }
}
