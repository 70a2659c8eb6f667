//! The crate's error type.

use std::path::{Path, PathBuf};

/// What went wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("{}{source}", prefix(path))]
    Io {
        /// The file, when the input or output is one.
        path: Option<PathBuf>,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed GGUF file.
    #[error("{}at offset {offset}: {message}", prefix(path))]
    Format {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Byte offset of the problem (of the entry that holds it).
        offset: u64,
        /// What was being read, what was expected and what was found.
        message: String,
    },
    /// A metadata key that was asked for is absent.
    #[error("GGUF metadata has no key {key:?}")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata key holds another type of value than the one asked for.
    #[error("GGUF metadata key {key:?}: expected {expected}, got {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What was asked for: `string`, `u32`, `array of strings`, ...
        expected: &'static str,
        /// The type found (of the offending element, in a list).
        found: &'static str,
    },
    /// What was given to the writer cannot be written as GGUF.
    #[error("{}{message}", prefix(path))]
    Write {
        /// The file being written, when output goes to one.
        path: Option<PathBuf>,
        /// What is wrong, naming the key or tensor.
        message: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn prefix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|path| format!("{}: ", path.display()))
        .unwrap_or_default()
}

impl Error {
    /// The file the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. } | Self::Format { path, .. } | Self::Write { path, .. } => {
                path.as_deref()
            }
            Self::MissingKey { .. } | Self::WrongType { .. } => None,
        }
    }

    /// The byte offset of a format error.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Format { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// The same error, naming `file` when it names no file yet.
    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        if let Self::Io { path, .. } | Self::Format { path, .. } | Self::Write { path, .. } =
            &mut self
        {
            path.get_or_insert_with(|| file.to_path_buf());
        }
        self
    }

    pub(crate) fn wrong_type(key: &str, expected: &'static str, found: &crate::GgufValue) -> Self {
        Self::WrongType {
            key: key.to_string(),
            expected,
            found: found.type_name(),
        }
    }
}
