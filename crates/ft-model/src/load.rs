//! Loading a model: a directory with config.json and (sharded) safetensors,
//! a GGUF file, or a built-in short name. Tensor names are checked strictly:
//! missing, unexpected and misshapen tensors are errors that list the names.

use crate::config::ModelArgs;
use crate::gguf::GgufFile;
use crate::layers::{Linear, Weight};
use crate::model::{Attention, DecoderLayer, Mlp, Model, Projection};
use crate::{Error, Result};
use mlx_rs::{Array, Dtype};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

mod safetensors;

pub use self::safetensors::json_kind;

pub use self::safetensors::{check_safetensors, SafetensorsHeader};

/// The file of the built-in default model under [`models_dir`].
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Built-in models: short name and file name under the models directory.
pub const BUILTIN_MODELS: &[(&str, &str)] = &[("smollm2-135m-instruct", DEFAULT_MODEL_FILE)];

/// The directory `cargo xtask setup` installs built-in models into:
/// `$FT_MODELS_DIR`, else `<checkout>/.ft/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("FT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ft/models"))
}

/// How to turn the checkpoint's tensors into the model's.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Cast dense weights (and quantization scales) to this dtype.
    pub dtype: Option<Dtype>,
    /// Dequantize quantized checkpoints to dense weights.
    pub dequantize: bool,
    /// Quantize dense linear layers on load: `(group_size, bits)`.
    pub quantize: Option<(i32, i32)>,
}

