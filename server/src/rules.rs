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

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::store::alerts::Evaluated;
use crate::store::{PendingRules, RuleWrites, SeriesRange, Store, StoreError, StoreResult};

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
        batch: Arc<PointBatch>,
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
                let result = store.ingest(id, &batch, &RuleWrites::None).await?;
                return Ok(Ingested {
                    result,
                    firings: Vec::new(),
                });
            };
            let evaluation = Evaluation::start(evaluator.clone(), state.rules_step, &batch);
            match store.ingest(id, &batch, &evaluation).await {
                Ok(result) => {
                    let (next, firings) = evaluation.finish().await;
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

/// Batches with at least this many points are evaluated on the blocking pool, beside the store's
/// work; smaller ones inline, where a thread hand-off would cost more than it saves.
const EVALUATE_BESIDE_POINTS: usize = 5_000;

/// The run's rule state after a batch, and what fired in it.
type Outcome = (Evaluator, Vec<Firing>);

/// One batch's evaluation, from a copy of the run's evaluator: the state after the batch and
/// what fired. The store waits for it where it writes the rules' part ([`PendingRules`]).
struct Evaluation {
    from_step: Option<i64>,
    running: Mutex<Option<JoinHandle<Outcome>>>,
    done: OnceCell<Outcome>,
}

impl Evaluation {
    fn start(mut evaluator: Evaluator, from_step: Option<i64>, batch: &Arc<PointBatch>) -> Self {
        let (running, done) = if batch.len() >= EVALUATE_BESIDE_POINTS {
            let batch = Arc::clone(batch);
            let task = tokio::task::spawn_blocking(move || {
                let firings = evaluate(&mut evaluator, &batch);
                (evaluator, firings)
            });
            (Some(task), OnceCell::new())
        } else {
            let firings = evaluate(&mut evaluator, batch);
            (None, OnceCell::new_with(Some((evaluator, firings))))
        };
        Self {
            from_step,
            running: Mutex::new(running),
            done,
        }
    }

    async fn result(&self) -> &Outcome {
        self.done
            .get_or_init(|| async {
                let task = self
                    .running
                    .lock()
                    .expect("evaluation lock")
                    .take()
                    .expect("a running evaluation until it is done");
                joined(task.await)
            })
            .await
    }

    async fn finish(self) -> Outcome {
        self.result().await;
        self.done.into_inner().expect("result() completed it")
    }
}

/// The evaluator never blocks or is cancelled: a failure to join is its panic, passed on.
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[async_trait]
impl PendingRules for Evaluation {
    async fn writes(&self) -> StoreResult<RuleWrites<'_>> {
        let (evaluator, firings) = self.result().await;
        Ok(Some(Evaluated {
            from_step: self.from_step,
            to_step: evaluator.last_step().or(self.from_step),
            firings,
        }))
    }
}

/// Feeds the batch's steps past the evaluator's last step, in step order: a merge over the
/// watched series (each sorted by step) into one reused slot per metric, so the per-step work
/// does no allocation and no name lookup.
fn evaluate(evaluator: &mut Evaluator, batch: &PointBatch) -> Vec<Firing> {
    let after = evaluator.last_step().unwrap_or(i64::MIN);
    let series: Vec<(usize, &[(i64, f64)])> = evaluator
        .metrics()
        .iter()
        .enumerate()
        .filter_map(|(slot, name)| Some((slot, batch.series.get(name.as_str())?)))
        .map(|(slot, points)| {
            let first = points.partition_point(|p| p.0 <= after);
            (slot, &points[first..])
        })
        .collect();
    let mut values = vec![None; evaluator.metrics().len()];
    let mut cursor = vec![0usize; series.len()];
    let mut firings = Vec::new();
    loop {
        let next = series
            .iter()
            .zip(&cursor)
            .filter_map(|((_, points), &c)| points.get(c).map(|p| p.0))
            .min();
        let Some(step) = next else { break };
        for ((slot, points), c) in series.iter().zip(cursor.iter_mut()) {
            values[*slot] = match points.get(*c) {
                Some(&(s, v)) if s == step => {
                    *c += 1;
                    Some(v)
                }
                _ => None,
            };
        }
        firings.extend(evaluator.observe_slots(step, &values));
    }
    // A step that reports none of the watched metrics still moves the rules' step on.
    if let Some(last) = batch
        .max_step()
        .filter(|&s| s > evaluator.last_step().unwrap_or(after))
    {
        values.fill(None);
        firings.extend(evaluator.observe_slots(last, &values));
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
    for (slot, name) in names.iter().enumerate() {
        let Some(summary) = stored.iter().find(|m| &m.name == name) else {
            continue;
        };
        let metric = redline_core::MetricName::parse(summary.name.clone())
            .map_err(|e| StoreError::Corrupt(format!("stored metric name: {e}")))?;
        let range = SeriesRange::new(id, &metric, 0..=to);
        for (step, value) in store.read_series(&range, usize::MAX).await? {
            steps.entry(step).or_default().push((slot, value));
        }
    }
    let mut values = vec![None; names.len()];
    for (step, reported) in steps {
        values.fill(None);
        for (slot, v) in reported {
            values[slot] = Some(v);
        }
        // Already acted on when these steps arrived.
        let _ = evaluator.observe_slots(step, &values);
    }
    Ok(())
}
