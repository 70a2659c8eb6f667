//! `ft fuse` (adapter merged into the base weights, saved as a model) and
//! `ft export` (an adapter rewritten in mlx-lm or PEFT format).

use crate::common::{data_failure, load_with_adapter, lora_failure, model_failure};
use crate::Failure;
use anyhow::anyhow;
use ft_gguf::GgufValue;
use ft_lora::{AdapterFormat, LoraAdapters};
use ft_model::{ExportOptions, GgufExportOptions};
use mlx_rs::Dtype;
use std::path::{Path, PathBuf};

/// Output format of `ft fuse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelFormat {
    /// A Hugging Face safetensors directory with config.json and tokenizer files.
    Hf,
    /// One llama.cpp GGUF file (float32 or float16 weights, tokenizer and
    /// chat template in its metadata); implies --dequantize.
    Gguf,
}

/// dtype of the fused weights `ft fuse` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FuseDtype {
    /// 32-bit float: exactly the fused weights.
    Float32,
    /// IEEE half precision: half the size (GGUF `F16`).
    Float16,
    /// bfloat16 (HF format only).
    Bfloat16,
}

impl FuseDtype {
    fn dtype(self) -> Dtype {
        match self {
            Self::Float32 => Dtype::Float32,
            Self::Float16 => Dtype::Float16,
            Self::Bfloat16 => Dtype::Bfloat16,
        }
    }
}

/// Largest logit difference `ft fuse` accepts between the reloaded model
/// and base + adapter when the merged weights were rounded to `dtype`:
/// rounding to 16 bits moves logits by a few hundredths on the default
/// model (0.19 on a random-weight 7B in bf16), a wrong layout by whole units.
fn tolerance(dtype: Dtype) -> f32 {
    match dtype {
        Dtype::Float16 => 0.1,
        Dtype::Bfloat16 => 0.5,
        _ => 1e-3,
    }
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
    /// Output directory (must not exist, or be empty); with --format gguf
    /// a path ending in .gguf names the file itself (else DIR/model.gguf).
    #[arg(long)]
    out: PathBuf,
    /// Write dense weights even where the base was quantized (implied by --format gguf).
    #[arg(long)]
    dequantize: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "hf")]
    format: ModelFormat,
    /// dtype of the written weights (default: float32, the fused weights as
    /// computed). GGUF takes float32 or float16; its norms stay float32.
    #[arg(long, value_enum)]
    dtype: Option<FuseDtype>,
    /// Skip reloading the fused model to check its logits against base + adapter.
    #[arg(long)]
    no_verify: bool,
}

/// Token ids the fused model is checked on (any valid ids will do).
fn probe_ids(vocab: usize) -> mlx_rs::Array {
    let vocab = vocab as i32;
    let probe: Vec<i32> = (0..24).map(|i| (i * 7919 + 13) % vocab).collect();
    mlx_rs::Array::from_slice(&probe, &[1, probe.len() as i32])
}

/// Logits of `model` with `adapter` on the probe, evaluated.
fn probe_logits(
    model: &ft_model::Model,
    adapter: &dyn ft_model::LinearAdapter,
) -> Result<mlx_rs::Array, Failure> {
    let logits = model
        .forward(
            &probe_ids(model.args.vocab_size),
            adapter,
            None,
            ft_model::AttentionScope::Causal,
        )
        .and_then(|l| Ok(l.as_dtype(Dtype::Float32)?))
        .map_err(model_failure)?;
    logits
        .eval()
        .map_err(|error| Failure::Internal(error.into()))?;
    Ok(logits)
}

/// Reloads the fused model written to `path` and returns the largest
/// difference between its logits and `expected` (base + adapter, computed
/// before the base was dropped, so the two models are never in memory
/// together: at 7B each is 14.5 GB).
fn verify_fused(expected: &mlx_rs::Array, path: &Path) -> Result<f32, Failure> {
    let text = path
        .to_str()
        .ok_or_else(|| Failure::User(anyhow!("{} is not valid UTF-8", path.display())))?;
    let reloaded = ft_model::load_model(
        text,
        &ft_model::LoadOptions {
            dequantize: true,
            ..ft_model::LoadOptions::default()
        },
    )
    .map_err(model_failure)?;
    let got = probe_logits(&reloaded, &ft_model::NoAdapter)?;
    let diff = expected
        .subtract(&got)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(None))
        .map_err(|error| Failure::Internal(error.into()))?;
    diff.eval()
        .map_err(|error| Failure::Internal(error.into()))?;
    Ok(diff.as_slice::<f32>().first().copied().unwrap_or(f32::NAN))
}

/// Where `ft fuse` writes: the output directory, or the GGUF file.
fn output_path(args: &FuseArgs) -> Result<PathBuf, Failure> {
    let names_file = args
        .out
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"));
    match args.format {
        ModelFormat::Hf if names_file => Err(Failure::User(anyhow!(
            "--out {} names a .gguf file: add --format gguf, or give a directory for the HF format",
            args.out.display()
        ))),
        ModelFormat::Hf => {
            ensure_empty(&args.out)?;
            Ok(args.out.clone())
        }
        ModelFormat::Gguf if names_file => {
            if args.out.exists() {
                return Err(Failure::User(anyhow!(
                    "{} exists: choose a new file name",
                    args.out.display()
                )));
            }
            Ok(args.out.clone())
        }
        ModelFormat::Gguf => {
            ensure_empty(&args.out)?;
            Ok(args.out.join("model.gguf"))
        }
    }
}