/// Where a model came from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A Hugging Face style directory.
    Directory(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

impl ModelSource {
    /// Resolves a directory, a `.gguf` file, a built-in name or a Hugging
    /// Face Hub id (`org/name[@revision]`, see [`crate::hub`]): a Hub id
    /// becomes the snapshot directory in the Hugging Face cache, downloaded
    /// first when it is not there completely.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        let path = Path::new(name_or_path);
        if path.is_dir() {
            return Ok(Self::Directory(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if let Some((_, file)) = BUILTIN_MODELS
            .iter()
            .find(|(name, _)| *name == name_or_path)
        {
            let path = models_dir().join(file);
            if path.is_file() {
                return Ok(Self::Gguf(path));
            }
            return Err(Error::ModelNotFound(
                format!(
                    "{name_or_path} ({} is missing: run `cargo xtask setup`)",
                    path.display()
                ),
                builtin_names(),
            ));
        }
        if let Some(id) = crate::hub::model_id(name_or_path) {
            return Ok(Self::Directory(crate::hub::resolve(&id)?.dir));
        }
        Err(Error::ModelNotFound(
            name_or_path.to_string(),
            builtin_names(),
        ))
    }

    /// Like [`Self::resolve`], but a Hub id only needs its configuration and
    /// tokenizer files (downloaded alone when the weights are not cached):
    /// for reading shapes and tokenizing before any weight is needed.
    pub fn resolve_without_weights(name_or_path: &str) -> Result<Self> {
        let path = Path::new(name_or_path);
        if !path.exists() && !BUILTIN_MODELS.iter().any(|(name, _)| *name == name_or_path) {
            if let Some(id) = crate::hub::model_id(name_or_path) {
                return Ok(Self::Directory(crate::hub::resolve_without_weights(&id)?));
            }
        }
        Self::resolve(name_or_path)
    }

    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Directory(path) | Self::Gguf(path) => path,
        }
    }

    /// The Hub repository (`org/name`) and commit when the directory is a
    /// snapshot of the Hugging Face cache (what a Hub id resolves to); the
    /// revision asked for is in the string given to [`Self::resolve`]
    /// ([`crate::hub::model_id`] parses it).
    pub fn hub_id(&self) -> Option<crate::hub::HubModel> {
        match self {
            Self::Directory(dir) => crate::hub::HubModel::from_snapshot_dir(dir),
            Self::Gguf(_) => None,
        }
    }
}

/// Whether two `--model` / `model.path` strings name the same base model
/// without resolving or downloading anything: equal strings, the same file
/// or directory however written (relative, absolute, through links), or the
/// same Hub repository (case-insensitive; revisions compared when both sides
/// give one, a missing revision meaning `main`; a cache snapshot directory
/// counts as its repository).
pub fn same_model(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    #[derive(Debug)]
    enum Key {
        Hub(String, Option<String>),
        Path(PathBuf),
        Name(String),
    }
    let key = |spec: &str| -> Key {
        if let Some(id) = crate::hub::model_id(spec) {
            let revision = id.revision_or_main().to_string();
            return Key::Hub(id.repo.to_ascii_lowercase(), Some(revision));
        }
        match std::fs::canonicalize(spec) {
            Ok(path) => match crate::hub::HubModel::from_snapshot_dir(&path) {
                Some(model) => Key::Hub(model.id.to_ascii_lowercase(), None),
                None => Key::Path(path),
            },
            Err(_) => Key::Name(spec.to_string()),
        }
    };
    match (key(a), key(b)) {
        (Key::Hub(a, ra), Key::Hub(b, rb)) => a == b && (ra.is_none() || rb.is_none() || ra == rb),
        (Key::Path(a), Key::Path(b)) => a == b,
        (Key::Name(a), Key::Name(b)) => a == b,
        _ => false,
    }
}

fn builtin_names() -> String {
    BUILTIN_MODELS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads a model by directory, GGUF path or built-in name.
pub fn load_model(name_or_path: &str, options: &LoadOptions) -> Result<Model> {
    let source = ModelSource::resolve(name_or_path)?;
    let (args, tensors) = match &source {
        ModelSource::Directory(dir) => {
            let args = ModelArgs::from_config_file(&dir.join("config.json"))?;
            (args, read_safetensors_dir(dir)?)
        }
        ModelSource::Gguf(path) => read_gguf(path)?,
    };
    let options = &LoadOptions {
        dtype: Some(options.dtype.unwrap_or_else(|| default_dtype(&tensors))),
        ..options.clone()
    };
    assemble(args, tensors, source.path(), options)
}

/// The dtype dense weights get when none is asked for: float32 (the fast
/// path on the CPU, exact for checks) when the model's float32 weights take
/// at most half of the machine's memory, else bfloat16, so that a 7B model
/// (29 GB in float32) still loads for generation and fusing on a 24 GB
/// machine.
fn default_dtype(tensors: &HashMap<String, Array>) -> Dtype {
    let values: u64 = tensors
        .iter()
        .filter(|(name, _)| !name.ends_with(".scales") && !name.ends_with(".biases"))
        .map(|(_, array)| {
            let packed = match array.dtype() {
                Dtype::Uint32 => 8,
                _ => 1,
            };
            array.size() as u64 * packed
        })
        .sum();
    let memory = crate::runtime::physical_memory().unwrap_or(0);
    if memory == 0 || values.saturating_mul(4) <= memory / 2 {
        Dtype::Float32
    } else {
        tracing::info!(
            parameters = values,
            "float32 weights would take more than half of the memory: loading as bfloat16"
        );
        Dtype::Bfloat16
    }
}

/// All tensors of a directory: `model.safetensors.index.json` shards, or
/// every `*.safetensors` file.
pub fn read_safetensors_dir(dir: &Path) -> Result<HashMap<String, Array>> {
    let index_path = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| Error::Io {
            path: index_path.clone(),
            source,
        })?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| Error::Config {
                path: index_path.clone(),
                message: format!("not valid JSON: {error}"),
            })?;
        let map = index["weight_map"]
            .as_object()
            .ok_or_else(|| Error::Config {
                path: index_path.clone(),
                message: "field `weight_map`: expected an object of tensor name -> shard file"
                    .into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.into_iter().map(|shard| dir.join(shard)).collect()
    } else {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "safetensors"))
            .collect();
        files.sort();
        files
    };
    if files.is_empty() {
        return Err(Error::Weights {
            path: dir.to_path_buf(),
            message: "no *.safetensors file in the model directory".into(),
        });
    }
    let mut tensors = HashMap::new();
    for file in files {
        if !file.is_file() {
            return Err(Error::Weights {
                path: file,
                message: "shard named in model.safetensors.index.json is missing".into(),
            });
        }
        // MLX trusts the header's shapes and offsets: check them first.
        check_safetensors(&file)?;
        let loaded = Array::load_safetensors(&file).map_err(|error| Error::MlxIo {
            path: file.clone(),
            message: error.to_string(),
        })?;
        tensors.extend(loaded);
    }
    Ok(tensors)
}

