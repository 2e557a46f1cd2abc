//! The trainer's one error type. Every variant names the file (and line) or the setting at fault,
//! so the daemon can show it to the user as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The base model cannot be loaded: missing files, unsupported architecture, bad shapes.
    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },
    /// A data row is malformed; `line` is 1-based.
    #[error("{path}:{line}: {message}")]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// A PEFT adapter that cannot be read or does not fit the model.
    #[error("adapter {path}: {message}")]
    Adapter { path: PathBuf, message: String },
    /// A job setting that cannot work with this model or data.
    #[error("{0}")]
    Config(String),
    /// The run was stopped from outside (cancel, pause, shutdown).
    #[error("stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }
}
