//! Rule sets (versioned TOML files, docs/rules.md) and what rules did to a run.

use axum::Json;
use axum::extract::{Path, State};
use redline_core::RuleSetName;
use redline_core::rules::RuleSet;
use redline_core::wire::{FieldError, RuleEventList, RuleSetList, RuleSetVersion};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Query, TomlBody};
use super::run_id;
use crate::error::{AppError, Result};
use crate::state::AppState;
use crate::store::alerts::StoredRuleSet;
use serde::Deserialize;

/// The largest rule file accepted.
const MAX_RULE_FILE_BYTES: usize = 256 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rule_sets))
        .routes(routes!(get_rule_set, put_rule_set))
        .routes(routes!(run_rule_sets))
        .routes(routes!(run_events))
}

pub(crate) fn rule_set_name(raw: String) -> Result<RuleSetName> {
    RuleSetName::parse(raw)
        .map_err(|e| FieldError::new("name", format!("rule set name {e}")).into())
}

/// The wire form; stored sources were validated when stored.
fn version(s: StoredRuleSet) -> Result<RuleSetVersion> {
    let parsed = RuleSet::parse(&s.source).map_err(|e| {
        AppError::Internal(anyhow::anyhow!(
            "stored rule set {} v{} does not parse: {e}",
            s.name,
            s.version
        ))
    })?;
    Ok(RuleSetVersion {
        rules: parsed.rules.into_iter().map(|r| r.name).collect(),
        name: s.name,
        version: s.version,
        source: s.source,
        created_at: s.created_at,
    })
}

/// The newest version of every rule set.
#[utoipa::path(get, path = "/rule-sets", tag = "rules",
    responses((status = 200, body = RuleSetList)))]
async fn list_rule_sets(State(state): State<AppState>) -> Result<Json<RuleSetList>> {
    let rule_sets = state
        .store
        .rule_sets()
        .await?
        .into_iter()
        .map(version)
        .collect::<Result<_>>()?;
    Ok(Json(RuleSetList { rule_sets }))
}

/// Which version of a rule set, API or page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WhichVersion {
    /// The version; the newest when left out.
    #[param(minimum = 1, maximum = 2_147_483_647)]
    pub version: Option<i32>,
}

/// One rule set: the newest version, or `?version=N`.
#[utoipa::path(get, path = "/rule-sets/{name}", tag = "rules",
    params(("name" = String, Path), WhichVersion),
    responses((status = 200, body = RuleSetVersion), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn get_rule_set(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WhichVersion>,
) -> Result<Json<RuleSetVersion>> {
    let name = rule_set_name(name)?;
    Ok(Json(version(
        state.store.rule_set(&name, q.version).await?,
    )?))
}

/// Stores a rule file (the body, TOML) as the rule set's next version. Runs created from now on
/// use it; running runs keep the version they started with. An invalid file stores nothing and
/// the error names its line.
#[utoipa::path(put, path = "/rule-sets/{name}", tag = "rules",
    params(("name" = String, Path)),
    request_body(content = String, content_type = "application/toml"),
    responses(
        (status = 200, body = RuleSetVersion),
        (status = 400, description = "The file does not parse or validate; `field` is `source`", body = redline_core::wire::ErrorBody),
    ))]
async fn put_rule_set(
    State(state): State<AppState>,
    Path(name): Path<String>,
    TomlBody(body): TomlBody,
) -> Result<Json<RuleSetVersion>> {
    let name = rule_set_name(name)?;
    Ok(Json(version(store_rule_file(&state, &name, &body).await?)?))
}

/// Validates a rule file and stores it as `name`'s next version: the API's `PUT` and the
/// dashboard's form both come here.
pub(crate) async fn store_rule_file(
    state: &AppState,
    name: &RuleSetName,
    source: &str,
) -> Result<StoredRuleSet> {
    if source.len() > MAX_RULE_FILE_BYTES {
        return Err(AppError::PayloadTooLarge {
            limit: MAX_RULE_FILE_BYTES,
        });
    }
    RuleSet::parse(source).map_err(|e| FieldError::new("source", e.to_string()))?;
    let stored = state.store.put_rule_set(name, source).await?;
    tracing::info!(rule_set = %name, version = stored.version, "rule set stored");
    Ok(stored)
}

/// The rule-set versions watching a run, in order.
#[utoipa::path(get, path = "/runs/{run_id}/rules", tag = "rules",
    params(("run_id" = String, Path)),
    responses((status = 200, body = RuleSetList), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn run_rule_sets(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RuleSetList>> {
    let id = run_id(id)?;
    let sets = state.store.run_rules(&id).await?.sets;
    let rule_sets = sets.into_iter().map(version).collect::<Result<_>>()?;
    Ok(Json(RuleSetList { rule_sets }))
}

/// Everything the run's rules did (alerts, stops, checkpoints, regulation), oldest first, with
/// the values that tripped each.
#[utoipa::path(get, path = "/runs/{run_id}/events", tag = "rules",
    params(("run_id" = String, Path)),
    responses((status = 200, body = RuleEventList), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn run_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RuleEventList>> {
    let id = run_id(id)?;
    Ok(Json(RuleEventList {
        events: state.store.rule_events(&id).await?,
    }))
}
