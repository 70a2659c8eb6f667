//! Saving a model as one llama.cpp-compatible GGUF file, streamed one
//! tensor at a time through [`ft_gguf::GgufWriter`] (each tensor is
//! computed, written and dropped before the next, so a 7B model fused into
//! float16 never exists whole in memory; MLX's own writer, `mlx_save_gguf`,
//! takes every tensor at once): llama.cpp's tensor names, its Q/K row order,
//! the `llama.*` hyper-parameters, float16 or float32 weights (norms always
//! float32, as llama.cpp's converter writes them), plus whatever metadata
//! the caller adds (the tokenizer: ft-model does not know about text).

use crate::gguf::{hf_rows_to_llama_cpp, BLOCK_TENSOR_NAMES};
use crate::layers::Weight;
use crate::model::{Model, Projection};
use crate::{Error, Result};
use ft_gguf::{GgmlType, GgufTensorSpec, GgufValue, GgufWriter};
use mlx_rs::{Array, Dtype};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Context length written when the model's config has none (llama.cpp
/// requires the key; 4096 is what Llama 2 and Mistral v0.1 were trained with).
pub const FALLBACK_CONTEXT_LENGTH: u32 = 4096;

/// How to write the GGUF file.
#[derive(Clone, Debug)]
pub struct GgufExportOptions {
    /// dtype of the weight matrices: `Float16` (llama.cpp's `F16`) or
    /// `Float32`. Norm weights are float32 either way.
    pub dtype: Dtype,
    /// `general.name`, if any.
    pub name: Option<String>,
    /// Further metadata, e.g. the tokenizer's `tokenizer.ggml.*` keys and
    /// `tokenizer.chat_template`. Keys the writer derives from the model
    /// (`general.architecture`, `general.file_type`, `llama.*`) cannot be
    /// given here.
    pub metadata: BTreeMap<String, GgufValue>,
}

