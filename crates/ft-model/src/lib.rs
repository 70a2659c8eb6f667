//! # ft-model
//!
//! Owns tensors: the Mistral/Llama decoder architectures, their weights and
//! quantization, the forward pass and decoding (token ids in, token ids and
//! logits out), and checks of the MLX runtime underneath (`runtime`), and the MLX
//! distributed group that data-parallel training reduces over (`distributed`).
//! Models named by Hugging Face Hub id are resolved into the standard
//! Hugging Face cache (`hub`).
//!
//! It must not know about text (tokenizers, chat templates: `ft-data`),
//! adapters (`ft-lora`, which plugs in through [`LinearAdapter`]) or
//! training (`ft-trainer`).

#![deny(unsafe_code)]

pub mod config;
pub mod disk_space;
pub mod distributed;
pub mod error;
pub mod export;
pub mod export_gguf;
#[allow(unsafe_code)]
mod ffi;
pub mod generate;
pub mod gguf;
pub mod grad_checkpoint;
pub mod hub;
pub mod layers;
pub mod load;
pub mod model;
pub mod parity;
pub mod runtime;
pub mod tiny;

pub use config::ModelArgs;
pub use error::{Error, Result};
pub use export::{save_hf_dir, ExportOptions};
pub use export_gguf::{save_gguf, GgufExportOptions};
pub use generate::{generate, generate_batch, Generation, SamplingOptions, StopReason};
pub use hub::{HubClient, HubId, HubModel, HubOptions};
pub use layers::{Linear, Weight};
pub use load::{load_model, same_model, LoadOptions, ModelSource};
pub use model::{
    AttentionScope, KvCache, LayerAdapter, LinearAdapter, Model, NoAdapter, Projection,
};
