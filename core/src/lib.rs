//! Redline's shared vocabulary: the wire types of HTTP API v1, validated names, the non-finite
//! number encoding and the pure series functions (downsampling). No I/O lives here, so the
//! server, the trainer and the CLI can all depend on it.

pub mod names;
pub mod series;
pub mod value;
pub mod wire;

pub use names::{HparamName, MetricName, NameError, RunId};
pub use value::MetricValue;
