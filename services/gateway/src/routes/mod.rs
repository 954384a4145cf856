//! The routes, and the stack every request passes ([`crate::middleware`], CORS, the body limit).

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

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use tower::ServiceBuilder;

use crate::error::ApiError;
use crate::middleware::{LimitLayer, ObserveLayer};
use crate::AppState;

pub fn router(state: AppState) -> Router {
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
                .layer(ObserveLayer)
                .layer(crate::cors::layer(&state.config))
                .layer(LimitLayer(state.clone()))
                .layer(DefaultBodyLimit::max(state.config.body_limit)),
        )
        .with_state(state)
}

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
