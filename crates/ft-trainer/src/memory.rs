//! Peak training memory, predicted from the configuration and the model's
//! shapes before any weight is loaded (`ft estimate-memory`).
//!
//! The model is the one MLX's lazy evaluation gives a LoRA step: the frozen
//! weights; the adapters with their gradients, AdamW moments and the copy
//! kept to undo a non-finite update; the activations every layer from the
//! first adapted one onwards keeps for the backward pass (the layers before
//! it need no backward and free theirs as they go); and the vocabulary-sized
//! logits, which mlx-ft computes for target tokens only. With gradient
//! checkpointing a layer keeps only its input, plus one layer's full set
//! while it is recomputed. The per-token
//! activation count below lists what each block keeps; it was checked
//! against MLX's measured peak (docs/memory.md).

use crate::{Result, TrainError};
use ft_config::{Config, Quantization};
use ft_model::{ModelArgs, Projection};
use serde::Serialize;
use std::path::Path;

/// The hyper-parameters of `model` (directory, GGUF file or built-in name)
/// from its `config.json` or its GGUF metadata alone: no tensor is read.
pub fn model_args(model: &str) -> Result<ModelArgs> {
    match ft_model::ModelSource::resolve(model)? {
        ft_model::ModelSource::Directory(dir) => {
            Ok(ModelArgs::from_config_file(&dir.join("config.json"))?)
        }
        ft_model::ModelSource::Gguf(path) => gguf_args(&path),
    }
}

fn gguf_args(path: &Path) -> Result<ModelArgs> {
    let bad = |message: String| TrainError::Config(format!("{}: {message}", path.display()));
    let meta = ft_data::GgufMetadata::read_file(path)?;
    let arch = meta
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if arch != "llama" {
        return Err(bad(format!(
            "metadata `general.architecture`: expected `llama` (Llama/Mistral family), got `{arch}`"
        )));
    }
    let number = |key: &str| meta.get(key).and_then(|v| v.as_f64());
    let vocab_fallback = meta
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map_or(0, <[_]>::len);
    let layers = number("llama.block_count").unwrap_or(0.0) as u64;
    // token_embd, output_norm and 9 tensors per block: no `output.weight`.
    let tied = meta.tensor_count <= 2 + 9 * layers;
    let hf = ft_model::load::gguf_hf_config(&number, vocab_fallback, tied).map_err(bad)?;
    ModelArgs::from_hf(&hf).map_err(bad)
}

/// Predicted peak memory of a training step, by part, in bytes.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryEstimate {
    /// The model's hyper-parameters.
    pub model: ModelArgs,
    /// Sequences per micro-batch and their length (tokens).
    pub batch_size: u64,
    /// Longest sequence assumed.
    pub sequence_length: u64,
    /// Loss targets per micro-batch assumed.
    pub target_tokens: u64,
    /// Frozen base weights.
    pub weights: u64,
    /// Adapter parameters.
    pub adapters: u64,
    /// Their gradients (and the accumulated sum with accumulation).
    pub gradients: u64,
    /// AdamW moments (or SGD velocity), plus the pre-update copy.
    pub optimizer: u64,
    /// Activations kept for the backward pass.
    pub activations: u64,
    /// Logits of the target tokens, their softmax and gradient.
    pub logits: u64,
    /// The sum.
    pub total: u64,
    /// Trainable parameters.
    pub trainable_parameters: u64,
}

