//! A run's page: its facts, controls, a grid of charts (inline SVG), its signals and config;
//! and one chart alone as SVG, which the page's script fetches to refresh a chart in place.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use futures::future::try_join_all;
use redline_core::catalogue;
use redline_core::wire::{RuleEvent, Run, Signal, SignalKind};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::PageError;
use super::session::Viewer;
use super::view::{self, ChartQuery, Chrome, NoParams, RunView};
use crate::charts::{self, ChartKey, View, format_value};
use crate::error::AppError;
use crate::http::run_id;
use crate::state::AppState;
use crate::store::Store;

#[derive(Debug)]
struct Figure {
    key: ChartKey,
    svg: String,
}

#[derive(Debug)]
struct SignalRow {
    signal: Signal,
    what: String,
    created: String,
}

/// What a rule did, with the values that tripped it.
#[derive(Debug)]
struct EventRow {
    event: RuleEvent,
    values: String,
}

/// Rule events shown on the page, newest first; the API has them all.
const SHOWN_EVENTS: u32 = 200;

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    chrome: Chrome,
    can_write: bool,
    run: Run,
    health: &'static str,
    loss_type: String,
    beta: String,
    nll_alpha: String,
    loss: String,
    margin: String,
    started: String,
    duration: String,
    best_step: Option<i64>,
    /// For an iteration of iterative training: which one, of how many, and the run before it.
    iteration: Option<(u64, u64, Option<String>)>,
    figures: Vec<Figure>,
    other_series: Vec<String>,
    signals: Vec<SignalRow>,
    /// The rule-set versions watching the run, as `(name, version)`.
    rule_sets: Vec<(String, i32)>,
    events: Vec<EventRow>,
    events_total: i64,
    config: String,
    view: View,
    view_query: String,
}

/// `chart.svg`'s own parameter.
#[derive(Debug, Deserialize, IntoParams)]
pub struct WhichChart {
    /// A group (`rewards`) or a series (`eval/score`).
    chart: String,
}

fn describe(s: &Signal) -> String {
    match s.kind {
        SignalKind::SetHparam => format!(
            "set {} = {}",
            s.name.as_deref().unwrap_or("?"),
            s.value.map(format_value).unwrap_or_default()
        ),
        SignalKind::Stop => match s.keep_step {
            Some(k) => format!("stop, keep step {k}"),
            None => "stop".into(),
        },
        SignalKind::Checkpoint => "checkpoint".into(),
    }
}

/// The trainer records an iteration's place in its run's config (`iterative`).
fn iteration_of(run: &Run) -> Option<(u64, u64, Option<String>)> {
    let it = run.config.get("iterative")?;
    Some((
        it["iteration"].as_u64()?,
        it["of"].as_u64()?,
        it["previous_run"].as_str().map(str::to_owned),
    ))
}

pub async fn run_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ChartQuery(q, NoParams {}): ChartQuery<NoParams>,
) -> Result<Html<String>, PageError> {
    let viewer = Viewer::of(
        &state,
        &headers,
        &format!("/runs/{}", view::url_encode(&id)),
    )
    .await?;
    let id = run_id(id)?;
    let view = q.view()?;
    let store: &dyn Store = state.store.as_ref();
    let (v, rules, events_total, events) = futures::try_join!(
        RunView::load(store, &id),
        store.run_rules(&id),
        store.rule_event_count(&id),
        store.newest_rule_events(&id, SHOWN_EVENTS)
    )?;
    let (keys, other_series) = charts::page_charts(&v.metrics);
    let markers = charts::markers(&v.signals);
    let built = try_join_all(
        keys.iter()
            .map(|k| charts::run_chart(store, &v.run, k, &view, markers.clone())),
    )
    .await?;
    let svgs = charts::draw(built).await?;
    let page = RunPage {
        chrome: Chrome::new(&state, Some(&viewer)),
        can_write: viewer.can_write,
        health: v.health(),
        loss_type: view::config_value(&v.run, "loss"),
        beta: v.last(catalogue::BETA.name),
        nll_alpha: v.last("nll_alpha"),
        loss: v.last(catalogue::LOSS.name),
        margin: v.last(catalogue::REWARD_MARGIN.name),
        started: view::time(v.run.created_at),
        duration: view::duration(&v.run, chrono::Utc::now()),
        best_step: v.signals.iter().rev().find_map(|s| s.keep_step),
        iteration: iteration_of(&v.run),
        figures: keys
            .into_iter()
            .zip(svgs)
            .map(|(key, svg)| Figure { key, svg })
            .collect(),
        other_series,
        signals: v
            .signals
            .into_iter()
            .rev()
            .map(|s| SignalRow {
                what: describe(&s),
                created: view::time(s.created_at),
                signal: s,
            })
            .collect(),
        rule_sets: rules
            .sets
            .into_iter()
            .map(|s| (s.name, s.version))
            .collect(),
        events_total,
        events: events
            .into_iter()
            .map(|e| EventRow {
                values: e
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", format_value(v.0)))
                    .collect::<Vec<_>>()
                    .join(", "),
                event: e,
            })
            .collect(),
        config: serde_json::to_string_pretty(&v.run.config).unwrap_or_default(),
        view_query: view::view_query(&view),
        view,
        run: v.run,
    };
    view::render(&page)
}

/// One chart of the run page: `chart` names a group (`rewards`) or a series (`eval/score`).
pub async fn chart_svg(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ChartQuery(q, WhichChart { chart: slug }): ChartQuery<WhichChart>,
) -> Result<Response, PageError> {
    Viewer::of(
        &state,
        &headers,
        &format!("/runs/{}", view::url_encode(&id)),
    )
    .await?;
    let id = run_id(id)?;
    let view = q.view()?;
    let store: &dyn Store = state.store.as_ref();
    let v = RunView::load(store, &id).await?;
    let key = charts::resolve(&slug, &v.metrics).ok_or_else(|| {
        AppError::NotFound(format!("run {id} has no chart or series named {slug:?}"))
    })?;
    let chart = charts::run_chart(store, &v.run, &key, &view, charts::markers(&v.signals)).await?;
    let svg = charts::draw(vec![chart]).await?.pop().unwrap_or_default();
    Ok(svg_response(svg))
}

pub fn svg_response(svg: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response()
}
