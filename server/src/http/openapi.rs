//! The OpenAPI document, generated from the handlers and wire types so it cannot drift.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Redline API",
        version = "1",
        description = "Runs, their metric series and the signals sent back to trainers. \
            Non-finite metric values are encoded as the strings \"NaN\", \"Infinity\" and \"-Infinity\". \
            Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`. \
            When the server has tokens, send `Authorization: Bearer <token>`."
    ),
    paths(
        super::runs::create_or_resume,
        super::runs::get_run,
        super::runs::list_runs,
        super::runs::finish,
        super::runs::update_run,
        super::runs::delete_run,
        super::steps::append_steps,
        super::series::list_metrics,
        super::series::read_series,
        super::signals::create_signal,
        super::signals::list_signals,
        super::signals::ack_signal,
        super::signals::stream_signals,
        super::rules::list_rule_sets,
        super::rules::get_rule_set,
        super::rules::put_rule_set,
        super::rules::run_rule_sets,
        super::rules::run_events,
        super::webhooks::create_webhook,
        super::webhooks::list_webhooks,
        super::webhooks::delete_webhook,
        super::webhooks::test_webhook,
        super::webhooks::deliveries,
    ),
    components(schemas(
        redline_core::wire::DownsampledSeries,
        redline_core::series::Bucket,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v1/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
}
