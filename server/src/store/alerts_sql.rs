//! [`AlertStore`] for both backends, and the rule writes of an ingest: one body of SQL, like
//! [`super::sql`]; the outbox claim is the dialect's.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redline_core::rules::{Action, Firing, PRESETS_NAME, Severity};
use redline_core::wire::{
    CreateRun, DeliveryAttempt, NewWebhook, RuleEvent, Webhook, WebhookSecret,
};
use redline_core::{MetricValue, RuleSetName, RunId, WebhookName};

use super::alerts::{
    AlertStore, AttemptRecord, Due, NextStep, RuleWrites, RunRules, StoredRuleSet,
};
use super::exec::{Arg, Dialect, args, json};
use super::sql::SqlStore;
use super::{StoreError, StoreResult};

const RULE_SET_COLUMNS: &str = "name, version, source, created_at";

/// The columns of [`RuleEvent`] (which decodes from them), from `rule_events e JOIN runs r`.
const EVENT_COLUMNS: &str = "e.id, r.run_id, e.rule_set, e.rule, e.action, e.severity, e.step, \
     e.message, e.trip_values, e.signal_id, e.created_at";

/// The claimed outbox row `$1` with its webhook, as [`Due`] decodes it.
const DUE_SELECT: &str = "SELECT o.id AS outbox_id, o.message_id, o.attempts, w.name, w.url, \
     w.format, w.secret FROM webhook_outbox o JOIN webhooks w ON w.id = o.webhook_id WHERE o.id = $1";

const WEBHOOK_COLUMNS: &str = "name, url, format, min_severity, created_at";

#[derive(Debug, sqlx::FromRow)]
struct AttemptRow {
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

/// A signal's columns: kind, hyperparameter name, value, keep step.
type SignalColumns<'a> = (&'static str, Option<&'a str>, Option<f64>, Option<i64>);

/// The stored action name and, for actions that signal the trainer, the signal's columns.
fn action_columns(a: &Action) -> (&'static str, Option<SignalColumns<'_>>) {
    let signal = match a {
        Action::Alert => None,
        Action::Stop { keep_step } => Some(("stop", None, None, *keep_step)),
        Action::Checkpoint => Some(("checkpoint", None, None, None)),
        Action::SetHparam { name, value } => {
            Some(("set_hparam", Some(name.as_str()), Some(*value), None))
        }
    };
    (a.name(), signal)
}

fn trip_values(f: &Firing) -> Arg<'static> {
    let values: BTreeMap<&str, MetricValue> = f
        .values
        .iter()
        .map(|(k, v)| (k.as_str(), MetricValue(*v)))
        .collect();
    json(&values)
}

type Tx<D> = sqlx::Transaction<'static, D>;

impl<D: Dialect> SqlStore<D> {
    /// Pins the newest versions of the rule sets a new run asked for (default: the presets).
    pub(super) async fn pin_rule_sets(tx: &mut Tx<D>, pk: i64, req: &CreateRun) -> StoreResult<()> {
        let default = [RuleSetName::parse(PRESETS_NAME).expect("the presets' name is valid")];
        let names = req.rules.as_deref().unwrap_or(&default);
        for (i, name) in names.iter().enumerate() {
            let sql = "INSERT INTO run_rule_sets (run_pk, position, rule_set_id) \
                 SELECT $1, $2, id FROM rule_sets WHERE name = $3 ORDER BY version DESC LIMIT 1";
            let position = i32::try_from(i).expect("fewer rule sets than i32::MAX");
            if D::execute(tx, sql, args![pk, position, name.as_str()]).await? == 0
                && req.rules.is_some()
            {
                return Err(StoreError::Invalid {
                    field: format!("rules[{i}]"),
                    message: format!("no rule set named {name} (GET /api/v1/rule-sets lists them)"),
                });
            }
        }
        Ok(())
    }

