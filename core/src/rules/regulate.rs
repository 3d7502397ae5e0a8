//! The regulator: a proportional controller that holds a metric inside a band by moving a
//! hyperparameter in bounded steps, one firing per change.

use std::collections::BTreeMap;

use super::condition::Series;
use super::eval::{Action, Fired, within};
use super::message::{change_phrase, num};
use super::{Direction, Regulator, Severity};

/// Changes smaller than this are rounding, not a decision worth a signal.
const MIN_CHANGE: f64 = 1e-12;

#[derive(Debug, Clone)]
pub(super) struct RegulatorState {
    series: Vec<Series>,
    /// Each candidate's slot in the evaluator's step values, and the hyperparameter's.
    slots: Vec<usize>,
    hparam_slot: usize,
    evaluated: u64,
    /// The last value this regulator asked for: the trainer applies it at a later step boundary,
    /// so the reported value lags behind it and must not be stepped from twice.
    commanded: Option<f64>,
    reported: Option<f64>,
    last_change: Option<i64>,
}

impl RegulatorState {
    pub fn new(reg: &Regulator, slot: &dyn Fn(&str) -> usize) -> Self {
        Self {
            series: reg
                .metric
                .iter()
                .map(|_| Series::new(reg.ema, reg.baseline.map_or(0, |b| b.steps), 0))
                .collect(),
            slots: reg.metric.iter().map(|m| slot(m)).collect(),
            hparam_slot: slot(&reg.hparam),
            evaluated: 0,
            commanded: None,
            reported: None,
            last_change: None,
        }
    }

    pub fn observe(
        &mut self,
        warmup: u64,
        reg: &Regulator,
        step: i64,
        values: &[Option<f64>],
    ) -> Option<Fired> {
        if let Some(v) = values[self.hparam_slot].filter(|v| v.is_finite()) {
            self.reported = Some(v);
        }
        for (&slot, series) in self.slots.iter().zip(&mut self.series) {
            if let Some(v) = values[slot] {
                series.push(step, v);
            }
        }
        // The first candidate with a finite value decides; it must have a fresh finite one.
        let i = self.series.iter().position(|s| s.finite > 0)?;
        let s = &self.series[i];
        if s.last_finite_step != Some(step) {
            return None;
        }
        let smoothed = s.smoothed?;
        self.evaluated += 1;
        if self.evaluated <= warmup
            || self
                .last_change
                .is_some_and(|last| within(step, last, reg.cooldown))
        {
            return None;
        }
        // With a baseline the band holds the change from it (the series' own history).
        let (value, base) = match reg.baseline {
            Some(b) => {
                let (change, base) = s.change_from(b.baseline, b.relative)?;
                (change, Some(base))
            }
            None => (smoothed, None),
        };
        let (lo, hi) = reg.band;
        let (distance, raise, side) = if value < lo {
            (lo - value, reg.when_below == Direction::Raise, "below")
        } else if value > hi {
            (value - hi, reg.when_below == Direction::Lower, "above")
        } else {
            return None;
        };
        let current = self.commanded.or(self.reported).or(reg.initial)?;
        let change = (reg.step * (1.0 + reg.gain * distance / (hi - lo))).min(reg.max_step);
        let target = if raise {
            current + change
        } else {
            current - change
        };
        let new = target.clamp(reg.bounds.0, reg.bounds.1);
        if (new - current).abs() <= MIN_CHANGE {
            return None;
        }
        self.commanded = Some(new);
        self.last_change = Some(step);
        let metric = &reg.metric[i];
        let name = if reg.ema > 0.0 {
            format!("{metric} (EMA {})", num(reg.ema))
        } else {
            metric.clone()
        };
        let measured = match (reg.baseline, base) {
            (Some(b), Some(base)) => {
                let phrase =
                    change_phrase(&name, smoothed, value, base, b.baseline, b.relative, None);
                format!("{phrase} (change {})", num(value))
            }
            _ => format!("{name} {}", num(smoothed)),
        };
        let message = format!(
            "{measured} {side} band [{}, {}]: {} {} → {}",
            num(lo),
            num(hi),
            reg.hparam,
            num(current),
            num(new)
        );
        let mut values = BTreeMap::from([
            (metric.clone(), s.last_raw.unwrap_or(f64::NAN)),
            (format!("{metric}:smoothed"), smoothed),
            (format!("{}:old", reg.hparam), current),
            (format!("{}:new", reg.hparam), new),
        ]);
        if let Some(base) = base {
            values.insert(format!("{metric}:baseline"), base);
            values.insert(format!("{metric}:change"), value);
        }
        let action = Action::SetHparam {
            name: reg.hparam.clone(),
            value: new,
        };
        Some((action, Severity::Info, message, values))
    }
}
