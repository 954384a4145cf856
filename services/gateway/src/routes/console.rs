//! The staff console: one page and its script and style, compiled into the gateway and served
//! at `/console/` (same origin as the staff API, so its session cookie can be SameSite=Strict
//! and no CORS is involved; nothing is loaded from elsewhere at run time).
//!
//! Why plain HTML, CSS and JavaScript without a framework or a build step: the console is a
//! handful of tables and forms over the JSON staff API; a team without a front-end build server
//! keeps it in `services/gateway/console/`, edits it as text, and every CI machine builds it
//! with `cargo` alone. The files are embedded with `include_str!`, so a running gateway serves
//! exactly the console it was built with.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/app.css");

/// Only our own script and style; no frames, no plugins, forms only to ourselves.
const POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// The console's routes (not part of the API document: they serve a page, not JSON).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async {
                (
                    StatusCode::PERMANENT_REDIRECT,
                    [(header::LOCATION, "/console/")],
                )
                    .into_response()
            }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
