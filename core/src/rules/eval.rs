//! The evaluator: fed one step at a time, it keeps every rule's state (streaks, trips, cooldowns)
//! and answers with the firings of that step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::condition::{ConditionState, Keep};
use super::regulate::RegulatorState;
use super::{Combine, Rule, RuleKind, RuleSet, Severity, TripAction, TripRule};

/// What a firing asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Alert,
    /// Stop training; `keep_step` is the step to keep as best (where the indicator turned).
    Stop {
        keep_step: Option<i64>,
    },
    Checkpoint,
    SetHparam {
        name: String,
        value: f64,
    },
}

impl Action {
    /// The name a rule event stores and `/metrics` labels it by.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Stop { .. } => "stop",
            Self::Checkpoint => "checkpoint",
            Self::SetHparam { .. } => "regulate",
        }
    }
}

/// One action of one rule at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub rule_set: String,
    pub rule: String,
    pub step: i64,
    pub action: Action,
    pub severity: Severity,
    /// One line for people: what held, e.g. "logps_mean/chosen (EMA 0.9) -6.91 is 1.15 below its
    /// start -5.76 while rewards/margins rises 0.004/step, for 5 steps".
    pub message: String,
    /// The values that tripped it, keyed like "logps_mean/chosen", "logps_mean/chosen:smoothed",
    /// "logps_mean/chosen:baseline", "rewards/margins:slope". May hold non-finite numbers.
    pub values: BTreeMap<String, f64>,
}

/// Evaluates rule sets over a run, one step at a time.
#[derive(Debug, Clone)]
pub struct Evaluator {
    sets: Vec<SetState>,
    metrics: BTreeSet<String>,
    /// `metrics` in order: a metric's index here is its slot in a step's values.
    slots: Vec<String>,
    last_step: Option<i64>,
}

#[derive(Debug, Clone)]
struct SetState {
    name: String,
    rules: Vec<(Rule, RuleState)>,
}

#[derive(Debug, Clone)]
enum RuleState {
    Trip(TripState),
    Regulate(RegulatorState),
}

impl Evaluator {
    /// `sets`: (rule-set name, rule set) in the run's order. Rules of different sets may share names.
    pub fn new(sets: &[(String, RuleSet)]) -> Self {
        let metrics: BTreeSet<String> = sets.iter().flat_map(|(_, set)| set.metrics()).collect();
        let slots: Vec<String> = metrics.iter().cloned().collect();
        let slot = |name: &str| {
            slots
                .binary_search_by(|m| m.as_str().cmp(name))
                .expect("every metric a rule reads is in its set's metrics()")
        };
        let sets = sets
            .iter()
            .map(|(name, set)| {
                let rules = set
                    .rules
                    .iter()
                    .map(|rule| {
                        let state = match &rule.kind {
                            RuleKind::Trip(t) => RuleState::Trip(TripState::new(t, &slot)),
                            RuleKind::Regulate(r) => {
                                RuleState::Regulate(RegulatorState::new(r, &slot))
                            }
                        };
                        (rule.clone(), state)
                    })
                    .collect();
                SetState {
                    name: name.clone(),
                    rules,
                }
            })
            .collect();
        Self {
            sets,
            metrics,
            slots,
            last_step: None,
        }
    }

    /// Feeds one step. Steps must increase: a step <= last_step() is ignored (returns nothing).
    /// `value(name)` is the raw value of that metric at this step, None when not reported at this step.
    pub fn observe(&mut self, step: i64, value: &dyn Fn(&str) -> Option<f64>) -> Vec<Firing> {
        let values: Vec<Option<f64>> = self.slots.iter().map(|m| value(m)).collect();
        self.observe_slots(step, &values)
    }

    /// [`observe`](Self::observe) without name lookups, for hot paths: `values[i]` is the raw
    /// value at this step of the `i`-th metric of [`metrics`](Self::metrics) (in its order).
    ///
    /// # Panics
    /// When `values` has fewer entries than `metrics()`.
    pub fn observe_slots(&mut self, step: i64, values: &[Option<f64>]) -> Vec<Firing> {
        assert!(
            values.len() >= self.slots.len(),
            "observe_slots needs a value slot per metric"
        );
        if self.last_step.is_some_and(|last| step <= last) {
            return Vec::new();
        }
        self.last_step = Some(step);
        let mut out = Vec::new();
        for set in &mut self.sets {
            for (rule, state) in &mut set.rules {
                let fired = match (&rule.kind, state) {
                    (RuleKind::Trip(t), RuleState::Trip(s)) => s.observe(rule, t, step, values),
                    (RuleKind::Regulate(r), RuleState::Regulate(s)) => s
                        .observe(rule.warmup, r, step, values)
                        .into_iter()
                        .collect(),
                    _ => unreachable!("state is built from the rule's kind"),
                };
                out.extend(
                    fired
                        .into_iter()
                        .map(|(action, severity, message, values)| Firing {
                            rule_set: set.name.clone(),
                            rule: rule.name.clone(),
                            step,
                            action,
                            severity,
                            message,
                            values,
                        }),
                );
            }
        }
        out
    }

