//! A run's checkpoints: the weights (a model folder's `model.safetensors`), the optimizer moments
//! and the trainer's state per checkpoint, and the pointers to the newest one and to the one a stop
//! kept. Every JSON file is written atomically, and a pointer is written only once the checkpoint
//! it names is complete.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::model::{checkpoint_tensors, relayout};
use crate::optim::AdamW;

/// What a checkpoint records beside the weights and optimizer moments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct TrainerState {
    pub(super) run_id: String,
    pub(super) step: usize,
    pub(super) beta: f64,
    pub(super) nll_alpha: f64,
    pub(super) lr_scale: f64,
    pub(super) seed: u64,
}

/// `latest.json` and `best.json`: which checkpoint, and (for people) where it is.
#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    step: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
}

/// A run's `checkpoints/` folder: `step-N/` per checkpoint, `latest.json` (the newest complete
/// one) and `best.json` (the one a stop asked to keep).
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

/// `value` as pretty JSON, written to a temp file and renamed over `path`.
fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).map_err(|e| TrainError::Data(e.to_string()))?;
    crate::atomic::write(path, json).map_err(|e| TrainError::io(path, e))
}

/// The JSON in `path`; `None` when there is no such file. Any other failure is an error.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

impl Checkpoints {
    /// The checkpoints of the run written to `output_dir`.
    pub fn of_run(output_dir: &Path) -> Self {
        Self {
            dir: output_dir.join("checkpoints"),
        }
    }

    fn step_dir(&self, step: usize) -> PathBuf {
        self.dir.join(format!("step-{step}"))
    }

    /// The weights of the checkpoint of `step`, a model folder's `model.safetensors`.
    pub fn weights(&self, step: usize) -> PathBuf {
        self.step_dir(step).join("model.safetensors")
    }

    /// The step a stop kept as best; `None` when no stop kept one.
    pub fn best(&self) -> Result<Option<usize>> {
        Ok(read_json::<Pointer>(&self.dir.join("best.json"))?.map(|p| p.step))
    }

    /// The newest complete checkpoint; `None` before the first.
    pub fn latest(&self) -> Result<Option<usize>> {
        Ok(read_json::<Pointer>(&self.dir.join("latest.json"))?.map(|p| p.step))
    }

    pub(super) fn save(
        &self,
        varmap: &VarMap,
        opt: &AdamW,
        state: &TrainerState,
    ) -> Result<PathBuf> {
        let dir = self.step_dir(state.step);
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        // Hugging Face names and layouts: a checkpoint is also a model folder's weights.
        candle_core::safetensors::save(&checkpoint_tensors(varmap)?, self.weights(state.step))?;
        candle_core::safetensors::save(&opt.state()?, dir.join("optimizer.safetensors"))?;
        write_json(&dir.join("trainer_state.json"), state)?;
        // Written last: a checkpoint is only "latest" once it is complete, and a crash while
        // writing the pointer must not lose the previous one.
        let latest = Pointer {
            step: state.step,
            path: None,
        };
        write_json(&self.dir.join("latest.json"), &latest)?;
        Ok(dir)
    }

    pub(super) fn restore(
        &self,
        step: usize,
        varmap: &VarMap,
        opt: &mut AdamW,
        device: &Device,
    ) -> Result<TrainerState> {
        let dir = self.step_dir(step);
        let state_file = dir.join("trainer_state.json");
        let state: TrainerState = read_json(&state_file)?.ok_or_else(|| {
            TrainError::Config(format!(
                "{}: missing, though latest.json names step {step}",
                state_file.display()
            ))
        })?;
        let weights = candle_core::safetensors::load(self.weights(step), device)?;
        for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
            let t = weights.get(name).ok_or_else(|| {
                TrainError::Config(format!("{}: no tensor {name}", dir.display()))
            })?;
            var.set(&relayout(name, t)?)?;
        }
        let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
        opt.load_state(&moments, state.step)?;
        Ok(state)
    }

    /// The newest checkpoint at or before `step`, recorded as the one to keep; `None` when
    /// there is none. An I/O error is an error, not "no checkpoint": the caller would otherwise
    /// report the starting model as the best.
    pub(super) fn mark_best(&self, step: usize) -> Result<Option<usize>> {
        let io = |e| TrainError::io(&self.dir, e);
        let mut best = None;
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(s) = name
                .to_str()
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|s| *s <= step)
            {
                best = best.max(Some(s));
            }
        }
        let Some(best) = best else { return Ok(None) };
        let pointer = Pointer {
            step: best,
            path: Some(self.step_dir(best)),
        };
        write_json(&self.dir.join("best.json"), &pointer)?;
        Ok(Some(best))
    }
}
