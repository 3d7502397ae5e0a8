//! What one finished run says about stopping: its held-out score curve and, for each way of
//! stopping it (the study's arms), where it stops and what it keeps:
//! - the label-free presets alone (every preset that reads no gold answer), and all presets,
//!   replayed on the run's full log with the same evaluator the server runs;
//! - early stopping on the held-out score with patience, the fair gold baseline (Hugging Face's
//!   `EarlyStoppingCallback` with `metric_for_best_model` the score, `greater_is_better`,
//!   `load_best_model_at_end`), and the same on eval loss;
//! - the final checkpoint.
//!
//! For each label-free rule it also records where it first fired, to set against the peak.

use std::collections::BTreeMap;

use redline_core::rules::{
    Action, Bound, Evaluator, RuleKind, RuleSet, Test, TripAction, label_free, presets,
};

use crate::run_log::RunLog;

/// A run over-optimises when its final score is at least this far below its peak (thirteen of the
/// 256 held-out problems the study scores by default).
pub const OVER_OPTIMISED: f64 = 0.05;
/// The study's target: the kept checkpoint within this of the peak.
pub const CLOSE_TO_PEAK: f64 = 0.02;
/// What a rule needs a gold answer per prompt for: a rule that reads it is not label-free.
pub const GOLD_METRIC: &str = "eval/score";

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
    /// The first stop of the presets that read no gold answer.
    pub label_free: Option<Stop>,
    /// The gold baseline's stop: patience on the held-out score ran out.
    pub score_patience: Option<Stop>,
    /// The eval-loss baseline's stop, if its patience ran out.
    pub eval_loss: Option<Stop>,
    /// Each label-free preset and the first step it fired at (any action), if it did.
    pub first_fired: BTreeMap<String, Option<i64>>,
}

/// The ways of stopping a run the study compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    LabelFree,
    Presets,
    ScorePatience,
    EvalLossPatience,
    Final,
}

impl Arm {
    pub const ALL: [Self; 5] = [
        Self::LabelFree,
        Self::Presets,
        Self::ScorePatience,
        Self::EvalLossPatience,
        Self::Final,
    ];

    /// Whether the arm reads a gold answer.
    pub fn gold(self) -> bool {
        matches!(self, Self::Presets | Self::ScorePatience)
    }
}

impl Analysis {
    /// Where `arm` stopped the run; `None` when it let it finish.
    pub fn stop(&self, arm: Arm) -> Option<&Stop> {
        match arm {
            Arm::LabelFree => self.label_free.as_ref(),
            Arm::Presets => self.presets.as_ref(),
            Arm::ScorePatience => self.score_patience.as_ref(),
            Arm::EvalLossPatience => self.eval_loss.as_ref(),
            Arm::Final => None,
        }
    }

    /// The score of the checkpoint `arm` leaves: the kept one, else the final one.
    pub fn kept_score(&self, arm: Arm) -> f64 {
        self.stop(arm).map_or(self.final_score, |s| s.kept_score)
    }
}

/// A run's held-out scores from its log, its starting model's (step 0) first: runs that evaluate
/// their starting model log it themselves, else it is `start_score`.
fn scores(log: &RunLog, start_score: f64) -> Vec<(i64, f64)> {
    let logged = log.series(GOLD_METRIC);
    let mut scores = if logged_start(log).is_some() {
        Vec::new()
    } else {
        vec![(0, start_score)]
    };
    scores.extend(logged);
    scores
}

/// The held-out score the run logged for its starting model (its step-0 evaluation), if it did.
pub fn logged_start(log: &RunLog) -> Option<f64> {
    log.series(GOLD_METRIC)
        .first()
        .filter(|s| s.0 == 0)
        .map(|s| s.1)
}

/// The highest (step, value) of a series; the earliest on a tie. `None` for an empty series.
pub fn peak(points: &[(i64, f64)]) -> Option<(i64, f64)> {
    points.iter().copied().fold(None, |best, p| {
        if best.is_none_or(|b: (i64, f64)| p.1 > b.1) {
            Some(p)
        } else {
            best
        }
    })
}

/// Arm (f): a run trained with the `regulate` set steering it.
#[derive(Debug, Clone, PartialEq)]
pub struct Regulated {
    /// (step, held-out score), the start first.
    pub scores: Vec<(i64, f64)>,
    pub peak_step: i64,
    pub peak: f64,
    pub final_score: f64,
    /// The largest NLL weight the regulator set (the trainer reports `nll_alpha` every step).
    pub max_nll_alpha: f64,
}

