//! Runs each run's rules on its steps as they arrive, on raw values, before the batch is stored:
//! what the rules conclude (rule events, signals, queued alerts) is written in the batch's own
//! ingest transaction, so the answer to the request that carried the tripping step already
//! carries the signal, and a failed batch leaves no half of a firing behind.
//!
//! Rule state lives in memory, one entry per run, and is rebuilt from the stored series when
//! missing (a restart) or stale (another server sharing the database evaluated the run since:
//! the stored `rules_step` says so, and the ingest is retried once on fresh state).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use redline_core::RunId;
use redline_core::rules::{Action, Evaluator, Firing, RuleSet};
use redline_core::wire::{IngestResult, PointBatch};

use crate::store::alerts::Evaluated;
use crate::store::{RuleWrites, Store, StoreError, StoreResult};

/// Where one run's rules stand.
#[derive(Debug)]
struct RunState {
    /// `None` when the run has no rules.
    evaluator: Option<Evaluator>,
    /// The stored `rules_step` this state agrees with.
    rules_step: Option<i64>,
}

#[derive(Debug, Default)]
pub struct RuleRunner {
    runs: Mutex<HashMap<RunId, Arc<tokio::sync::Mutex<Option<RunState>>>>>,
}

/// An ingest's answer and what the rules did with its steps.
#[derive(Debug)]
pub struct Ingested {
    pub result: IngestResult,
    pub firings: Vec<Firing>,
}

impl Ingested {
    pub fn alerts(&self) -> usize {
        self.firings
            .iter()
            .filter(|f| f.action == Action::Alert)
            .count()
    }
}

impl RuleRunner {
    /// Evaluates the run's rules on the batch's new steps and stores both in one transaction.
    /// Ingest into one run is serialised here, as the store's row lock would serialise it anyway.
    pub async fn ingest(
        &self,
        store: &dyn Store,
        id: &RunId,
        batch: &PointBatch,
    ) -> StoreResult<Ingested> {
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let mut retried = false;
        loop {
            if guard.is_none() {
                *guard = Some(load(store, id).await?);
            }
            let state = guard.as_mut().expect("loaded above");
            let Some(evaluator) = &state.evaluator else {
                let result = store.ingest(id, batch, &RuleWrites::default()).await?;
                return Ok(Ingested {
                    result,
                    firings: Vec::new(),
                });
            };
            let mut next = evaluator.clone();
            let firings = evaluate(&mut next, batch);
            let writes = RuleWrites {
                evaluated: Some(Evaluated {
                    from_step: state.rules_step,
                    to_step: next.last_step().or(state.rules_step),
                    firings: &firings,
                }),
            };
            match store.ingest(id, batch, &writes).await {
                Ok(result) => {
                    state.rules_step = next.last_step().or(state.rules_step);
                    state.evaluator = Some(next);
                    return Ok(Ingested { result, firings });
                }
                Err(StoreError::RulesMoved) if !retried => {
                    tracing::info!(run = %id, "rule state was stale; reloading it");
                    *guard = None;
                    retried = true;
                }
                // The old state stays: nothing of this batch was stored.
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops a run's state (it finished); it is rebuilt if the run resumes.
    pub fn forget(&self, id: &RunId) {
        self.runs.lock().expect("rule runner lock").remove(id);
    }

    fn slot(&self, id: &RunId) -> Arc<tokio::sync::Mutex<Option<RunState>>> {
        let mut runs = self.runs.lock().expect("rule runner lock");
        runs.entry(id.clone()).or_default().clone()
    }
}

/// Feeds the batch's steps past the evaluator's last step, in step order: a merge over the
/// watched series (each sorted by step), without allocating per step.
fn evaluate(evaluator: &mut Evaluator, batch: &PointBatch) -> Vec<Firing> {
    let after = evaluator.last_step().unwrap_or(i64::MIN);
    let series: Vec<(&str, &[(i64, f64)])> = evaluator
        .metrics()
        .iter()
        .filter_map(|name| batch.series.get_key_value(name.as_str()))
        .map(|(name, points)| {
            let first = points.partition_point(|p| p.0 <= after);
            (name.as_str(), &points[first..])
        })
        .collect();
    let mut cursor = vec![0usize; series.len()];
    let mut firings = Vec::new();
    loop {
        let next = series
            .iter()
            .zip(&cursor)
            .filter_map(|((_, points), &c)| points.get(c).map(|p| p.0))
            .min();
        let Some(step) = next else { break };
        let lookup = |name: &str| {
            series
                .iter()
                .zip(&cursor)
                .find(|((n, _), _)| *n == name)
                .and_then(|((_, points), &c)| points.get(c))
                .filter(|p| p.0 == step)
                .map(|p| p.1)
        };
        firings.extend(evaluator.observe(step, &lookup));
        for ((_, points), c) in series.iter().zip(cursor.iter_mut()) {
            if points.get(*c).is_some_and(|p| p.0 == step) {
                *c += 1;
            }
        }
    }
    // A step that reports none of the watched metrics still moves the rules' step on.
    if let Some(last) = batch
        .max_step()
        .filter(|&s| s > evaluator.last_step().unwrap_or(after))
    {
        firings.extend(evaluator.observe(last, &|_| None));
    }
    firings
}

/// Builds a run's rule state: its pinned rule sets, fed silently with every stored step the
/// rules have already seen, so nothing fires twice.
async fn load(store: &dyn Store, id: &RunId) -> StoreResult<RunState> {
    let run = store.run_rules(id).await?;
    if run.sets.is_empty() {
        return Ok(RunState {
            evaluator: None,
            rules_step: run.rules_step,
        });
    }
    let mut sets = Vec::with_capacity(run.sets.len());
    for s in &run.sets {
        let parsed = RuleSet::parse(&s.source).map_err(|e| {
            StoreError::Corrupt(format!(
                "rule set {} v{} does not parse: {e}",
                s.name, s.version
            ))
        })?;
        sets.push((s.name.clone(), parsed));
    }
    let mut evaluator = Evaluator::new(&sets);
    // Steps stored before rules existed for the run (an older server) count as seen.
    if let Some(seen) = run.rules_step.or(run.last_step) {
        replay(store, id, &mut evaluator, seen).await?;
    }
    Ok(RunState {
        evaluator: Some(evaluator),
        rules_step: run.rules_step,
    })
}

async fn replay(
    store: &dyn Store,
    id: &RunId,
    evaluator: &mut Evaluator,
    to: i64,
) -> StoreResult<()> {
    let stored = store.metrics(id).await?;
    let mut steps: BTreeMap<i64, Vec<(usize, f64)>> = BTreeMap::new();
    let names: Vec<String> = evaluator.metrics().iter().cloned().collect();
    for (i, name) in names.iter().enumerate() {
        let Some(summary) = stored.iter().find(|m| &m.name == name) else {
            continue;
        };
        let metric = redline_core::MetricName::parse(summary.name.clone())
            .map_err(|e| StoreError::Corrupt(format!("stored metric name: {e}")))?;
        for (step, value) in store.read_series(id, &metric, 0, to, usize::MAX).await? {
            steps.entry(step).or_default().push((i, value));
        }
    }
    for (step, values) in steps {
        let lookup = |name: &str| values.iter().find(|v| names[v.0] == name).map(|v| v.1);
        // Already acted on when these steps arrived.
        let _ = evaluator.observe(step, &lookup);
    }
    Ok(())
}
