//! The run page's housekeeping forms: rename and retag, and delete. Each goes through the same
//! code as its API call (`PATCH` and `DELETE /api/v1/runs/{run_id}`), behind the page's CSRF
//! token like the run controls.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Redirect;
use redline_core::wire::{FieldError, UpdateRun};

use super::error::PageError;
use super::session::Viewer;
use super::view::{Form, url_encode};
use crate::http::{run_id, runs};
use crate::state::AppState;

/// The edit form's fields: the name, and the tags one per line (a tag holds no line break, so
/// every tag survives the round trip, commas and all).
fn update_of(form: &Form) -> UpdateRun {
    UpdateRun {
        name: form.get("name").map(|n| n.trim().to_owned()),
        tags: Some(
            form.get("tags")
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
    }
}

pub async fn edit_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Form,
) -> Result<Redirect, PageError> {
    Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let id = run_id(id)?;
    runs::edit(&state, &id, &update_of(&form)).await?;
    Ok(Redirect::to(&format!("/runs/{}", url_encode(id.as_str()))))
}

/// Deletes the run once the form's box saying so is ticked; then shows the list of runs.
pub async fn delete_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Form,
) -> Result<Redirect, PageError> {
    Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let id = run_id(id)?;
    if form.get("confirm") != Some("yes") {
        return Err(FieldError::new("confirm", "tick the box to confirm the deletion").into());
    }
    runs::remove(&state, &id).await?;
    Ok(Redirect::to("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_one_per_line_and_blank_lines_drop() {
        let form = Form::from_pairs(&[("name", " n "), ("tags", "a, b\r\n\r\n c \r\n")]);
        let u = update_of(&form);
        assert_eq!(u.name.as_deref(), Some("n"));
        assert_eq!(u.tags, Some(vec!["a, b".to_owned(), "c".to_owned()]));
    }
}
