//! Run lifecycle: create or resume, read, list, rename and retag, finish, delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use redline_core::RunId;
use redline_core::wire::{CreateRun, FinishRun, Run, RunList, RunStatus, UpdateRun};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Query};
use super::run_id;
use crate::error::Result;
use crate::state::AppState;
use crate::store::{RunFilter, RunSort};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs))
        .routes(routes!(create_or_resume, get_run, update_run, delete_run))
        .routes(routes!(finish))
}

/// Creates the run with this id, or resumes it if it exists (a retry never makes two runs).
#[utoipa::path(put, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "Client-chosen id: 1-64 of [A-Za-z0-9_.-]")),
    request_body = CreateRun,
    responses(
        (status = 201, description = "Created", body = Run),
        (status = 200, description = "Resumed: the run existed and is running again", body = Run),
        (status = 400, description = "Invalid field", body = redline_core::wire::ErrorBody),
        (status = 409, description = "The id belongs to a run of another project", body = redline_core::wire::ErrorBody),
    ))]
async fn create_or_resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateRun>,
) -> Result<(StatusCode, Json<Run>)> {
    let id = run_id(id)?;
    req.validate()?;
    let (run, created) = state.store.create_or_resume_run(&id, &req).await?;
    if created {
        // A run deleted elsewhere (the CLI, another server) may have left this server rule
        // state under the same id.
        state.rules.forget(&id);
    }
    state.changed(&id);
    tracing::info!(run = %id, created, "run opened");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(run)))
}

#[utoipa::path(get, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn get_run(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Run>> {
    Ok(Json(state.store.run(&run_id(id)?).await?))
}

/// Which runs a list shows, in the API and on the runs page. Empty values mean "any".
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListRuns {
    pub project: Option<String>,
    #[param(inline)]
    pub status: Option<RunStatus>,
    /// Only runs with this tag.
    pub tag: Option<String>,
    /// Default newest.
    #[param(inline)]
    pub sort: Option<RunSort>,
    /// How many runs (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

impl ListRuns {
    /// The store's filter; `limit` when the request names none.
    pub(super) fn filter(&self, limit: u32) -> RunFilter {
        RunFilter {
            project: self.project.clone(),
            status: self.status,
            tag: self.tag.clone(),
            sort: self.sort.unwrap_or_default(),
            limit: self.limit.unwrap_or(limit),
            offset: self.offset.unwrap_or(0),
        }
    }
}

/// Lists runs, newest first.
#[utoipa::path(get, path = "/runs", tag = "runs", params(ListRuns),
    responses((status = 200, body = RunList), (status = 400, body = redline_core::wire::ErrorBody)))]
async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<ListRuns>,
) -> Result<Json<RunList>> {
    Ok(Json(RunList {
        runs: state.store.list_runs(&q.filter(100)).await?,
    }))
}

/// Ends the run. Finishing again with the same status is a no-op.
#[utoipa::path(post, path = "/runs/{run_id}/finish", tag = "runs",
    params(("run_id" = String, Path)),
    request_body = FinishRun,
    responses(
        (status = 200, body = Run),
        (status = 404, body = redline_core::wire::ErrorBody),
        (status = 409, description = "Already finished with another status", body = redline_core::wire::ErrorBody),
    ))]
async fn finish(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<FinishRun>,
) -> Result<Json<Run>> {
    let id = run_id(id)?;
    req.validate()?;
    let run = state.store.finish_run(&id, &req).await?;
    state.rules.forget(&id);
    state.changed(&id);
    tracing::info!(run = %id, status = run.status.as_str(), "run finished");
    Ok(Json(run))
}

/// Renames the run, replaces its tags, or both; what is left out stays as it is.
#[utoipa::path(patch, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path)),
    request_body = UpdateRun,
    responses(
        (status = 200, description = "The run as it is now", body = Run),
        (status = 400, description = "Invalid field, or neither name nor tags given", body = redline_core::wire::ErrorBody),
        (status = 404, body = redline_core::wire::ErrorBody),
    ))]
async fn update_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateRun>,
) -> Result<Json<Run>> {
    let id = run_id(id)?;
    let run = edit(&state, &id, &req).await?;
    Ok(Json(run))
}

/// Renames and retags a run: the API and the run page's form.
pub(super) async fn edit(state: &AppState, id: &RunId, req: &UpdateRun) -> Result<Run> {
    req.validate()?;
    let run = state.store.update_run(id, req).await?;
    state.changed(id);
    tracing::info!(run = %id, name = %run.name, tags = ?run.tags, "run edited");
    Ok(run)
}

/// Deletes the run with its series, signals, rule events and its alerts' deliveries, in one
/// transaction. A trainer still reporting to it gets 404 from then on.
#[utoipa::path(delete, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = redline_core::wire::ErrorBody),
    ))]
async fn delete_run(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    remove(&state, &run_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a run and what this server keeps of it in memory: the API and the run page's button.
pub(super) async fn remove(state: &AppState, id: &RunId) -> Result<()> {
    state.store.delete_run(id).await?;
    state.rules.forget(id);
    state.changed(id);
    tracing::info!(run = %id, "run deleted");
    Ok(())
}
