//! The rule engine: rule files (TOML) parsed into a [`RuleSet`], and an [`Evaluator`] that is fed
//! one training step at a time and answers with [`Firing`]s (alerts, stops, checkpoints and
//! hyperparameter changes). Pure functions: no I/O, no clock, so the server and tests drive it.
//!
//! A rule file is a list of `[[rules]]` tables. A *trip rule* has `actions` and one to eight
//! `[[rules.when]]` conditions; a *regulator* has a `[rules.regulate]` table instead:
//!
//! ```toml
//! [[rules]]
//! name = "likelihood-displacement"
//! severity = "critical"
//! actions = ["alert", "stop"]
//! for_steps = 5
//! [[rules.when]]
//! metric = "logps_mean/chosen"
//! ema = 0.9
//! baseline = "first"
//! change_below = -1.0
//! [[rules.when]]
//! metric = "rewards/margins"
//! ema = 0.9
//! slope_window = 20
//! slope_above = 0.0
//! ```
//!
//! Each condition has one test on a metric (or a list of fallback candidates): `above`/`below`
//! a threshold, `non_finite`, a change from the run's own `baseline` (`first`, `max`, `min`), or
//! the least-squares `slope` over a window. Values can be smoothed with a bias-corrected EMA.
//! Rules hold for `for_steps` consecutive evaluated steps before they fire, then stay tripped
//! until a condition clears by its `hysteresis`; `warmup` and `cooldown` add quiet periods.
//! docs/rules.md is the full reference (every key, every default, the evaluation semantics).

mod condition;
mod eval;
mod file;
mod message;
mod presets;
mod regulate;
#[cfg(test)]
mod tests;
mod validate;
mod when;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use eval::{Action, Evaluator, Firing};
pub use presets::{
    LABEL_FREE_NAME, PRESETS_NAME, REGULATE_NAME, label_free, presets, presets_source, regulate,
    shipped,
};

/// A parsed, validated rule file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Parses and validates a rule file; an empty file is an empty set.
    pub fn parse(source: &str) -> Result<RuleSet, RuleFileError> {
        file::parse(source)
    }

    /// Every metric name any rule reads (fallback candidates and a regulator's hparam included).
    pub fn metrics(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for rule in &self.rules {
            match &rule.kind {
                RuleKind::Trip(trip) => {
                    for c in &trip.conditions {
                        out.extend(c.metric.iter().cloned());
                    }
                }
                RuleKind::Regulate(reg) => {
                    out.extend(reg.metric.iter().cloned());
                    out.insert(reg.hparam.clone());
                }
            }
        }
        out
    }

    /// The metrics a rule reads that are neither in the metric catalogue nor a held-out twin of
    /// one (`eval/<name>`): user metrics, or typos. Shipped rule sets must have none.
    pub fn outside_catalogue(&self) -> Vec<String> {
        self.metrics()
            .into_iter()
            .filter(|m| crate::catalogue::lookup(m).is_none())
            .collect()
    }
}

/// Where a rule file is wrong: 1-based line and column of the offending value, key or table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct RuleFileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One rule of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    /// Evaluated steps during which the rule never fires.
    pub warmup: u64,
    pub kind: RuleKind,
}

/// A rule either trips (fires actions when its conditions hold) or regulates a hyperparameter.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    Trip(TripRule),
    Regulate(Regulator),
}

/// A rule that fires its actions when its conditions hold for `for_steps` evaluated steps.
#[derive(Debug, Clone, PartialEq)]
pub struct TripRule {
    pub severity: Severity,
    pub actions: Vec<TripAction>,
    pub combine: Combine,
    pub for_steps: u64,
    /// Steps (real step numbers) after a firing during which the rule does not fire again.
    pub cooldown: u64,
    pub conditions: Vec<Condition>,
}

/// What a trip rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripAction {
    Alert,
    Stop,
    Checkpoint,
}

/// How a trip rule's conditions combine (`match` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    All,
    Any,
}

impl Combine {
    pub(crate) fn of(self, mut items: impl Iterator<Item = bool>) -> bool {
        match self {
            Self::All => items.all(|b| b),
            Self::Any => items.any(|b| b),
        }
    }
}

/// One `[[rules.when]]` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Candidates in order of preference; the first with enough history decides.
    pub metric: Vec<String>,
    /// EMA smoothing weight in [0, 1); 0 means raw values.
    pub ema: f64,
    /// How far past its threshold the test must clear before a tripped rule re-arms.
    pub hysteresis: f64,
    pub test: Test,
}

/// The one test of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// The smoothed value against a threshold.
    Level(Bound),
    /// The raw value is NaN or ±inf.
    NonFinite,
    /// The smoothed value's change from a baseline.
    Change(ChangeTest),
    /// The least-squares slope per step of the last `window` smoothed values.
    Slope { window: usize, bound: Bound },
}

/// `x_above = t` or `x_below = t`: which side of `t` makes the test hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Above(f64),
    Below(f64),
}

impl Bound {
    pub fn holds(self, v: f64) -> bool {
        self.holds_within(v, 0.0)
    }

    /// Holds with the threshold moved by `slack` towards clearing: a false answer means the
    /// value cleared the threshold by at least the hysteresis.
    pub fn holds_within(self, v: f64, slack: f64) -> bool {
        match self {
            Self::Above(x) => v > x - slack,
            Self::Below(x) => v < x + slack,
        }
    }

    pub fn threshold(self) -> f64 {
        match self {
            Self::Above(x) | Self::Below(x) => x,
        }
    }
}

/// A comparison with the run's own baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeTest {
    pub baseline: Baseline,
    /// `first`: how many raw finite values make the baseline; `max`/`min`: the history needed.
    pub steps: usize,
    pub bound: Bound,
    /// The change is a fraction of |baseline| instead of the metric's own units.
    pub relative: bool,
    /// `after_rise` (max) or `after_fall` (min): the running extreme must first have moved this
    /// far from the first-`steps` mean.
    pub after: Option<f64>,
}

/// What a change is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// The mean of the first `baseline_steps` raw finite values.
    First,
    /// The running maximum of the smoothed value.
    Max,
    /// The running minimum of the smoothed value.
    Min,
}

/// A controller holding a metric inside a band by moving a hyperparameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Regulator {
    pub metric: Vec<String>,
    pub ema: f64,
    /// With a baseline, the band holds the smoothed value's change from it, not the value.
    pub baseline: Option<BandBaseline>,
    pub band: (f64, f64),
    pub hparam: String,
    pub when_below: Direction,
    pub step: f64,
    pub gain: f64,
    pub max_step: f64,
    pub bounds: (f64, f64),
    pub cooldown: u64,
    pub initial: Option<f64>,
}

/// What a regulator's band is measured from: its metric's own history, so that one band fits
/// runs and models whose metric sits at different levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandBaseline {
    pub baseline: Baseline,
    /// As a condition's `baseline_steps`.
    pub steps: usize,
    /// The change is a fraction of |baseline|.
    pub relative: bool,
}

/// Which way to move the hyperparameter while the metric is below the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Raise,
    Lower,
}

/// How urgent a firing is, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Self; 3] = [Self::Info, Self::Warning, Self::Critical];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}
