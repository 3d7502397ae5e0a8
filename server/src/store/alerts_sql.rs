//! [`super::AlertStore`] for both stores: one body of SQL, which SQLite and PostgreSQL both
//! accept (`$n` parameters, `RETURNING`, `ON CONFLICT`), expanded once per store. The outbox
//! claim is the only statement that differs, and is passed in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redline_core::rules::{Action, Firing, Severity};
use redline_core::wire::{DeliveryAttempt, RuleEvent, Webhook, WebhookFormat, WebhookSecret};
use redline_core::{MetricValue, RunId};
use sqlx::types::Json;

use super::alerts::{AlertEvent, StoredRuleSet, WebhookTarget};
use super::{StoreError, StoreResult};

pub(super) const RULE_SET_COLUMNS: &str = "name, version, source, created_at";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct RuleSetRow {
    pub(super) name: String,
    pub(super) version: i32,
    pub(super) source: String,
    pub(super) created_at: DateTime<Utc>,
}

impl From<RuleSetRow> for StoredRuleSet {
    fn from(r: RuleSetRow) -> Self {
        Self {
            name: r.name,
            version: r.version,
            source: r.source,
            created_at: r.created_at,
        }
    }
}

pub(super) const EVENT_COLUMNS: &str = "e.id, e.rule_set, e.rule, e.action, e.severity, e.step, \
     e.message, e.trip_values, e.signal_id, e.created_at";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    id: i64,
    rule_set: String,
    rule: String,
    action: String,
    severity: String,
    step: i64,
    message: String,
    trip_values: Json<BTreeMap<String, MetricValue>>,
    signal_id: Option<i64>,
    created_at: DateTime<Utc>,
}

impl EventRow {
    pub(super) fn into_event(self, run_id: RunId) -> StoreResult<RuleEvent> {
        Ok(RuleEvent {
            id: self.id,
            run_id,
            rule_set: self.rule_set,
            rule: self.rule,
            action: self.action,
            severity: parse_severity(&self.severity)?,
            step: self.step,
            message: self.message,
            values: self.trip_values.0,
            signal_id: self.signal_id,
            created_at: self.created_at,
        })
    }
}

/// The outbox row of a claimed message, joined with its webhook. No `Debug`: it holds the
/// webhook's secret in the clear.
#[derive(sqlx::FromRow)]
pub(super) struct DueRow {
    outbox_id: i64,
    message_id: String,
    attempts: i32,
    pub(super) event_id: Option<i64>,
    webhook: String,
    url: String,
    format: String,
    secret: String,
}

pub(super) const DUE_SELECT: &str = "SELECT o.id AS outbox_id, o.message_id, o.attempts, \
     o.event_id, w.name AS webhook, w.url, w.format, w.secret \
     FROM webhook_outbox o JOIN webhooks w ON w.id = o.webhook_id WHERE o.id = $1";

impl DueRow {
    pub(super) fn into_due(self, event: Option<AlertEvent>) -> StoreResult<super::alerts::Due> {
        Ok(super::alerts::Due {
            outbox_id: self.outbox_id,
            message_id: self.message_id,
            attempts: self.attempts,
            webhook: WebhookTarget {
                name: self.webhook,
                url: self.url,
                format: parse_format(&self.format)?,
                secret: self.secret.into(),
            },
            event,
        })
    }
}

/// A rule event with its run's names, for payloads.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AlertRow {
    #[sqlx(flatten)]
    event: EventRow,
    run_id: String,
    run_name: String,
    project: String,
}

pub(super) const ALERT_SELECT: &str = "SELECT e.id, e.rule_set, e.rule, e.action, e.severity, \
     e.step, e.message, e.trip_values, e.signal_id, e.created_at, r.run_id, r.name AS run_name, \
     r.project FROM rule_events e JOIN runs r ON r.pk = e.run_pk WHERE e.id = $1";

