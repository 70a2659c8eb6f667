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
    match ft_model::ModelSource::resolve_without_weights(model)? {
        ft_model::ModelSource::Directory(dir) => {
            Ok(ModelArgs::from_config_file(&dir.join("config.json"))?)
        }
        ft_model::ModelSource::Gguf(path) => gguf_args(&path),
    }
}

/// `config` with the quantization the model will have once loaded: a
/// directory already quantized in MLX's layout (`quantization` in its
/// config.json) stays quantized when `model.quantization` is `"none"`.
pub fn as_loaded(config: &Config) -> Config {
    let mut loaded = config.clone();
    if config.model.quantization != Quantization::None {
        return loaded;
    }
    let Ok(ft_model::ModelSource::Directory(dir)) =
        ft_model::ModelSource::resolve_without_weights(&config.model.path)
    else {
        return loaded;
    };
    let stored = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    let spec = stored.as_ref().and_then(|json| {
        let quantization = json.get("quantization")?;
        Some(ft_config::QuantSpec {
            bits: u8::try_from(quantization.get("bits")?.as_u64()?).ok()?,
            group_size: u32::try_from(quantization.get("group_size")?.as_u64()?).ok()?,
        })
    });
    if let Some(spec) = spec {
        loaded.model.quantization = Quantization::Affine(spec);
    }
    loaded
}

/// The hyper-parameters of a GGUF file from its metadata and tensor
/// table, read in Rust and checked the way the loader checks them.
fn gguf_args(path: &Path) -> Result<ModelArgs> {
    let layout = ft_model::gguf::read_layout(path)?;
    Ok(ft_model::load::gguf_model_args(path, &layout)?)
}

/// Bytes (in thousandths) per weight of a checkpointed quantized layer
/// kept through the backward pass on the CPU expansion path; fitted on
/// 4- and 8-layer Mistral-width QLoRA steps, checked at 32 layers.
const QUANTIZED_RECOMPUTE_MILLIBYTES: u64 = 920;

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
    /// Quantized or half-precision weights widened to float32 for one
    /// product at a time (the CPU backend's path, with gradient
    /// checkpointing): one layer's set and the output head's.
    pub expanded_weights: u64,
    /// With quantized weights on the CPU expansion path: what each
    /// checkpointed layer keeps until the backward pass ends (measured).
    pub quantized_recompute: u64,
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
    let widened = config.model.quantization != Quantization::None || dtype_bytes != 4;
    let expanding = widened
        && config.training.grad_checkpointing
        && ft_model::layers::matmul_path() == ft_model::layers::MatmulPath::ExpandToFloat32;
    let layer_parameters: u64 = Projection::ALL
        .into_iter()
        .map(|p| {
            let (out, input) = projection(p);
            out * input
        })
        .sum();
    // One layer's float32 copy while it runs or is recomputed, and the
    // output head's, which is not checkpointed and so lives from its
    // forward product to its backward one, across the last layer's
    // recompute (measured: bf16 and QLoRA of Mistral's widths at 4, 8 and
    // 32 layers).
    let expanded_weights = if expanding {
        layer_parameters * 4 + vocab * hidden * 4
    } else {
        0
    };
    // Measured, mechanism not pinned down: with quantized weights each
    // checkpointed layer keeps about 0.92 bytes per weight until the
    // backward pass is done (0.2 GB per Mistral-width layer at 4 and 8
    // layers; none with bf16 weights). See docs/memory.md.
    let quantized_recompute = match (&config.model.quantization, expanding) {
        (Quantization::Affine(_), true) => {
            adapted_layers * layer_parameters * QUANTIZED_RECOMPUTE_MILLIBYTES / 1000
        }
        _ => 0,
    };
    let total = weights
        + adapters
        + gradients
        + optimizer
        + activations
        + logits
        + expanded_weights
        + quantized_recompute;
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
        expanded_weights,
        quantized_recompute,
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
    Ok(dataset_extent(config, &dataset))
}

