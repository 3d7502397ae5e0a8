//! The OpenAPI document's frame: title, security, shared schemas. The paths come from the API
//! routes themselves: each feature's `router()` registers its handlers through utoipa-axum's
//! `routes!`, which routes a handler and documents it in one step (its `#[utoipa::path]` and its
//! query-parameter struct), so a route cannot exist undocumented.

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

/// Serves the document assembled with the routes.
pub fn router(doc: utoipa::openapi::OpenApi) -> Router<AppState> {
    let doc = Json(doc);
    Router::new().route("/api/v1/openapi.json", get(move || async move { doc }))
}
