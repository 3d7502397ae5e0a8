//! Webhooks: create, list, delete, send a test, read the delivery log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use redline_core::WebhookName;
use redline_core::wire::{
    DeliveryAttempt, DeliveryList, FieldError, NewWebhook, Webhook, WebhookList, WebhookSecret,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Query};
use crate::alerts::{deliver_now, sign};
use crate::error::Result;
use crate::state::AppState;
use serde::Deserialize;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
        .routes(routes!(test_webhook))
        .routes(routes!(deliveries))
}

pub(crate) fn webhook_name(raw: String) -> Result<WebhookName> {
    WebhookName::parse(raw).map_err(|e| FieldError::new("name", format!("webhook name {e}")).into())
}

/// Webhook URLs often carry their own secret (Slack's and Discord's do): listings show the
/// scheme and host only.
pub(crate) fn redact(mut w: Webhook) -> Webhook {
    if let Some(rest) = w
        .url
        .split_once("://")
        .map(|(s, r)| (s.to_owned(), r.to_owned()))
    {
        let host = rest
            .1
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned();
        w.url = format!("{}://{host}/…", rest.0);
    }
    w
}

/// Registers a webhook. Alerts at or above `min_severity` are sent to it from now on. The answer
/// carries the signing secret; it is not shown again.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks",
    request_body = NewWebhook,
    responses(
        (status = 201, body = Webhook),
        (status = 400, body = redline_core::wire::ErrorBody),
        (status = 409, description = "The name is taken", body = redline_core::wire::ErrorBody),
    ))]
async fn create_webhook(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<NewWebhook>,
) -> Result<(StatusCode, Json<Webhook>)> {
    Ok((StatusCode::CREATED, Json(create(&state, &req).await?)))
}

/// Validates and registers a webhook: the API's `POST` and the dashboard's form both come here.
pub(crate) async fn create(state: &AppState, req: &NewWebhook) -> Result<Webhook> {
    req.validate()?;
    let secret = sign::given_or_new(req.secret.as_ref().map(WebhookSecret::expose))
        .map_err(|e| FieldError::new("secret", e))?;
    let created = state.store.create_webhook(req, &secret).await?;
    tracing::info!(webhook = %req.name, format = req.format.as_str(), "webhook created");
    Ok(created)
}

/// Every webhook, URLs shortened to their host.
#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList)))]
async fn list_webhooks(State(state): State<AppState>) -> Result<Json<WebhookList>> {
    let webhooks = state
        .store
        .webhooks()
        .await?
        .into_iter()
        .map(redact)
        .collect();
    Ok(Json(WebhookList { webhooks }))
}

/// Deletes a webhook with its queued messages and delivery log.
#[utoipa::path(delete, path = "/webhooks/{name}", tag = "webhooks",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn delete_webhook(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    let name = webhook_name(name)?;
    state.store.delete_webhook(&name).await?;
    tracing::info!(webhook = %name, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a signed test message now, once, and answers with the attempt (also logged).
#[utoipa::path(post, path = "/webhooks/{name}/test", tag = "webhooks",
    params(("name" = String, Path)),
    responses((status = 200, body = DeliveryAttempt), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn test_webhook(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DeliveryAttempt>> {
    let name = webhook_name(name)?;
    Ok(Json(
        deliver_now(&*state.store, &state.delivery, &name).await?,
    ))
}

/// How much of a delivery log to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListDeliveries {
    /// Most deliveries returned, newest first (default 100).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<u32>,
}

/// The newest delivery attempts (`limit`, default 100), newest first.
#[utoipa::path(get, path = "/webhooks/{name}/deliveries", tag = "webhooks",
    params(("name" = String, Path), ListDeliveries),
    responses((status = 200, body = DeliveryList), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn deliveries(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ListDeliveries>,
) -> Result<Json<DeliveryList>> {
    let name = webhook_name(name)?;
    let limit = q.limit.unwrap_or(100);
    Ok(Json(DeliveryList {
        deliveries: state.store.deliveries(&name, limit).await?,
    }))
}
