//! Peak training memory, predicted from the configuration and the model's
//! shapes before any weight is loaded (`ft estimate-memory`).
//!
//! The model is the one MLX's lazy evaluation gives a LoRA step: the frozen
//! weights; the adapters with their gradients, AdamW moments and the copy
//! kept to undo a non-finite update; the activations every layer from the
//! first adapted one onwards keeps for the backward pass (the layers before
//! it need no backward and free theirs as they go); and the vocabulary-sized
//! logits, which mlx-ft computes for target tokens only. The per-token
//! activation count below lists what each block keeps; it was checked
//! against MLX's measured peak (docs/memory.md).

use crate::{Result, TrainError};
use ft_config::{Config, Quantization};
use serde::Serialize;
use std::path::Path;

/// The shapes that matter for memory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelShapes {
    /// Hidden size.
    pub hidden: u64,
    /// MLP width.
    pub ffn: u64,
    /// Decoder blocks.
    pub layers: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Width of one head.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Output head shares the embedding.
    pub tied: bool,
}

impl ModelShapes {
    /// From an [`ft_model::ModelArgs`].
    pub fn from_args(args: &ft_model::ModelArgs) -> Self {
        ModelShapes {
            hidden: args.hidden_size as u64,
            ffn: args.intermediate_size as u64,
            layers: args.num_layers as u64,
            heads: args.num_heads as u64,
            kv_heads: args.num_kv_heads as u64,
            head_dim: args.head_dim as u64,
            vocab: args.vocab_size as u64,
            tied: args.tie_word_embeddings,
        }
    }

    /// Reads the shapes of `model` (directory, GGUF file or built-in name)
    /// from `config.json` or the GGUF metadata only.
    pub fn read(model: &str) -> Result<Self> {
        match ft_model::ModelSource::resolve(model)? {
            ft_model::ModelSource::Directory(dir) => Ok(Self::from_args(
                &ft_model::ModelArgs::from_config_file(&dir.join("config.json"))?,
            )),
            ft_model::ModelSource::Gguf(path) => Self::from_gguf(&path),
        }
    }

    fn from_gguf(path: &Path) -> Result<Self> {
        let meta = ft_data::GgufMetadata::read_file(path)?;
        let number = |key: &str| -> Result<u64> {
            meta.get(key).and_then(|v| v.as_u64()).ok_or_else(|| {
                TrainError::Config(format!("{}: metadata `{key}` is missing", path.display()))
            })
        };
        let hidden = number("llama.embedding_length")?;
        let heads = number("llama.attention.head_count")?;
        let layers = number("llama.block_count")?;
        let vocab = match number("llama.vocab_size") {
            Ok(n) => n,
            Err(_) => meta
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map_or(0, |tokens| tokens.len() as u64),
        };
        Ok(ModelShapes {
            hidden,
            ffn: number("llama.feed_forward_length")?,
            layers,
            heads,
            kv_heads: number("llama.attention.head_count_kv").unwrap_or(heads),
            head_dim: number("llama.rope.dimension_count").unwrap_or(hidden / heads.max(1)),
            vocab,
            // token_embd, output_norm and 9 tensors per block: no `output.weight`.
            tied: meta.tensor_count <= 2 + 9 * layers,
        })
    }

    fn projection(&self, name: &str) -> (u64, u64) {
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        match name {
            "q_proj" => (q, self.hidden),
            "k_proj" | "v_proj" => (kv, self.hidden),
            "o_proj" => (self.hidden, q),
            "gate_proj" | "up_proj" => (self.ffn, self.hidden),
            _ => (self.hidden, self.ffn),
        }
    }
}

/// Predicted peak memory of a training step, by part, in bytes.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryEstimate {
    /// The shapes used.
    pub shapes: ModelShapes,
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

/// Predicts the peak memory of training with `config` on a model of
/// `shapes`, for micro-batches of sequences of `sequence_length` tokens with
/// `target_tokens` loss targets in all.
pub fn estimate(
    config: &Config,
    shapes: &ModelShapes,
    sequence_length: u64,
    target_tokens: u64,
) -> MemoryEstimate {
    let dtype_bytes = match config.model.dtype {
        ft_config::Dtype::Float32 => 4,
        _ => 2,
    };
    let names = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let linear_bytes = |out: u64, input: u64| -> u64 {
        match &config.model.quantization {
            Quantization::None => out * input * dtype_bytes,
            Quantization::Affine(spec) => {
                let groups = input / u64::from(spec.group_size).max(1);
                out * input * u64::from(spec.bits) / 8 + 2 * out * groups * dtype_bytes
            }
        }
    };
    let per_layer: u64 = names
        .iter()
        .map(|name| {
            let (out, input) = shapes.projection(name);
            linear_bytes(out, input)
        })
        .sum::<u64>()
        + 2 * shapes.hidden * dtype_bytes;
    let embedding = shapes.vocab * shapes.hidden * dtype_bytes;
    let head = if shapes.tied {
        0
    } else {
        linear_bytes(shapes.vocab, shapes.hidden)
    };
    let weights = shapes.layers * per_layer + embedding + head + shapes.hidden * dtype_bytes;

    let adapted_layers = config.lora.num_layers.resolve(shapes.layers as usize) as u64;
    let rank = u64::from(config.lora.rank);
    let targets = config.lora.target_modules.targets();
    let per_layer_params: u64 = targets
        .iter()
        .map(|t| {
            let (out, input) = shapes.projection(t.as_str());
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
    let q = shapes.heads * shapes.head_dim;
    let kv = shapes.kv_heads * shapes.head_dim;
    // Kept per token by one block: its input and the two normalised inputs,
    // q/k/v before and after RoPE, the attention output, the residual sum
    // and the MLP's gate, up, SiLU and product, plus the down projection.
    let kept_elements = 6 * shapes.hidden + 3 * q + 3 * kv + 4 * shapes.ffn;
    // Attention scores and probabilities (float32) per token: heads x length.
    let attention = 2 * shapes.heads * sequence_length * 4;
    let per_token_layer = kept_elements * dtype_bytes + attention;
    let backward_layers = adapted_layers;
    let activations = tokens * per_token_layer * backward_layers;
    // Logits, exp/softmax and their gradient, float32, target tokens only.
    let logits = target_tokens * shapes.vocab * 4 * 3;
    let total = weights + adapters + gradients + optimizer + activations + logits;
    MemoryEstimate {
        shapes: shapes.clone(),
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
