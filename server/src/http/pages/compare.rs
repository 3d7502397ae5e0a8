//! The compare page: one metric of several runs overlaid, with a legend.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use futures::future::try_join_all;
use redline_core::catalogue;
use redline_core::wire::{FieldError, Run};
use redline_core::{MetricName, RunId};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::PageError;
use super::run::svg_response;
use super::session::Viewer;
use super::view::{self, ChartQuery, Chrome, ViewParams};
use crate::charts::{self, View};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{RunFilter, Store};

const MAX_COMPARED: usize = 12;
/// What to compare.
#[derive(Debug, Deserialize, IntoParams)]
pub struct Compared {
    /// Run ids: one `runs` per ticked box (a form), or comma-separated (a link).
    #[serde(default)]
    runs: Vec<String>,
    metric: Option<String>,
    /// What the live script adds to a chart URL; the compare page has one chart.
    #[expect(dead_code, reason = "accepted and ignored: the page has one chart")]
    chart: Option<String>,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    chrome: Chrome,
    /// Recent runs to choose from, and whether each is chosen.
    choices: Vec<(Run, bool)>,
    metrics: Vec<String>,
    metric: String,
    runs_param: String,
    svg: Option<String>,
    view: View,
    view_query: String,
}

/// The runs named by `runs` (comma-separated ids) and the metric to draw.
fn selection(q: &Compared) -> Result<(Vec<RunId>, Option<MetricName>), AppError> {
    let mut ids = Vec::new();
    for raw in q
        .runs
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|s| !s.is_empty())
    {
        let id = RunId::parse(raw.to_owned())
            .map_err(|e| FieldError::new("runs", format!("run id {e}")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() > MAX_COMPARED {
        return Err(FieldError::new(
            "runs",
            format!("at most {MAX_COMPARED} runs at once, got {}", ids.len()),
        )
        .into());
    }
    let metric = q
        .metric
        .as_deref()
        .map(|m| {
            MetricName::parse_readable(m)
                .map_err(|e| FieldError::new("metric", format!("metric name {e}")))
        })
        .transpose()?;
    Ok((ids, metric))
}

/// The compare page has one chart, drawn wide unless the query sets a width.
fn wide(q: &ViewParams) -> Result<View, AppError> {
    let view = q.view()?;
    if q.width.is_some() {
        return Ok(view);
    }
    Ok(View {
        width: 1000,
        height: 400,
        ..view
    })
}

async fn runs_of(store: &dyn Store, ids: &[RunId]) -> Result<Vec<Run>, AppError> {
    Ok(try_join_all(ids.iter().map(|id| store.run(id))).await?)
}

pub async fn compare_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    ChartQuery(view, q): ChartQuery<Compared>,
) -> Result<Html<String>, PageError> {
    let viewer = Viewer::of(&state, &headers, "/compare").await?;
    let (ids, metric) = selection(&q)?;
    let view = wide(&view)?;
    let store: &dyn Store = state.store.as_ref();
    let chosen = runs_of(store, &ids).await?;
    let recent = store
        .list_runs(&RunFilter {
            limit: 100,
            ..RunFilter::default()
        })
        .await?;
    let mut metrics: Vec<String> = Vec::new();
    for run in &chosen {
        metrics.extend(store.metrics(&run.id).await?.into_iter().map(|m| m.name));
    }
    metrics.sort();
    metrics.dedup();
    let metric = metric.or_else(|| {
        let loss = catalogue::LOSS.name;
        MetricName::parse(if metrics.iter().any(|m| m == loss) {
            loss
        } else {
            metrics.first()?.as_str()
        })
        .ok()
    });
    let svg = match &metric {
        Some(m) if !chosen.is_empty() => {
            let chart = charts::compare_chart(store, &chosen, m, &view).await?;
            charts::draw(vec![chart]).await?.pop()
        }
        _ => None,
    };
    let mut choices: Vec<(Run, bool)> = chosen.iter().cloned().map(|r| (r, true)).collect();
    choices.extend(
        recent
            .into_iter()
            .filter(|r| !ids.contains(&r.id))
            .map(|r| (r, false)),
    );
    let page = ComparePage {
        chrome: Chrome::new(&state, Some(&viewer)),
        choices,
        metrics,
        metric: metric.map(|m| m.to_string()).unwrap_or_default(),
        runs_param: ids
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        svg,
        view_query: view::view_query(&view),
        view,
    };
    view::render(&page)
}

pub async fn compare_svg(
    State(state): State<AppState>,
    headers: HeaderMap,
    ChartQuery(view, q): ChartQuery<Compared>,
) -> Result<Response, PageError> {
    Viewer::of(&state, &headers, "/compare").await?;
    let (ids, metric) = selection(&q)?;
    let metric = metric.ok_or_else(|| FieldError::new("metric", "is required"))?;
    let view = wide(&view)?;
    let runs = runs_of(state.store.as_ref(), &ids).await?;
    let chart = charts::compare_chart(state.store.as_ref(), &runs, &metric, &view).await?;
    let svg = charts::draw(vec![chart]).await?.pop().unwrap_or_default();
    Ok(svg_response(svg))
}
