//! `server-run.json`: what a run folder must say about its run for `redline push` to deliver it
//! later, with no trainer around: the run id, the body that creates it, the server it was trained
//! against and how the trainer ended it. The token is never written.

use std::path::{Path, PathBuf};

use redline_core::wire::{CreateRun, FinishRun};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// The server `redline train` reported to; `None` for an offline run.
    pub server: Option<String>,
    /// Body of the create-or-resume call (name, project, tags, config, rules).
    pub create: CreateRun,
    /// How the trainer ended the run; `None` while it trains, or when it was interrupted.
    pub ended: Option<FinishRun>,
}

impl RunRecord {
    pub const FILE: &'static str = "server-run.json";

    fn path(dir: &Path) -> PathBuf {
        dir.join(Self::FILE)
    }

    /// Written to a temp file and renamed, so a crash leaves the old record or the new one.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let json =
            serde_json::to_string_pretty(self).map_err(|e| TrainError::Data(e.to_string()))?;
        crate::atomic::write(&path, json).map_err(|e| TrainError::io(&path, e))
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TrainError::Config(format!(
                    "{} has no {}: it is not the output folder of a `redline train` run (or \
                     of one from before Redline wrote it)",
                    dir.display(),
                    Self::FILE
                ))
            } else {
                TrainError::io(&path, e)
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
    }
}
