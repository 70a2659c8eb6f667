//! Errors of the optimizer crate.

use std::path::PathBuf;

/// What can go wrong while optimizing or saving optimizer state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// An MLX operation failed.
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// Reading or writing a state file failed.
    #[error("{path}: {message}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Parameters and gradients (or state) do not line up.
    #[error("{0}")]
    Mismatch(String),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, OptimError>;
