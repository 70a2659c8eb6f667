//! The error type of ft-model.

use std::path::PathBuf;

/// Everything that can go wrong in ft-model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An MLX operation failed.
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// Reading or writing a tensor file failed.
    #[error("MLX I/O on {path}: {message}")]
    MlxIo {
        /// The file involved.
        path: PathBuf,
        /// What MLX reported.
        message: String,
    },
    /// A runtime self-check produced a wrong number.
    #[error("{check}: expected {expected}, got {got}")]
    CheckFailed {
        /// Which check.
        check: &'static str,
        /// What was expected.
        expected: String,
        /// What came out.
        got: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