    /// Writes what the rules concluded about a batch inside its ingest transaction, and moves
    /// the run's last step to `last_step` when the batch stored new points (one statement for
    /// both: this runs on every batch). Returns the number of signals created.
    pub(super) async fn write_rules(
        tx: &mut Tx<D>,
        pk: i64,
        writes: &RuleWrites<'_>,
        last_step: Option<i64>,
    ) -> StoreResult<usize> {
        let Some(ev) = writes else {
            if let Some(step) = last_step {
                let sql = "UPDATE runs SET last_step = CASE WHEN last_step >= $2 THEN last_step \
                     ELSE $2 END, updated_at = $3 WHERE pk = $1";
                D::execute(tx, sql, args![pk, step, Utc::now()]).await?;
            }
            return Ok(0);
        };
        let sql = "UPDATE runs SET rules_step = $2, \
             last_step = CASE WHEN $4 IS NULL OR last_step >= $4 THEN last_step ELSE $4 END, \
             updated_at = CASE WHEN $4 IS NULL THEN updated_at ELSE $5 END \
             WHERE pk = $1 AND rules_step IS NOT DISTINCT FROM $3";
        let args = args![pk, ev.to_step, ev.from_step, last_step, Utc::now()];
        if D::execute(tx, sql, args).await? == 0 {
            return Err(StoreError::RulesMoved);
        }
        let t = Utc::now();
        let mut signals = 0;
        for f in ev.firings {
            let (action, signal) = action_columns(&f.action);
            let sql = "INSERT INTO rule_events (run_pk, rule_set, rule, action, severity, step, \
                 message, trip_values, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (run_pk, rule_set, rule, action, step) DO NOTHING RETURNING id";
            let (rule_set, rule, message) = (&f.rule_set, &f.rule, &f.message);
            let args = args![
                pk,
                rule_set,
                rule,
                action,
                f.severity.as_str(),
                f.step,
                message,
                trip_values(f),
                t
            ];
            let Some((event,)): Option<(i64,)> = D::optional(tx, sql, args).await? else {
                continue;
            };
            if let Some((kind, name, value, keep_step)) = signal {
                let sql = "INSERT INTO signals (run_pk, kind, name, value, keep_step, reason, \
                     source_rule, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
                let source = format!("{rule_set}/{rule}");
                let args = args![pk, kind, name, value, keep_step, message, source, t];
                let (signal,): (i64,) = D::one(tx, sql, args).await?;
                let sql = "UPDATE rule_events SET signal_id = $2 WHERE id = $1";
                D::execute(tx, sql, args![event, signal]).await?;
                signals += 1;
            } else {
                // Each webhook whose minimum severity this firing reaches.
                let reached = Severity::ALL.into_iter().filter(|s| *s <= f.severity);
                let reached: Vec<&str> = reached.map(Severity::as_str).collect();
                let sql = format!(
                    "INSERT INTO webhook_outbox (webhook_id, event_id, message_id, state, \
                     attempts, next_attempt_at, created_at) \
                     SELECT id, $1, $2 || CAST(id AS TEXT), 'pending', 0, $3, $3 FROM webhooks \
                     WHERE min_severity IN ({})",
                    D::elements("$4")
                );
                let args = args![event, format!("msg_{event}_"), t, json(&reached)];
                D::execute(tx, &sql, args).await?;
            }
        }
        Ok(signals)
    }

    /// The claimed message `id` with its webhook, and its alert unless it is a test.
    async fn due(tx: &mut Tx<D>, id: i64) -> StoreResult<Due> {
        let mut due: Due = D::one(tx, DUE_SELECT, args![id]).await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, r.name AS run_name, r.project FROM rule_events e \
             JOIN runs r ON r.pk = e.run_pk \
             WHERE e.id = (SELECT event_id FROM webhook_outbox WHERE id = $1)"
        );
        due.event = D::optional(tx, &sql, args![id]).await?;
        Ok(due)
    }

    /// The run's rule events in id order `order`, the first `limit` of them.
    async fn events(
        &self,
        id: &RunId,
        order: &str,
        limit: Option<u32>,
    ) -> StoreResult<Vec<RuleEvent>> {
        let pk = self.read_run_pk(id).await?;
        let limit = limit.map_or(String::new(), |n| format!(" LIMIT {n}"));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM rule_events e JOIN runs r ON r.pk = e.run_pk \
             WHERE e.run_pk = $1 ORDER BY e.id {order}{limit}"
        );
        Ok(D::all(&mut *self.read().await?, &sql, args![pk]).await?)
    }
}

