//! What several commands share: loading a configuration, a model with its
//! tokenizer and adapter, and turning library errors into [`Failure`]s.

use crate::Failure;
use anyhow::anyhow;
use ft_data::TextTokenizer;
use ft_lora::LoraAdapters;
use ft_model::{LoadOptions, Model};
use ft_trainer::TrainError;
use std::path::{Path, PathBuf};

/// `--model` and `--adapter`, shared by the inference commands.
#[derive(Debug, clap::Args)]
pub struct ModelChoice {
    /// A model directory, a .gguf file, a Hugging Face Hub id
    /// (org/name[@revision]) or a built-in name.
    #[arg(long, default_value = ft_config::DEFAULT_MODEL)]
    pub model: String,
    /// An adapter directory (mlx-lm or PEFT format), e.g. runs/quickstart/adapter.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// `--config` and `--set`, shared by the commands that read a run's configuration.
#[derive(Debug, clap::Args)]
pub struct ConfigChoice {
    /// The run's configuration file (TOML or YAML).
    #[arg(short, long)]
    pub config: PathBuf,
    /// Override a setting: `--set training.steps=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Loads `config_path` with environment (`FT_SECTION__KEY`) and `--set` overrides.
pub fn load_config(config_path: &Path, sets: &[String]) -> Result<ft_config::Config, Failure> {
    ft_config::ConfigLoader::new()
        .file(config_path)
        .process_env()
        .overrides(sets)
        .load()
        .map(|loaded| loaded.config)
        .map_err(|error| Failure::User(anyhow!(error)))
}

/// Classifies a training-engine error.
pub fn train_failure(error: TrainError) -> Failure {
    if error.is_user_error() {
        Failure::User(error.into())
    } else {
        Failure::Internal(error.into())
    }
}

/// Classifies a model error: MLX failures are ours, the rest the user's.
pub fn model_failure(error: ft_model::Error) -> Failure {
    match error {
        ft_model::Error::Mlx(_) => Failure::Internal(error.into()),
        other => Failure::User(other.into()),
    }
}

/// Classifies an adapter error.
pub fn lora_failure(error: ft_lora::LoraError) -> Failure {
    match error {
        ft_lora::LoraError::Mlx(_) => Failure::Internal(error.into()),
        ft_lora::LoraError::Model(inner) => model_failure(inner),
        other => Failure::User(other.into()),
    }
}

/// Classifies a data error: all are about the user's files or tokenizer.
pub fn data_failure(error: ft_data::DataError) -> Failure {
    Failure::User(error.into())
}

/// A model (dense float32 unless `options` says otherwise), its tokenizer,
/// and optionally adapters read from `adapter`.
pub struct LoadedModel {
    /// The base model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Adapters, when asked for.
    pub adapters: Option<LoraAdapters>,
}

/// Loads `model` (directory, GGUF or built-in name) for inference:
/// dequantized to float32, the fast path on CPU.
pub fn load_for_inference(model: &str, adapter: Option<&PathBuf>) -> Result<LoadedModel, Failure> {
    load_with_adapter(model, adapter, true)
}

/// [`load_for_inference`], keeping a quantized base quantized unless
/// `dequantize` (what `ft fuse` without `--dequantize` needs).
pub fn load_with_adapter(
    model: &str,
    adapter: Option<&PathBuf>,
    dequantize: bool,
) -> Result<LoadedModel, Failure> {
    let tokenizer = ft_trainer::model_tokenizer(model).map_err(train_failure)?;
    let options = LoadOptions {
        dequantize,
        ..LoadOptions::default()
    };
    let model_weights = ft_model::load_model(model, &options).map_err(model_failure)?;
    let adapters = match adapter {
        None => None,
        Some(dir) => {
            let loaded = LoraAdapters::load(dir, &model_weights.args).map_err(lora_failure)?;
            if let Some(base) = &loaded.base_model {
                // The same directory written differently, or the same Hub
                // repository, is the same base.
                if !ft_model::same_model(base, model) {
                    tracing::warn!(
                        adapter = %dir.display(),
                        trained_on = %base,
                        using = %model,
                        "the adapter was trained on another base model path"
                    );
                }
            }
            Some(loaded.adapters)
        }
    };
    Ok(LoadedModel {
        model: model_weights,
        tokenizer,
        adapters,
    })
}

/// Ids that end a reply: the model's EOS ids, the tokenizer's EOS and the
/// end-of-turn markers of common chat formats present in the vocabulary.
pub fn stop_ids(model: &Model, tokenizer: &TextTokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = model.args.eos_token_ids.clone();
    ids.extend(tokenizer.special().eos);
    for marker in ["<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"] {
        ids.extend(tokenizer.token_id(marker));
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub use ft_trainer::disk::human_bytes;

/// A count with thousands separators (`8,388,608`).
pub fn thousands(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
