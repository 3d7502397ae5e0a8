//! `GET /metrics`: the server's metrics for Prometheus (see [`crate::telemetry`]). They are a
//! read like any other, so the API's token policy guards them: a token unless `--public-read`.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::auth;
use crate::error::Result;
use crate::state::AppState;
use crate::telemetry::CONTENT_TYPE;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(scrape))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
}

async fn scrape(State(state): State<AppState>) -> Result<impl IntoResponse> {
    let text = state.telemetry.scrape(&*state.store).await?;
    Ok((
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    ))
}
