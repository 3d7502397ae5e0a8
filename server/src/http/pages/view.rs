//! What every page shares: the layout's context, the chart view parsed from the query, a form
//! body extractor, and formatting.

use std::collections::HashMap;
use std::fmt::Write;

use askama::Template;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::Html;
use chrono::{DateTime, Utc};
use redline_core::RunId;
use redline_core::wire::{FieldError, MAX_STEP, MetricSummary, Run, RunStatus, Signal};

use super::error::PageError;
use super::session::Viewer;
use crate::charts::{View, format_value};
use crate::error::AppError;
use crate::http::extract::{QueryParams, read_body, url_pairs};
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

/// The chart view of a page's query: step range, smoothing, log axis.
pub fn chart_view(q: &QueryParams) -> Result<View, AppError> {
    let given = |name| q.str(name).filter(|s| !s.is_empty());
    let step = |name| -> Result<Option<i64>, AppError> {
        given(name)
            .map(|raw| {
                raw.parse::<i64>()
                    .ok()
                    .filter(|s| (0..=MAX_STEP).contains(s))
                    .ok_or_else(|| {
                        FieldError::new(
                            name,
                            format!("must be a step from 0 to {MAX_STEP}, got {raw:?}"),
                        )
                        .into()
                    })
            })
            .transpose()
    };
    let (from, to) = (step("from")?, step("to")?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(FieldError::new("to", format!("must not be below from ({f}), got {t}")).into());
    }
    let smoothing = match given("smooth") {
        None => 0.0,
        Some(raw) => raw
            .parse::<f64>()
            .ok()
            .filter(|s| (0.0..1.0).contains(s))
            .ok_or_else(|| {
                FieldError::new(
                    "smooth",
                    format!("must be a number from 0 up to (not including) 1, got {raw:?}"),
                )
            })?,
    };
    let log_y = match given("log") {
        None => None,
        Some("on" | "true" | "1") => Some(true),
        Some("off" | "false" | "0") => Some(false),
        Some(other) => {
            return Err(FieldError::new("log", format!("must be on or off, got {other:?}")).into());
        }
    };
    let mut view = View {
        from,
        to,
        smoothing,
        log_y,
        ..View::default()
    };
    if let Some(w) = q.parse("width", 200..=2000)? {
        view.width = w;
    }
    Ok(view)
}

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

pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
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
        let body = String::from_utf8_lossy(&bytes);
        Ok(Self(url_pairs(&body).into_iter().collect()))
    }
}
