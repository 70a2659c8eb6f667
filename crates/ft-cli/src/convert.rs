//! `ft convert`: write a model (GGUF, HF directory or built-in name) as a
//! Hugging Face style safetensors directory that mlx_lm and transformers load
//! unchanged: config.json, the weights, and the tokenizer files.

use crate::common::model_failure;
use crate::Failure;
use anyhow::{anyhow, Context};
use ft_data::TextTokenizer;
use ft_model::{load_model, save_hf_dir, ExportOptions, LoadOptions, ModelSource};
use mlx_rs::Dtype;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokenizers::processors::template::TemplateProcessing;

/// Tokenizer and generation files copied from an HF directory source.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

/// Options of `ft convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: a directory, a .gguf file, a Hugging Face Hub id
    /// (org/name[@revision]) or a built-in name.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// The directory to write (created; files of the same names are replaced).
    #[arg(long)]
    out: PathBuf,
    /// dtype of the dense weights written (default: as loaded, float32).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Write quantized layers as dense matrices instead of MLX 4/8-bit.
    #[arg(long, conflicts_with = "quantize")]
    dequantize: bool,
    /// Quantize the dense linear layers to MLX affine 4 or 8 bits while
    /// loading (one shard at a time), and write the model in mlx-community's
    /// layout (`quantization` in config.json, `.scales`/`.biases` tensors).
    #[arg(long, value_parser = one_of(&[4, 8]))]
    quantize: Option<i32>,
    /// Weights sharing one scale and bias when quantizing.
    #[arg(long, default_value_t = 64, value_parser = one_of(&[32, 64, 128]))]
    group_size: i32,
}

/// A clap parser accepting one of `allowed`.
fn one_of(allowed: &'static [i32]) -> impl Fn(&str) -> Result<i32, String> + Clone {
    move |text: &str| match text.parse::<i32>() {
        Ok(value) if allowed.contains(&value) => Ok(value),
        _ => Err(format!("expected one of {allowed:?}, got `{text}`")),
    }
}

/// Dense weight types `ft convert` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DtypeArg {
    /// 32-bit float.
    Float32,
    /// IEEE half precision.
    Float16,
    /// bfloat16.
    Bfloat16,
}

