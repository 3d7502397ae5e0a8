//! One condition's state: per candidate metric, the smoothed value, the baselines and the slope
//! window, and the condition's latest result.

use std::collections::VecDeque;

use super::{Baseline, Bound, ChangeTest, Condition, Test};

/// Everything one candidate metric of one condition has seen.
#[derive(Debug, Clone)]
pub(super) struct Series {
    weight: f64,
    /// TensorBoard-style EMA: an accumulator started at 0 and divided by 1 − weight^n, so early
    /// values are not pulled towards 0.
    acc: f64,
    decay: f64,
    pub smoothed: Option<f64>,
    pub last_raw: Option<f64>,
    /// The step of the last value of any kind, to tell whether this candidate reported now.
    pub last_step: Option<i64>,
    pub seen: u64,
    pub finite: u64,
    pub last_finite_step: Option<i64>,
    first_steps: usize,
    first_sum: f64,
    first_n: usize,
    /// Running extremes of the smoothed value, with the step they occurred at.
    pub max: Option<(f64, i64)>,
    pub min: Option<(f64, i64)>,
    /// Extremes of the smoothed value from the step the first-N mean is complete, for
    /// `after_rise`/`after_fall`: a series that only falls has its running max at step 1, above
    /// its own first-N mean, and must not count as having risen.
    settled_max: Option<f64>,
    settled_min: Option<f64>,
    window_len: usize,
    window: VecDeque<(i64, f64)>,
}

impl Series {
    pub fn new(weight: f64, first_steps: usize, window_len: usize) -> Self {
        Self {
            weight,
            acc: 0.0,
            decay: 1.0,
            smoothed: None,
            last_raw: None,
            last_step: None,
            seen: 0,
            finite: 0,
            last_finite_step: None,
            first_steps,
            first_sum: 0.0,
            first_n: 0,
            max: None,
            min: None,
            settled_max: None,
            settled_min: None,
            window_len,
            window: VecDeque::with_capacity(window_len),
        }
    }

    fn for_test(weight: f64, test: &Test) -> Self {
        match test {
            Test::Change(t) => Self::new(weight, t.steps, 0),
            Test::Slope { window, .. } => Self::new(weight, 0, *window),
            Test::Level(_) | Test::NonFinite => Self::new(weight, 0, 0),
        }
    }

    /// Takes one raw value. Non-finite values are counted but feed no smoothing or baseline.
    pub fn push(&mut self, step: i64, raw: f64) {
        self.last_raw = Some(raw);
        self.last_step = Some(step);
        self.seen += 1;
        if !raw.is_finite() {
            return;
        }
        self.finite += 1;
        self.last_finite_step = Some(step);
        self.acc = self.acc * self.weight + (1.0 - self.weight) * raw;
        self.decay *= self.weight;
        let s = self.acc / (1.0 - self.decay);
        self.smoothed = Some(s);
        if self.first_n < self.first_steps {
            self.first_sum += raw;
            self.first_n += 1;
        }
        if self.first_n >= self.first_steps {
            self.settled_max = Some(self.settled_max.map_or(s, |m| m.max(s)));
            self.settled_min = Some(self.settled_min.map_or(s, |m| m.min(s)));
        }
        // Strict comparisons keep the earliest step of a tie: where the indicator first turned.
        if self.max.is_none_or(|(m, _)| s > m) {
            self.max = Some((s, step));
        }
        if self.min.is_none_or(|(m, _)| s < m) {
            self.min = Some((s, step));
        }
        if self.window_len > 0 {
            if self.window.len() == self.window_len {
                self.window.pop_front();
            }
            self.window.push_back((step, s));
        }
    }

    fn first_mean(&self) -> Option<f64> {
        (self.first_n > 0 && self.first_n >= self.first_steps)
            .then(|| self.first_sum / self.first_n as f64)
    }

    /// Ordinary least squares slope per step of the window.
    pub fn slope(&self) -> Option<f64> {
        if self.window.len() < self.window_len.max(2) {
            return None;
        }
        let n = self.window.len() as f64;
        let x0 = self.window[0].0;
        let (sx, sy) = self.window.iter().fold((0.0, 0.0), |(sx, sy), &(x, y)| {
            (sx + (x - x0) as f64, sy + y)
        });
        let (mx, my) = (sx / n, sy / n);
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for &(x, y) in &self.window {
            let dx = (x - x0) as f64 - mx;
            sxy += dx * (y - my);
            sxx += dx * dx;
        }
        Some(sxy / sxx)
    }

    fn ready(&self, test: &Test) -> bool {
        match test {
            Test::NonFinite => self.seen >= 1,
            Test::Level(_) => self.finite >= 1,
            Test::Change(t) => self.finite >= t.steps as u64,
            Test::Slope { window, .. } => self.window.len() >= *window,
        }
    }

