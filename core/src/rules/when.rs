//! The checks of one `[[rules.when]]` condition: exactly one test, and only the keys that test
//! uses.

use std::ops::Range;

use super::file::{RawCondition, S};
use super::validate::{Cx, Result};
use super::{Baseline, Bound, ChangeTest, Condition, Test};

/// The longest slope window: the evaluator keeps that many values per candidate.
const MAX_SLOPE_WINDOW: u64 = 10_000;

impl Cx<'_> {
    pub(super) fn condition(&self, c: S<RawCondition>) -> Result<Condition> {
        let span = c.span();
        let c = c.into_inner();
        let mut tests: Vec<(&str, Range<usize>)> = [
            ("above", c.above.as_ref().map(S::span)),
            ("below", c.below.as_ref().map(S::span)),
            ("non_finite", c.non_finite.as_ref().map(S::span)),
            ("change_below", c.change_below.as_ref().map(S::span)),
            ("change_above", c.change_above.as_ref().map(S::span)),
            ("slope_above", c.slope_above.as_ref().map(S::span)),
            ("slope_below", c.slope_below.as_ref().map(S::span)),
        ]
        .into_iter()
        .filter_map(|(name, s)| s.map(|s| (name, s)))
        .collect();
        tests.sort_by_key(|(_, s)| s.start);
        let test_name = match tests.as_slice() {
            [] => {
                let msg = "a condition needs one test: above, below, non_finite, \
                           change_below/change_above (with baseline) \
                           or slope_above/slope_below (with slope_window)";
                return Err(self.err(span, msg));
            }
            [(name, _)] => *name,
            [(first, _), (second, s), ..] => {
                let msg = format!("a condition has one test, but has both {first} and {second}");
                return Err(self.err(s.clone(), msg));
            }
        };
        let is_change = test_name.starts_with("change_");
        let is_slope = test_name.starts_with("slope_");
        let only_change = "is only for baseline tests (baseline with change_below or change_above)";
        if !is_change {
            self.absent(c.baseline.as_ref(), "baseline", only_change)?;
            self.absent(c.baseline_steps.as_ref(), "baseline_steps", only_change)?;
            self.absent(c.relative.as_ref(), "relative", only_change)?;
            self.absent(c.after_rise.as_ref(), "after_rise", only_change)?;
            self.absent(c.after_fall.as_ref(), "after_fall", only_change)?;
        }
        if !is_slope {
            let why = "is only for slope tests (slope_above or slope_below)";
            self.absent(c.slope_window.as_ref(), "slope_window", why)?;
        }
        let metric = self.candidates(&c.metric)?;
        let hysteresis = match &c.hysteresis {
            Some(h) => self.at_least(h, "hysteresis", 0.0)?,
            None => 0.0,
        };
        let test = match test_name {
            "non_finite" => {
                let why = "is not allowed with non_finite, which looks at the raw value";
                self.absent(c.ema.as_ref(), "ema", why)?;
                self.absent(c.hysteresis.as_ref(), "hysteresis", why)?;
                let v = c.non_finite.expect("present: it is the test");
                if !v.get_ref() {
                    return Err(self.err(v.span(), "non_finite must be true (leave it out)"));
                }
                Test::NonFinite
            }
            "above" | "below" => Test::Level(bound(
                test_name == "above",
                self.finite(
                    c.above.as_ref().or(c.below.as_ref()).expect("test"),
                    test_name,
                )?,
            )),
            _ if is_slope => {
                let v = c
                    .slope_above
                    .as_ref()
                    .or(c.slope_below.as_ref())
                    .expect("test");
                let x = self.finite(v, test_name)?;
                let Some(w) = &c.slope_window else {
                    let msg = format!("{test_name} needs slope_window (>= 2 steps)");
                    return Err(self.err(v.span(), msg));
                };
                let window = self.count(Some(w), "slope_window", 2, 2)?;
                if window > MAX_SLOPE_WINDOW {
                    let msg = format!("slope_window must be <= {MAX_SLOPE_WINDOW}, got {window}");
                    return Err(self.err(w.span(), msg));
                }
                let bound = bound(test_name == "slope_above", x);
                Test::Slope {
                    window: window as usize,
                    bound,
                }
            }
            _ => Test::Change(self.change(&c, test_name)?),
        };
        Ok(Condition {
            metric,
            ema: self.ema(c.ema.as_ref())?,
            hysteresis,
            test,
        })
    }

    fn change(&self, c: &RawCondition, test_name: &str) -> Result<ChangeTest> {
        let v = c
            .change_below
            .as_ref()
            .or(c.change_above.as_ref())
            .expect("test");
        let x = self.finite(v, test_name)?;
        let Some(baseline) = &c.baseline else {
            let msg = format!("{test_name} needs baseline = \"first\", \"max\" or \"min\"");
            return Err(self.err(v.span(), msg));
        };
        let baseline = *baseline.get_ref();
        if baseline != Baseline::Max {
            self.absent(
                c.after_rise.as_ref(),
                "after_rise",
                "needs baseline = \"max\"",
            )?;
        }
        if baseline != Baseline::Min {
            self.absent(
                c.after_fall.as_ref(),
                "after_fall",
                "needs baseline = \"min\"",
            )?;
        }
        let after = match c.after_rise.as_ref().or(c.after_fall.as_ref()) {
            Some(a) => {
                let field = if c.after_rise.is_some() {
                    "after_rise"
                } else {
                    "after_fall"
                };
                Some(self.at_least(a, field, 0.0)?)
            }
            None => None,
        };
        Ok(ChangeTest {
            baseline,
            steps: self.count(c.baseline_steps.as_ref(), "baseline_steps", 1, 20)? as usize,
            bound: bound(test_name == "change_above", x),
            relative: c.relative.as_ref().is_some_and(|r| *r.get_ref()),
            after,
        })
    }
}

fn bound(above: bool, x: f64) -> Bound {
    if above {
        Bound::Above(x)
    } else {
        Bound::Below(x)
    }
}
