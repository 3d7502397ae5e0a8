//! Row shapes shared by both stores: the column types decode from SQLite and PostgreSQL alike.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redline_core::RunId;
use redline_core::wire::{MetricSummary, Run, RunStatus, Signal, SignalKind};

use super::RunDetails;
use sqlx::types::Json;

use super::{StoreError, StoreResult};

pub const RUN_COLUMNS: &str = "run_id, name, project, tags, config, status, status_reason, \
    created_at, updated_at, finished_at, last_step";

#[derive(Debug, sqlx::FromRow)]
pub struct RunRow {
    run_id: String,
    name: String,
    project: String,
    tags: Json<Vec<String>>,
    config: Json<serde_json::Value>,
    status: String,
    status_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    last_step: Option<i64>,
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;
    fn try_from(r: RunRow) -> StoreResult<Self> {
        Ok(Run {
            id: RunId::parse(r.run_id).map_err(|e| StoreError::Corrupt(format!("run id {e}")))?,
            name: r.name,
            project: r.project,
            tags: r.tags.0,
            config: r.config.0,
            status: RunStatus::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("run status {:?}", r.status)))?,
            status_reason: r.status_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            last_step: r.last_step,
        })
    }
}

pub fn runs(rows: Vec<RunRow>) -> StoreResult<Vec<Run>> {
    rows.into_iter().map(Run::try_from).collect()
}

pub const SIGNAL_COLUMNS: &str = "id, kind, name, value, keep_step, reason, source_rule, created_at, acked_at, applied_step, \
     refused";

#[derive(Debug, sqlx::FromRow)]
pub struct SignalRow {
    id: i64,
    kind: String,
    name: Option<String>,
    value: Option<f64>,
    keep_step: Option<i64>,
    reason: String,
    source_rule: Option<String>,
    created_at: DateTime<Utc>,
    acked_at: Option<DateTime<Utc>>,
    applied_step: Option<i64>,
    refused: Option<String>,
}

impl SignalRow {
    pub fn into_signal(self, run: &RunId) -> StoreResult<Signal> {
        Ok(Signal {
            id: self.id,
            run_id: run.clone(),
            kind: SignalKind::parse(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("signal kind {:?}", self.kind)))?,
            name: self.name,
            value: self.value,
            keep_step: self.keep_step,
            reason: self.reason,
            source_rule: self.source_rule,
            created_at: self.created_at,
            acked_at: self.acked_at,
            applied_step: self.applied_step,
            refused: self.refused,
        })
    }
}

pub fn signals(rows: Vec<SignalRow>, run: &RunId) -> StoreResult<Vec<Signal>> {
    rows.into_iter().map(|r| r.into_signal(run)).collect()
}

#[derive(Debug, sqlx::FromRow)]
pub struct MetricRow {
    name: String,
    points: i64,
    last_step: i64,
    last_value_bits: i64,
}

impl From<MetricRow> for MetricSummary {
    fn from(r: MetricRow) -> Self {
        MetricSummary {
            name: r.name,
            points: r.points as u64,
            last_step: r.last_step,
            last_value: f64::from_bits(r.last_value_bits as u64),
        }
    }
}

/// The (run state, request) cases of finishing a run, decided the same way by both stores.
pub fn check_finish(run: &Run, wanted: RunStatus) -> StoreResult<bool> {
    match run.status {
        RunStatus::Running => Ok(true),
        s if s == wanted => Ok(false),
        s => Err(StoreError::Conflict(format!(
            "run {} already finished as {}; it cannot now be {}",
            run.id,
            s.as_str(),
            wanted.as_str()
        ))),
    }
}

/// The (signal state, request) cases of acknowledging, decided the same way by both stores:
/// repeating the same answer is a no-op, a different one is a conflict.
pub fn check_ack(signal: &Signal, step: i64, refused: Option<&str>) -> StoreResult<()> {
    let Some(s) = signal.applied_step else {
        return Ok(());
    };
    let answered = if signal.refused.is_some() {
        "refused"
    } else {
        "applied"
    };
    if s != step || signal.refused.as_deref() != refused {
        return Err(StoreError::Conflict(format!(
            "signal {} was already answered ({answered}) at step {s}",
            signal.id
        )));
    }
    Ok(())
}

/// Resuming under another project means the client picked an id another run already has.
pub fn check_resume(run: &Run, project: &str) -> StoreResult<()> {
    if run.project == project {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "run {} exists in project {:?}, not {project:?}: choose another run id",
            run.id, run.project
        )))
    }
}

/// Signals steer a live run; a finished run has no trainer left to obey them.
pub fn check_signal_target(run: &Run) -> StoreResult<()> {
    if run.status == RunStatus::Running {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "run {} is {}: signals can only be sent to a running run",
            run.id,
            run.status.as_str()
        )))
    }
}

pub fn check_token_created(rows_affected: u64, name: &str) -> StoreResult<()> {
    if rows_affected == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "a token named {name:?} already exists: revoke it or pick another name"
        )))
    }
}

/// A series summary of one of several runs.
#[derive(Debug, sqlx::FromRow)]
pub struct RunMetricRow {
    run_id: String,
    #[sqlx(flatten)]
    metric: MetricRow,
}

/// A signal of one of several runs.
#[derive(Debug, sqlx::FromRow)]
pub struct RunSignalRow {
    run_id: String,
    #[sqlx(flatten)]
    signal: SignalRow,
}

/// Each of `ids`' series and signals, in the order of `ids`, from the rows of all of them.
pub fn details(
    ids: &[RunId],
    metrics: Vec<RunMetricRow>,
    signals: Vec<RunSignalRow>,
) -> StoreResult<Vec<RunDetails>> {
    let mut by_run: HashMap<&str, (&RunId, RunDetails)> = ids
        .iter()
        .map(|id| (id.as_str(), (id, RunDetails::default())))
        .collect();
    for r in metrics {
        if let Some((_, d)) = by_run.get_mut(r.run_id.as_str()) {
            d.metrics.push(r.metric.into());
        }
    }
    for r in signals {
        if let Some((id, d)) = by_run.get_mut(r.run_id.as_str()) {
            d.signals.push(r.signal.into_signal(id)?);
        }
    }
    Ok(ids
        .iter()
        .map(|id| {
            by_run
                .remove(id.as_str())
                .map(|(_, d)| d)
                .unwrap_or_default()
        })
        .collect())
}
