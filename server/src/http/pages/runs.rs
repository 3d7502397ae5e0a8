//! The runs page: every run with its status, health and latest numbers; filter, sort, pages.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use redline_core::RunId;
use redline_core::catalogue;
use redline_core::wire::{Run, RunStatus};

use super::error::PageError;
use super::session::Viewer;
use super::view::{self, Chrome, PageQuery, RunView};
use crate::http::runs::ListRuns;
use crate::state::AppState;
use crate::store::RunSort;

/// The series whose last values the page shows: the loss and the margin.
const SERIES: [&str; 2] = [catalogue::LOSS.name, catalogue::REWARD_MARGIN.name];

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

fn row(v: RunView, now: chrono::DateTime<chrono::Utc>) -> Row {
    Row {
        health: v.health(),
        loss_type: view::config_value(&v.run, "loss"),
        beta: view::config_value(&v.run, "beta"),
        loss: v.last(SERIES[0]),
        margin: v.last(SERIES[1]),
        started: view::time(v.run.created_at),
        duration: view::duration(&v.run, now),
        run: v.run,
    }
}

pub async fn runs_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(q): PageQuery<ListRuns>,
) -> Result<Html<String>, PageError> {
    let viewer = Viewer::of(&state, &headers, "/").await?;
    let mut filter = q.filter(50);
    let (limit, offset) = (filter.limit, filter.offset);
    // One more than a page tells whether there is a next one.
    filter.limit += 1;
    let mut runs = state.store.list_runs(&filter).await?;
    let has_next = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    // Three statements for the page however many runs it lists: the runs, then the series it
    // shows and the signals of all of them.
    let ids: Vec<RunId> = runs.iter().map(|r| r.id.clone()).collect();
    let details = state
        .store
        .run_details(&ids, &SERIES)
        .await
        .map_err(PageError::store)?;
    let now = chrono::Utc::now();
    let rows = runs
        .into_iter()
        .zip(details)
        .map(|(run, d)| row(RunView::of(run, d), now))
        .collect();
    let status = q.status.map(RunStatus::as_str).unwrap_or_default();
    let mut base = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("project", q.project.as_deref()),
        ("status", q.status.map(RunStatus::as_str)),
        ("tag", q.tag.as_deref()),
        ("sort", q.sort.map(RunSort::as_str)),
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
