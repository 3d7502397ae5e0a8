//! What one finished run says about stopping: its held-out score curve, where the presets would
//! have stopped it (replayed on its full log with the same evaluator the server runs), and the
//! two baselines: the final checkpoint, and early stopping on eval loss with patience (Hugging
//! Face's `EarlyStoppingCallback` with `load_best_model_at_end`).

use redline_core::rules::{Action, Evaluator, presets};

use crate::run_log::RunLog;

/// A run over-optimises when its final score is at least this far below its peak (thirteen of the
/// 256 held-out problems the study scores by default).
pub const OVER_OPTIMISED: f64 = 0.05;
/// The study's target: the kept checkpoint within this of the peak.
pub const CLOSE_TO_PEAK: f64 = 0.02;

/// Where a stop happened and what it kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    /// The step whose metrics tripped the rule (the trainer stops at the next step boundary).
    pub step: i64,
    /// The checkpoint kept: the newest evaluated step at or before the step the rule named; 0 is
    /// the starting model.
    pub kept_step: i64,
    pub kept_score: f64,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub peak_step: i64,
    pub peak: f64,
    pub final_score: f64,
    pub over_optimised: bool,
    /// The presets' first stop, if any.
    pub presets: Option<Stop>,
    /// The eval-loss baseline's stop, if its patience ran out.
    pub eval_loss: Option<Stop>,
}

impl Analysis {
    /// The score of the checkpoint the presets leave: the kept one, else the final one.
    pub fn presets_score(&self) -> f64 {
        self.presets
            .as_ref()
            .map_or(self.final_score, |s| s.kept_score)
    }

    pub fn eval_loss_score(&self) -> f64 {
        self.eval_loss
            .as_ref()
            .map_or(self.final_score, |s| s.kept_score)
    }
}

/// Analyses a run whose starting model scored `start_score` (step 0).
pub fn analyse(log: &RunLog, start_score: f64, patience: usize) -> Analysis {
    let logged = log.series("eval/score");
    // Runs that evaluate their starting model log it as step 0 themselves.
    let mut scores = if logged.first().is_some_and(|s| s.0 == 0) {
        Vec::new()
    } else {
        vec![(0, start_score)]
    };
    scores.extend(logged);
    let (peak_step, peak) =
        scores.iter().copied().fold(
            (0, f64::NEG_INFINITY),
            |best, s| if s.1 > best.1 { s } else { best },
        );
    let final_score = scores.last().map_or(start_score, |s| s.1);
    let score_at_or_before = |step: i64| {
        scores
            .iter()
            .rev()
            .find(|s| s.0 <= step)
            .copied()
            .unwrap_or((0, start_score))
    };
    let presets = presets_stop(log).map(|(step, keep, by)| {
        let (kept_step, kept_score) = score_at_or_before(keep.unwrap_or(step));
        Stop {
            step,
            kept_step,
            kept_score,
            by,
        }
    });
    let eval_loss = eval_loss_stop(&log.series("eval/loss"), patience).map(|(step, best)| {
        let (kept_step, kept_score) = score_at_or_before(best);
        Stop {
            step,
            kept_step,
            kept_score,
            by: format!("eval/loss, patience {patience}"),
        }
    });
    Analysis {
        peak_step,
        peak,
        final_score,
        over_optimised: peak - final_score >= OVER_OPTIMISED,
        presets,
        eval_loss,
    }
}

/// The first stop the shipped presets fire on the log: (step, keep_step, rule).
fn presets_stop(log: &RunLog) -> Option<(i64, Option<i64>, String)> {
    let mut evaluator = Evaluator::new(&[("presets".to_owned(), presets())]);
    for (step, metrics) in &log.steps {
        for f in evaluator.observe(*step, &|n| metrics.get(n).copied()) {
            if let Action::Stop { keep_step } = f.action {
                return Some((*step, keep_step, f.rule));
            }
        }
    }
    None
}

