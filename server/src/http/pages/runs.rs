//! The runs page: every run with its status, health and latest numbers; filter, sort, pages.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use futures::future::try_join_all;
use redline_core::catalogue;
use redline_core::wire::{Run, RunStatus};

use super::error::PageError;
use super::session::Viewer;
use super::view::{self, Chrome, RunView};
use crate::http::extract::Query;
use crate::http::runs::ListRuns;
use crate::state::AppState;
use crate::store::{RunSort, Store, StoreResult};

#[derive(Debug)]
struct Row {
    run: Run,
    health: &'static str,
    loss_type: String,
    beta: String,
    loss: String,
    margin: String,
    started: String,
    duration: String,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    chrome: Chrome,
    rows: Vec<Row>,
    project: String,
    tag: String,
    status: String,
    sort: &'static str,
    sorts: Vec<&'static str>,
    statuses: Vec<&'static str>,
    /// The query without `offset`, for the pagination links.
    base_query: String,
    offset: u32,
    prev_offset: Option<u32>,
    next_offset: Option<u32>,
}

async fn row(store: &dyn Store, run: Run, now: chrono::DateTime<chrono::Utc>) -> StoreResult<Row> {
    let v = RunView::of(store, run).await?;
    Ok(Row {
        health: v.health(),
        loss_type: view::config_value(&v.run, "loss"),
        beta: view::config_value(&v.run, "beta"),
        loss: v.last(catalogue::LOSS.name),
        margin: v.last(catalogue::REWARD_MARGIN.name),
        started: view::time(v.run.created_at),
        duration: view::duration(&v.run, now),
        run: v.run,
    })
}

pub async fn runs_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListRuns>,
) -> Result<Html<String>, PageError> {
    let viewer = Viewer::of(&state, &headers, "/").await?;
    let mut filter = q.filter(50)?;
    let (limit, offset) = (filter.limit, filter.offset);
    // One more than a page tells whether there is a next one.
    filter.limit += 1;
    let mut runs = state.store.list_runs(&filter).await?;
    let has_next = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let now = chrono::Utc::now();
    let rows = try_join_all(runs.into_iter().map(|r| row(state.store.as_ref(), r, now)))
        .await
        .map_err(PageError::store)?;
    let status = q.status.map(RunStatus::as_str).unwrap_or_default();
    let mut base = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("project", q.project.as_deref()),
        ("status", q.status.map(RunStatus::as_str)),
        ("tag", q.tag.as_deref()),
        ("sort", q.sort.as_deref()),
    ] {
        if let Some(v) = value {
            base.append_pair(key, v);
        }
    }
    if let Some(limit) = q.limit {
        base.append_pair("limit", &limit.to_string());
    }
    let page = RunsPage {
        chrome: Chrome::new(&state, Some(&viewer)),
        rows,
        project: q.project.clone().unwrap_or_default(),
        tag: q.tag.clone().unwrap_or_default(),
        status: status.to_owned(),
        sort: filter.sort.as_str(),
        sorts: RunSort::ALL.iter().map(|s| s.as_str()).collect(),
        statuses: [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Stopped,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect(),
        base_query: base.finish(),
        offset,
        prev_offset: (offset > 0).then(|| offset.saturating_sub(limit)),
        next_offset: has_next.then_some(offset + limit),
    };
    view::render(&page)
}
