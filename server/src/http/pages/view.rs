//! What every page shares: the layout's context, the chart view parsed from the query, a form
//! body extractor, and formatting.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Html;
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use redline_core::RunId;
use redline_core::wire::{FieldError, MetricSummary, Run, RunStatus, Signal};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use super::error::PageError;
use super::session::Viewer;
use crate::charts::{View, format_value};
use crate::error::AppError;
use crate::http::extract::{checked_pairs, from_pairs, parse_query, read_body, step_range};
use crate::http::media::MediaType;
use crate::state::AppState;
use crate::store::{RunDetails, Store, StoreResult};

/// The layout around every page: the server's facts and the viewer's session.
#[derive(Debug)]
pub struct Chrome {
    pub version: &'static str,
    pub backend: &'static str,
    pub auth: &'static str,
    pub auth_enabled: bool,
    pub logged_in: bool,
    pub csrf: String,
    /// The content hash in asset URLs.
    pub assets: &'static str,
}

impl Chrome {
    pub fn new(state: &AppState, viewer: Option<&Viewer>) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            backend: state.store.backend(),
            auth: match (state.auth.enabled, state.auth.public_read) {
                (false, _) => "auth off (loopback only)",
                (true, true) => "token needed for writes",
                (true, false) => "token needed for reads and writes",
            },
            auth_enabled: state.auth.enabled,
            logged_in: viewer.is_some_and(Viewer::logged_in),
            csrf: viewer.map(|v| v.csrf.clone()).unwrap_or_default(),
            assets: super::assets::VERSION.as_str(),
        }
    }
}

pub fn render(page: &impl Template) -> Result<Html<String>, PageError> {
    page.render()
        .map(Html)
        .map_err(|e| AppError::Internal(e.into()).into())
}

/// A chart's view in a page's query: step range, smoothing, log axis, width.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ViewParams {
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    // MAX_STEP (a test holds them equal)
    from: Option<i64>,
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    to: Option<i64>,
    /// Exponential smoothing, from 0 up to (not including) 1.
    smooth: Option<f64>,
    #[param(inline)]
    log: Option<Axis>,
    #[param(minimum = 200, maximum = 2000)]
    pub width: Option<u32>,
}

/// `log=on|off` (a checkbox sends `on`).
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Axis {
    #[serde(alias = "true", alias = "1")]
    On,
    #[serde(alias = "false", alias = "0")]
    Off,
}

impl ViewParams {
    pub fn view(&self) -> Result<View, AppError> {
        step_range(self.from, self.to)?;
        let smoothing = self.smooth.unwrap_or(0.0);
        if !(0.0..1.0).contains(&smoothing) {
            let message =
                format!("must be a number from 0 up to (not including) 1, got {smoothing}");
            return Err(FieldError::new("smooth", message).into());
        }
        let default = View::default();
        Ok(View {
            from: self.from,
            to: self.to,
            smoothing,
            log_y: self.log.map(|a| matches!(a, Axis::On)),
            width: self.width.unwrap_or(default.width),
            ..default
        })
    }
}

/// A page's query parameters, read as the API's [`crate::http::extract::Query`] reads them; a
/// bad one answers with an error page, not the API's JSON.
#[derive(Debug)]
pub struct PageQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + IntoParams> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, PageError> {
        Ok(Self(parse_query(parts.uri.query().unwrap_or_default())?))
    }
}

/// A chart page's query: the [`ViewParams`] and the page's own parameters `T`, both documented
/// structs, read from one query string (a parameter neither declares is refused).
#[derive(Debug)]
pub struct ChartQuery<T>(pub ViewParams, pub T);

