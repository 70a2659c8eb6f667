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
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// config.json (or GGUF metadata) is missing a field or has a wrong one.
    #[error("{path}: {message}")]
    Config {
        /// The file involved.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The checkpoint's tensors do not match the architecture.
    #[error("{path}: {message}")]
    Weights {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// Which tensors are missing, unexpected or misshapen.
        message: String,
    },
    /// The model cannot be written in the requested form (e.g. quantized
    /// weights to GGUF, an unsupported dtype).
    #[error("{path}: {message}")]
    Export {
        /// The file being written.
        path: PathBuf,
        /// What stands in the way and what to do.
        message: String,
    },
    /// A model name or path that is neither a directory, a GGUF file nor a built-in name.
    #[error("model `{0}` not found: expected a model directory (config.json + *.safetensors), a .gguf file, or a built-in name ({1})")]
    ModelNotFound(String, String),
    /// A generation or forward request that cannot be served.
    #[error("{0}")]
    InvalidRequest(String),
    /// Joining or using a distributed group failed.
    #[error("distributed: {0}")]
    Distributed(String),
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
