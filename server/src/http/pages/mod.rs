//! The dashboard: server-rendered pages (askama templates in `templates/`), charts as inline SVG,
//! live updates over Server-Sent Events, and the run controls. Assets are embedded in the binary
//! so the pages work offline and the binary needs no files beside it.

mod assets;
mod compare;
mod controls;
mod error;
mod live;
mod manage;
mod rules;
mod run;
mod runs;
mod session;
mod view;
mod webhooks;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(runs::runs_page))
        .route("/runs/{run_id}", get(run::run_page))
        .route("/runs/{run_id}/chart.svg", get(run::chart_svg))
        .route("/runs/{run_id}/control", post(controls::control))
        .route("/runs/{run_id}/edit", post(manage::edit_run))
        .route("/runs/{run_id}/delete", post(manage::delete_run))
        .route("/runs/{run_id}/events", get(live::run_events))
        .route("/compare", get(compare::compare_page))
        .route("/compare/chart.svg", get(compare::compare_svg))
        .route("/events", get(live::runs_events))
        .route(
            "/rules",
            get(rules::rule_sets_page).post(rules::create_rule_set),
        )
        .route(
            "/rules/{name}",
            get(rules::rule_set_page).post(rules::edit_rule_set),
        )
        .route(
            "/webhooks",
            get(webhooks::webhooks_page).post(webhooks::add_webhook),
        )
        .route("/webhooks/{name}/test", post(webhooks::test_webhook))
        .route("/webhooks/{name}/remove", post(webhooks::remove_webhook))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .merge(assets::router())
}
