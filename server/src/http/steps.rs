//! Ingest: a batch of steps in, the rules run on its new steps, the run's pending signals out.

use axum::Json;
use axum::extract::{Path, State};
use redline_core::wire::{IngestResult, StepBatch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::JsonBody;
use super::run_id;
use crate::error::Result;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(append_steps))
}

/// Appends a batch of steps. Idempotent on (run, metric, step): points already stored keep
/// their value, so a resent batch changes nothing. A rejected batch writes nothing.
#[utoipa::path(post, path = "/runs/{run_id}/steps", tag = "steps",
    params(("run_id" = String, Path)),
    request_body = StepBatch,
    responses(
        (status = 200, description = "Stored; carries the run's pending signals", body = IngestResult),
        (status = 400, description = "Invalid field: nothing was written", body = redline_core::wire::ErrorBody),
        (status = 404, body = redline_core::wire::ErrorBody),
        (status = 413, description = "Body over the limit", body = redline_core::wire::ErrorBody),
    ))]
async fn append_steps(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(batch): JsonBody<StepBatch>,
) -> Result<Json<IngestResult>> {
    let id = run_id(id)?;
    let steps = batch.steps.len();
    let points = std::sync::Arc::new(batch.into_points()?);
    let ingested = state.rules.ingest(&*state.store, &id, points).await?;
    if ingested.alerts() > 0 {
        state.outbox.wake();
    }
    for f in &ingested.firings {
        tracing::info!(run = %id, rule_set = %f.rule_set, rule = %f.rule, step = f.step,
            action = ?f.action, message = %f.message, "rule fired");
    }
    let result = ingested.result;
    state
        .telemetry
        .ingested(result.new_points, result.duplicate_points);
    state.telemetry.fired(&ingested.firings);
    if result.new_points > 0 || !ingested.firings.is_empty() {
        state.changed(&id);
    }
    tracing::debug!(run = %id, steps, new = result.new_points, dup = result.duplicate_points, "ingested");
    Ok(Json(result))
}
