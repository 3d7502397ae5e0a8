//! Redline's trainer: a trainable Llama/Qwen2-family decoder in candle, the DPO-family losses and
//! the over-optimisation metrics of ../shared/REFERENCE.md.
#![expect(
    clippy::many_single_char_names,
    clippy::similar_names,
    reason = "tensor code reads best with the papers' names: b, t, v, z, ρ; mass and max"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "candle's convention: modules are built with `new(cfg, vb: VarBuilder)`"
)]

mod atomic;
pub mod config;
pub mod cut;
pub mod data;
pub mod error;
pub mod generate;
pub mod iterate;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod optim;
#[cfg(test)]
mod precision_tests;
pub mod reporter;
pub mod rng;
pub mod step;
pub mod train;
#[cfg(test)]
mod trl_parity;

pub use error::{Result, TrainError};