impl DtypeArg {
    fn dtype(self) -> Dtype {
        match self {
            Self::Float32 => Dtype::Float32,
            Self::Float16 => Dtype::Float16,
            Self::Bfloat16 => Dtype::Bfloat16,
        }
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let source = ModelSource::resolve(&args.model).map_err(|e| Failure::User(e.into()))?;
    if same_path(source.path(), &args.out) {
        return Err(Failure::User(anyhow!(
            "--out {} is the model itself: choose another directory",
            args.out.display()
        )));
    }
    let dtype = args.dtype.map(DtypeArg::dtype);
    let quantize = args.quantize.map(|bits| (args.group_size, bits));
    let load = LoadOptions {
        dtype,
        dequantize: args.dequantize,
        quantize,
    };
    let model = load_model(&args.model, &load).map_err(model_failure)?;
    let export = ExportOptions {
        dequantize: args.dequantize,
        dtype,
        ..ExportOptions::default()
    };
    save_hf_dir(&model, &args.out, &export).map_err(model_failure)?;
    let tokenizer_files = write_tokenizer_files(&args.model, &args.out, &model.args)?;
    println!(
        "wrote {} ({}{}) in {:.1}s",
        args.out.display(),
        if args.dequantize || !has_quantization(&args.out) {
            format!("{:?} weights", dtype.unwrap_or(Dtype::Float32)).to_lowercase()
        } else {
            "MLX-quantized weights".to_string()
        },
        if tokenizer_files.is_empty() {
            ", no tokenizer files found".to_string()
        } else {
            format!(", {}", tokenizer_files.join(", "))
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes the tokenizer files of `model` (copied from its directory, or
/// built from its GGUF metadata) into the model directory `out`.
pub fn write_tokenizer_files(
    model: &str,
    out: &Path,
    args: &ft_model::ModelArgs,
) -> Result<Vec<String>, Failure> {
    let source = ModelSource::resolve(model).map_err(model_failure)?;
    match &source {
        ModelSource::Directory(dir) => copy_tokenizer_files(dir, out),
        ModelSource::Gguf(path) => write_gguf_tokenizer(path, out, args),
    }
    .map_err(Failure::User)
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn has_quantization(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .map(|text| text.contains("\"quantization\""))
        .unwrap_or(false)
}

/// Copies the tokenizer files an HF directory has; returns their names.
fn copy_tokenizer_files(from: &Path, to: &Path) -> anyhow::Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        let source = from.join(name);
        if source.is_file() {
            let target = to.join(name);
            std::fs::copy(&source, &target)
                .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
            copied.push((*name).to_string());
        }
    }
    Ok(copied)
}

/// Writes tokenizer.json, tokenizer_config.json and generation_config.json
/// from the tokenizer in a GGUF file's metadata.
fn write_gguf_tokenizer(
    gguf: &Path,
    to: &Path,
    model: &ft_model::ModelArgs,
) -> anyhow::Result<Vec<String>> {
    let tokenizer = TextTokenizer::from_gguf(gguf)
        .with_context(|| format!("reading the tokenizer of {}", gguf.display()))?;
    let special = tokenizer.special();
    let mut hf = tokenizer.inner().clone();
    // transformers adds BOS/EOS through the tokenizer's post-processor.
    if special.add_bos || special.add_eos {
        let mut single = Vec::new();
        let mut tokens = Vec::new();
        if let (true, Some(id), Some(text)) = (special.add_bos, special.bos, tokenizer.bos_text()) {
            single.push(text.to_string());
            tokens.push((text.to_string(), id));
        }
        single.push("$A".to_string());
        if let (true, Some(id), Some(text)) = (special.add_eos, special.eos, tokenizer.eos_text()) {
            single.push(text.to_string());
            tokens.push((text.to_string(), id));
        }
        let mut pair = single.clone();
        pair.push("$B".to_string());
        let processor = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|builder| builder.try_pair(pair))
            .map_err(|error| anyhow!("BOS/EOS template: {error}"))?
            .special_tokens(tokens)
            .build()
            .map_err(|error| anyhow!("BOS/EOS template: {error}"))?;
        hf.with_post_processor(Some(processor));
    }
    let tokenizer_json = to.join("tokenizer.json");
    hf.save(&tokenizer_json, false)
        .map_err(|error| anyhow!("writing {}: {error}", tokenizer_json.display()))?;

    let text_of = |id: Option<u32>| id.and_then(|id| tokenizer.piece(id));
    let mut config = Map::new();
    // The generic fast tokenizer: it takes tokenizer.json as written, with
    // no model-specific rebuilding of the pipeline.
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    for (key, id) in [
        ("bos_token", special.bos),
        ("eos_token", special.eos),
        ("pad_token", special.pad),
        ("unk_token", special.unk),
    ] {
        if let Some(text) = text_of(id) {
            config.insert(key.into(), json!(text));
        }
    }
    config.insert("add_bos_token".into(), json!(special.add_bos));
    config.insert("add_eos_token".into(), json!(special.add_eos));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(length) = model.max_position_embeddings {
        config.insert("model_max_length".into(), json!(length));
    }
    if let Some(template) = tokenizer.chat_template() {
        config.insert("chat_template".into(), json!(template));
    }
    write_json(&to.join("tokenizer_config.json"), &Value::Object(config))?;

    let mut generation = Map::new();
    if let Some(bos) = special.bos {
        generation.insert("bos_token_id".into(), json!(bos));
    }
    let eos: Vec<u32> = special.end_of_turn.clone();
    match eos.as_slice() {
        [] => {}
        [one] => {
            generation.insert("eos_token_id".into(), json!(one));
        }
        many => {
            generation.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(pad) = special.pad {
        generation.insert("pad_token_id".into(), json!(pad));
    }
    write_json(
        &to.join("generation_config.json"),
        &Value::Object(generation),
    )?;
    Ok(vec![
        "tokenizer.json".into(),
        "tokenizer_config.json".into(),
        "generation_config.json".into(),
    ])
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
