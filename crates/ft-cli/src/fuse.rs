//! `ft fuse` (adapter merged into the base weights, saved as a model) and
//! `ft export` (an adapter rewritten in mlx-lm or PEFT format).

use crate::common::{load_for_inference, lora_failure, model_failure};
use crate::Failure;
use anyhow::anyhow;
use ft_lora::{AdapterFormat, LoraAdapters};
use ft_model::ExportOptions;
use std::path::PathBuf;

/// Output format of `ft fuse`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModelFormat {
    /// A Hugging Face safetensors directory with config.json and tokenizer files.
    Hf,
}

/// Arguments of `ft fuse`.
#[derive(Debug, clap::Args)]
pub struct FuseArgs {
    /// The base model the adapter was trained on.
    #[arg(long, default_value = ft_config::DEFAULT_MODEL)]
    model: String,
    /// The adapter directory.
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Write dense weights even where the base was quantized.
    #[arg(long)]
    dequantize: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "hf")]
    format: ModelFormat,
    /// Skip reloading the fused model to check its logits against base + adapter.
    #[arg(long)]
    no_verify: bool,
}

/// Largest logit difference between base + adapter and the fused model
/// reloaded from `dir`, on a fixed probe of token ids.
fn verify_fused(
    loaded: &crate::common::LoadedModel,
    adapters: &LoraAdapters,
    dir: &std::path::Path,
) -> Result<f32, Failure> {
    let dir_text = dir
        .to_str()
        .ok_or_else(|| Failure::User(anyhow!("{} is not valid UTF-8", dir.display())))?;
    let reloaded = ft_model::load_model(
        dir_text,
        &ft_model::LoadOptions {
            dequantize: true,
            ..ft_model::LoadOptions::default()
        },
    )
    .map_err(model_failure)?;
    let vocab = loaded.model.args.vocab_size as i32;
    let probe: Vec<i32> = (0..24).map(|i| (i * 7919 + 13) % vocab).collect();
    let ids = mlx_rs::Array::from_slice(&probe, &[1, probe.len() as i32]);
    let logits = |model: &ft_model::Model, adapter: &dyn ft_model::LinearAdapter| {
        model
            .forward(&ids, adapter, None, ft_model::AttentionScope::Causal)
            .map_err(model_failure)
    };
    let expected = logits(&loaded.model, &adapters.view())?;
    let got = logits(&reloaded, &ft_model::NoAdapter)?;
    let diff = expected
        .subtract(&got)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(None))
        .map_err(|error| Failure::Internal(error.into()))?;
    diff.eval()
        .map_err(|error| Failure::Internal(error.into()))?;
    Ok(diff.as_slice::<f32>().first().copied().unwrap_or(f32::NAN))
}

/// Runs `ft fuse`.
pub fn run_fuse(args: &FuseArgs) -> Result<(), Failure> {
    ensure_empty(&args.out)?;
    let loaded = load_for_inference(&args.model, Some(&args.adapter))?;
    let adapters = loaded
        .adapters
        .as_ref()
        .ok_or_else(|| Failure::Internal(anyhow!("adapter not loaded")))?;
    let fused = ft_lora::fuse(&loaded.model, adapters, !args.dequantize).map_err(lora_failure)?;
    match args.format {
        ModelFormat::Hf => {
            ft_model::save_hf_dir(
                &fused,
                &args.out,
                &ExportOptions {
                    dequantize: args.dequantize,
                    ..ExportOptions::default()
                },
            )
            .map_err(model_failure)?;
            crate::convert::write_tokenizer_files(&args.model, &args.out, &fused.args)?;
        }
    }
    println!(
        "fused {} into {} -> {}",
        args.adapter.display(),
        args.model,
        args.out.display()
    );
    if !args.no_verify {
        let diff = verify_fused(&loaded, adapters, &args.out)?;
        // Re-quantizing a quantized base moves weights by up to half a step.
        let tolerance = if args.dequantize { 1e-3 } else { 0.5 };
        println!("verified: reloaded fused logits vs base + adapter, max abs diff {diff:.2e}");
        if diff.is_nan() || diff > tolerance {
            return Err(Failure::Internal(anyhow!(
                "the fused model's logits differ from base + adapter by {diff} (tolerance {tolerance})"
            )));
        }
    }
    Ok(())
}

/// Adapter file formats of `ft export`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    /// mlx-lm: adapters.safetensors + adapter_config.json.
    Mlx,
    /// Hugging Face PEFT: adapter_model.safetensors + adapter_config.json.
    Peft,
}

/// Arguments of `ft export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The adapter directory (either format).
    #[arg(long)]
    adapter: PathBuf,
    /// The base model (its shapes check the adapter; its name is recorded).
    #[arg(long, default_value = ft_config::DEFAULT_MODEL)]
    model: String,
    /// Target format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `ft export`.
pub fn run_export(args: &ExportArgs) -> Result<(), Failure> {
    ensure_empty(&args.out)?;
    let source = ft_model::ModelSource::resolve(&args.model).map_err(model_failure)?;
    let model_args = match &source {
        ft_model::ModelSource::Directory(dir) => {
            ft_model::ModelArgs::from_config_file(&dir.join("config.json"))
                .map_err(model_failure)?
        }
        ft_model::ModelSource::Gguf(path) => {
            ft_model::load::read_gguf(path).map_err(model_failure)?.0
        }
    };
    let loaded = LoraAdapters::load(&args.adapter, &model_args).map_err(lora_failure)?;
    let format = match args.format {
        ExportFormat::Mlx => AdapterFormat::Mlx,
        ExportFormat::Peft => AdapterFormat::Peft,
    };
    let base = loaded
        .base_model
        .clone()
        .unwrap_or_else(|| args.model.clone());
    loaded
        .adapters
        .save(&args.out, format, &base)
        .map_err(lora_failure)?;
    println!(
        "{} ({:?}) -> {} ({format:?}), {} trainable parameters",
        args.adapter.display(),
        loaded.format,
        args.out.display(),
        loaded.adapters.layout.trainable_parameters()
    );
    Ok(())
}

fn ensure_empty(dir: &std::path::Path) -> Result<(), Failure> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(Failure::User(anyhow!(
                "{} exists and is not empty: choose a new output directory",
                dir.display()
            )));
        }
    }
    Ok(())
}
