//! # ft-lora
//!
//! Owns adapters: LoRA/QLoRA/DoRA layers that wrap the frozen linear and
//! quantized-linear layers of an `ft-model` decoder, counting their trainable
//! parameters, saving and loading them (mlx-lm and PEFT formats) and fusing
//! them into the base weights.
//!
//! It must not know about text, data, optimizers or the training loop: it
//! sees a model and a LoRA configuration, nothing else.
//!
//! The trainable arrays live in one ordered `Vec<Array>` ([`LoraAdapters::params`])
//! so the trainer can differentiate with respect to exactly them; a
//! [`LoraView`] pairs that vector (or the tracer copies MLX hands a gradient
//! closure) with the [`LoraLayout`] and plugs into the decoder as its
//! [`ft_model::LinearAdapter`].

#![forbid(unsafe_code)]

pub mod adapter;
pub mod error;
pub mod files;
pub mod fuse;

pub use adapter::{LoraAdapters, LoraLayout, LoraSlot, LoraSpec, LoraView};
pub use error::{LoraError, Result};
pub use files::{AdapterFormat, LoadedAdapter};
pub use fuse::fuse;
