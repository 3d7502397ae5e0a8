//! Validated identifiers. Every name that reaches storage passes through one of these types,
//! so the rules live in one place and the error says which rule was broken.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("must start with {expected}")]
    BadStart { expected: &'static str },
    #[error("contains {found:?}; allowed are {allowed}")]
    BadChar { found: char, allowed: &'static str },
    #[error("names starting with '_' are reserved for Redline's own series")]
    Reserved,
}

fn check(
    s: &str,
    max: usize,
    start_ok: fn(char) -> bool,
    start_desc: &'static str,
    char_ok: fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), NameError> {
    let mut chars = s.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    let len = s.chars().count();
    if len > max {
        return Err(NameError::TooLong { len, max });
    }
    if !start_ok(first) {
        return Err(NameError::BadStart {
            expected: start_desc,
        });
    }
    match s.chars().find(|&c| !char_ok(c)) {
        Some(found) => Err(NameError::BadChar { found, allowed }),
        None => Ok(()),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $validate:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let validate: fn(&str) -> Result<(), NameError> = $validate;
                validate(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        // Eq, Ord and Hash are the inner string's, so maps keyed by the name can be searched by `&str`.
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Characters allowed in a metric name after the first: ASCII letters, digits, `_ - . /`.
pub const METRIC_NAME_CHARS: &str = "ASCII letters, digits and _ - . /";
/// The longest metric name accepted.
pub const METRIC_NAME_MAX: usize = 128;

fn metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

fn validate_series_name(s: &str) -> Result<(), NameError> {
    check(
        s,
        METRIC_NAME_MAX,
        |c| c.is_ascii_alphanumeric() || c == '_',
        "an ASCII letter or digit",
        metric_char,
        METRIC_NAME_CHARS,
    )
}

name_type!(
    /// A metric (series) name such as `rewards/chosen` or `eval/topk_entropy/generated`:
    /// 1 to 128 characters of ASCII letters, digits and `_ - . /`, starting with a letter or digit.
    /// Names starting with `_` are Redline's own (see [`MetricName::TIME`]) and can be read
    /// but not written by clients; use [`MetricName::parse_readable`] for reads.
    MetricName,
    |s| {
        validate_series_name(s)?;
        if s.starts_with('_') {
            return Err(NameError::Reserved);
        }
        Ok(())
    }
);

impl MetricName {
    /// The reserved series holding each step's wall-clock time (seconds since the Unix epoch).
    pub const TIME: &'static str = "_time";

    /// Accepts client names and Redline's reserved `_`-prefixed series, for reading back.
    pub fn parse_readable(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        validate_series_name(&s)?;
        Ok(Self(s))
    }

    /// The reserved step-time series.
    pub fn time() -> Self {
        Self(Self::TIME.to_owned())
    }
}

/// Characters allowed in a run id.
pub const RUN_ID_CHARS: &str = "ASCII letters, digits and _ - .";
/// The longest run id accepted.
pub const RUN_ID_MAX: usize = 64;

name_type!(
    /// A client-chosen run id: 1 to 64 characters of ASCII letters, digits and `_ - .`, starting
    /// with a letter or digit. Chosen by the client so that a retried create cannot make two runs.
    RunId,
    |s| check(
        s,
        RUN_ID_MAX,
        |c| c.is_ascii_alphanumeric(),
        "an ASCII letter or digit",
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'),
        RUN_ID_CHARS,
    )
);

name_type!(
    /// A training hyperparameter a signal may set, such as `beta` or `nll_alpha`: 1 to 64
    /// characters of lowercase ASCII letters, digits and `_`, starting with a letter.
    HparamName,
    |s| check(
        s,
        64,
        |c| c.is_ascii_lowercase(),
        "a lowercase ASCII letter",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
        "lowercase ASCII letters, digits and _",
    )
);

/// Characters allowed in rule-set and webhook names.
pub const SLUG_CHARS: &str = "lowercase ASCII letters, digits, _ and -";

fn validate_slug(s: &str) -> Result<(), NameError> {
    check(
        s,
        64,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        "a lowercase ASCII letter or digit",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'),
        SLUG_CHARS,
    )
}

name_type!(
    /// The name of a rule set, such as `presets`: 1 to 64 characters of lowercase ASCII letters,
    /// digits, `_` and `-`, starting with a letter or digit.
    RuleSetName,
    validate_slug
);

name_type!(
    /// The name of a webhook, such as `oncall-slack`; same characters as [`RuleSetName`].
    WebhookName,
    validate_slug
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_the_documented_rules() {
        for ok in [
            "loss",
            "rewards/chosen",
            "eval/topk_entropy/generated",
            "a.b-c_d",
            "0",
        ] {
            assert!(MetricName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(MetricName::parse(""), Err(NameError::Empty));
        assert_eq!(MetricName::parse("_time"), Err(NameError::Reserved));
        assert!(MetricName::parse_readable("_time").is_ok());
        assert!(matches!(
            MetricName::parse("/loss"),
            Err(NameError::BadStart { .. })
        ));
        assert_eq!(
            MetricName::parse("loss rate"),
            Err(NameError::BadChar {
                found: ' ',
                allowed: METRIC_NAME_CHARS
            })
        );
        assert_eq!(
            MetricName::parse("x".repeat(129)),
            Err(NameError::TooLong { len: 129, max: 128 })
        );
        assert!(MetricName::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn run_ids_and_hparams_are_validated() {
        assert!(RunId::parse("dpo-beta0.1_seed3").is_ok());
        assert!(RunId::parse("a/b").is_err());
        assert!(RunId::parse("-x").is_err());
        assert!(HparamName::parse("nll_alpha").is_ok());
        assert!(HparamName::parse("Beta").is_err());
    }
}