impl<S: Send + Sync, T: DeserializeOwned + IntoParams> FromRequestParts<S> for ChartQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, PageError> {
        let (view, own) = (ViewParams::into_params(|| None), T::into_params(|| None));
        let declared: Vec<_> = view.iter().chain(&own).cloned().collect();
        let pairs = checked_pairs(parts.uri.query().unwrap_or_default(), &declared)?;
        let (v, t): (Vec<_>, Vec<_>) = pairs
            .into_iter()
            .partition(|(k, _)| view.iter().any(|p| p.name == *k));
        Ok(Self(from_pairs(&v)?, from_pairs(&t)?))
    }
}

/// No parameters of its own: the run page's.
#[derive(Debug, Deserialize, IntoParams)]
pub struct NoParams {}

/// The view as query parameters, to carry into chart and export links.
pub fn view_query(v: &View) -> String {
    let mut parts = Vec::new();
    if let Some(f) = v.from {
        parts.push(format!("from={f}"));
    }
    if let Some(t) = v.to {
        parts.push(format!("to={t}"));
    }
    if v.smoothing > 0.0 {
        parts.push(format!("smooth={}", v.smoothing));
    }
    if let Some(l) = v.log_y {
        parts.push(format!("log={}", if l { "on" } else { "off" }));
    }
    parts.join("&")
}

/// What [`url_encode`] leaves as it is: RFC 3986's unreserved characters, and `/` (run ids and
/// metric names go into paths and query values whole, `eval/score` stays readable).
const KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, KEPT).to_string()
}

/// A run with the series summaries and signals its pages show.
#[derive(Debug)]
pub struct RunView {
    pub run: Run,
    pub metrics: Vec<MetricSummary>,
    pub signals: Vec<Signal>,
}

impl RunView {
    pub async fn load(store: &dyn Store, id: &RunId) -> StoreResult<Self> {
        let (run, metrics, signals) = futures::try_join!(
            store.run(id),
            store.metrics(id),
            store.signals(id, 0, false)
        )?;
        Ok(Self {
            run,
            metrics,
            signals,
        })
    }

    /// A run with what [`Store::run_details`] read for it.
    pub fn of(run: Run, details: RunDetails) -> Self {
        Self {
            run,
            metrics: details.metrics,
            signals: details.signals,
        }
    }

    /// The series' last value, short; empty when the run has no such series.
    pub fn last(&self, name: &str) -> String {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| format_value(m.last_value))
            .unwrap_or_default()
    }

    /// `ok`, `alert` or `stopped`: what a glance at a run should tell. Signals a rule raised are
    /// alerts.
    pub fn health(&self) -> &'static str {
        match self.run.status {
            RunStatus::Stopped => "stopped",
            RunStatus::Failed => "alert",
            _ if self.signals.iter().any(|s| s.source_rule.is_some()) => "alert",
            _ => "ok",
        }
    }
}

pub fn duration(run: &Run, now: DateTime<Utc>) -> String {
    let end = run
        .finished_at
        .unwrap_or(if run.status == RunStatus::Running {
            now
        } else {
            run.updated_at
        });
    let secs = (end - run.created_at).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A config value as short text (strings without their quotes).
pub fn config_value(run: &Run, key: &str) -> String {
    match run.config.get(key) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// A form input the API refused, as the status and message to show beside the form (which keeps
/// what was typed). Anything else (auth, a missing name, an internal error) is a page error.
pub fn form_problem(e: AppError) -> Result<(StatusCode, String), PageError> {
    match e {
        AppError::InvalidField(_) | AppError::PayloadTooLarge { .. } | AppError::Conflict(_) => {
            Ok((e.status(), e.to_string()))
        }
        other => Err(other.into()),
    }
}

/// An `application/x-www-form-urlencoded` body, read within the body limit.
#[derive(Debug)]
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, PageError> {
        MediaType::of(req.headers()).require_one_of(&[MediaType::Form])?;
        let bytes = read_body(req, state).await?;
        Ok(Self(form_urlencoded::parse(&bytes).into_owned().collect()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_step_bounds_are_max_step() {
        crate::http::extract::tests::step_bounds_are_max_step::<super::ViewParams>();
    }
}
