//! Errors of the training engine, by category.

use std::path::PathBuf;

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The data could not be read, or is invalid.
    #[error(transparent)]
    Data(#[from] ft_data::DataError),
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] ft_model::Error),
    /// The adapters could not be built, read or written.
    #[error(transparent)]
    Lora(#[from] ft_lora::LoraError),
    /// The optimizer failed, or its state file is bad.
    #[error(transparent)]
    Optim(#[from] ft_optim::OptimError),
    /// An MLX operation failed.
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// A file in the run directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The disk of the run directory is full, or too full for the next write
    /// (checked with the size of a checkpoint before writing it).
    #[error("{}", crate::disk::disk_full_message(path, *needed, *available))]
    DiskFull {
        /// The file or checkpoint directory that could not be written.
        path: PathBuf,
        /// Bytes the write needs, when known.
        needed: Option<u64>,
        /// Bytes free on that disk when the write failed, when known.
        available: Option<u64>,
    },
    /// A checkpoint is missing, incomplete or from another run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss or the gradients became NaN or infinite and the policy is to stop.
    #[error(
        "step {step}: the {what} is not finite ({value}); stopped with the last good checkpoint \
         intact{}. Lower optimizer.learning_rate, or set training.on_nonfinite = \"skip\"",
        last_checkpoint.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default()
    )]
    NonFinite {
        /// The optimizer step (1-based).
        step: u64,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The offending value.
        value: f64,
        /// The newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },
    /// The memory estimate of the configuration exceeds the machine's memory
    /// (checked before the model is loaded; `memory.check_fits`).
    #[error(
        "this configuration is predicted to need {} at its peak, more than the {} {}. \
         What would fit:\n{suggestions}\nOr set memory.check_fits = false to try anyway",
        crate::disk::human_bytes(*predicted),
        crate::disk::human_bytes(*available),
        budget
    )]
    WontFit {
        /// `ft estimate-memory`'s prediction in bytes.
        predicted: u64,
        /// The memory it was compared with, in bytes.
        available: u64,
        /// What that memory is (the GPU's working set, the machine's memory).
        budget: &'static str,
        /// One line per change that was estimated, with its prediction.
        suggestions: String,
    },
    /// MLX could not allocate memory during a step.
    #[error(
        "out of memory at step {step}: {message}. The last checkpoint is intact{}; lower \
         training.batch_size or data.max_seq_len, set training.grad_checkpointing = true or \
         quantize the base model (`ft estimate-memory` shows what each costs), then resume",
        last_checkpoint.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default()
    )]
    OutOfMemory {
        /// The optimizer step (1-based) that failed.
        step: u64,
        /// MLX's message.
        message: String,
        /// The newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },
    /// A data-parallel run could not start or lost a rank.
    #[error("distributed run: {0}")]
    Distributed(String),
}

impl TrainError {
    /// Whether the user can fix this (bad config, data, files) rather than
    /// it being a failure inside mlx-ft.
    pub fn is_user_error(&self) -> bool {
        match self {
            TrainError::Mlx(_) | TrainError::Optim(ft_optim::OptimError::Mlx(_)) => false,
            TrainError::Model(error) => !matches!(error, ft_model::Error::Mlx(_)),
            _ => true,
        }
    }
}

/// Whether an MLX message is an allocation failure (Metal's resource
/// limit, the allocator's out-of-memory, a failed `malloc`).
pub fn is_out_of_memory_message(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "[metal::malloc]",
        "resource limit",
        "out of memory",
        "bad_alloc",
        "failed to allocate",
    ]
    .iter()
    .any(|marker| lower.contains(marker))
}

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| {
        if crate::disk::is_out_of_space(&source) {
            crate::disk::disk_full(path, None)
        } else {
            TrainError::Io { path, source }
        }
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
