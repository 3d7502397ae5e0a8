//! The dashboard: server-rendered pages (askama templates in `templates/`), charts as inline SVG,
//! live updates over Server-Sent Events, and the run controls. Assets are embedded in the binary
//! so the pages work offline and the binary needs no files beside it.

mod assets;
mod compare;
mod controls;
mod error;
mod live;
mod run;
mod runs;
mod session;
mod view;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(runs::runs_page))
        .route("/runs/{run_id}", get(run::run_page))
        .route("/runs/{run_id}/chart.svg", get(run::chart_svg))
        .route("/runs/{run_id}/control", post(controls::control))
        .route("/runs/{run_id}/events", get(live::run_events))
        .route("/compare", get(compare::compare_page))
        .route("/compare/chart.svg", get(compare::compare_svg))
        .route("/events", get(live::runs_events))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .merge(assets::router())
}
