//! Redline's trainer: a trainable Llama/Qwen2-family decoder in candle, the DPO-family losses and
//! the over-optimisation metrics of ../shared/REFERENCE.md.

pub mod data;
pub mod error;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod step;
#[cfg(test)]
mod trl_parity;

pub use error::{Result, TrainError};
