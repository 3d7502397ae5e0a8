//! The hyperparameters a signal may steer while a run trains, and the values each accepts. This
//! is the one definition: the server refuses a `set_hparam` signal outside it, the rule files'
//! regulators are checked against it, and the trainer applies exactly these.

use std::fmt;

/// A hyperparameter the trainer can change between two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Steerable {
    /// DPO's β: how far the policy may move from the reference. Must stay positive.
    Beta,
    /// The weight of the NLL term on the chosen completions (RPO). Zero turns it off.
    NllAlpha,
    /// A factor on the scheduled learning rate. Zero pauses the updates.
    LrScale,
}

/// The inclusive upper bound of every steerable value: far beyond any sensible setting, low
/// enough that a typo (`1e9`) is refused instead of wrecking the run.
const MAX: f64 = 1_000.0;

impl Steerable {
    pub const ALL: [Self; 3] = [Self::Beta, Self::NllAlpha, Self::LrScale];

    /// The name used in signals, rule files and the trainer's metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Beta => "beta",
            Self::NllAlpha => "nll_alpha",
            Self::LrScale => "lr_scale",
        }
    }

    /// Reads a name; the error lists the names accepted.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|h| h.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "{name:?} cannot be steered; the steerable hyperparameters are {}",
                    Self::names()
                )
            })
    }

    /// `beta, nll_alpha, lr_scale`, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    /// Whether `value` may be set: finite and within the range [`Self::range_text`] states.
    pub fn accepts(self, value: f64) -> bool {
        let low_ok = match self {
            Self::Beta => value > 0.0,
            Self::NllAlpha | Self::LrScale => value >= 0.0,
        };
        value.is_finite() && low_ok && value <= MAX
    }

    /// The accepted range, as people read it.
    pub fn range_text(self) -> String {
        match self {
            Self::Beta => format!("greater than 0 and at most {MAX}"),
            Self::NllAlpha | Self::LrScale => format!("between 0 and {MAX}"),
        }
    }

    /// `value` when it is accepted, else a message naming the range.
    pub fn check(self, value: f64) -> Result<f64, String> {
        if self.accepts(value) {
            Ok(value)
        } else {
            Err(format!(
                "{} must be {}, got {value}",
                self.as_str(),
                self.range_text()
            ))
        }
    }
}

impl fmt::Display for Steerable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused_with_the_list() {
        for h in Steerable::ALL {
            assert_eq!(Steerable::parse(h.as_str()), Ok(h));
        }
        let err = Steerable::parse("learning_rate").unwrap_err();
        assert!(err.contains("beta, nll_alpha, lr_scale"), "{err}");
    }

    #[test]
    fn ranges_refuse_what_the_trainer_cannot_apply() {
        assert!(!Steerable::Beta.accepts(0.0));
        assert!(!Steerable::Beta.accepts(-1.0));
        assert!(Steerable::Beta.accepts(0.1));
        assert!(Steerable::NllAlpha.accepts(0.0));
        assert!(!Steerable::NllAlpha.accepts(-0.5));
        assert!(Steerable::LrScale.accepts(0.0));
        assert!(!Steerable::LrScale.accepts(f64::NAN));
        assert!(!Steerable::LrScale.accepts(f64::INFINITY));
        assert!(!Steerable::Beta.accepts(1e9));
        let err = Steerable::Beta.check(-1.0).unwrap_err();
        assert!(err.contains("greater than 0"), "{err}");
    }
}