/// The sequence length and targets of the largest micro-batch of `dataset`.
pub fn dataset_extent(config: &Config, dataset: &ft_data::Dataset) -> (u64, u64) {
    let batch = u64::from(config.training.batch_size);
    let max_len = u64::from(config.data.max_seq_len);
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
    (longest.min(max_len), (batch * most_targets).max(1))
}

/// The memory a training run may use: on Metal the GPU's recommended
/// working set, elsewhere the machine's physical memory. `None` when
/// neither can be read.
pub fn available_memory() -> Option<(u64, &'static str)> {
    if let Some(bytes) = ft_model::runtime::recommended_working_set() {
        return Some((bytes, "GPU's recommended working set"));
    }
    physical_memory().map(|bytes| (bytes, "machine's memory"))
}

pub use ft_model::runtime::physical_memory;

/// Changes that lower the peak, each estimated, in the order a user would
/// try them; the ones that fit `available` are marked.
pub fn suggestions(
    config: &Config,
    args: &ModelArgs,
    sequence_length: u64,
    target_tokens: u64,
    available: u64,
) -> Vec<(String, u64, bool)> {
    let mut changes: Vec<(String, Config, u64, u64)> = Vec::new();
    let batch = u64::from(config.training.batch_size);
    if config.model.quantization == Quantization::None {
        let mut changed = config.clone();
        changed.model.quantization = Quantization::Affine(ft_config::QuantSpec {
            bits: 4,
            group_size: 64,
        });
        changes.push((
            "model.quantization = { bits = 4, group_size = 64 } (QLoRA)".into(),
            changed,
            sequence_length,
            target_tokens,
        ));
    }
    if !config.training.grad_checkpointing {
        let mut changed = config.clone();
        changed.training.grad_checkpointing = true;
        changes.push((
            "training.grad_checkpointing = true".into(),
            changed,
            sequence_length,
            target_tokens,
        ));
    }
    if sequence_length > 256 {
        let mut changed = config.clone();
        let shorter = sequence_length / 2;
        changed.data.max_seq_len = u32::try_from(shorter).unwrap_or(u32::MAX);
        changes.push((
            format!("data.max_seq_len = {shorter}"),
            changed,
            shorter,
            target_tokens / 2,
        ));
    }
    if batch > 1 {
        let mut changed = config.clone();
        changed.training.batch_size = 1;
        changed.training.grad_accumulation =
            config.training.grad_accumulation * config.training.batch_size;
        changes.push((
            format!(
                "training.batch_size = 1 with training.grad_accumulation = {} (same effective batch)",
                changed.training.grad_accumulation
            ),
            changed,
            sequence_length,
            (target_tokens / batch).max(1),
        ));
    }
    let layers = config.lora.num_layers.resolve(args.num_layers);
    if layers > 8 {
        let mut changed = config.clone();
        changed.lora.num_layers = ft_config::LoraLayers::Last(8);
        changes.push((
            "lora.num_layers = 8".into(),
            changed,
            sequence_length,
            target_tokens,
        ));
    }
    // All of the above together, the most that can be given up.
    if changes.len() > 1 {
        let mut all = config.clone();
        let (mut length, mut targets) = (sequence_length, target_tokens);
        for (_, changed, l, t) in &changes {
            if changed.model.quantization != config.model.quantization {
                all.model.quantization = changed.model.quantization.clone();
            }
            all.training.grad_checkpointing |= changed.training.grad_checkpointing;
            all.data.max_seq_len = all.data.max_seq_len.min(changed.data.max_seq_len);
            all.training.batch_size = all.training.batch_size.min(changed.training.batch_size);
            all.training.grad_accumulation = all
                .training
                .grad_accumulation
                .max(changed.training.grad_accumulation);
            if changed.lora.num_layers != config.lora.num_layers {
                all.lora.num_layers = changed.lora.num_layers;
            }
            length = length.min(*l);
            targets = targets.min(*t);
        }
        changes.push(("all of the above".into(), all, length, targets));
    }
    changes
        .into_iter()
        .map(|(what, changed, length, targets)| {
            let total = estimate(&changed, args, length, targets).total;
            (what, total, total <= available)
        })
        .collect()
}