#[async_trait]
impl<D: Dialect> AlertStore for SqlStore<D> {
    async fn put_rule_set(&self, name: &RuleSetName, source: &str) -> StoreResult<StoredRuleSet> {
        let mut tx = self.writer.begin().await?;
        let sql = format!(
            "SELECT {RULE_SET_COLUMNS} FROM rule_sets WHERE name = $1 ORDER BY version DESC LIMIT 1"
        );
        let newest: Option<StoredRuleSet> =
            D::optional(&mut tx, &sql, args![name.as_str()]).await?;
        let version = match newest {
            Some(row) if row.source == source => return Ok(row),
            Some(row) => row.version + 1,
            None => 1,
        };
        let sql = format!(
            "INSERT INTO rule_sets (name, version, source, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {RULE_SET_COLUMNS}"
        );
        let row = D::one(
            &mut tx,
            &sql,
            args![name.as_str(), version, source, Utc::now()],
        )
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn ensure_rule_set(&self, name: &RuleSetName, source: &str) -> StoreResult<()> {
        let sql = "INSERT INTO rule_sets (name, version, source, created_at) \
             SELECT $1, 1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM rule_sets WHERE name = $1) \
             ON CONFLICT (name, version) DO NOTHING";
        let args = args![name.as_str(), source, Utc::now()];
        D::execute(&mut *self.write().await?, sql, args).await?;
        Ok(())
    }

    async fn rule_sets(&self) -> StoreResult<Vec<StoredRuleSet>> {
        let sql = format!(
            "SELECT {RULE_SET_COLUMNS} FROM rule_sets s WHERE version = \
             (SELECT max(version) FROM rule_sets WHERE name = s.name) ORDER BY name"
        );
        Ok(D::all(&mut *self.read().await?, &sql, args![]).await?)
    }

    async fn rule_set(
        &self,
        name: &RuleSetName,
        version: Option<i32>,
    ) -> StoreResult<StoredRuleSet> {
        let sql = format!(
            "SELECT {RULE_SET_COLUMNS} FROM rule_sets WHERE name = $1 \
             AND ($2 IS NULL OR version = $2) ORDER BY version DESC LIMIT 1"
        );
        let row: Option<StoredRuleSet> = D::optional(
            &mut *self.read().await?,
            &sql,
            args![name.as_str(), version],
        )
        .await?;
        row.ok_or_else(|| {
            StoreError::RuleSetNotFound(match version {
                Some(v) => format!("{name} version {v}"),
                None => name.to_string(),
            })
        })
    }

    async fn run_rules(&self, id: &RunId) -> StoreResult<RunRules> {
        let sql = "SELECT pk, rules_step, last_step FROM runs WHERE run_id = $1";
        let run: Option<(i64, Option<i64>, Option<i64>)> =
            D::optional(&mut *self.read().await?, sql, args![id.as_str()]).await?;
        let (pk, rules_step, last_step) = run.ok_or_else(|| StoreError::RunNotFound(id.clone()))?;
        let sql = "SELECT s.name, s.version, s.source, s.created_at FROM run_rule_sets p \
             JOIN rule_sets s ON s.id = p.rule_set_id WHERE p.run_pk = $1 ORDER BY p.position";
        Ok(RunRules {
            sets: D::all(&mut *self.read().await?, sql, args![pk]).await?,
            rules_step,
            last_step,
        })
    }

    async fn rule_events(&self, id: &RunId) -> StoreResult<Vec<RuleEvent>> {
        self.events(id, "ASC", None).await
    }

    async fn rule_event_count(&self, id: &RunId) -> StoreResult<i64> {
        let pk = self.read_run_pk(id).await?;
        let sql = "SELECT COUNT(*) FROM rule_events WHERE run_pk = $1";
        let (total,): (i64,) = D::one(&mut *self.read().await?, sql, args![pk]).await?;
        Ok(total)
    }

    async fn newest_rule_events(&self, id: &RunId, limit: u32) -> StoreResult<Vec<RuleEvent>> {
        self.events(id, "DESC", Some(limit)).await
    }

    async fn create_webhook(&self, w: &NewWebhook, secret: &str) -> StoreResult<Webhook> {
        let sql = format!(
            "INSERT INTO webhooks (name, url, format, secret, min_severity, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING \
             RETURNING {WEBHOOK_COLUMNS}"
        );
        let severity = w.min_severity.unwrap_or(Severity::Info).as_str();
        let args = args![
            w.name.as_str(),
            w.url.trim(),
            w.format.as_str(),
            secret,
            severity,
            Utc::now()
        ];
        let created: Option<Webhook> = D::optional(&mut *self.write().await?, &sql, args).await?;
        let Some(created) = created else {
            let name = &w.name;
            let message = format!("a webhook named {name} exists; delete it first to replace it");
            return Err(StoreError::Conflict(message));
        };
        // Shown once, in the answer that created it.
        let secret = Some(WebhookSecret(secret.to_owned()));
        Ok(Webhook { secret, ..created })
    }

    async fn webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY name");
        Ok(D::all(&mut *self.read().await?, &sql, args![]).await?)
    }

