//! Redline's trainer: a trainable Llama/Qwen2-family decoder in candle, the DPO-family losses and
//! the over-optimisation metrics of ../shared/REFERENCE.md.

pub mod error;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod optim;

pub use error::{Result, TrainError};
