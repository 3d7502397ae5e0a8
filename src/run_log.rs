//! A run's local log (`metrics.jsonl`, written by the trainer's reporter), read back.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use redline_core::MetricValue;

/// One run's log: every step's metrics, in step order.
#[derive(Debug, Clone, Default)]
pub struct RunLog {
    pub steps: Vec<(i64, BTreeMap<String, f64>)>,
}

impl RunLog {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut steps = Vec::new();
        for (i, line) in text.lines().enumerate() {
            #[derive(serde::Deserialize)]
            struct Row {
                step: i64,
                metrics: BTreeMap<String, MetricValue>,
            }
            let row: Row = serde_json::from_str(line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?;
            // Non-finite values are spelled "NaN", "Infinity": the wire's own format.
            let metrics = row.metrics.into_iter().map(|(k, v)| (k, v.0)).collect();
            steps.push((row.step, metrics));
        }
        Ok(Self { steps })
    }

    /// `(step, value)` of a metric, where reported.
    pub fn series(&self, name: &str) -> Vec<(i64, f64)> {
        self.steps
            .iter()
            .filter_map(|(s, m)| m.get(name).map(|v| (*s, *v)))
            .collect()
    }
}