/// Fails with [`TrainError::WontFit`] when `estimate`'s prediction for this
/// configuration and data extent exceeds the available memory.
pub fn check_fits(
    config: &Config,
    args: &ModelArgs,
    sequence_length: u64,
    target_tokens: u64,
) -> Result<()> {
    let Some((available, budget)) = available_memory() else {
        return Ok(());
    };
    fits_within(
        config,
        args,
        sequence_length,
        target_tokens,
        available,
        budget,
    )
}

/// [`check_fits`] against `available` bytes of what `budget` names.
pub fn fits_within(
    config: &Config,
    args: &ModelArgs,
    sequence_length: u64,
    target_tokens: u64,
    available: u64,
    budget: &'static str,
) -> Result<()> {
    let predicted = estimate(config, args, sequence_length, target_tokens).total;
    if predicted <= available {
        return Ok(());
    }
    let lines: Vec<String> = suggestions(config, args, sequence_length, target_tokens, available)
        .into_iter()
        .map(|(what, total, fits)| {
            format!(
                "  {} {what}: {}",
                if fits { "fits " } else { "still" },
                crate::disk::human_bytes(total)
            )
        })
        .collect();
    Err(TrainError::WontFit {
        predicted,
        available,
        budget,
        suggestions: lines.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistral_7b() -> ModelArgs {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/models/mistral-7b-instruct-v0.3.json");
        ModelArgs::from_config_file(&path).expect("Mistral-7B config.json")
    }

    #[test]
    fn a_run_that_cannot_fit_is_refused_with_what_would_fit() {
        let args = mistral_7b();
        let mut config = Config::default();
        config.model.dtype = ft_config::Dtype::Bfloat16;
        config.training.batch_size = 2;
        let (length, targets) = (2048, 2 * 2048);
        let predicted = estimate(&config, &args, length, targets).total;
        let available = 24_000_000_000;
        assert!(predicted > available, "{predicted}");
        let error = fits_within(
            &config,
            &args,
            length,
            targets,
            available,
            "machine's memory",
        )
        .expect_err("does not fit");
        let message = error.to_string();
        assert!(
            message.contains("more than the 24.00 GB machine's memory"),
            "{message}"
        );
        assert!(
            message.contains("model.quantization = { bits = 4"),
            "{message}"
        );
        assert!(
            message.contains("training.grad_checkpointing = true"),
            "{message}"
        );
        assert!(message.contains("data.max_seq_len = 1024"), "{message}");
        assert!(
            message.contains("training.batch_size = 1 with training.grad_accumulation = 2"),
            "{message}"
        );
        assert!(message.contains("memory.check_fits = false"), "{message}");
        // The combination of every change fits, and is marked so.
        let all = message
            .lines()
            .find(|line| line.contains("all of the above"))
            .expect("a combined line");
        assert!(all.trim_start().starts_with("fits"), "{all}");

        // Inside the budget: no error.
        fits_within(
            &config,
            &args,
            length,
            targets,
            predicted,
            "machine's memory",
        )
        .expect("fits exactly");
    }

    #[test]
    fn an_mlx_quantized_checkpoint_is_estimated_quantized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.model.path = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type": "mistral"}"#,
        )
        .expect("write");
        assert_eq!(as_loaded(&config).model.quantization, Quantization::None);
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type": "mistral", "quantization": {"group_size": 64, "bits": 4}}"#,
        )
        .expect("write");
        assert_eq!(
            as_loaded(&config).model.quantization,
            Quantization::Affine(ft_config::QuantSpec {
                bits: 4,
                group_size: 64
            })
        );
        // An explicit setting wins.
        config.model.quantization = Quantization::Affine(ft_config::QuantSpec {
            bits: 8,
            group_size: 32,
        });
        assert_eq!(
            as_loaded(&config).model.quantization,
            config.model.quantization
        );
    }

    #[test]
    fn the_machine_has_a_memory_size() {
        let (bytes, what) = available_memory().expect("sysconf");
        assert!(bytes > 1 << 30, "{bytes}");
        assert!(!what.is_empty());
    }
}