impl Default for GgufExportOptions {
    fn default() -> Self {
        Self {
            dtype: Dtype::Float32,
            name: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// Writes `model` to `path` (which must end in `.gguf`; its directory is
/// created) as a llama-architecture GGUF file that llama.cpp and
/// [`crate::load_model`] read. Quantized weights are refused: dequantize
/// first (`LoadOptions::dequantize`). The file is written next to `path`
/// and renamed, so an interrupted write leaves no half file under `path`.
pub fn save_gguf(model: &Model, path: &Path, options: &GgufExportOptions) -> Result<()> {
    let fail = |message: String| Error::Export {
        path: path.to_path_buf(),
        message,
    };
    if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
        return Err(fail("a GGUF file name must end in `.gguf`".into()));
    }
    let file_type: u32 = match options.dtype {
        Dtype::Float32 => 0,
        Dtype::Float16 => 1,
        other => {
            return Err(fail(format!(
                "dtype {other:?}: GGUF weights are written as float16 or float32"
            )))
        }
    };
    let args = &model.args;
    if args.rope_scaling.is_some() {
        return Err(fail(
            "Llama-3 RoPE scaling (`rope_scaling`) is not written to GGUF yet; use the HF format"
                .into(),
        ));
    }
    for (key, value) in &options.metadata {
        if key == "general.architecture" || key == "general.file_type" || key.starts_with("llama.")
        {
            return Err(fail(format!(
                "metadata `{key}` is derived from the model and cannot be given"
            )));
        }
        let items = value.as_array().unwrap_or_default();
        if items.iter().any(|item| matches!(item, GgufValue::Array(_))) {
            return Err(fail(format!(
                "metadata `{key}`: lists of lists are not written (MLX's GGUF reader refuses them)"
            )));
        }
    }

    let tensors = llama_cpp_tensors(model, options.dtype, &fail)?;
    let mut metadata = model_metadata(model, file_type, &fail)?;
    if let Some(name) = &options.name {
        metadata.insert("general.name".into(), GgufValue::string(name));
    }
    for (key, value) in &options.metadata {
        metadata.insert(key.clone(), value.clone());
    }

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // Written under a partial name and renamed: no half file under `path`.
    let partial = partial_path(path);
    let written = write_gguf(path, &partial, tensors, &metadata);
    if let Err(error) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `tensors` (float32 or float16, in the order given; each one is
/// evaluated, written and dropped in turn) and `metadata` to `partial`.
/// What the writer refuses is an export error about `path`.
fn write_gguf(
    path: &Path,
    partial: &Path,
    tensors: Vec<(String, Array)>,
    metadata: &BTreeMap<String, GgufValue>,
) -> Result<()> {
    let refused = |error: ft_gguf::Error| match error {
        ft_gguf::Error::Write { message, .. } => Error::Export {
            path: path.to_path_buf(),
            message,
        },
        other => Error::Gguf(other),
    };
    let specs = tensors
        .iter()
        .map(|(name, array)| {
            let ggml_type = match array.dtype() {
                Dtype::Float32 => GgmlType::F32,
                Dtype::Float16 => GgmlType::F16,
                other => {
                    return Err(Error::Export {
                        path: path.to_path_buf(),
                        message: format!(
                            "tensor {name} is {other:?}; GGUF tensors are written as float32 \
                             or float16"
                        ),
                    })
                }
            };
            let shape: Vec<u64> = array.shape().iter().map(|&dim| dim as u64).collect();
            Ok(GgufTensorSpec::row_major(name.clone(), &shape, ggml_type))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut writer = GgufWriter::create(partial, metadata, &specs).map_err(refused)?;
    let mut buffer = Vec::new();
    for (_, array) in tensors {
        array.eval()?;
        buffer.clear();
        match array.dtype() {
            Dtype::Float16 => {
                for value in array.as_slice::<half::f16>() {
                    buffer.extend(value.to_le_bytes());
                }
            }
            _ => {
                for value in array.as_slice::<f32>() {
                    buffer.extend(value.to_le_bytes());
                }
            }
        }
        drop(array);
        writer.write_tensor(&buffer).map_err(refused)?;
    }
    writer.finish_file().map_err(refused)
}

/// `dir/name.gguf` -> `dir/name.partial.gguf`.
fn partial_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.partial.gguf"))
}

/// The model's tensors under llama.cpp's names, Q/K rows permuted, weight
/// matrices in `dtype`, norms in float32.
fn llama_cpp_tensors(
    model: &Model,
    dtype: Dtype,
    fail: &dyn Fn(String) -> Error,
) -> Result<Vec<(String, Array)>> {
    let args = &model.args;
    let dense = |name: &str, weight: &Weight| -> Result<Array> {
        match weight {
            Weight::Dense(matrix) => Ok(matrix.as_dtype(dtype)?),
            Weight::Quantized { bits, .. } => Err(fail(format!(
                "{name} is {bits}-bit quantized; GGUF output holds float16/float32 weights: \
                 dequantize first (`ft fuse --dequantize`, LoadOptions::dequantize)"
            ))),
        }
    };
    let norm = |array: &Array| -> Result<Array> { Ok(array.as_dtype(Dtype::Float32)?) };
    let mut tensors = vec![(
        "token_embd.weight".to_string(),
        dense("token_embd.weight", &model.embed_tokens)?,
    )];
    for (index, layer) in model.layers.iter().enumerate() {
        for projection in Projection::ALL {
            let hf_module = format!("{}.{}", projection.parent(), projection.name());
            let gguf_module = gguf_module_name(&hf_module)
                .ok_or_else(|| fail(format!("internal: no GGUF name for {hf_module}")))?;
            let name = format!("blk.{index}.{gguf_module}.weight");
            let matrix = dense(&name, &layer.projection(projection).weight)?;
            let matrix = match projection {
                Projection::Q => hf_rows_to_llama_cpp(&matrix, args.num_heads)?,
                Projection::K => hf_rows_to_llama_cpp(&matrix, args.num_kv_heads)?,
                _ => matrix,
            };
            tensors.push((name, matrix));
        }
        for (hf_module, array) in [
            ("input_layernorm", &layer.input_layernorm),
            ("post_attention_layernorm", &layer.post_attention_layernorm),
        ] {
            let gguf_module = gguf_module_name(hf_module)
                .ok_or_else(|| fail(format!("internal: no GGUF name for {hf_module}")))?;
            tensors.push((format!("blk.{index}.{gguf_module}.weight"), norm(array)?));
        }
    }
    tensors.push(("output_norm.weight".into(), norm(&model.norm)?));
    // Tied embeddings: llama.cpp uses token_embd when output.weight is absent.
    if let Some(head) = &model.lm_head {
        tensors.push((
            "output.weight".into(),
            dense("output.weight", &head.weight)?,
        ));
    }
    Ok(tensors)
}

fn gguf_module_name(hf_module: &str) -> Option<&'static str> {
    BLOCK_TENSOR_NAMES
        .iter()
        .find(|(_, hf)| *hf == hf_module)
        .map(|(gguf, _)| *gguf)
}

/// `general.*` and `llama.*` keys, typed as llama.cpp checks them (u32
/// counts, f32 epsilon and RoPE base).
fn model_metadata(
    model: &Model,
    file_type: u32,
    fail: &dyn Fn(String) -> Error,
) -> Result<BTreeMap<String, GgufValue>> {
    let args = &model.args;
    let count = |key: &str, value: usize| -> Result<(String, GgufValue)> {
        let value = u32::try_from(value)
            .map_err(|_| fail(format!("`{key}` = {value} does not fit in a u32")))?;
        Ok((key.to_string(), GgufValue::U32(value)))
    };
    let context = match args.max_position_embeddings {
        Some(length) => length,
        None => {
            tracing::warn!(
                fallback = FALLBACK_CONTEXT_LENGTH,
                "the model has no max_position_embeddings; writing the fallback llama.context_length"
            );
            FALLBACK_CONTEXT_LENGTH as usize
        }
    };
    let mut metadata: BTreeMap<String, GgufValue> = [
        count("llama.context_length", context)?,
        count("llama.embedding_length", args.hidden_size)?,
        count("llama.block_count", args.num_layers)?,
        count("llama.feed_forward_length", args.intermediate_size)?,
        count("llama.rope.dimension_count", args.head_dim)?,
        count("llama.attention.head_count", args.num_heads)?,
        count("llama.attention.head_count_kv", args.num_kv_heads)?,
        count("llama.vocab_size", args.vocab_size)?,
    ]
    .into_iter()
    .collect();
    // llama.cpp assumes hidden / heads unless told otherwise.
    if args.head_dim * args.num_heads != args.hidden_size {
        metadata.extend([
            count("llama.attention.key_length", args.head_dim)?,
            count("llama.attention.value_length", args.head_dim)?,
        ]);
    }
    metadata.insert(
        "llama.attention.layer_norm_rms_epsilon".into(),
        GgufValue::F32(args.rms_norm_eps),
    );
    metadata.insert(
        "llama.rope.freq_base".into(),
        GgufValue::F32(args.rope_theta),
    );
    metadata.insert("general.architecture".into(), GgufValue::string("llama"));
    metadata.insert("general.file_type".into(), GgufValue::U32(file_type));
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_model, AttentionScope, LoadOptions, NoAdapter};

    fn logits(model: &Model) -> Vec<f32> {
        let ids = Array::from_slice(&[1_i32, 20, 300, 4000, 5, 32767], &[1, 6]);
        let out = model
            .forward(&ids, &NoAdapter, None, AttentionScope::Causal)
            .expect("forward");
        out.eval().expect("eval");
        out.as_slice::<f32>().to_vec()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .fold(0.0_f32, |m, (x, y)| m.max((x - y).abs()))
    }

    fn tiny_config(tied: bool) -> crate::config::HfConfig {
        let mut config = crate::tiny::tiny_mistral_config();
        config.tie_word_embeddings = tied;
        config
    }

    fn load_tiny(root: &Path, tied: bool, seed: u64) -> Model {
        let config = tiny_config(tied);
        let weights = crate::tiny::random_weights(&config, seed).expect("weights");
        crate::tiny::write_hf_dir(&root.join("src"), &config, &weights, 1).expect("write");
        load_model(
            root.join("src").to_str().expect("utf-8"),
            &LoadOptions::default(),
        )
        .expect("load")
    }

    #[test]
    fn float32_gguf_reloads_with_identical_logits() {
        for tied in [false, true] {
            let root = tempfile::tempdir().expect("tempdir");
            let model = load_tiny(root.path(), tied, 21);
            let path = root.path().join("out/model.gguf");
            let options = GgufExportOptions {
                name: Some("tiny".into()),
                ..GgufExportOptions::default()
            };
            save_gguf(&model, &path, &options).expect("save");
            assert!(!root.path().join("out/model.partial.gguf").exists());
            let reloaded =
                load_model(path.to_str().expect("utf-8"), &LoadOptions::default()).expect("reload");
            assert_eq!(reloaded.args.tie_word_embeddings, tied);
            assert_eq!(reloaded.lm_head.is_some(), !tied);
            assert_eq!(
                (
                    reloaded.args.num_heads,
                    reloaded.args.num_kv_heads,
                    reloaded.args.head_dim
                ),
                (8, 2, 8)
            );
            assert_eq!(reloaded.args.rope_theta, model.args.rope_theta);
            assert_eq!(reloaded.args.max_position_embeddings, Some(32768));
            assert_eq!(logits(&model), logits(&reloaded), "tied: {tied}");
        }
    }

    #[test]
    fn file_layout_is_llama_cpps() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = load_tiny(root.path(), true, 22);
        let path = root.path().join("model.gguf");
        let mut options = GgufExportOptions {
            dtype: Dtype::Float16,
            ..GgufExportOptions::default()
        };
        options.metadata.insert(
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(vec![GgufValue::string("<s>"), GgufValue::string("a b")]),
        );
        options
            .metadata
            .insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true));
        save_gguf(&model, &path, &options).expect("save");
        let file = crate::gguf::GgufFile::open(&path).expect("open");
        let tensors = file.tensors().expect("tensors");
        assert!(!tensors.contains_key("output.weight"), "tied head written");
        assert_eq!(tensors["token_embd.weight"].dtype(), Dtype::Float16);
        assert_eq!(tensors["blk.1.attn_norm.weight"].dtype(), Dtype::Float32);
        assert_eq!(tensors["output_norm.weight"].dtype(), Dtype::Float32);
        assert_eq!(tensors["blk.0.attn_k.weight"].shape(), &[16, 64]);
        // Q rows are in llama.cpp's interleaved order: undoing it gives HF's.
        let q = &tensors["blk.0.attn_q.weight"];
        let back = crate::gguf::llama_cpp_rows_to_hf(q, 8).expect("unpermute");
        let hf = model.layers[0]
            .self_attn
            .q_proj
            .weight
            .dense(Dtype::Float16);
        let hf = hf.expect("dense");
        assert_eq!(
            back.as_dtype(Dtype::Float32)
                .expect("cast")
                .as_slice::<f32>(),
            hf.as_dtype(Dtype::Float32).expect("cast").as_slice::<f32>()
        );
        assert_ne!(
            q.as_dtype(Dtype::Float32).expect("cast").as_slice::<f32>(),
            hf.as_dtype(Dtype::Float32).expect("cast").as_slice::<f32>()
        );
        assert_eq!(file.metadata_string("general.architecture"), Some("llama"));
        assert_eq!(
            file.metadata_number("general.file_type").expect("read"),
            Some(1.0)
        );
        assert_eq!(
            file.metadata_number("llama.block_count").expect("read"),
            Some(2.0)
        );
        let eps_number = file
            .metadata_number("llama.attention.layer_norm_rms_epsilon")
            .expect("read")
            .expect("key");
        assert!((eps_number - 1e-5).abs() < 1e-9, "{eps_number}");
        assert_eq!(file.metadata_number("no.such.key").expect("read"), None);
        let not_a_number = file
            .metadata_number("general.architecture")
            .expect_err("a string is not a number");
        assert!(
            not_a_number.to_string().contains("expected a number"),
            "{not_a_number}"
        );
        // Typed as llama.cpp checks them: u32 counts, f32 epsilon, bool flags.
        let metadata = file.metadata();
        assert_eq!(
            metadata.get("llama.attention.head_count"),
            Some(&GgufValue::U32(8))
        );
        assert!(matches!(
            metadata.get("llama.attention.layer_norm_rms_epsilon"),
            Some(GgufValue::F32(_))
        ));
        assert_eq!(
            metadata.get("tokenizer.ggml.add_bos_token"),
            Some(&GgufValue::Bool(true))
        );
        assert_eq!(
            metadata
                .get_str_array("tokenizer.ggml.tokens")
                .expect("tokens"),
            vec!["<s>", "a b"]
        );

        // float16 weights: close to, not equal to, the float32 model.
        let reloaded =
            load_model(path.to_str().expect("utf-8"), &LoadOptions::default()).expect("reload");
        let diff = max_abs_diff(&logits(&model), &logits(&reloaded));
        assert!(diff > 0.0 && diff < 1e-2, "float16 logits differ by {diff}");
    }

