//! HTTP API v1: one router per feature, merged under `/api/v1`, plus health, `/metrics` and the
//! pages.

mod extract;
mod guard;
mod headers;
mod health;
mod media;
mod metrics;
mod openapi;
mod pages;
mod rules;
mod runs;
mod series;
mod signals;
mod steps;
mod webhooks;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use redline_core::RunId;
use redline_core::wire::FieldError;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use extract::BodyRules;
pub use guard::{HostPolicy, LOOPBACK_HOSTS, parse_public_host};
pub use openapi::ApiDoc;

use crate::auth;
use crate::error::AppError;
use crate::state::AppState;
use crate::telemetry;

/// The whole application. Tests call this directly and serve it on port 0.
pub fn app(state: AppState) -> Router {
    let body = state.body;
    let api = OpenApiRouter::new()
        .merge(runs::router())
        .merge(steps::router())
        .merge(series::router())
        .merge(signals::router())
        .merge(rules::router())
        .merge(webhooks::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn(guard::require_api_media_type));
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api)
        .split_for_parts();
    // Layers run bottom first: trace everything, add the security headers to every answer
    // (refusals included), then refuse what the guard refuses before any handler reads a byte.
    Router::new()
        .merge(api)
        .merge(openapi::router(doc))
        .merge(health::router())
        .merge(pages::router())
        .merge(metrics::router(&state))
        .fallback(not_found)
        // Inside every route (and the fallback), so that it sees which route matched.
        .layer(middleware::from_fn_with_state(
            state.telemetry.clone(),
            telemetry::track,
        ))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            req.extensions_mut().insert(body);
            next.run(req)
        }))
        .layer(DefaultBodyLimit::max(body.limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_request,
        ))
        .layer(middleware::map_response(headers::add))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(req: Request) -> Result<Response, AppError> {
    Err(AppError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    )))
}

/// Parses the `{run_id}` path segment.
fn run_id(raw: String) -> Result<RunId, AppError> {
    RunId::parse(raw).map_err(|e| FieldError::new("run_id", format!("run id {e}")).into())
}