/// Runs `ft fuse`.
pub fn run_fuse(args: &FuseArgs) -> Result<(), Failure> {
    let dtype = args.dtype.unwrap_or(FuseDtype::Float32);
    if args.format == ModelFormat::Gguf && dtype == FuseDtype::Bfloat16 {
        return Err(Failure::User(anyhow!(
            "--dtype bfloat16: GGUF weights are written as float32 or float16 (--dtype float32|float16)"
        )));
    }
    let out = output_path(args)?;
    // GGUF holds dense weights only: quantized bases are always written dequantized.
    let dequantize = args.dequantize || args.format == ModelFormat::Gguf;
    if args.format == ModelFormat::Gguf && !args.dequantize && base_is_quantized(&args.model) {
        eprintln!(
            "note: {} is quantized; the GGUF file holds {} weights (--format gguf implies --dequantize; \
             llama.cpp's llama-quantize makes a quantized file from it)",
            args.model,
            format!("{dtype:?}").to_lowercase()
        );
    }
    let loaded = load_with_adapter(&args.model, Some(&args.adapter), dequantize)?;
    let adapters = loaded
        .adapters
        .as_ref()
        .ok_or_else(|| Failure::Internal(anyhow!("adapter not loaded")))?;
    let fused = ft_lora::fuse(&loaded.model, adapters, !dequantize).map_err(lora_failure)?;
    // The merged weights are rounded to the model's own dtype, then to the
    // file's (HF without --dtype: the model's; GGUF: float32 unless told).
    let written = match args.format {
        ModelFormat::Hf => args.dtype.map_or(fused.compute_dtype(), FuseDtype::dtype),
        ModelFormat::Gguf => dtype.dtype(),
    };
    let rounding = tolerance(written).max(tolerance(fused.compute_dtype()));
    let expected = if args.no_verify {
        None
    } else {
        Some(probe_logits(&loaded.model, &adapters.view())?)
    };
    match args.format {
        ModelFormat::Hf => {
            ft_model::save_hf_dir(
                &fused,
                &out,
                &ExportOptions {
                    dequantize,
                    dtype: args.dtype.map(FuseDtype::dtype),
                    ..ExportOptions::default()
                },
            )
            .map_err(model_failure)?;
            crate::convert::write_tokenizer_files(&args.model, &out, &fused.args)?;
        }
        ModelFormat::Gguf => {
            let source = ft_model::ModelSource::resolve(&args.model).map_err(model_failure)?;
            let tokenizer =
                ft_data::tokenizer_gguf_metadata(source.path()).map_err(data_failure)?;
            let options = GgufExportOptions {
                dtype: dtype.dtype(),
                name: Some(fused_name(&args.model)),
                metadata: tokenizer,
            };
            ft_model::save_gguf(&fused, &out, &options).map_err(model_failure)?;
        }
    }
    println!(
        "fused {} into {} -> {}",
        args.adapter.display(),
        args.model,
        out.display()
    );
    if let Some(expected) = expected {
        // Only the probe's logits outlive the base: the fused model is
        // reloaded once the base is gone.
        drop(fused);
        drop(loaded);
        let diff = verify_fused(&expected, &out)?;
        // Re-quantizing a quantized base moves weights by up to half a step.
        let tolerance = if dequantize { rounding } else { 0.5 };
        println!("verified: reloaded fused logits vs base + adapter, max abs diff {diff:.2e}");
        if diff.is_nan() || diff > tolerance {
            return Err(Failure::Internal(anyhow!(
                "the fused model's logits differ from base + adapter by {diff} (tolerance {tolerance})"
            )));
        }
    }
    Ok(())
}

/// `general.name` of a fused GGUF: the base model's file or directory name.
fn fused_name(model: &str) -> String {
    let stem = Path::new(model)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.to_string());
    format!("{stem}-fused")
}

/// Whether the base's weights are stored quantized (GGUF `general.file_type`
/// other than F32/F16, or `quantization` in config.json); unknown is no.
fn base_is_quantized(model: &str) -> bool {
    match ft_model::ModelSource::resolve(model) {
        Ok(ft_model::ModelSource::Gguf(path)) => ft_gguf::GgufMetadata::read_file(&path)
            .ok()
            .and_then(|meta| meta.get("general.file_type").and_then(GgufValue::as_u64))
            .is_some_and(|file_type| file_type > 1),
        Ok(ft_model::ModelSource::Directory(dir)) => {
            std::fs::read_to_string(dir.join("config.json"))
                .map(|text| text.contains("\"quantization\""))
                .unwrap_or(false)
        }
        Err(_) => false,
    }
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
