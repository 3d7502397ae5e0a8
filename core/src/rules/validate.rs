//! The rule-file format, second half: the checks serde cannot make (ranges, one test per
//! condition, keys that only make sense together). Each error names the rule and the field and
//! points at the value that broke the rule.

use std::fmt::Display;
use std::ops::Range;

use super::file::{Candidates, RawCondition, RawRegulate, RawRule, S, error_at};
use super::{
    BandBaseline, Combine, Condition, Regulator, Rule, RuleFileError, RuleKind, Severity, TripRule,
};
use crate::MetricName;
use crate::hparams::Steerable;

pub(super) type Result<T> = std::result::Result<T, RuleFileError>;

/// The most conditions a trip rule may have.
const MAX_CONDITIONS: usize = 8;
/// The source and the rule being checked, for error messages.
pub(super) struct Cx<'a> {
    pub src: &'a str,
    pub label: String,
}

impl Cx<'_> {
    pub(super) fn err(&self, span: Range<usize>, msg: impl Display) -> RuleFileError {
        error_at(self.src, span, format!("{}: {msg}", self.label))
    }

    pub(super) fn finite(&self, v: &S<f64>, field: &str) -> Result<f64> {
        let x = *v.get_ref();
        if x.is_finite() {
            Ok(x)
        } else {
            Err(self.err(
                v.span(),
                format!("{field} must be a finite number, got {x}"),
            ))
        }
    }

    pub(super) fn at_least(&self, v: &S<f64>, field: &str, min: f64) -> Result<f64> {
        let x = self.finite(v, field)?;
        if x < min {
            return Err(self.err(v.span(), format!("{field} must be >= {min}, got {x}")));
        }
        Ok(x)
    }

    pub(super) fn ema(&self, v: Option<&S<f64>>) -> Result<f64> {
        let Some(v) = v else { return Ok(0.0) };
        let x = self.finite(v, "ema")?;
        if !(0.0..1.0).contains(&x) {
            return Err(self.err(v.span(), format!("ema must be in [0, 1), got {x}")));
        }
        Ok(x)
    }

    pub(super) fn count(
        &self,
        v: Option<&S<u64>>,
        field: &str,
        min: u64,
        default: u64,
    ) -> Result<u64> {
        let Some(v) = v else { return Ok(default) };
        let n = *v.get_ref();
        if n < min {
            return Err(self.err(v.span(), format!("{field} must be >= {min}, got {n}")));
        }
        Ok(n)
    }

    /// A key that the rest of the rule or condition makes meaningless.
    pub(super) fn absent<T>(&self, v: Option<&S<T>>, field: &str, why: &str) -> Result<()> {
        match v {
            Some(v) => Err(self.err(v.span(), format!("{field} {why}"))),
            None => Ok(()),
        }
    }

    pub(super) fn candidates(&self, m: &S<Candidates>) -> Result<Vec<String>> {
        let span = m.span();
        let names = match m.get_ref() {
            Candidates::One(name) => vec![S::new(span.clone(), name.clone())],
            Candidates::Many(names) => names.clone(),
        };
        if names.is_empty() {
            return Err(self.err(span, "metric must name at least one metric"));
        }
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            let parsed = MetricName::parse(name.get_ref().as_str())
                .map_err(|e| self.err(name.span(), format!("metric {:?} {e}", name.get_ref())))?;
            if out.iter().any(|n| n == parsed.as_str()) {
                let msg = format!("metric {:?} is listed twice", name.get_ref());
                return Err(self.err(name.span(), msg));
            }
            out.push(parsed.as_str().to_owned());
        }
        Ok(out)
    }

    pub(super) fn rule(&self, r: RawRule, span: Range<usize>) -> Result<Rule> {
        let name = r.name.get_ref();
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            let msg = "name must be 1 to 64 characters of a-z, 0-9, _ and -";
            return Err(self.err(r.name.span(), msg));
        }
        let warmup = self.count(r.warmup.as_ref(), "warmup", 0, 0)?;
        let kind = match (r.regulate, r.actions, r.when) {
            (Some(reg), actions, when) => {
                let why = "is for trip rules; this rule has [rules.regulate], so it is a regulator";
                self.absent(actions.as_ref(), "actions", why)?;
                self.absent(when.as_ref(), "[[rules.when]]", why)?;
                self.absent(r.combine.as_ref(), "match", why)?;
                self.absent(r.for_steps.as_ref(), "for_steps", why)?;
                let why = "is for trip rules; a regulator's cooldown goes in [rules.regulate]";
                self.absent(r.cooldown.as_ref(), "cooldown", why)?;
                let why = "is for trip rules; a regulator's changes are always info";
                self.absent(r.severity.as_ref(), "severity", why)?;
                RuleKind::Regulate(self.regulator(reg.into_inner())?)
            }
            (None, Some(actions), Some(when)) => RuleKind::Trip(TripRule {
                severity: r.severity.map_or(Severity::Warning, S::into_inner),
                actions: self.actions(actions)?,
                combine: r.combine.map_or(Combine::All, S::into_inner),
                for_steps: self.count(r.for_steps.as_ref(), "for_steps", 1, 1)?,
                cooldown: self.count(r.cooldown.as_ref(), "cooldown", 0, 0)?,
                conditions: self.conditions(when)?,
            }),
            (None, None, None) => {
                let msg = "needs actions and [[rules.when]] conditions (a trip rule) \
                           or a [rules.regulate] table (a regulator)";
                return Err(self.err(span, msg));
            }
            (None, Some(_), None) => {
                return Err(self.err(span, "has actions but no [[rules.when]] condition"));
            }
            (None, None, Some(when)) => {
                return Err(self.err(when.span(), "has [[rules.when]] conditions but no actions"));
            }
        };
        Ok(Rule {
            name: name.clone(),
            description: r.description.map(S::into_inner),
            warmup,
            kind,
        })
    }

    fn actions(&self, actions: S<Vec<S<super::TripAction>>>) -> Result<Vec<super::TripAction>> {
        if actions.get_ref().is_empty() {
            return Err(self.err(actions.span(), "actions must not be empty"));
        }
        let mut out = Vec::new();
        for a in actions.into_inner() {
            if out.contains(a.get_ref()) {
                return Err(self.err(a.span(), "actions lists the same action twice"));
            }
            out.push(a.into_inner());
        }
        Ok(out)
    }

    fn conditions(&self, when: S<Vec<S<RawCondition>>>) -> Result<Vec<Condition>> {
        let span = when.span();
        let when = when.into_inner();
        if when.is_empty() {
            return Err(self.err(span, "needs at least one [[rules.when]] condition"));
        }
        if let Some(extra) = when.get(MAX_CONDITIONS) {
            let msg = format!("a rule has at most {MAX_CONDITIONS} conditions");
            return Err(self.err(extra.span(), msg));
        }
        when.into_iter().map(|c| self.condition(c)).collect()
    }

    fn regulator(&self, r: RawRegulate) -> Result<Regulator> {
        let pair = |v: &S<(f64, f64)>, field: &str| -> Result<(f64, f64)> {
            let (lo, hi) = *v.get_ref();
            if !lo.is_finite() || !hi.is_finite() {
                return Err(self.err(v.span(), format!("{field} must hold finite numbers")));
            }
            Ok((lo, hi))
        };
        let band = pair(&r.band, "band")?;
        if band.0 >= band.1 {
            let msg = format!(
                "band must be [lo, hi] with lo < hi, got [{}, {}]",
                band.0, band.1
            );
            return Err(self.err(r.band.span(), msg));
        }
        let bounds = pair(&r.bounds, "bounds")?;
        if bounds.0 > bounds.1 {
            let msg = format!(
                "bounds must be [lo, hi] with lo <= hi, got [{}, {}]",
                bounds.0, bounds.1
            );
            return Err(self.err(r.bounds.span(), msg));
        }
        let hparam = r.hparam.get_ref();
        let steered = Steerable::parse(hparam)
            .map_err(|e| self.err(r.hparam.span(), format!("hparam {e}")))?;
        for bound in [bounds.0, bounds.1] {
            steered
                .check(bound)
                .map_err(|e| self.err(r.bounds.span(), format!("bounds: {e}")))?;
        }
        let step = self.finite(&r.step, "step")?;
        if step <= 0.0 {
            return Err(self.err(r.step.span(), format!("step must be > 0, got {step}")));
        }
        let gain = match &r.gain {
            Some(g) => self.at_least(g, "gain", 0.0)?,
            None => 0.0,
        };
        let max_step = match &r.max_step {
            Some(m) => self.at_least(m, "max_step", step)?,
            None => step,
        };
        let initial = match &r.initial {
            Some(v) => {
                let x = self.finite(v, "initial")?;
                if x < bounds.0 || x > bounds.1 {
                    let msg = format!("initial must lie within bounds, got {x}");
                    return Err(self.err(v.span(), msg));
                }
                Some(x)
            }
            None => None,
        };
        let baseline = if let Some(b) = &r.baseline {
            Some(BandBaseline {
                baseline: *b.get_ref(),
                steps: self.count(r.baseline_steps.as_ref(), "baseline_steps", 1, 20)? as usize,
                relative: r.relative.as_ref().is_some_and(|v| *v.get_ref()),
            })
        } else {
            let why = "needs baseline: without one the band holds the metric's own value";
            self.absent(r.baseline_steps.as_ref(), "baseline_steps", why)?;
            self.absent(r.relative.as_ref(), "relative", why)?;
            None
        };
        Ok(Regulator {
            metric: self.candidates(&r.metric)?,
            ema: self.ema(r.ema.as_ref())?,
            baseline,
            band,
            hparam: hparam.clone(),
            when_below: r.when_below.into_inner(),
            step,
            gain,
            max_step,
            bounds,
            cooldown: self.count(r.cooldown.as_ref(), "cooldown", 0, 10)?,
            initial,
        })
    }
}
