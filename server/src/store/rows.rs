//! Column lists, and the row shapes that do not decode straight into a wire type.

use std::collections::HashMap;

use redline_core::RunId;
use redline_core::wire::{MetricSummary, Signal};

use super::RunDetails;

/// The columns of [`redline_core::wire::Run`], which decodes from them.
pub const RUN_COLUMNS: &str = "run_id, name, project, tags, config, status, status_reason, \
    created_at, updated_at, finished_at, last_step";

/// The columns of [`Signal`], which decodes from them; its run id is looked up.
pub const SIGNAL_COLUMNS: &str = "id, (SELECT run_id FROM runs WHERE pk = run_pk) AS run_id, \
    kind, name, value, keep_step, reason, source_rule, created_at, acked_at, applied_step, refused";

/// A series summary: stored as bits, so that NaN and the infinities survive both backends.
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

/// A series summary of one of several runs.
#[derive(Debug, sqlx::FromRow)]
pub struct RunMetricRow {
    run_id: String,
    #[sqlx(flatten)]
    metric: MetricRow,
}

/// Each of `ids`' series and signals, in the order of `ids`, from the rows of all of them.
pub fn details(ids: &[RunId], metrics: Vec<RunMetricRow>, signals: Vec<Signal>) -> Vec<RunDetails> {
    let mut by_run: HashMap<&str, RunDetails> = ids
        .iter()
        .map(|id| (id.as_str(), RunDetails::default()))
        .collect();
    for r in metrics {
        if let Some(d) = by_run.get_mut(r.run_id.as_str()) {
            d.metrics.push(r.metric.into());
        }
    }
    for s in signals {
        if let Some(d) = by_run.get_mut(s.run_id.as_str()) {
            d.signals.push(s);
        }
    }
    ids.iter()
        .map(|id| by_run.remove(id.as_str()).unwrap_or_default())
        .collect()
}
