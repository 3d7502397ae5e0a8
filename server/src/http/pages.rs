//! Server-rendered pages and their static assets, embedded in the binary so pages work offline.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::error::{AppError, Result};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/static/redline.css", get(stylesheet))
}

#[derive(Template)]
#[template(path = "index.html")]
struct Index {
    version: &'static str,
    backend: &'static str,
    auth: &'static str,
}

/// The landing page: what this server is and where its API is.
async fn index(State(state): State<AppState>) -> Result<Html<String>> {
    let page = Index {
        version: env!("CARGO_PKG_VERSION"),
        backend: state.store.backend(),
        auth: match (state.auth.enabled, state.auth.public_read) {
            (false, _) => "off (loopback only)",
            (true, true) => "bearer token for writes; reads public",
            (true, false) => "bearer token for reads and writes",
        },
    };
    page.render()
        .map(Html)
        .map_err(|e| AppError::Internal(e.into()))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../static/redline.css"),
    )
}
