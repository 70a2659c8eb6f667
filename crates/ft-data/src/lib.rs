//! ft-data: everything mlx-ft does with text.
//!
//! It owns reading datasets (JSONL in chat, prompt/completion, text and
//! preference formats), validating them with located diagnostics, chat
//! templates (the model's Jinja template or the built-in Mistral v0.3
//! format), tokenization (HF `tokenizer.json` or GGUF metadata, read and
//! written through `ft-gguf`), loss masks, length-bucketed batching and
//! packing with a resumable cursor, dataset statistics, and a "what the
//! model sees" view of examples.
//!
//! It must not know about MLX, tensors, model weights, adapters or
//! optimizers: batches are plain `Vec<Vec<u32>>` token ids with masks, and
//! the trainer turns them into arrays.

#![forbid(unsafe_code)]

pub mod batch;
pub mod dataset;
pub mod diagnostic;
pub mod encode;
pub mod error;
pub mod format;
pub mod gguf_vocab;
pub mod jsonl;
pub mod render;
pub mod stats;
pub mod template;
pub mod tokenizer;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;

pub use batch::{Batch, BatchOptions, Batcher, Cursor, Plan};
pub use dataset::{check_structure, check_structure_with, validate, DataOptions, Dataset};
pub use diagnostic::{Diagnostic, DiagnosticKind, ReportCounts, Severity, ValidationReport};
pub use encode::{
    EncodeOptions, EncodedExample, EncodedSet, Encoder, LabelFilter, OverLengthPolicy, TrainOn,
};
pub use error::{DataError, Result};
pub use format::{CheckOptions, Example, Format, Message, Role, ToolCall, ToolSpec};
pub use gguf_vocab::tokenizer_gguf_metadata;
pub use jsonl::{
    parse_jsonl, parse_jsonl_with, read_jsonl, read_jsonl_with, ParsedFile, Source, SourceExample,
};
pub use render::{render_example, RenderedExample};
pub use stats::{estimate_epoch, DataStats, EpochEstimate, LengthBucket};
pub use template::{ChatFormatter, TemplateChoice, Tokenized};
pub use tokenizer::{SpecialTokens, SpmOptions, SpmPiece, TextTokenizer, TokenKind};
