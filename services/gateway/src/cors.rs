//! CORS for browser pages on other origins (tools an operator builds on the API; the staff
//! console itself is same-origin), and nothing for the rest.
//!
//! Only a browser sends `Origin`, and only a browser reads the CORS headers. The mini-program's
//! `wx.request` sends none, so for its requests the CORS layer's work (its headers built into
//! every answer) was pure cost: about 4 % of the gateway's throughput in `andectl bench --part
//! 5`. Requests without `Origin` skip it, except `OPTIONS`, which tower-http answers as a
//! preflight whatever sent it (as before). Those that skip it get `Vary: origin`, so a cache
//! never hands such an answer to a browser that would need the CORS headers.

use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::header::{ORIGIN, VARY};
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use futures::future::{Either, Map};
use futures::FutureExt;
use tower::{Layer, Service};
use tower_http::cors::{self, AllowOrigin, Any};

use crate::config::GatewayConfig;
use crate::middleware::REQUEST_ID_HEADER;

/// The CORS rules: any origin unless `CORS_ORIGINS` lists some; the methods the API takes; any
/// request header; the request id readable by the page.
pub fn layer(config: &GatewayConfig) -> CorsIfOrigin {
    let origins = if config.cors_origins.is_empty() {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(config.cors_origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsIfOrigin(
        cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([REQUEST_ID_HEADER.clone()]),
    )
}

/// tower-http's CORS layer, applied to requests that carry `Origin` and to every `OPTIONS`.
#[derive(Clone)]
pub struct CorsIfOrigin(cors::CorsLayer);

impl<S> Layer<S> for CorsIfOrigin {
    type Service = CorsIfOriginService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorsIfOriginService(self.0.layer(inner))
    }
}

/// The CORS service; a request without `Origin` goes straight to the service it wraps.
#[derive(Clone)]
pub struct CorsIfOriginService<S>(cors::Cors<S>);

type WithVary<F, E> = Map<F, fn(Result<Response, E>) -> Result<Response, E>>;

impl<S> Service<Request> for CorsIfOriginService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<cors::ResponseFuture<S::Future>, WithVary<S::Future, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The CORS service is ready when the service it wraps is.
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.headers().contains_key(ORIGIN) || req.method() == Method::OPTIONS {
            Either::Left(self.0.call(req))
        } else {
            Either::Right(self.0.get_mut().call(req).map(vary_origin::<S::Error>))
        }
    }
}

fn vary_origin<E>(resp: Result<Response, E>) -> Result<Response, E> {
    resp.map(|mut r| {
        r.headers_mut()
            .append(VARY, HeaderValue::from_static("origin"));
        r
    })
}