/// Predicts the peak memory of training with `config` on a model with
/// `args`, for micro-batches of sequences of `sequence_length` tokens with
/// `target_tokens` loss targets in all.
pub fn estimate(
    config: &Config,
    args: &ModelArgs,
    sequence_length: u64,
    target_tokens: u64,
) -> MemoryEstimate {
    let dtype_bytes = match config.model.dtype {
        ft_config::Dtype::Float32 => 4,
        _ => 2,
    };
    let linear_bytes = |out: u64, input: u64| -> u64 {
        match &config.model.quantization {
            Quantization::None => out * input * dtype_bytes,
            Quantization::Affine(spec) => {
                let groups = input / u64::from(spec.group_size).max(1);
                out * input * u64::from(spec.bits) / 8 + 2 * out * groups * dtype_bytes
            }
        }
    };
    let projection = |p: Projection| {
        let (out, input) = args.projection_shape(p);
        (out as u64, input as u64)
    };
    let (hidden, ffn, layers) = (
        args.hidden_size as u64,
        args.intermediate_size as u64,
        args.num_layers as u64,
    );
    let (heads, vocab) = (args.num_heads as u64, args.vocab_size as u64);
    let per_layer: u64 = Projection::ALL
        .into_iter()
        .map(|p| {
            let (out, input) = projection(p);
            linear_bytes(out, input)
        })
        .sum::<u64>()
        + 2 * hidden * dtype_bytes;
    let embedding = vocab * hidden * dtype_bytes;
    let head = if args.tie_word_embeddings {
        0
    } else {
        linear_bytes(vocab, hidden)
    };
    let weights = layers * per_layer + embedding + head + hidden * dtype_bytes;

    let adapted_layers = config.lora.num_layers.resolve(args.num_layers) as u64;
    let rank = u64::from(config.lora.rank);
    let targets = config.lora.target_modules.targets();
    let per_layer_params: u64 = targets
        .iter()
        .filter_map(|t| Projection::from_name(t.as_str()))
        .map(|p| {
            let (out, input) = projection(p);
            rank * (out + input) + if config.lora.use_dora { out } else { 0 }
        })
        .sum();
    let trainable = adapted_layers * per_layer_params;
    let adapters = trainable * 4;
    let accumulation = if config.training.grad_accumulation > 1 {
        2
    } else {
        1
    };
    let gradients = adapters * accumulation;
    let moments = match config.optimizer.name {
        ft_config::OptimizerName::AdamW => 2,
        ft_config::OptimizerName::Sgd => 1,
    };
    // The moments, and the previous parameters and moments kept until the
    // step is known to be finite.
    let optimizer = adapters * (2 * moments + 1);

    let batch = u64::from(config.training.batch_size);
    let tokens = batch * sequence_length;
    let q = (args.num_heads * args.head_dim) as u64;
    let kv = (args.num_kv_heads * args.head_dim) as u64;
    // Kept per token by one block: its input and the two normalised inputs,
    // q/k/v before and after RoPE, the attention output, the residual sum
    // and the MLP's gate, up, SiLU and product, plus the down projection.
    let kept_elements = 6 * hidden + 3 * q + 3 * kv + 4 * ffn;
    // Attention scores and probabilities (float32) per token: heads x length.
    let attention = 2 * heads * sequence_length * 4;
    let per_token_layer = kept_elements * dtype_bytes + attention;
    let backward_layers = adapted_layers;
    let activations = if config.training.grad_checkpointing {
        // Each layer's input is kept; one layer at a time is recomputed
        // with everything it keeps during the backward pass.
        tokens * hidden * dtype_bytes * backward_layers + tokens * per_token_layer
    } else {
        tokens * per_token_layer * backward_layers
    };
    // Logits, exp/softmax and their gradient, float32, target tokens only.
    let logits = target_tokens * vocab * 4 * 3;
    let total = weights + adapters + gradients + optimizer + activations + logits;
    MemoryEstimate {
        model: args.clone(),
        batch_size: batch,
        sequence_length,
        target_tokens,
        weights,
        adapters,
        gradients,
        optimizer,
        activations,
        logits,
        total,
        trainable_parameters: trainable,
    }
}

/// The sequence length and targets of the largest micro-batch of the
/// configured training data (tokenized, no weights loaded), or
/// `data.max_seq_len` and all-target sequences when there is no data file.
pub fn data_extent(config: &Config) -> Result<(u64, u64)> {
    let batch = u64::from(config.training.batch_size);
    let max_len = u64::from(config.data.max_seq_len);
    let Some(train) = &config.data.train else {
        return Ok((max_len, batch * max_len));
    };
    if !train.is_file() {
        return Ok((max_len, batch * max_len));
    }
    let tokenizer = crate::model_tokenizer(&config.model.path)?;
    let (dataset, _) = crate::load_datasets(config, &tokenizer)?;
    let longest = dataset
        .examples
        .iter()
        .map(|e| e.len() as u64)
        .max()
        .unwrap_or(max_len);
    let most_targets = dataset
        .examples
        .iter()
        .map(|e| e.target_count() as u64)
        .max()
        .unwrap_or(longest);
    Ok((longest.min(max_len), (batch * most_targets).max(1)))
}