    /// (change, baseline): the smoothed value's change from `baseline`, a fraction of
    /// |baseline| when `relative`. None until the first-N mean is complete, and for a relative
    /// change from a zero baseline, which has no meaning.
    pub fn change_from(&self, baseline: Baseline, relative: bool) -> Option<(f64, f64)> {
        let s = self.smoothed?;
        let first = self.first_mean()?;
        let base = match baseline {
            Baseline::First => first,
            Baseline::Max => self.max?.0,
            Baseline::Min => self.min?.0,
        };
        let change = if relative {
            (s - base) / base.abs()
        } else {
            s - base
        };
        change.is_finite().then_some((change, base))
    }

    /// (change, baseline, whether `after_rise`/`after_fall` is satisfied).
    pub fn change(&self, t: &ChangeTest) -> Option<(f64, f64, bool)> {
        let (change, base) = self.change_from(t.baseline, t.relative)?;
        let first = self.first_mean()?;
        let scale = |d: f64| if t.relative { d / first.abs() } else { d };
        let gate = match (t.baseline, t.after) {
            (Baseline::Max, Some(a)) => scale(self.settled_max? - first) > a,
            (Baseline::Min, Some(a)) => scale(first - self.settled_min?) > a,
            _ => true,
        };
        Some((change, base, gate))
    }
}

/// Where a condition says the trainer should roll back to when a `stop` fires.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) enum Keep {
    #[default]
    None,
    At(i64),
    /// The last evaluated step before the rule's current streak began.
    StreakStart,
}

/// A condition's latest result.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcome {
    pub holds: bool,
    /// False even with the threshold moved by the hysteresis: a tripped rule may re-arm.
    pub cleared: bool,
    /// The candidate that decided; None while no candidate has enough history.
    pub candidate: Option<usize>,
    pub keep: Keep,
}

#[derive(Debug, Clone)]
pub(super) struct ConditionState {
    pub series: Vec<Series>,
    /// Each candidate's slot in the evaluator's step values.
    slots: Vec<usize>,
    pub outcome: Outcome,
}

impl ConditionState {
    pub fn new(cond: &Condition, slot: &dyn Fn(&str) -> usize) -> Self {
        Self {
            series: cond
                .metric
                .iter()
                .map(|_| Series::for_test(cond.ema, &cond.test))
                .collect(),
            slots: cond.metric.iter().map(|m| slot(m)).collect(),
            outcome: Outcome::default(),
        }
    }

    /// Feeds one step (`values` by slot); true when the condition got a new result (see
    /// docs/rules.md).
    pub fn observe(&mut self, cond: &Condition, step: i64, values: &[Option<f64>]) -> bool {
        let mut any = false;
        for (&slot, series) in self.slots.iter().zip(&mut self.series) {
            if let Some(v) = values[slot] {
                series.push(step, v);
                any = true;
            }
        }
        match self.series.iter().position(|s| s.ready(&cond.test)) {
            Some(i) if self.series[i].last_step == Some(step) => {
                self.outcome = self.judge(cond, i);
                true
            }
            // The deciding candidate did not report: its previous result stands.
            Some(_) => false,
            None => {
                if any {
                    self.outcome = Outcome::default();
                }
                any
            }
        }
    }

    fn judge(&self, cond: &Condition, i: usize) -> Outcome {
        let s = &self.series[i];
        let raw = s.last_raw.unwrap_or(f64::NAN);
        let h = cond.hysteresis;
        let judged = |value: Option<f64>, bound: Bound, gate: bool, keep: Keep| Outcome {
            holds: value.is_some_and(|v| gate && bound.holds(v)),
            cleared: value.is_some_and(|v| !(gate && bound.holds_within(v, h))),
            candidate: Some(i),
            keep,
        };
        match &cond.test {
            Test::NonFinite => Outcome {
                holds: !raw.is_finite(),
                cleared: raw.is_finite(),
                candidate: Some(i),
                keep: s.last_finite_step.map_or(Keep::None, Keep::At),
            },
            // Other tests skip non-finite values: false, but no evidence of clearing either.
            _ if !raw.is_finite() => Outcome {
                candidate: Some(i),
                ..Outcome::default()
            },
            Test::Level(b) => judged(s.smoothed, *b, true, Keep::StreakStart),
            Test::Slope { bound, .. } => judged(s.slope(), *bound, true, Keep::StreakStart),
            Test::Change(t) => {
                let extreme = match t.bound {
                    Bound::Below(_) => s.max,
                    Bound::Above(_) => s.min,
                };
                let keep = extreme.map_or(Keep::None, |(_, step)| Keep::At(step));
                let change = s.change(t);
                judged(
                    change.map(|c| c.0),
                    t.bound,
                    change.is_some_and(|c| c.2),
                    keep,
                )
            }
        }
    }
}
