//! Redline's shared vocabulary: the wire types of HTTP API v1, validated names, the non-finite
//! number encoding, the pure series functions (downsampling) and the rule engine (rule files,
//! presets, the per-step evaluator and the regulator). No I/O lives here, so the server, the
//! trainer and the CLI can all depend on it. The `sqlx` feature (the server's) derives only
//! row decoding on the stored wire types, so they need no mirror struct in the store.

pub mod catalogue;
pub mod hparams;
pub mod names;
pub mod rules;
pub mod series;
pub mod value;
pub mod wire;

pub use names::{HparamName, MetricName, NameError, RuleSetName, RunId, WebhookName};
pub use value::MetricValue;

/// Stored text that names no variant: the database holds something this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("stored {what} {value:?} is not one Redline knows")]
pub struct UnknownVariant {
    what: &'static str,
    value: String,
}

/// `TryFrom<String>` through each enum's `parse`, for decoding stored text.
macro_rules! try_from_stored {
    ($($ty:ty => $what:literal),* $(,)?) => {$(
        impl TryFrom<String> for $ty {
            type Error = UnknownVariant;
            fn try_from(value: String) -> Result<Self, UnknownVariant> {
                Self::parse(&value).ok_or(UnknownVariant { what: $what, value })
            }
        }
    )*};
}
try_from_stored!(
    wire::RunStatus => "run status",
    wire::SignalKind => "signal kind",
    wire::WebhookFormat => "webhook format",
    rules::Severity => "severity",
);
