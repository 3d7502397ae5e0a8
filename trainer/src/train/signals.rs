//! What the trainer does with the server's signals at a step boundary, and how a run ends.

use redline_core::hparams::Steerable;
use redline_core::wire::{FinalStatus, Signal, SignalKind};

use super::Outcome;
use super::prepare::Run;
use crate::config::Objective;
use crate::error::Result;
use crate::reporter::Reporter;

impl Run<'_> {
    /// Applies a signal at the boundary before `next_step`; returns the stop reason for a stop.
    pub(super) fn apply(
        &mut self,
        s: &Signal,
        next_step: usize,
        reporter: &Reporter,
    ) -> Result<Option<String>> {
        let done = next_step - 1;
        match s.kind {
            SignalKind::SetHparam => {
                let name = s.name.as_deref().unwrap_or_default();
                match steer(s, self.cfg.objective) {
                    Ok((h, value)) => {
                        match h {
                            Steerable::Beta => self.settings.beta = value,
                            Steerable::NllAlpha => self.settings.nll_alpha = value,
                            Steerable::LrScale => self.lr_scale = value,
                        }
                        tracing::info!(
                            run = %self.cfg.run_id,
                            signal = s.id,
                            step = next_step,
                            hparam = %h,
                            value,
                            reason = %s.reason,
                            "hyperparameter set"
                        );
                        reporter.ack(s.id, next_step);
                    }
                    Err(why) => {
                        tracing::warn!(
                            run = %self.cfg.run_id,
                            signal = s.id,
                            step = next_step,
                            hparam = name,
                            why = %why,
                            "signal refused"
                        );
                        reporter.refuse(s.id, next_step, &why);
                    }
                }
                Ok(None)
            }
            SignalKind::Checkpoint => {
                let dir = self
                    .checkpoints
                    .save(&self.varmap, &self.opt, &self.state(done))?;
                tracing::info!(
                    run = %self.cfg.run_id,
                    signal = s.id,
                    step = done,
                    dir = %dir.display(),
                    reason = %s.reason,
                    "checkpoint written"
                );
                reporter.ack(s.id, done);
                Ok(None)
            }
            SignalKind::Stop => {
                reporter.ack(s.id, done);
                Ok(Some(format!("stop signal {}: {}", s.id, s.reason)))
            }
        }
    }

    /// Writes the final checkpoint and says how the run ended.
    pub(super) fn conclude(
        &self,
        stopped: Option<(usize, String, Option<i64>)>,
        total: usize,
    ) -> Result<Outcome> {
        let Some((last, reason, keep)) = stopped else {
            self.checkpoints
                .save(&self.varmap, &self.opt, &self.state(total))?;
            return Ok(Outcome {
                status: FinalStatus::Completed,
                last_step: total,
                message: format!("completed {total} steps"),
                delivery: None,
            });
        };
        self.checkpoints
            .save(&self.varmap, &self.opt, &self.state(last))?;
        let kept = match keep {
            Some(k) => self.checkpoints.mark_best(k as usize)?,
            None => None,
        };
        let best = match (keep, kept) {
            (Some(k), Some(b)) => {
                format!("; checkpoint of step {b} kept as best (asked for step {k})")
            }
            (Some(k), None) => {
                format!("; no checkpoint at or before step {k}: the starting model is the best")
            }
            (None, _) => String::new(),
        };
        Ok(Outcome {
            status: FinalStatus::Stopped,
            last_step: last,
            message: format!("stopped after step {last}: {reason}{best}"),
            delivery: None,
        })
    }
}

/// What a `set_hparam` signal sets, or why this run cannot apply it. The server refuses names
/// and values outside [`Steerable`] already; this also guards against an older server, and knows
/// what only the trainer knows: which settings the run's objective uses.
pub(super) fn steer(
    s: &Signal,
    objective: Objective,
) -> std::result::Result<(Steerable, f64), String> {
    let h = Steerable::parse(s.name.as_deref().unwrap_or_default())?;
    let value = h.check(s.value.ok_or_else(|| format!("no value given for {h}"))?)?;
    if matches!(objective, Objective::Cut(_)) && h != Steerable::LrScale {
        return Err(format!(
            "{h} does not apply to a CUT run: its loss has no {h}; only lr_scale steers it"
        ));
    }
    Ok((h, value))
}
