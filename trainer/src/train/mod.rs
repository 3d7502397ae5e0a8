//! The training loop: data order, gradient accumulation, the optimizer step, signals applied at
//! step boundaries, evaluation, checkpoints and exact resume, and reporting. Each concern has its
//! module: `prepare` (loading), `steps` (one step, an evaluation), `signals` (steering, the end),
//! `checkpoint` and `progress`.

mod checkpoint;
mod prepare;
mod progress;
mod signals;
mod steps;
#[cfg(test)]
mod tests;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redline_core::wire::{CreateRun, FinalStatus, FinishRun};

pub use checkpoint::Checkpoints;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::reporter::{Delivery, Reporter, RunRecord, ServerTarget};
use prepare::prepare;
use progress::Progress;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: FinalStatus,
    pub last_step: usize,
    pub message: String,
    /// What reached the server; `None` for an offline run.
    pub delivery: Option<Delivery>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a server is told about the run when it is created or resumed.
fn run_record(cfg: &TrainConfig) -> Result<RunRecord> {
    let create = CreateRun {
        name: Some(cfg.run_name.clone()),
        project: Some(cfg.project.clone()),
        tags: cfg.tags.clone(),
        config: Some(cfg.to_json()?),
        rules: cfg.rules.clone(),
    };
    Ok(RunRecord {
        run_id: cfg.run_id.clone(),
        server: cfg.server.clone(),
        create,
        ended: None,
    })
}

fn server_target(cfg: &TrainConfig, record: &RunRecord) -> Option<ServerTarget> {
    cfg.server.as_ref().map(|url| ServerTarget {
        url: url.clone(),
        token: cfg.token.clone(),
        run_id: cfg.run_id.clone(),
        run: record.create.clone(),
        finish_grace: cfg.finish_grace,
    })
}

/// Trains as configured; see [`Outcome`] for how it ended.
pub fn train(cfg: &TrainConfig) -> Result<Outcome> {
    let mut record = run_record(cfg)?;
    let (mut run, total) = prepare(cfg)?;
    let first = run.resume()?;
    // Before the first step: a refused token or run is found out now, not after the training it
    // would have lost.
    let mut reporter =
        Reporter::start(&cfg.output_dir, server_target(cfg, &record)).map_err(|e| match e {
            TrainError::Refused(why) => TrainError::Refused(format!("{why}; nothing was trained")),
            other => other,
        })?;
    record.write(&cfg.output_dir)?;
    if cfg.precompute_ref {
        let started = Instant::now();
        run.precompute_reference()?;
        tracing::info!(
            run = %cfg.run_id,
            pairs = run.pairs.len(),
            seconds = started.elapsed().as_secs_f64(),
            "reference log-probs precomputed"
        );
    }
    let mut progress = Progress::new(total, first);
    let mut outcome = None;
    if first == 1 && cfg.eval_on_start && cfg.eval_every > 0 && run.has_eval() {
        // Step 0 is the starting model: no training metrics, only its evaluation.
        let device = run.device.clone();
        let metrics = device.with_context(|| run.evaluate(0))?;
        reporter.record(0, unix_now(), &metrics)?;
    }
    for step in first..=total {
        for s in reporter.take_signals() {
            if let Some(reason) = run.apply(&s, step, &reporter)? {
                outcome = Some((step - 1, reason, s.keep_step));
            }
        }
        if outcome.is_some() {
            break;
        }
        // Inside candle's CPU thread pool a step's parallel sections (matrix products, the fused
        // kernels) start on the calling pool thread instead of waking a worker and blocking on it.
        let device = run.device.clone();
        let mut metrics = device.with_context(|| run.train_step(step, total))?;
        if cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every) && run.has_eval() {
            metrics.extend(device.with_context(|| run.evaluate(step))?);
        }
        reporter.record(step, unix_now(), &metrics)?;
        progress.show(step, &metrics);
        if cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) {
            run.checkpoints
                .save(&run.varmap, &run.opt, &run.state(step))?;
        }
    }
    progress.done();
    let mut result = run.conclude(outcome, total)?;
    // Recorded before the sender tries, so `redline push` can finish the run if it cannot.
    let end = FinishRun {
        status: result.status,
        reason: Some(result.message.clone()),
    };
    record.ended = Some(end.clone());
    record.write(&cfg.output_dir)?;
    result.delivery = reporter.finish(end);
    Ok(result)
}

/// What a delivery that stopped short left behind, and how to send it, for people; `None` when
/// everything reached the server, or the run was offline.
pub fn leftover(cfg: &TrainConfig, outcome: &Outcome) -> Option<String> {
    let delivery = outcome.delivery.as_ref()?;
    crate::reporter::leftover(
        delivery,
        cfg.server.as_deref()?,
        &cfg.output_dir,
        &cfg.run_id,
    )
}
