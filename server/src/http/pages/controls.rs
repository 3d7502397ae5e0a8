//! The run page's controls: stop, checkpoint now, set β or NLL α. Each creates a signal through
//! the same validation and store call as `POST /api/v1/runs/{id}/signals`.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Redirect;
use redline_core::wire::{FieldError, NewSignal, SignalKind};

use super::error::PageError;
use super::session::Viewer;
use super::view::{Form, url_encode};
use crate::http::run_id;
use crate::state::AppState;

/// The signal a control form asks for.
fn signal_of(form: &Form) -> Result<NewSignal, FieldError> {
    let number = |field: &str| -> Result<Option<f64>, FieldError> {
        match form.get(field).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(raw) => raw
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or_else(|| FieldError::new(field, format!("must be a number, got {raw:?}"))),
        }
    };
    let reason = |what: &str| format!("{what} from the dashboard");
    let signal = |kind, name: Option<&str>, value, keep_step, why: &str| NewSignal {
        kind,
        name: name.map(str::to_owned),
        value,
        keep_step,
        reason: reason(why),
        source_rule: None,
    };
    match form.get("action").unwrap_or_default() {
        "stop" => {
            let keep = number("keep_step")?.map(|k| k as i64);
            Ok(signal(SignalKind::Stop, None, None, keep, "stop"))
        }
        "checkpoint" => Ok(signal(
            SignalKind::Checkpoint,
            None,
            None,
            None,
            "checkpoint",
        )),
        action @ ("beta" | "nll_alpha") => {
            let value = number("value")?.ok_or_else(|| FieldError::new("value", "is required"))?;
            Ok(signal(
                SignalKind::SetHparam,
                Some(action),
                Some(value),
                None,
                &format!("set {action}"),
            ))
        }
        other => Err(FieldError::new(
            "action",
            format!("must be stop, checkpoint, beta or nll_alpha, got {other:?}"),
        )),
    }
}

pub async fn control(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Form,
) -> Result<Redirect, PageError> {
    Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let id = run_id(id)?;
    let signal = signal_of(&form)?.validate()?;
    let created = state.store.create_signal(&id, &signal).await?;
    state.changed(&id);
    tracing::info!(run = %id, signal = created.id, kind = created.kind.as_str(), "signal queued from the dashboard");
    Ok(Redirect::to(&format!(
        "/runs/{}#signals",
        url_encode(id.as_str())
    )))
}