impl AlertRow {
    pub(super) fn into_alert(self) -> StoreResult<AlertEvent> {
        let run = RunId::parse(self.run_id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(AlertEvent {
            event: self.event.into_event(run)?,
            run_name: self.run_name,
            project: self.project,
        })
    }
}

pub(super) const WEBHOOK_COLUMNS: &str = "name, url, format, min_severity, created_at";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct WebhookRow {
    name: String,
    url: String,
    format: String,
    min_severity: String,
    created_at: DateTime<Utc>,
}

impl WebhookRow {
    pub(super) fn into_webhook(self, secret: Option<String>) -> StoreResult<Webhook> {
        Ok(Webhook {
            name: self.name,
            url: self.url,
            format: parse_format(&self.format)?,
            min_severity: parse_severity(&self.min_severity)?,
            created_at: self.created_at,
            secret: secret.map(WebhookSecret),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AttemptRow {
    message_id: String,
    event_id: Option<i64>,
    attempt: i32,
    started_at: DateTime<Utc>,
    status: Option<i32>,
    latency_ms: f64,
    error: Option<String>,
    outcome: String,
}

impl From<AttemptRow> for DeliveryAttempt {
    fn from(r: AttemptRow) -> Self {
        Self {
            message_id: r.message_id,
            event_id: r.event_id,
            attempt: r.attempt,
            started_at: r.started_at,
            status: r.status.and_then(|s| u16::try_from(s).ok()),
            latency_ms: r.latency_ms,
            error: r.error,
            outcome: r.outcome,
        }
    }
}

fn parse_severity(s: &str) -> StoreResult<Severity> {
    Severity::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown severity {s:?}")))
}

pub(super) fn parse_format(s: &str) -> StoreResult<WebhookFormat> {
    WebhookFormat::parse(s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown webhook format {s:?}")))
}

/// A signal's columns: kind, hyperparameter name, value, keep step.
pub(super) type SignalColumns<'a> = (&'static str, Option<&'a str>, Option<f64>, Option<i64>);

/// The stored action name and, for actions that signal the trainer, the signal's columns.
pub(super) fn action_columns(a: &Action) -> (&'static str, Option<SignalColumns<'_>>) {
    let signal = match a {
        Action::Alert => None,
        Action::Stop { keep_step } => Some(("stop", None, None, *keep_step)),
        Action::Checkpoint => Some(("checkpoint", None, None, None)),
        Action::SetHparam { name, value } => {
            Some(("set_hparam", Some(name.as_str()), Some(*value), None))
        }
    };
    (super::alerts::action_name(a), signal)
}

pub(super) fn trip_values(f: &Firing) -> Json<BTreeMap<String, MetricValue>> {
    Json(
        f.values
            .iter()
            .map(|(k, v)| (k.clone(), MetricValue(*v)))
            .collect(),
    )
}

/// Expands [`super::AlertStore`] and the in-transaction rule writes for one store.
/// `$claim` claims due outbox rows: binds `$1` now, `$2` lease end, `$3` limit; returns ids.
/// `$same` is the store's null-safe equality operator, `$greatest` its two-argument maximum.
macro_rules! alert_store {
    ($store:ty, $db:ty, writer: $w:ident, reader: $r:ident, claim: $claim:expr, same: $same:literal, greatest: $greatest:literal) => {
        impl $store {
            /// Pins the newest versions of the rule sets a new run asked for (default: the presets).
            async fn pin_rule_sets(
                tx: &mut sqlx::Transaction<'_, $db>,
                pk: i64,
                req: &redline_core::wire::CreateRun,
            ) -> $crate::store::StoreResult<()> {
                let default = [redline_core::RuleSetName::parse(redline_core::rules::PRESETS_NAME)
                    .expect("the presets' name is valid")];
                let names = req.rules.as_deref().unwrap_or(&default);
                for (i, name) in names.iter().enumerate() {
                    let pinned = sqlx::query(
                        "INSERT INTO run_rule_sets (run_pk, position, rule_set_id) \
                         SELECT $1, $2, id FROM rule_sets WHERE name = $3 ORDER BY version DESC LIMIT 1",
                    )
                    .bind(pk)
                    .bind(i as i32)
                    .bind(name.as_str())
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if pinned == 0 && req.rules.is_some() {
                        return Err($crate::store::StoreError::Invalid {
                            field: format!("rules[{i}]"),
                            message: format!("no rule set named {name} (GET /api/v1/rule-sets lists them)"),
                        });
                    }
                }
                Ok(())
            }

            /// Writes what the rules concluded about a batch inside its ingest transaction,
            /// and moves the run's last step to `last_step` when the batch stored new points
            /// (one statement for both: this runs on every batch). Returns the number of signals
            /// created.
            async fn write_rules(
                tx: &mut sqlx::Transaction<'_, $db>,
                pk: i64,
                writes: &$crate::store::alerts::RuleWrites<'_>,
                last_step: Option<i64>,
            ) -> $crate::store::StoreResult<usize> {
                use $crate::store::alerts_sql::{action_columns, trip_values};
                let Some(ev) = writes.evaluated else {
                    if let Some(step) = last_step {
                        sqlx::query(concat!(
                            "UPDATE runs SET last_step = ", $greatest, "(coalesce(last_step, -1), $2), \
                             updated_at = $3 WHERE pk = $1"
                        ))
                        .bind(pk)
                        .bind(step)
                        .bind($crate::store::now())
                        .execute(&mut **tx)
                        .await?;
                    }
                    return Ok(0);
                };
                let moved = sqlx::query(concat!(
                    "UPDATE runs SET rules_step = $2, \
                     last_step = CASE WHEN $4 IS NULL THEN last_step \
                         ELSE ", $greatest, "(coalesce(last_step, -1), $4) END, \
                     updated_at = CASE WHEN $4 IS NULL THEN updated_at ELSE $5 END \
                     WHERE pk = $1 AND rules_step ",
                    $same,
                    " $3"
                ))
                .bind(pk)
                .bind(ev.to_step)
                .bind(ev.from_step)
                .bind(last_step)
                .bind($crate::store::now())
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    return Err($crate::store::StoreError::RulesMoved);
                }
                let t = $crate::store::now();
                let mut signals = 0;
                for f in ev.firings {
                    let (action, signal) = action_columns(&f.action);
                    let event: Option<i64> = sqlx::query_scalar(
                        "INSERT INTO rule_events (run_pk, rule_set, rule, action, severity, step, \
                         message, trip_values, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (run_pk, rule_set, rule, action, step) DO NOTHING RETURNING id",
                    )
                    .bind(pk)
                    .bind(&f.rule_set)
                    .bind(&f.rule)
                    .bind(action)
                    .bind(f.severity.as_str())
                    .bind(f.step)
                    .bind(&f.message)
                    .bind(trip_values(f))
                    .bind(t)
                    .fetch_optional(&mut **tx)
                    .await?;
                    let Some(event) = event else { continue };
                    if let Some((kind, name, value, keep_step)) = signal {
                        let signal: i64 = sqlx::query_scalar(
                            "INSERT INTO signals (run_pk, kind, name, value, keep_step, reason, \
                             source_rule, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                        )
                        .bind(pk)
                        .bind(kind)
                        .bind(name)
                        .bind(value)
                        .bind(keep_step)
                        .bind(&f.message)
                        .bind(format!("{}/{}", f.rule_set, f.rule))
                        .bind(t)
                        .fetch_one(&mut **tx)
                        .await?;
                        sqlx::query("UPDATE rule_events SET signal_id = $2 WHERE id = $1")
                            .bind(event)
                            .bind(signal)
                            .execute(&mut **tx)
                            .await?;
                        signals += 1;
                    } else {
                        let [a, b, c] = $crate::store::alerts::severities_at_most(f.severity);
                        sqlx::query(
                            "INSERT INTO webhook_outbox (webhook_id, event_id, message_id, state, \
                             attempts, next_attempt_at, created_at) \
                             SELECT id, $1, $2 || CAST(id AS TEXT), 'pending', 0, $3, $3 FROM webhooks \
                             WHERE min_severity IN ($4, $5, $6)",
                        )
                        .bind(event)
                        .bind(format!("msg_{event}_"))
                        .bind(t)
                        .bind(a)
                        .bind(b)
                        .bind(c)
                        .execute(&mut **tx)
                        .await?;
                    }
                }
                Ok(signals)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::alerts::AlertStore for $store {
            async fn put_rule_set(
                &self,
                name: &redline_core::RuleSetName,
                source: &str,
            ) -> $crate::store::StoreResult<$crate::store::alerts::StoredRuleSet> {
                use $crate::store::alerts_sql::{RULE_SET_COLUMNS, RuleSetRow};
                let mut tx = self.$w.begin().await?;
                let newest: Option<RuleSetRow> = sqlx::query_as(&format!(
                    "SELECT {RULE_SET_COLUMNS} FROM rule_sets WHERE name = $1 ORDER BY version DESC LIMIT 1"
                ))
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let version = match newest {
                    Some(row) if row.source == source => return Ok(row.into()),
                    Some(row) => row.version + 1,
                    None => 1,
                };
                let row: RuleSetRow = sqlx::query_as(&format!(
                    "INSERT INTO rule_sets (name, version, source, created_at) VALUES ($1, $2, $3, $4) \
                     RETURNING {RULE_SET_COLUMNS}"
                ))
                .bind(name.as_str())
                .bind(version)
                .bind(source)
                .bind($crate::store::now())
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(row.into())
            }

            async fn ensure_rule_set(
                &self,
                name: &redline_core::RuleSetName,
                source: &str,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO rule_sets (name, version, source, created_at) \
                     SELECT $1, 1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM rule_sets WHERE name = $1) \
                     ON CONFLICT (name, version) DO NOTHING",
                )
                .bind(name.as_str())
                .bind(source)
                .bind($crate::store::now())
                .execute(&self.$w)
                .await?;
                Ok(())
            }

            async fn rule_sets(
                &self,
            ) -> $crate::store::StoreResult<Vec<$crate::store::alerts::StoredRuleSet>> {
                use $crate::store::alerts_sql::{RULE_SET_COLUMNS, RuleSetRow};
                let rows: Vec<RuleSetRow> = sqlx::query_as(&format!(
                    "SELECT {RULE_SET_COLUMNS} FROM rule_sets s WHERE version = \
                     (SELECT max(version) FROM rule_sets WHERE name = s.name) ORDER BY name"
                ))
                .fetch_all(&self.$r)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn rule_set(
                &self,
                name: &redline_core::RuleSetName,
                version: Option<i32>,
            ) -> $crate::store::StoreResult<$crate::store::alerts::StoredRuleSet> {
                use $crate::store::alerts_sql::{RULE_SET_COLUMNS, RuleSetRow};
                let row: Option<RuleSetRow> = sqlx::query_as(&format!(
                    "SELECT {RULE_SET_COLUMNS} FROM rule_sets WHERE name = $1 \
                     AND ($2 IS NULL OR version = $2) ORDER BY version DESC LIMIT 1"
                ))
                .bind(name.as_str())
                .bind(version)
                .fetch_optional(&self.$r)
                .await?;
                row.map(Into::into).ok_or_else(|| {
                    $crate::store::StoreError::RuleSetNotFound(match version {
                        Some(v) => format!("{name} version {v}"),
                        None => name.to_string(),
                    })
                })
            }

            async fn run_rules(
                &self,
                id: &redline_core::RunId,
            ) -> $crate::store::StoreResult<$crate::store::alerts::RunRules> {
                use $crate::store::alerts_sql::RuleSetRow;
                let (pk, rules_step, last_step): (i64, Option<i64>, Option<i64>) =
                    sqlx::query_as("SELECT pk, rules_step, last_step FROM runs WHERE run_id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&self.$r)
                        .await?
                        .ok_or_else(|| $crate::store::StoreError::RunNotFound(id.clone()))?;
                let sets: Vec<RuleSetRow> = sqlx::query_as(
                    "SELECT s.name, s.version, s.source, s.created_at FROM run_rule_sets p \
                     JOIN rule_sets s ON s.id = p.rule_set_id WHERE p.run_pk = $1 ORDER BY p.position",
                )
                .bind(pk)
                .fetch_all(&self.$r)
                .await?;
                Ok($crate::store::alerts::RunRules {
                    sets: sets.into_iter().map(Into::into).collect(),
                    rules_step,
                    last_step,
                })
            }

            async fn rule_events(
                &self,
                id: &redline_core::RunId,
            ) -> $crate::store::StoreResult<Vec<redline_core::wire::RuleEvent>> {
                use $crate::store::alerts_sql::{EVENT_COLUMNS, EventRow};
                let pk = self.read_run_pk(id).await?;
                let rows: Vec<EventRow> = sqlx::query_as(&format!(
                    "SELECT {EVENT_COLUMNS} FROM rule_events e WHERE e.run_pk = $1 ORDER BY e.id"
                ))
                .bind(pk)
                .fetch_all(&self.$r)
                .await?;
                rows.into_iter().map(|r| r.into_event(id.clone())).collect()
            }

            async fn rule_event_count(
                &self,
                id: &redline_core::RunId,
            ) -> $crate::store::StoreResult<i64> {
                let pk = self.read_run_pk(id).await?;
                let (total,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM rule_events WHERE run_pk = $1")
                        .bind(pk)
                        .fetch_one(&self.$r)
                        .await?;
                Ok(total)
            }

            async fn newest_rule_events(
                &self,
                id: &redline_core::RunId,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<redline_core::wire::RuleEvent>> {
                use $crate::store::alerts_sql::{EVENT_COLUMNS, EventRow};
                let pk = self.read_run_pk(id).await?;
                let rows: Vec<EventRow> = sqlx::query_as(&format!(
                    "SELECT {EVENT_COLUMNS} FROM rule_events e WHERE e.run_pk = $1 \
                     ORDER BY e.id DESC LIMIT $2"
                ))
                .bind(pk)
                .bind(i64::from(limit))
                .fetch_all(&self.$r)
                .await?;
                rows.into_iter().map(|r| r.into_event(id.clone())).collect()
            }

            async fn create_webhook(
                &self,
                w: &redline_core::wire::NewWebhook,
                secret: &str,
            ) -> $crate::store::StoreResult<redline_core::wire::Webhook> {
                use $crate::store::alerts_sql::{WEBHOOK_COLUMNS, WebhookRow};
                let row: Option<WebhookRow> = sqlx::query_as(&format!(
                    "INSERT INTO webhooks (name, url, format, secret, min_severity, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING \
                     RETURNING {WEBHOOK_COLUMNS}"
                ))
                .bind(w.name.as_str())
                .bind(w.url.trim())
                .bind(w.format.as_str())
                .bind(secret)
                .bind(w.min_severity.unwrap_or(redline_core::rules::Severity::Info).as_str())
                .bind($crate::store::now())
                .fetch_optional(&self.$w)
                .await?;
                row.ok_or_else(|| {
                    $crate::store::StoreError::Conflict(format!(
                        "a webhook named {} exists; delete it first to replace it",
                        w.name
                    ))
                })?
                .into_webhook(Some(secret.to_owned()))
            }

            async fn webhooks(
                &self,
            ) -> $crate::store::StoreResult<Vec<redline_core::wire::Webhook>> {
                use $crate::store::alerts_sql::{WEBHOOK_COLUMNS, WebhookRow};
                let rows: Vec<WebhookRow> = sqlx::query_as(&format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY name"
                ))
                .fetch_all(&self.$r)
                .await?;
                rows.into_iter().map(|r| r.into_webhook(None)).collect()
            }

            async fn webhook(
                &self,
                name: &redline_core::WebhookName,
            ) -> $crate::store::StoreResult<$crate::store::alerts::WebhookTarget> {
                let row: Option<(String, String, String)> =
                    sqlx::query_as("SELECT url, format, secret FROM webhooks WHERE name = $1")
                        .bind(name.as_str())
                        .fetch_optional(&self.$r)
                        .await?;
                let (url, format, secret) = row
                    .ok_or_else(|| $crate::store::StoreError::WebhookNotFound(name.to_string()))?;
                Ok($crate::store::alerts::WebhookTarget {
                    name: name.to_string(),
                    url,
                    format: $crate::store::alerts_sql::parse_format(&format)?,
                    secret: secret.into(),
                })
            }

            async fn delete_webhook(
                &self,
                name: &redline_core::WebhookName,
            ) -> $crate::store::StoreResult<()> {
                let gone = sqlx::query("DELETE FROM webhooks WHERE name = $1")
                    .bind(name.as_str())
                    .execute(&self.$w)
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Err($crate::store::StoreError::WebhookNotFound(name.to_string()));
                }
                Ok(())
            }

            async fn deliveries(
                &self,
                name: &redline_core::WebhookName,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<redline_core::wire::DeliveryAttempt>> {
                use $crate::store::alerts_sql::AttemptRow;
                self.webhook(name).await?;
                let rows: Vec<AttemptRow> = sqlx::query_as(
                    "SELECT o.message_id, o.event_id, a.attempt, a.started_at, a.status, \
                     a.latency_ms, a.error, a.outcome FROM webhook_attempts a \
                     JOIN webhook_outbox o ON o.id = a.outbox_id JOIN webhooks w ON w.id = o.webhook_id \
                     WHERE w.name = $1 ORDER BY a.id DESC LIMIT $2",
                )
                .bind(name.as_str())
                .bind(i64::from(limit))
                .fetch_all(&self.$r)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn claim_due(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::alerts::Due>> {
                use $crate::store::alerts_sql::{ALERT_SELECT, AlertRow, DUE_SELECT, DueRow};
                let mut tx = self.$w.begin().await?;
                let ids: Vec<i64> = sqlx::query_scalar($claim)
                    .bind(now)
                    .bind(lease_until)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut due = Vec::with_capacity(ids.len());
                for id in ids {
                    let row: DueRow = sqlx::query_as(DUE_SELECT).bind(id).fetch_one(&mut *tx).await?;
                    let event = match row.event_id {
                        Some(e) => Some(
                            sqlx::query_as::<_, AlertRow>(ALERT_SELECT)
                                .bind(e)
                                .fetch_one(&mut *tx)
                                .await?
                                .into_alert()?,
                        ),
                        None => None,
                    };
                    due.push(row.into_due(event)?);
                }
                tx.commit().await?;
                Ok(due)
            }

            async fn record_attempt(
                &self,
                due: &$crate::store::alerts::Due,
                a: &$crate::store::alerts::AttemptRecord,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::alerts::NextStep;
                let mut tx = self.$w.begin().await?;
                let (state, next_at, finished) = match a.next {
                    NextStep::Delivered => ("delivered", a.started_at, Some($crate::store::now())),
                    NextStep::GiveUp => ("failed", a.started_at, Some($crate::store::now())),
                    NextStep::RetryAt(at) => ("pending", at, None),
                };
                let moved = sqlx::query(
                    "UPDATE webhook_outbox SET state = $2, attempts = attempts + 1, \
                     next_attempt_at = $3, finished_at = $4 WHERE id = $1",
                )
                .bind(due.outbox_id)
                .bind(state)
                .bind(next_at)
                .bind(finished)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // The message went while it was being sent (its run or webhook was deleted):
                // there is nothing left to log the attempt against.
                if moved == 0 {
                    return Ok(());
                }
                sqlx::query(
                    "INSERT INTO webhook_attempts (outbox_id, attempt, started_at, status, latency_ms, \
                     error, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(due.outbox_id)
                .bind(due.attempts + 1)
                .bind(a.started_at)
                .bind(a.status.map(i32::from))
                .bind(a.latency_ms)
                .bind(a.error.as_deref())
                .bind(a.next.outcome())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn next_due(
                &self,
            ) -> $crate::store::StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
                Ok(sqlx::query_scalar(
                    "SELECT next_attempt_at FROM webhook_outbox WHERE state = 'pending' \
                     ORDER BY next_attempt_at LIMIT 1",
                )
                .fetch_optional(&self.$r)
                .await?)
            }

            async fn enqueue_test(
                &self,
                name: &redline_core::WebhookName,
                lease_until: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::store::alerts::Due> {
                use $crate::store::alerts_sql::{DUE_SELECT, DueRow};
                let mut tx = self.$w.begin().await?;
                let message_id = format!("msg_test_{:016x}", rand::random::<u64>());
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO webhook_outbox (webhook_id, event_id, message_id, state, attempts, \
                     next_attempt_at, created_at) SELECT id, NULL, $2, 'pending', 0, $3, $4 \
                     FROM webhooks WHERE name = $1 RETURNING id",
                )
                .bind(name.as_str())
                .bind(&message_id)
                .bind(lease_until)
                .bind($crate::store::now())
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or_else(|| $crate::store::StoreError::WebhookNotFound(name.to_string()))?;
                let row: DueRow = sqlx::query_as(DUE_SELECT).bind(id).fetch_one(&mut *tx).await?;
                tx.commit().await?;
                row.into_due(None)
            }
        }
    };
}
pub(super) use alert_store;
