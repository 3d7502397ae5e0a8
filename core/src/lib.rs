//! Redline's shared vocabulary: the wire types of HTTP API v1, validated names, the non-finite
//! number encoding, the pure series functions (downsampling) and the rule engine (rule files,
//! presets, the per-step evaluator and the regulator). No I/O lives here, so the server, the
//! trainer and the CLI can all depend on it.

pub mod catalogue;
pub mod hparams;
pub mod names;
pub mod rules;
pub mod series;
pub mod value;
pub mod wire;

pub use names::{HparamName, MetricName, NameError, RuleSetName, RunId, WebhookName};
pub use value::MetricValue;
