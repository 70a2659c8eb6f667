//! # ft-model
//!
//! Owns tensors: the Mistral/Llama decoder architectures, their weights and
//! quantization, the forward pass and decoding (token ids in, token ids and
//! logits out), and checks of the MLX runtime underneath (`runtime`).
//!
//! It must not know about text (tokenizers, chat templates: `ft-data`),
//! adapters (`ft-lora`) or training (`ft-trainer`).

pub mod error;
pub mod runtime;

pub use error::{Error, Result};
