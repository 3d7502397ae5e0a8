//! Rule sets on the dashboard: the list, one version's file with links to the others, and forms
//! that store a new set or an edited file as the next version, through the API's own validation.
//! A rejected file comes back in the form with the error, so no edit is lost.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use redline_core::rules::RuleSet;

use super::error::PageError;
use super::session::Viewer;
use super::view::{self, Chrome, Form, PageQuery, form_problem};
use crate::http::rules::WhichVersion;
use crate::http::rules::{rule_set_name, store_rule_file};
use crate::state::AppState;
use crate::store::alerts::StoredRuleSet;

#[derive(Debug)]
struct SetRow {
    name: String,
    version: i32,
    rules: Vec<String>,
    source: String,
    created: String,
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RuleSetsPage {
    chrome: Chrome,
    can_write: bool,
    sets: Vec<SetRow>,
    draft_name: String,
    draft_source: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "rule_set.html")]
struct RuleSetPage {
    chrome: Chrome,
    can_write: bool,
    shown: SetRow,
    /// Every version, oldest first (versions are numbered from 1 without gaps).
    versions: Vec<i32>,
    latest: i32,
    /// What the edit form holds: the shown file, or a rejected draft.
    draft: String,
    error: Option<String>,
}

/// The rule names of a stored file; stored files were validated when stored.
fn row(s: StoredRuleSet) -> SetRow {
    let rules = RuleSet::parse(&s.source)
        .map(|p| p.rules.into_iter().map(|r| r.name).collect())
        .unwrap_or_default();
    SetRow {
        name: s.name,
        version: s.version,
        rules,
        source: s.source,
        created: view::time(s.created_at),
    }
}

/// Browsers send textarea lines ending in CRLF; stored files keep the API's LF so that an
/// unchanged file does not become a new version.
fn source_of(form: &Form) -> String {
    form.get("source").unwrap_or_default().replace("\r\n", "\n")
}

pub async fn rule_sets_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Html<String>, PageError> {
    let viewer = Viewer::of(&state, &headers, "/rules").await?;
    list(&state, &viewer, String::new(), String::new(), None).await
}

async fn list(
    state: &AppState,
    viewer: &Viewer,
    draft_name: String,
    draft_source: String,
    error: Option<String>,
) -> Result<Html<String>, PageError> {
    let sets = state
        .store
        .rule_sets()
        .await?
        .into_iter()
        .map(row)
        .collect();
    view::render(&RuleSetsPage {
        chrome: Chrome::new(state, Some(viewer)),
        can_write: viewer.can_write,
        sets,
        draft_name,
        draft_source,
        error,
    })
}

pub async fn rule_set_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    PageQuery(q): PageQuery<WhichVersion>,
) -> Result<Html<String>, PageError> {
    let viewer = Viewer::of(
        &state,
        &headers,
        &format!("/rules/{}", view::url_encode(&name)),
    )
    .await?;
    show(&state, &viewer, &name, q.version, None, None).await
}

async fn show(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    version: Option<i32>,
    draft: Option<String>,
    error: Option<String>,
) -> Result<Html<String>, PageError> {
    let name = rule_set_name(name.to_owned())?;
    let newest = state.store.rule_set(&name, None).await?;
    let latest = newest.version;
    let shown = match version {
        Some(v) if v != latest => state.store.rule_set(&name, Some(v)).await?,
        _ => newest,
    };
    view::render(&RuleSetPage {
        chrome: Chrome::new(state, Some(viewer)),
        can_write: viewer.can_write,
        versions: (1..=latest).collect(),
        latest,
        draft: draft.unwrap_or_else(|| shown.source.clone()),
        shown: row(shown),
        error,
    })
}

/// The new-rule-set form: stores version 1 (or the next version of an existing name).
pub async fn create_rule_set(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, PageError> {
    let viewer = Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let raw_name = form.get("name").unwrap_or_default().trim().to_owned();
    let source = source_of(&form);
    let stored = match rule_set_name(raw_name.clone()) {
        Ok(name) => store_rule_file(&state, &name, &source).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(s) => Ok(saved(&s)),
        Err(e) => {
            let (status, message) = form_problem(e)?;
            let page = list(&state, &viewer, raw_name, source, Some(message)).await?;
            Ok((status, page).into_response())
        }
    }
}

/// The edit form: stores the file as the set's next version.
pub async fn edit_rule_set(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Form,
) -> Result<Response, PageError> {
    let viewer = Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let parsed = rule_set_name(name.clone())?;
    // Editing names an existing set; a new one comes from the list page's form.
    state.store.rule_set(&parsed, None).await?;
    let source = source_of(&form);
    match store_rule_file(&state, &parsed, &source).await {
        Ok(s) => Ok(saved(&s)),
        Err(e) => {
            let (status, message) = form_problem(e)?;
            let page = show(&state, &viewer, &name, None, Some(source), Some(message)).await?;
            Ok((status, page).into_response())
        }
    }
}

fn saved(s: &StoredRuleSet) -> Response {
    let to = format!("/rules/{}?version={}", view::url_encode(&s.name), s.version);
    Redirect::to(&to).into_response()
}
