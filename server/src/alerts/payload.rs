//! The bodies webhooks receive: Redline's JSON event (Standard Webhooks shape: `type`,
//! `timestamp`, `data`), a Slack message, or a Discord message.

use chrono::{DateTime, Utc};
use redline_core::rules::Severity;
use redline_core::wire::WebhookFormat;
use serde_json::{Value, json};

use crate::store::alerts::AlertEvent;

/// The body for one message. `event` is `None` for a test delivery to `webhook`.
pub fn body(
    format: WebhookFormat,
    webhook: &str,
    event: Option<&AlertEvent>,
    now: DateTime<Utc>,
) -> Vec<u8> {
    let value = match (format, event) {
        (WebhookFormat::Json, Some(a)) => json!({
            "type": "rule.alert",
            "timestamp": now,
            "data": {
                "event_id": a.event.id,
                "run_id": a.event.run_id,
                "run_name": a.run_name,
                "project": a.project,
                "rule_set": a.event.rule_set,
                "rule": a.event.rule,
                "severity": a.event.severity,
                "step": a.event.step,
                "message": a.event.message,
                "values": a.event.values,
                "raised_at": a.event.created_at,
            },
        }),
        (WebhookFormat::Json, None) => json!({
            "type": "webhook.test",
            "timestamp": now,
            "data": { "webhook": webhook, "message": "Test delivery from Redline" },
        }),
        (WebhookFormat::Slack, e) => json!({ "text": headline(webhook, e) }),
        (WebhookFormat::Discord, e) => discord(webhook, e),
    };
    serde_json::to_vec(&value).expect("JSON values serialise")
}

fn headline(webhook: &str, event: Option<&AlertEvent>) -> String {
    match event {
        Some(a) => format!(
            "[{}] run {} ({}, project {}): rule {}/{} at step {}: {}",
            a.event.severity.as_str(),
            a.run_name,
            a.event.run_id,
            a.project,
            a.event.rule_set,
            a.event.rule,
            a.event.step,
            a.event.message
        ),
        None => format!("Test delivery from Redline to webhook {webhook}"),
    }
}

fn discord(webhook: &str, event: Option<&AlertEvent>) -> Value {
    let Some(a) = event else {
        return json!({ "content": headline(webhook, None) });
    };
    let color = match a.event.severity {
        Severity::Info => 0x0000_72B2,
        Severity::Warning => 0x00E6_9F00,
        Severity::Critical => 0x00D5_5E00,
    };
    json!({
        "content": headline(webhook, event),
        "embeds": [{
            "title": format!("{}/{} tripped at step {}", a.event.rule_set, a.event.rule, a.event.step),
            "description": a.event.message,
            "color": color,
            "fields": [
                { "name": "run", "value": format!("{} ({})", a.run_name, a.event.run_id), "inline": true },
                { "name": "project", "value": a.project, "inline": true },
                { "name": "severity", "value": a.event.severity.as_str(), "inline": true },
            ],
        }],
        "allowed_mentions": { "parse": [] },
    })
}
