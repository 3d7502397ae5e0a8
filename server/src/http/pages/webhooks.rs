//! Webhooks on the dashboard: each with its newest delivery attempts, a form to add one (the page
//! that answers shows its signing secret, once), and buttons to send a test or remove one. Every
//! action goes through the same validation and store calls as the API.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::future::try_join_all;
use redline_core::rules::Severity;
use redline_core::wire::{
    DeliveryAttempt, FieldError, NewWebhook, Webhook, WebhookFormat, WebhookSecret,
};

use super::error::PageError;
use super::session::Viewer;
use super::view::{self, Chrome, Form, form_problem};
use crate::alerts::deliver_now;
use crate::charts::format_value;
use crate::http::webhooks::{create, redact, webhook_name};
use crate::state::AppState;

/// Attempts shown under each webhook.
const SHOWN_ATTEMPTS: u32 = 10;

#[derive(Debug)]
struct AttemptRow {
    attempt: DeliveryAttempt,
    started: String,
    status: String,
    latency: String,
}

#[derive(Debug)]
struct HookRow {
    hook: Webhook,
    created: String,
    attempts: Vec<AttemptRow>,
}

/// What the add form holds: empty, or what was typed when it was refused.
#[derive(Debug, Default)]
struct Draft {
    name: String,
    url: String,
    format: String,
    min_severity: String,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    can_write: bool,
    hooks: Vec<HookRow>,
    formats: Vec<&'static str>,
    severities: Vec<&'static str>,
    draft: Draft,
    error: Option<String>,
    /// The webhook just created, with its secret.
    created: Option<Webhook>,
}

pub async fn webhooks_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Html<String>, PageError> {
    let viewer = Viewer::of(&state, &headers, "/webhooks").await?;
    render(&state, &viewer, Draft::default(), None, None).await
}

async fn render(
    state: &AppState,
    viewer: &Viewer,
    draft: Draft,
    error: Option<String>,
    created: Option<Webhook>,
) -> Result<Html<String>, PageError> {
    let hooks = state.store.webhooks().await?;
    let logs = try_join_all(hooks.iter().map(|h| async {
        let name = webhook_name(h.name.clone())?;
        Ok::<_, PageError>(state.store.deliveries(&name, SHOWN_ATTEMPTS).await?)
    }))
    .await?;
    let hooks = hooks
        .into_iter()
        .zip(logs)
        .map(|(hook, attempts)| HookRow {
            created: view::time(hook.created_at),
            hook: redact(hook),
            attempts: attempts
                .into_iter()
                .map(|a| AttemptRow {
                    started: view::time(a.started_at),
                    status: a.status.map(|s| s.to_string()).unwrap_or_default(),
                    latency: format_value(a.latency_ms),
                    attempt: a,
                })
                .collect(),
        })
        .collect();
    view::render(&WebhooksPage {
        chrome: Chrome::new(state, Some(viewer)),
        can_write: viewer.can_write,
        hooks,
        formats: WebhookFormat::ALL.iter().map(|f| f.as_str()).collect(),
        severities: Severity::ALL.iter().map(|s| s.as_str()).collect(),
        draft,
        error,
        created,
    })
}

fn new_webhook(form: &Form) -> Result<NewWebhook, crate::error::AppError> {
    let field = |name| form.get(name).unwrap_or_default().trim();
    let format = WebhookFormat::parse(field("format")).ok_or_else(|| {
        FieldError::new(
            "format",
            format!("must be json, slack or discord, got {:?}", field("format")),
        )
    })?;
    let min_severity = Severity::parse(field("min_severity")).ok_or_else(|| {
        FieldError::new(
            "min_severity",
            format!(
                "must be info, warning or critical, got {:?}",
                field("min_severity")
            ),
        )
    })?;
    Ok(NewWebhook {
        name: webhook_name(field("name").to_owned())?,
        url: field("url").to_owned(),
        format,
        secret: Some(field("secret"))
            .filter(|s| !s.is_empty())
            .map(|s| WebhookSecret(s.to_owned())),
        min_severity: Some(min_severity),
    })
}

pub async fn add_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, PageError> {
    let viewer = Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let created = match new_webhook(&form) {
        Ok(req) => create(&state, &req).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(hook) => Ok(render(&state, &viewer, Draft::default(), None, Some(hook))
            .await?
            .into_response()),
        Err(e) => {
            let (status, message) = form_problem(e)?;
            let draft = Draft {
                name: form.get("name").unwrap_or_default().to_owned(),
                url: form.get("url").unwrap_or_default().to_owned(),
                format: form.get("format").unwrap_or_default().to_owned(),
                min_severity: form.get("min_severity").unwrap_or_default().to_owned(),
            };
            let page = render(&state, &viewer, draft, Some(message), None).await?;
            Ok((status, page).into_response())
        }
    }
}

/// Sends a signed test message now; the attempt appears at the top of the webhook's log.
pub async fn test_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Form,
) -> Result<Redirect, PageError> {
    Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let name = webhook_name(name)?;
    let attempt = deliver_now(&*state.store, &state.delivery, &name).await?;
    tracing::info!(webhook = %name, outcome = %attempt.outcome, "test delivery from the dashboard");
    Ok(Redirect::to(&format!(
        "/webhooks#hook-{}",
        view::url_encode(name.as_str())
    )))
}

pub async fn remove_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Form,
) -> Result<Redirect, PageError> {
    Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let name = webhook_name(name)?;
    state.store.delete_webhook(&name).await?;
    tracing::info!(webhook = %name, "webhook removed from the dashboard");
    Ok(Redirect::to("/webhooks"))
}
