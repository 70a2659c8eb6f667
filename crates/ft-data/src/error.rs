//! The crate's error type.
//!
//! Problems *inside* a dataset (a bad line, a wrong role) are not errors:
//! they are [`Diagnostic`](crate::Diagnostic)s collected in a
//! [`ValidationReport`](crate::ValidationReport), so one run reports all of
//! them. [`DataError`] is for what stops the work: unreadable files, broken
//! tokenizers, templates that fail to compile, a dataset with errors.

use std::path::PathBuf;

/// What went wrong in ft-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A GGUF file is malformed (located: the byte offset and what was
    /// read there) or unreadable, or lacks a metadata key a tokenizer needs.
    #[error(transparent)]
    Gguf(#[from] ft_gguf::Error),
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {message}")]
    Tokenizer {
        /// What went wrong.
        message: String,
    },
    /// A chat template failed to compile or render.
    #[error("chat template: {message}")]
    Template {
        /// What went wrong.
        message: String,
    },
    /// The dataset has errors; the report lists every one.
    #[error("dataset has {errors} error(s); first: {first}")]
    Invalid {
        /// Number of error diagnostics.
        errors: usize,
        /// The first error, rendered.
        first: String,
        /// The full report.
        report: Box<crate::ValidationReport>,
    },
    /// An option is out of range or inconsistent.
    #[error("invalid option: {message}")]
    Options {
        /// What is wrong.
        message: String,
    },
    /// A saved batch cursor does not fit the dataset.
    #[error("cursor: {message}")]
    Cursor {
        /// What is wrong.
        message: String,
    },
}

impl DataError {
    pub(crate) fn tokenizer(message: impl std::fmt::Display) -> Self {
        DataError::Tokenizer {
            message: message.to_string(),
        }
    }

    pub(crate) fn template(message: impl std::fmt::Display) -> Self {
        DataError::Template {
            message: message.to_string(),
        }
    }

    pub(crate) fn options(message: impl std::fmt::Display) -> Self {
        DataError::Options {
            message: message.to_string(),
        }
    }
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