    async fn delete_webhook(&self, name: &WebhookName) -> StoreResult<()> {
        let sql = "DELETE FROM webhooks WHERE name = $1";
        let missing = StoreError::WebhookNotFound(name.to_string());
        self.change(sql, args![name.as_str()], missing).await
    }

    async fn deliveries(
        &self,
        name: &WebhookName,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        let sql = "SELECT id FROM webhooks WHERE name = $1";
        let found: Option<(i64,)> =
            D::optional(&mut *self.read().await?, sql, args![name.as_str()]).await?;
        found.ok_or_else(|| StoreError::WebhookNotFound(name.to_string()))?;
        let sql = "SELECT o.message_id, o.event_id, a.attempt, a.started_at, a.status, \
             a.latency_ms, a.error, a.outcome FROM webhook_attempts a \
             JOIN webhook_outbox o ON o.id = a.outbox_id JOIN webhooks w ON w.id = o.webhook_id \
             WHERE w.name = $1 ORDER BY a.id DESC LIMIT $2";
        let args = args![name.as_str(), i64::from(limit)];
        let rows: Vec<AttemptRow> = D::all(&mut *self.read().await?, sql, args).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Due>> {
        let mut tx = self.writer.begin().await?;
        let args = args![now, lease_until, i64::from(limit)];
        let ids: Vec<(i64,)> = D::all(&mut tx, D::CLAIM, args).await?;
        let mut due = Vec::with_capacity(ids.len());
        for (id,) in ids {
            due.push(Self::due(&mut tx, id).await?);
        }
        tx.commit().await?;
        Ok(due)
    }

    async fn record_attempt(&self, due: &Due, a: &AttemptRecord) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        let (state, next_at, finished) = match a.next {
            NextStep::Delivered => ("delivered", a.started_at, Some(Utc::now())),
            NextStep::GiveUp => ("failed", a.started_at, Some(Utc::now())),
            NextStep::RetryAt(at) => ("pending", at, None),
        };
        let sql = "UPDATE webhook_outbox SET state = $2, attempts = attempts + 1, \
             next_attempt_at = $3, finished_at = $4 WHERE id = $1";
        // The message went while it was being sent (its run or webhook was deleted): there is
        // nothing left to log the attempt against.
        if D::execute(&mut tx, sql, args![due.outbox_id, state, next_at, finished]).await? == 0 {
            return Ok(());
        }
        let sql = "INSERT INTO webhook_attempts (outbox_id, attempt, started_at, status, \
             latency_ms, error, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let status = a.status.map(i32::from);
        let args = args![
            due.outbox_id,
            due.attempts + 1,
            a.started_at,
            status,
            a.latency_ms,
            a.error.as_deref(),
            a.next.outcome()
        ];
        D::execute(&mut tx, sql, args).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let sql = "SELECT next_attempt_at FROM webhook_outbox WHERE state = 'pending' \
             ORDER BY next_attempt_at LIMIT 1";
        let next: Option<(DateTime<Utc>,)> =
            D::optional(&mut *self.read().await?, sql, args![]).await?;
        Ok(next.map(|(t,)| t))
    }

    async fn enqueue_test(
        &self,
        name: &WebhookName,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Due> {
        let mut tx = self.writer.begin().await?;
        let message_id = format!("msg_test_{:016x}", rand::random::<u64>());
        let sql = "INSERT INTO webhook_outbox (webhook_id, event_id, message_id, state, attempts, \
             next_attempt_at, created_at) SELECT id, NULL, $2, 'pending', 0, $3, $4 \
             FROM webhooks WHERE name = $1 RETURNING id";
        let args = args![name.as_str(), message_id, lease_until, Utc::now()];
        let id: Option<(i64,)> = D::optional(&mut tx, sql, args).await?;
        let (id,) = id.ok_or_else(|| StoreError::WebhookNotFound(name.to_string()))?;
        let due = Self::due(&mut tx, id).await?;
        tx.commit().await?;
        Ok(due)
    }
}
