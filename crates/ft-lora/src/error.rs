//! Errors of the adapter crate.

use std::path::PathBuf;

/// What can go wrong with adapters.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// An MLX operation failed.
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// The model layer underneath failed.
    #[error(transparent)]
    Model(#[from] ft_model::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An adapter file is malformed or does not fit the model.
    #[error("{path}: {message}")]
    Adapter {
        /// The adapter file or directory.
        path: PathBuf,
        /// What is wrong, naming fields and shapes.
        message: String,
    },
    /// The LoRA settings do not fit the model.
    #[error("{0}")]
    Spec(String),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, LoraError>;