impl Regulated {
    pub fn of(log: &RunLog, start_score: f64) -> Self {
        let scores = scores(log, start_score);
        let (peak_step, peak) = peak(&scores).unwrap_or((0, start_score));
        Self {
            peak_step,
            peak,
            final_score: scores.last().map_or(start_score, |s| s.1),
            scores,
            max_nll_alpha: log
                .series("nll_alpha")
                .iter()
                .map(|s| s.1)
                .fold(0.0, f64::max),
        }
    }

    /// The target: the final checkpoint within [`CLOSE_TO_PEAK`] of its own peak.
    pub fn held(&self) -> bool {
        self.peak - self.final_score <= CLOSE_TO_PEAK + 1e-9
    }
}

/// The shipped preset `name` alone, with its change threshold and `for_steps` replaced, replayed
/// as a stop (an alert-only preset is judged as if it stopped): one point of the report's sweep.
/// Without `guards`, only its change test is kept (its other conditions dropped). `None` when no
/// preset of that name has a change test.
pub fn variant(name: &str, threshold: f64, for_steps: u64, guards: bool) -> Option<RuleSet> {
    let mut rule = presets().rules.into_iter().find(|r| r.name == name)?;
    let RuleKind::Trip(trip) = &mut rule.kind else {
        return None;
    };
    trip.for_steps = for_steps;
    trip.actions = vec![TripAction::Alert, TripAction::Stop];
    if !guards {
        trip.conditions
            .retain(|c| matches!(c.test, Test::Change(_)));
    }
    let bound = trip.conditions.iter_mut().find_map(|c| match &mut c.test {
        Test::Change(t) => Some(&mut t.bound),
        _ => None,
    })?;
    *bound = match bound {
        Bound::Above(_) => Bound::Above(threshold),
        Bound::Below(_) => Bound::Below(threshold),
    };
    Some(RuleSet { rules: vec![rule] })
}

/// The threshold and `for_steps` of the shipped preset `name` (its first change test).
pub fn shipped_setting(name: &str) -> Option<(f64, u64)> {
    let rule = presets().rules.into_iter().find(|r| r.name == name)?;
    let RuleKind::Trip(trip) = &rule.kind else {
        return None;
    };
    trip.conditions.iter().find_map(|c| match &c.test {
        Test::Change(t) => Some((t.bound.threshold(), trip.for_steps)),
        _ => None,
    })
}

/// Analyses a run whose starting model scored `start_score` (step 0).
pub fn analyse(log: &RunLog, start_score: f64, patience: usize) -> Analysis {
    let scores = scores(log, start_score);
    let (peak_step, peak) = peak(&scores).unwrap_or((0, start_score));
    let final_score = scores.last().map_or(start_score, |s| s.1);
    let score_at_or_before = |step: i64| at_or_before(&scores, step, start_score);
    let rule_stop = |replay: &Replay| stop_of(&scores, start_score, replay);
    let patience_stop = |series: &str, better: fn(f64, f64) -> bool| {
        patience_stop(&log.series(series), patience, better).map(|(step, best)| {
            let (kept_step, kept_score) = score_at_or_before(best);
            Stop {
                step,
                kept_step,
                kept_score,
                by: format!("{series}, patience {patience}"),
            }
        })
    };
    let label_free = replay(log, label_free());
    Analysis {
        peak_step,
        peak,
        final_score,
        over_optimised: peak - final_score >= OVER_OPTIMISED,
        presets: rule_stop(&replay(log, presets())),
        label_free: rule_stop(&label_free),
        score_patience: patience_stop(GOLD_METRIC, |new, best| new > best),
        eval_loss: patience_stop("eval/loss", |new, best| new < best),
        first_fired: label_free.first_fired,
    }
}

/// The newest evaluation at or before `step`; the start when there is none.
fn at_or_before(scores: &[(i64, f64)], step: i64, start_score: f64) -> (i64, f64) {
    scores
        .iter()
        .rev()
        .find(|s| s.0 <= step)
        .copied()
        .unwrap_or((0, start_score))
}

/// A replay's first stop and the checkpoint it keeps.
fn stop_of(scores: &[(i64, f64)], start_score: f64, replay: &Replay) -> Option<Stop> {
    replay.stop.clone().map(|(step, keep, by)| {
        let (kept_step, kept_score) = at_or_before(scores, keep.unwrap_or(step), start_score);
        Stop {
            step,
            kept_step,
            kept_score,
            by,
        }
    })
}

