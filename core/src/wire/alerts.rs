//! Wire types of rule sets, rule events and webhooks (`/api/v1/rule-sets`, `/api/v1/webhooks`,
//! `/api/v1/runs/{run_id}/events`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FieldError;
use crate::rules::Severity;
use crate::{MetricValue, RunId, WebhookName};

/// One stored version of a rule set. Editing a rule set stores a new version; runs keep the
/// versions they were created with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RuleSetVersion {
    pub name: String,
    pub version: i32,
    /// The rule file, TOML (docs/rules.md).
    pub source: String,
    /// The names of its rules, in file order.
    pub rules: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// Rule sets, the newest version of each.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleSetList {
    pub rule_sets: Vec<RuleSetVersion>,
}

/// What a rule did at one step: an alert, a stop, a checkpoint or one change of a regulated
/// hyperparameter, with the values that tripped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct RuleEvent {
    pub id: i64,
    #[schema(value_type = String)]
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub run_id: RunId,
    pub rule_set: String,
    pub rule: String,
    /// `alert`, `stop`, `checkpoint` or `regulate`.
    pub action: String,
    #[schema(value_type = String)]
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub severity: Severity,
    /// The step whose values tripped the rule.
    pub step: i64,
    pub message: String,
    /// The raw, smoothed and baseline values the rule compared (non-finite ones spelled as strings).
    #[cfg_attr(feature = "sqlx", sqlx(json, rename = "trip_values"))]
    pub values: BTreeMap<String, MetricValue>,
    /// The signal it sent the trainer, for stop, checkpoint and regulate.
    pub signal_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleEventList {
    pub events: Vec<RuleEvent>,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Redline's own JSON event (docs/alerts.md).
    #[default]
    Json,
    /// A Slack incoming-webhook message.
    Slack,
    /// A Discord webhook message.
    Discord,
}

impl WebhookFormat {
    pub const ALL: [Self; 3] = [Self::Json, Self::Slack, Self::Discord];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Slack => "slack",
            Self::Discord => "discord",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// Body of `POST /api/v1/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    #[schema(value_type = String)]
    pub name: WebhookName,
    /// `http://` or `https://` URL. Private and loopback addresses are refused at delivery unless
    /// the server's `--webhook-allow` names them.
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Signing secret, `whsec_` + base64 of 24 to 64 bytes; generated when left out.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub secret: Option<WebhookSecret>,
    /// Alerts below this severity are not sent; default `info` (all).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub min_severity: Option<Severity>,
}

impl NewWebhook {
    /// Checks the URL's shape; where it points is checked at delivery, after name resolution.
    pub fn validate(&self) -> Result<(), FieldError> {
        let url = self.url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| FieldError::new("url", "must start with http:// or https://"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.contains('@') {
            return Err(FieldError::new(
                "url",
                "must name a host, without user info (put credentials in the signing secret)",
            ));
        }
        if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FieldError::new(
                "url",
                "must be at most 2048 characters without spaces or control characters",
            ));
        }
        Ok(())
    }
}

/// A webhook as stored. The secret is only shown in the answer that created it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Webhook {
    pub name: String,
    pub url: String,
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub format: WebhookFormat,
    #[schema(value_type = String)]
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub min_severity: Severity,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    #[cfg_attr(feature = "sqlx", sqlx(skip))]
    pub secret: Option<WebhookSecret>,
}

/// A webhook's signing secret: a plain string on the wire, `[REDACTED]` in `Debug`, so that no
/// log of a request or a webhook can print it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookSecret(pub String);

impl WebhookSecret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One attempt to deliver one message to one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    /// The `webhook-id` header: the same on every attempt of one message.
    pub message_id: String,
    /// The rule event it carries; none for a test delivery.
    pub event_id: Option<i64>,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// Why it failed: a refused address, a timeout, a connection error or a non-2xx status.
    pub error: Option<String>,
    /// `delivered`, `retry` (another attempt is scheduled) or `failed` (given up).
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryAttempt>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_secret_travels_as_a_string_and_never_shows_in_debug() {
        let req: NewWebhook = serde_json::from_str(
            r#"{"name":"w","url":"https://h.example/","secret":"whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="}"#,
        )
        .unwrap();
        let secret = req.secret.as_ref().unwrap();
        assert_eq!(secret.expose(), "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=");
        assert!(!format!("{req:?}").contains("whsec_"), "{req:?}");
        assert_eq!(
            serde_json::to_value(secret).unwrap(),
            "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="
        );
    }
}
