//! Liveness and readiness, for load balancers and orchestrators.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::{AppError, Result};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The store answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>> {
    state.store.ping().await.map_err(|e| {
        AppError::Unavailable(format!(
            "{} store is not reachable: {e}",
            state.store.backend()
        ))
    })?;
    Ok(Json(
        json!({ "status": "ready", "store": state.store.backend() }),
    ))
}
