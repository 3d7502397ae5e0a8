//! The words of a firing: one phrase per holding condition, and the numbers behind it.

use super::condition::ConditionState;
use super::{Baseline, Bound, Condition, Test};

impl ConditionState {
    /// A phrase for the firing message and the values behind it, from the deciding candidate.
    pub fn describe(&self, cond: &Condition, values: &mut Vec<(String, f64)>) -> Option<String> {
        let i = self.outcome.candidate?;
        let s = &self.series[i];
        let metric = &cond.metric[i];
        let raw = s.last_raw.unwrap_or(f64::NAN);
        values.push((metric.clone(), raw));
        if cond.test == Test::NonFinite {
            return Some(format!("{metric} is {raw}"));
        }
        let smoothed = s.smoothed.unwrap_or(f64::NAN);
        values.push((format!("{metric}:smoothed"), smoothed));
        let name = if cond.ema > 0.0 {
            format!("{metric} (EMA {})", num(cond.ema))
        } else {
            metric.clone()
        };
        Some(match &cond.test {
            Test::NonFinite => unreachable!("handled above"),
            Test::Level(b) => {
                let side = if matches!(b, Bound::Above(_)) {
                    "above"
                } else {
                    "below"
                };
                format!("{name} {} is {side} {}", num(smoothed), num(b.threshold()))
            }
            Test::Slope { .. } => {
                let slope = s.slope().unwrap_or(f64::NAN);
                values.push((format!("{metric}:slope"), slope));
                match slope {
                    x if x > 0.0 => format!("{metric} rises {}/step", num(x)),
                    x if x < 0.0 => format!("{metric} falls {}/step", num(-x)),
                    _ => format!("{metric} is flat"),
                }
            }
            Test::Change(t) => {
                let (change, base, _) = s.change(t).unwrap_or((f64::NAN, f64::NAN, false));
                values.push((format!("{metric}:baseline"), base));
                values.push((format!("{metric}:change"), change));
                let at = match t.baseline {
                    Baseline::Max => s.max.map(|m| m.1),
                    Baseline::Min => s.min.map(|m| m.1),
                    Baseline::First => None,
                };
                change_phrase(&name, smoothed, change, base, t.baseline, t.relative, at)
            }
        })
    }
}

/// "`name` `smoothed` is `change` below/above its peak/low/start `base`", the change in percent
/// when `relative`, with " at step `at`" when the baseline's step is known: how a condition and a
/// regulator with a baseline word a change.
pub(super) fn change_phrase(
    name: &str,
    smoothed: f64,
    change: f64,
    base: f64,
    baseline: Baseline,
    relative: bool,
    at: Option<i64>,
) -> String {
    let amount = if relative {
        format!("{}%", num(change.abs() * 100.0))
    } else {
        num(change.abs())
    };
    let side = if change < 0.0 { "below" } else { "above" };
    let of = match baseline {
        Baseline::Max => "peak",
        Baseline::Min => "low",
        Baseline::First => "start",
    };
    let at = at.map(|a| format!(" at step {a}")).unwrap_or_default();
    format!(
        "{name} {} is {amount} {side} its {of} {}{at}",
        num(smoothed),
        num(base)
    )
}

/// A number for people: about three significant digits, no trailing zeros.
pub(super) fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".to_owned();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}
