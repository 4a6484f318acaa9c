//! Errors of model loading and generation. Every variant that concerns a file names it.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file that is truncated, corrupt or not what it claims to be.
    #[error("{}: {msg}", path.display())]
    BadFile { path: PathBuf, msg: String },

    /// A model whose tensors or hyper-parameters are missing or inconsistent.
    #[error("{}: {msg}", path.display())]
    BadModel { path: PathBuf, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    /// Prompt plus requested tokens do not fit in the context.
    #[error("context length exceeded: {needed} tokens needed, the context holds {limit}")]
    ContextFull { needed: usize, limit: usize },

    /// Bad arguments to a generation or sampling call.
    #[error("{0}")]
    InvalidArgument(String),

    #[error(transparent)]
    Core(#[from] bitnet_core::Error),
}

impl Error {
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn bad_model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadModel {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