/// The Hugging Face config of a llama-architecture GGUF file from its
/// metadata (`lookup` looks a number up). `vocab_fallback` is used when
/// the metadata has no `llama.vocab_size`; `tied` says whether the file
/// lacks an `output.weight`. [`gguf_model_args`] gives it all three.
pub fn gguf_hf_config(
    lookup: &dyn Fn(&str) -> std::result::Result<Option<f64>, String>,
    vocab_fallback: usize,
    tied: bool,
) -> std::result::Result<crate::config::HfConfig, String> {
    // Look every key up first: a failed read is reported, never taken for "absent".
    const KEYS: [&str; 12] = [
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.vocab_size",
        "llama.rope.dimension_count",
        "llama.feed_forward_length",
        "llama.block_count",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
        "llama.context_length",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ];
    let mut values = HashMap::new();
    for key in KEYS {
        if let Some(value) = lookup(key)? {
            values.insert(key, value);
        }
    }
    let number = |key: &str| values.get(key).copied();
    let required = |key: &str| number(key).ok_or_else(|| format!("metadata `{key}` is missing"));
    let hidden_size = required("llama.embedding_length")? as usize;
    let num_heads = required("llama.attention.head_count")? as usize;
    let num_kv_heads = number("llama.attention.head_count_kv").map_or(num_heads, |n| n as usize);
    let vocab_size = number("llama.vocab_size").map_or(vocab_fallback, |n| n as usize);
    let head_dim =
        number("llama.rope.dimension_count").map_or(hidden_size / num_heads.max(1), |n| n as usize);
    Ok(crate::config::HfConfig {
        architectures: vec!["LlamaForCausalLM".into()],
        model_type: Some("llama".into()),
        hidden_size,
        intermediate_size: required("llama.feed_forward_length")? as usize,
        num_hidden_layers: required("llama.block_count")? as usize,
        num_attention_heads: num_heads,
        num_key_value_heads: Some(num_kv_heads),
        head_dim: Some(head_dim),
        vocab_size,
        rms_norm_eps: number("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
        rope_theta: number("llama.rope.freq_base").unwrap_or(10_000.0) as f32,
        rope_scaling: None,
        tie_word_embeddings: tied,
        sliding_window: None,
        max_position_embeddings: number("llama.context_length").map(|n| n as usize),
        bos_token_id: number("tokenizer.ggml.bos_token_id").map(|n| n as u32),
        eos_token_id: number("tokenizer.ggml.eos_token_id")
            .map(|n| crate::config::EosIds::One(n as u32)),
        quantization: None,
        torch_dtype: None,
    })
}

/// The hyper-parameters of a llama-architecture GGUF file from its checked
/// layout ([`crate::gguf::read_layout`]): metadata and tensor table, no
/// tensor data. Shared by the loader and by readers that only need the
/// shapes (memory estimates).
pub fn gguf_model_args(path: &Path, layout: &ft_gguf::GgufLayout) -> Result<ModelArgs> {
    let config = |message: String| Error::Config {
        path: path.to_path_buf(),
        message,
    };
    let metadata = &layout.metadata;
    let arch = metadata
        .get("general.architecture")
        .and_then(ft_gguf::GgufValue::as_str)
        .unwrap_or_default();
    if arch != "llama" {
        return Err(config(format!(
            "metadata `general.architecture`: expected `llama` (Llama/Mistral family), got `{arch}`"
        )));
    }
    // GGUF lists dimensions innermost first: token_embd is [hidden, vocab].
    let vocab_fallback = layout
        .tensor("token_embd.weight")
        .and_then(|tensor| tensor.dims.last())
        .map_or(0, |&vocab| vocab as usize);
    let tied = layout.tensor("output.weight").is_none();
    let lookup = |key: &str| crate::gguf::metadata_number(metadata, key);
    let hf = gguf_hf_config(&lookup, vocab_fallback, tied).map_err(config)?;
    ModelArgs::from_hf(&hf).map_err(config)
}

/// Reads a GGUF file: architecture from its metadata, tensors renamed to
/// Hugging Face keys, llama.cpp's Q/K row permutation undone.
pub fn read_gguf(path: &Path) -> Result<(ModelArgs, HashMap<String, Array>)> {
    let file = GgufFile::open(path)?;
    let args = gguf_model_args(path, file.layout())?;
    let raw_tensors = file.tensors()?;
    let mut tensors = HashMap::with_capacity(raw_tensors.len());
    for (name, array) in raw_tensors {
        let hf_name = gguf_to_hf_name(&name).unwrap_or_else(|| name.clone());
        let heads = if hf_name.contains(".self_attn.q_proj.") {
            Some((args.num_heads, "llama.attention.head_count"))
        } else if hf_name.contains(".self_attn.k_proj.") {
            Some((args.num_kv_heads, "llama.attention.head_count_kv"))
        } else {
            None
        };
        let array = match heads {
            Some((heads, key)) => {
                crate::gguf::llama_cpp_rows_to_hf(&array, heads).map_err(|error| {
                    Error::Weights {
                        path: path.to_path_buf(),
                        message: format!(
                            "tensor `{name}` does not fit the metadata `{key}` = {heads}: {error}"
                        ),
                    }
                })?
            }
            None => array,
        };
        tensors.insert(hf_name, array);
    }
    Ok((args, tensors))
}

/// `blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`.
fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, module) = rest.split_once('.')?;
            let (_, module) = crate::gguf::BLOCK_TENSOR_NAMES
                .iter()
                .find(|(gguf, _)| *gguf == module)?;
            format!("model.layers.{layer}.{module}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// Builds the model from named tensors, checking names and shapes.
pub fn assemble(
    args: ModelArgs,
    mut tensors: HashMap<String, Array>,
    path: &Path,
    options: &LoadOptions,
) -> Result<Model> {
    // Buffers some exporters keep; they carry no learned weights.
    tensors.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
    let mut missing = Vec::new();
    let mut misshapen = Vec::new();
    let hidden = args.hidden_size as i32;

    let mut take_weight = |prefix: &str, out: i32, inp: i32| -> Option<Weight> {
        let weight = tensors.remove(&format!("{prefix}.weight"));
        let scales = tensors.remove(&format!("{prefix}.scales"));
        let biases = tensors.remove(&format!("{prefix}.biases"));
        let Some(weight) = weight else {
            missing.push(format!("{prefix}.weight"));
            return None;
        };
        let built = match (scales, biases) {
            (Some(scales), Some(biases)) => {
                Weight::quantized_from_parts(weight, scales, biases, inp)
                    .map_err(|message| format!("{prefix}: {message}"))
            }
            (None, None) => {
                if weight.shape() == [out, inp] {
                    Ok(Weight::Dense(weight))
                } else {
                    Err(format!(
                        "{prefix}.weight: expected shape {:?}, got {:?}",
                        [out, inp],
                        weight.shape()
                    ))
                }
            }
            _ => Err(format!("{prefix}: has only one of .scales/.biases")),
        };
        match built {
            Ok(weight) if weight.out_features() == out => Some(weight),
            Ok(weight) => {
                misshapen.push(format!(
                    "{prefix}: expected {out} output features, got {}",
                    weight.out_features()
                ));
                None
            }
            Err(message) => {
                misshapen.push(message);
                None
            }
        }
    };

    let embed = take_weight("model.embed_tokens", args.vocab_size as i32, hidden);
    let mut layer_weights = Vec::with_capacity(args.num_layers);
    for layer in 0..args.num_layers {
        let mut projections = Vec::with_capacity(7);
        for projection in Projection::ALL {
            let (out, inp) = args.projection_shape(projection);
            projections.push(take_weight(&projection.key(layer), out, inp));
        }
        layer_weights.push(projections);
    }
    let head = if args.tie_word_embeddings {
        None
    } else {
        take_weight("lm_head", args.vocab_size as i32, hidden)
    };

    let mut take_norm = |name: String| -> Option<Array> {
        match tensors.remove(&name) {
            Some(norm) if norm.shape() == [hidden] => Some(norm),
            Some(norm) => {
                misshapen.push(format!(
                    "{name}: expected shape [{hidden}], got {:?}",
                    norm.shape()
                ));
                None
            }
            None => {
                missing.push(name);
                None
            }
        }
    };
    let mut norms = Vec::with_capacity(args.num_layers);
    for layer in 0..args.num_layers {
        norms.push((
            take_norm(format!("model.layers.{layer}.input_layernorm.weight")),
            take_norm(format!(
                "model.layers.{layer}.post_attention_layernorm.weight"
            )),
        ));
    }
    let final_norm = take_norm("model.norm.weight".into());

    let mut problems = Vec::new();
    if !missing.is_empty() {
        missing.sort();
        problems.push(format!("missing tensors: {}", missing.join(", ")));
    }
    if !tensors.is_empty() {
        let mut unexpected: Vec<&String> = tensors.keys().collect();
        unexpected.sort();
        problems.push(format!(
            "unexpected tensors: {}",
            unexpected
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !misshapen.is_empty() {
        problems.push(format!("wrong shapes: {}", misshapen.join("; ")));
    }
    let (Some(embed), Some(final_norm), true) = (embed, final_norm, problems.is_empty()) else {
        return Err(Error::Weights {
            path: path.to_path_buf(),
            message: problems.join("\n"),
        });
    };

    let convert = |weight: Weight, is_embedding: bool| -> Result<Weight> {
        let mut weight = if options.dequantize && weight.is_quantized() {
            Weight::Dense(weight.dense(options.dtype.unwrap_or(Dtype::Float32))?)
        } else {
            weight
        };
        if let Some(dtype) = options.dtype {
            weight = weight.with_dtype(dtype)?;
        }
        if let (Some((group_size, bits)), false) = (options.quantize, is_embedding) {
            weight = weight.quantize(group_size, bits)?;
        }
        // Materialise layer by layer so a source and its conversion never
        // coexist for the whole model.
        for (_, part) in weight.named_parts() {
            part.eval()?;
        }
        Ok(weight)
    };
    let norm_dtype = |norm: Array| -> Result<Array> {
        let norm = match options.dtype {
            Some(dtype) => norm.as_dtype(dtype)?,
            None => norm.as_dtype(Dtype::Float32)?,
        };
        norm.eval()?;
        Ok(norm)
    };

    let embed = convert(embed, true)?;
    let mut layers = Vec::with_capacity(args.num_layers);
    for (projections, (input_norm, post_norm)) in layer_weights.into_iter().zip(norms) {
        let mut converted = Vec::with_capacity(7);
        for weight in projections.into_iter().flatten() {
            converted.push(Linear {
                weight: convert(weight, false)?,
            });
        }
        let [q, k, v, o, gate, up, down]: [Linear; 7] =
            converted.try_into().map_err(|_| Error::Weights {
                path: path.to_path_buf(),
                message: "internal: projection count".into(),
            })?;
        layers.push(DecoderLayer {
            input_layernorm: norm_dtype(input_norm.ok_or_else(|| internal(path))?)?,
            self_attn: Attention {
                q_proj: q,
                k_proj: k,
                v_proj: v,
                o_proj: o,
            },
            post_attention_layernorm: norm_dtype(post_norm.ok_or_else(|| internal(path))?)?,
            mlp: Mlp {
                gate_proj: gate,
                up_proj: up,
                down_proj: down,
            },
        });
    }
    let lm_head = match head {
        Some(weight) => Some(Linear {
            weight: convert(weight, false)?,
        }),
        None => None,
    };
    Ok(Model::new(
        args,
        embed,
        layers,
        norm_dtype(final_norm)?,
        lm_head,
    ))
}

fn internal(path: &Path) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        message: "internal: a checked tensor vanished".into(),
    }
}