    pub fn last_step(&self) -> Option<i64> {
        self.last_step
    }

    /// The union of every set's metrics(): the server only transposes these out of a batch.
    pub fn metrics(&self) -> &BTreeSet<String> {
        &self.metrics
    }
}

/// A firing before it is addressed: action, severity, message, values.
pub(super) type Fired = (Action, Severity, String, BTreeMap<String, f64>);

#[derive(Debug, Clone)]
struct TripState {
    conditions: Vec<ConditionState>,
    evaluated: u64,
    streak: u64,
    /// The last evaluated step before the current streak began.
    before_streak: Option<i64>,
    last_evaluated: Option<i64>,
    /// Fired and not yet re-armed by a condition clearing its hysteresis.
    tripped: bool,
    last_fired: Option<i64>,
}

impl TripState {
    fn new(rule: &TripRule, slot: &dyn Fn(&str) -> usize) -> Self {
        Self {
            conditions: rule
                .conditions
                .iter()
                .map(|c| ConditionState::new(c, slot))
                .collect(),
            evaluated: 0,
            streak: 0,
            before_streak: None,
            last_evaluated: None,
            tripped: false,
            last_fired: None,
        }
    }

    fn observe(
        &mut self,
        rule: &Rule,
        trip: &TripRule,
        step: i64,
        values: &[Option<f64>],
    ) -> Vec<Fired> {
        let mut fresh = false;
        for (state, cond) in self.conditions.iter_mut().zip(&trip.conditions) {
            fresh |= state.observe(cond, step, values);
        }
        if !fresh {
            return Vec::new();
        }
        self.evaluated += 1;
        let holds = trip
            .combine
            .of(self.conditions.iter().map(|c| c.outcome.holds));
        if holds {
            if self.streak == 0 {
                self.before_streak = self.last_evaluated;
            }
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        self.last_evaluated = Some(step);
        if self.tripped
            && !trip
                .combine
                .of(self.conditions.iter().map(|c| !c.outcome.cleared))
        {
            self.tripped = false;
        }
        let cooling = self
            .last_fired
            .is_some_and(|last| within(step, last, trip.cooldown));
        if !holds
            || self.tripped
            || cooling
            || self.streak < trip.for_steps
            || self.evaluated <= rule.warmup
        {
            return Vec::new();
        }
        self.tripped = true;
        self.last_fired = Some(step);
        let (message, values) = self.explain(trip);
        trip.actions
            .iter()
            .map(|a| {
                let action = match a {
                    TripAction::Alert => Action::Alert,
                    TripAction::Checkpoint => Action::Checkpoint,
                    TripAction::Stop => Action::Stop {
                        keep_step: self.keep_step(),
                    },
                };
                (action, trip.severity, message.clone(), values.clone())
            })
            .collect()
    }

    /// The earliest step any holding condition points back to.
    fn keep_step(&self) -> Option<i64> {
        self.conditions
            .iter()
            .filter(|c| c.outcome.holds)
            .filter_map(|c| match c.outcome.keep {
                Keep::None => None,
                Keep::At(step) => Some(step),
                Keep::StreakStart => self.before_streak,
            })
            .min()
    }

    fn explain(&self, trip: &TripRule) -> (String, BTreeMap<String, f64>) {
        let mut values = Vec::new();
        let phrases: Vec<String> = self
            .conditions
            .iter()
            .zip(&trip.conditions)
            .filter(|(state, _)| state.outcome.holds)
            .filter_map(|(state, cond)| state.describe(cond, &mut values))
            .collect();
        let joiner = match trip.combine {
            Combine::All => " while ",
            Combine::Any => " and ",
        };
        let mut message = phrases.join(joiner);
        if self.streak > 1 {
            let _ = write!(message, ", for {} steps", self.streak);
        }
        (message, values.into_iter().collect())
    }
}

/// Whether `step` is fewer than `steps` steps after `last` (real step numbers; no overflow).
pub(super) fn within(step: i64, last: i64, steps: u64) -> bool {
    u64::try_from(step.saturating_sub(last)).is_ok_and(|d| d < steps)
}
