//! HTTP API v1: one router per feature, merged under `/api/v1`, plus health, `/metrics` and the
//! pages.

mod extract;
mod health;
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

pub use openapi::ApiDoc;

use crate::auth;
use crate::error::AppError;
use crate::state::AppState;
use crate::telemetry;
use extract::BodyLimit;

/// The whole application. Tests call this directly and serve it on port 0.
pub fn app(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let api = Router::new()
        .merge(runs::router())
        .merge(steps::router())
        .merge(series::router())
        .merge(signals::router())
        .merge(rules::router())
        .merge(webhooks::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/api/v1", api)
        .merge(openapi::router())
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
            req.extensions_mut().insert(BodyLimit(limit));
            next.run(req)
        }))
        .layer(DefaultBodyLimit::max(limit))
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