/// Where `set`, replayed on the run's log, first stops it: for the report's threshold sweeps.
pub fn stop_by(log: &RunLog, start_score: f64, set: RuleSet) -> Option<Stop> {
    stop_of(&scores(log, start_score), start_score, &replay(log, set))
}

/// What a rule set did on a run's log.
struct Replay {
    /// The first stop: (step, keep_step, rule).
    stop: Option<(i64, Option<i64>, String)>,
    /// Every rule of the set, with the first step it fired at.
    first_fired: BTreeMap<String, Option<i64>>,
}

/// Replays `set` on the whole log, as the server evaluates it step by step.
fn replay(log: &RunLog, set: RuleSet) -> Replay {
    let mut first_fired: BTreeMap<String, Option<i64>> =
        set.rules.iter().map(|r| (r.name.clone(), None)).collect();
    let mut stop = None;
    let mut evaluator = Evaluator::new(&[("presets".to_owned(), set)]);
    for (step, metrics) in &log.steps {
        for f in evaluator.observe(*step, &|n| metrics.get(n).copied()) {
            first_fired
                .entry(f.rule.clone())
                .or_default()
                .get_or_insert(*step);
            if let Action::Stop { keep_step } = f.action {
                stop.get_or_insert((*step, keep_step, f.rule));
            }
        }
    }
    Replay { stop, first_fired }
}

/// Early stopping: stop once `patience` evaluations in a row bring no new best (`better(new,
/// best)`); keep the best. Returns (stop step, best step).
fn patience_stop(
    values: &[(i64, f64)],
    patience: usize,
    better: fn(f64, f64) -> bool,
) -> Option<(i64, i64)> {
    let mut best: Option<(i64, f64)> = None;
    let mut since = 0;
    for &(step, value) in values {
        if best.is_none_or(|b| better(value, b.1)) {
            best = Some((step, value));
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
    fn patience_stops_after_n_evaluations_without_a_new_best() {
        let lower = |new: f64, best: f64| new < best;
        let losses = [(10, 0.5), (20, 0.4), (30, 0.45), (40, 0.41), (50, 0.3)];
        assert_eq!(patience_stop(&losses, 2, lower), Some((40, 20)));
        assert_eq!(patience_stop(&losses, 3, lower), None);
        let higher = |new: f64, best: f64| new > best;
        let scores = [(0, 0.4), (10, 0.5), (20, 0.45), (30, 0.5), (40, 0.6)];
        assert_eq!(
            patience_stop(&scores, 2, higher),
            Some((30, 10)),
            "a tie is no new best"
        );
    }

    #[test]
    fn the_label_free_presets_are_the_presets_that_read_no_score() {
        let all = presets();
        let free = label_free();
        let reads_no_score: Vec<_> = all
            .rules
            .iter()
            .filter(|r| {
                !RuleSet {
                    rules: vec![(*r).clone()],
                }
                .metrics()
                .contains(GOLD_METRIC)
            })
            .cloned()
            .collect();
        assert_eq!(free.rules, reads_no_score);
        assert!(
            free.rules.len() < all.rules.len(),
            "the score rule is left out"
        );
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
        assert!((a.kept_score(Arm::EvalLossPatience) - 0.54).abs() < 1e-9);
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
        assert!((a.kept_score(Arm::Presets) - 0.6).abs() < 1e-9);
        // Without the score rule nothing stops this run (its loss is finite and falls smoothly).
        assert_eq!(a.label_free, None);
        assert!((a.kept_score(Arm::LabelFree) - 0.54).abs() < 1e-9);
        assert!(
            a.first_fired.values().all(Option::is_none),
            "{:?}",
            a.first_fired
        );
        // The gold baseline: three evaluations without a new best after step 20, at step 50.
        let gold = a.score_patience.clone().expect("score patience runs out");
        assert_eq!((gold.step, gold.kept_step), (50, 20));
        assert!((a.kept_score(Arm::ScorePatience) - 0.6).abs() < 1e-9);
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
        assert!((a.kept_score(Arm::Presets) - 0.57).abs() < 1e-9);
        // The non-finite rule reads no gold answer: the label-free arm stops there too.
        assert_eq!(a.label_free.map(|s| s.step), Some(45));
        assert_eq!(a.first_fired["non-finite"], Some(45));
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