    #[test]
    fn refusals_are_typed_and_name_the_problem() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = crate::tiny::tiny_model(
            23,
            &LoadOptions {
                quantize: Some((64, 4)),
                ..LoadOptions::default()
            },
        )
        .expect("model");
        let path = root.path().join("q.gguf");
        let error =
            save_gguf(&model, &path, &GgufExportOptions::default()).expect_err("quantized refused");
        assert!(matches!(error, Error::Export { .. }));
        assert!(error.to_string().contains("dequantize"), "{error}");
        assert!(!path.exists());

        let dense = crate::tiny::tiny_model(23, &LoadOptions::default()).expect("model");
        let error = save_gguf(
            &dense,
            &root.path().join("m.bin"),
            &GgufExportOptions::default(),
        )
        .expect_err("extension");
        assert!(error.to_string().contains(".gguf"), "{error}");
        let bf16 = GgufExportOptions {
            dtype: Dtype::Bfloat16,
            ..GgufExportOptions::default()
        };
        let error = save_gguf(&dense, &path, &bf16).expect_err("bfloat16");
        assert!(error.to_string().contains("float16 or float32"), "{error}");
        let mut clash = GgufExportOptions::default();
        clash
            .metadata
            .insert("llama.block_count".into(), GgufValue::U32(3));
        let error = save_gguf(&dense, &path, &clash).expect_err("derived key");
        assert!(error.to_string().contains("llama.block_count"), "{error}");
        let mut mixed = GgufExportOptions::default();
        mixed.metadata.insert(
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(vec![GgufValue::F32(1.0), GgufValue::U8(1)]),
        );
        let error = save_gguf(&dense, &path, &mixed).expect_err("mixed list");
        assert!(matches!(error, Error::Export { .. }), "{error:?}");
        assert!(
            error.to_string().contains("tokenizer.ggml.scores"),
            "{error}"
        );
        let mut nested = GgufExportOptions::default();
        nested.metadata.insert(
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)])]),
        );
        let error = save_gguf(&dense, &path, &nested).expect_err("nested list");
        assert!(error.to_string().contains("lists of lists"), "{error}");
        assert!(!path.exists());
    }

    #[test]
    fn permutation_round_trips() {
        let rows = Array::from_slice(&(0..48).map(|v| v as f32).collect::<Vec<_>>(), &[12, 4]);
        let there = hf_rows_to_llama_cpp(&rows, 3).expect("permute");
        let back = crate::gguf::llama_cpp_rows_to_hf(&there, 3).expect("unpermute");
        assert_eq!(back.as_slice::<f32>(), rows.as_slice::<f32>());
        // Head 0, HF rows [0 1 | 2 3] -> llama.cpp [0 2 1 3].
        let first_column: Vec<f32> = there.as_slice::<f32>().iter().step_by(4).copied().collect();
        assert_eq!(&first_column[..4], &[0.0, 8.0, 4.0, 12.0]);
        assert!(hf_rows_to_llama_cpp(&rows, 5).is_err());
    }
}
