//! # ft-lora
//!
//! Owns adapters: LoRA/QLoRA/DoRA layers that wrap the frozen linear and
//! quantized-linear layers of an `ft-model` decoder, counting their trainable
//! parameters, saving and loading them (mlx-lm and PEFT formats) and fusing
//! them into the base weights.
//!
//! It must not know about text, data, optimizers or the training loop: it
//! sees a model and a LoRA configuration, nothing else.
