//! The trainer's error type: every failure names the file, field or setting at fault.

use std::path::Path;

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A model folder or configuration Redline cannot use.
    #[error("{0}")]
    Config(String),
    /// The server refused the token or the run: no retry can succeed.
    #[error("{0}")]
    Refused(String),
    /// Training data that does not parse or does not fit.
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