/// Early stopping on eval loss: stop once `patience` evaluations in a row bring no new best;
/// keep the best. Returns (stop step, best step).
fn eval_loss_stop(losses: &[(i64, f64)], patience: usize) -> Option<(i64, i64)> {
    let mut best: Option<(i64, f64)> = None;
    let mut since = 0;
    for &(step, loss) in losses {
        if best.is_none_or(|b| loss < b.1) {
            best = Some((step, loss));
            since = 0;
        } else {
            since += 1;
            if since >= patience {
                return best.map(|b| (step, b.0));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(rows: &[(i64, &[(&str, f64)])]) -> RunLog {
        RunLog {
            steps: rows
                .iter()
                .map(|(s, m)| (*s, m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()))
                .collect(),
        }
    }

    #[test]
    fn eval_loss_patience_stops_after_n_evaluations_without_a_new_best() {
        let losses = [(10, 0.5), (20, 0.4), (30, 0.45), (40, 0.41), (50, 0.3)];
        assert_eq!(eval_loss_stop(&losses, 2), Some((40, 20)));
        assert_eq!(eval_loss_stop(&losses, 3), None);
    }

    /// 60 steps, evaluated every 10: the score peaks at step 20 (0.6) and falls 0.015 per
    /// evaluation to 0.54; eval loss keeps falling (as DPO's does while it over-optimises). With
    /// `nan_at`, the loss is NaN at that step.
    fn declining_run(nan_at: Option<i64>) -> RunLog {
        let rows: Vec<(i64, Vec<(&str, f64)>)> = (1..=60)
            .map(|s| {
                let loss = if Some(s) == nan_at {
                    f64::NAN
                } else {
                    0.7 - s as f64 * 0.001
                };
                let mut m = vec![("loss", loss)];
                if s % 10 == 0 {
                    let score = if s <= 20 {
                        0.5 + s as f64 * 0.005
                    } else {
                        0.6 - (s - 20) as f64 * 0.0015
                    };
                    m.push(("eval/score", score));
                    m.push(("eval/loss", 0.7 - s as f64 * 0.002));
                }
                (s, m)
            })
            .collect();
        let rows: Vec<(i64, &[(&str, f64)])> =
            rows.iter().map(|(s, m)| (*s, m.as_slice())).collect();
        log(&rows)
    }

    #[test]
    fn a_run_is_scored_against_its_peak_and_both_baselines() {
        let a = analyse(&declining_run(None), 0.5, 3);
        assert_eq!((a.peak_step, a.peak), (20, 0.6));
        assert!((a.final_score - 0.54).abs() < 1e-9 && a.over_optimised);
        // Eval loss never stops improving: the baseline keeps the final checkpoint.
        assert_eq!(a.eval_loss, None);
        assert!((a.eval_loss_score() - 0.54).abs() < 1e-9);
        // The score is 0.045 and 0.06 below its best at steps 50 and 60: the score preset stops
        // there and keeps the best evaluation.
        let stop = a
            .presets
            .clone()
            .expect("held-out-score-drop stops the run");
        assert_eq!(
            (stop.step, stop.kept_step, stop.by.as_str()),
            (60, 20, "held-out-score-drop")
        );
        assert!((a.presets_score() - 0.6).abs() < 1e-9);
    }

    #[test]
    fn the_first_stop_counts_and_keeps_the_newest_evaluation_at_or_before_its_step() {
        // A NaN loss at step 45 trips the non-finite preset first, keeping step 44: checkpoint 40.
        let a = analyse(&declining_run(Some(45)), 0.5, 3);
        let stop = a.presets.clone().expect("non-finite stops the run");
        assert_eq!(
            (stop.step, stop.kept_step, stop.by.as_str()),
            (45, 40, "non-finite")
        );
        assert!((a.presets_score() - 0.57).abs() < 1e-9);
    }

    #[test]
    fn a_logged_start_evaluation_is_the_start_score() {
        // The run evaluated its starting model (0.7) itself: that, not the given 0.5, is step 0.
        let rows: &[(i64, &[(&str, f64)])] = &[
            (0, &[("eval/score", 0.7)]),
            (10, &[("loss", 0.6), ("eval/score", 0.6)]),
        ];
        let a = analyse(&log(rows), 0.5, 3);
        assert_eq!((a.peak_step, a.peak), (0, 0.7));
    }
}
