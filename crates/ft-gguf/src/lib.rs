//! # ft-gguf
//!
//! Owns the GGUF container format (llama.cpp's model file): the one
//! metadata value type ([`GgufValue`]), the one reader of a file's header,
//! metadata and tensor table ([`GgufMetadata`], [`GgufLayout`]) and the
//! streaming writer ([`GgufWriter`]).
//!
//! The reader trusts nothing in the file: every count, length, type and
//! offset is checked against what is left of the input before anything is
//! allocated or skipped, and every problem is an [`Error::Format`] naming
//! the byte offset and what was being read there. It reads the metadata
//! alone (what a tokenizer needs) or the metadata and the tensor table
//! (what a weight loader checks before it maps the file); tensor *data* is
//! never read, only located.
//!
//! The writer takes the metadata and the tensors' names, shapes and types
//! up front, writes the header at once, then takes each tensor's bytes in
//! turn, so a caller can compute, write and drop one tensor at a time.
//!
//! It must not know about MLX, tensors as arrays, model architectures,
//! tokenizers or any other crate of the workspace: it moves bytes and
//! values, and what a key *means* (`llama.block_count`,
//! `tokenizer.ggml.tokens`) is its callers' business. Which GGUF files a
//! particular loader accepts (MLX's reader refuses nested arrays, other
//! alignments and most quantization types) is the loader's policy, checked
//! by its crate on top of the [`GgufLayout`] read here.
#![forbid(unsafe_code)]

mod error;
mod read;
mod tensor;
mod value;
mod write;

pub use error::{Error, Result};
pub use read::{GgufLayout, GgufMetadata};
pub use tensor::{GgmlType, GgufTensorInfo, GgufTensorSpec};
pub use value::GgufValue;
pub use write::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// GGUF versions read (both store counts and lengths as 64-bit numbers).
pub const READ_VERSIONS: std::ops::RangeInclusive<u32> = 2..=3;
/// The version written.
pub const WRITE_VERSION: u32 = 3;
/// The data alignment when `general.alignment` is absent, and the one the
/// writer uses.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays nested deeper than this are refused (real files use depth 1).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// GGML's limit on the number of tensor dimensions.
pub const MAX_DIMS: u32 = 4;
/// A single string longer than this is taken as corruption, not data.
pub const MAX_STRING_LEN: u64 = 256 * 1024 * 1024;
