//! Saving a model as a Hugging Face style directory: config.json plus
//! safetensors, sharded with an index above a size threshold, quantized
//! layers kept in MLX's format (with `quantization` in config.json) or
//! dequantized on request.

use crate::layers::Weight;
use crate::model::{Model, Projection};
use crate::{Error, Result};
use mlx_rs::{Array, Dtype};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How to write the model.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Write quantized layers as dense matrices.
    pub dequantize: bool,
    /// dtype of dense weights (default: as loaded).
    pub dtype: Option<Dtype>,
    /// Start a new shard when one would exceed this many bytes.
    pub max_shard_bytes: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dequantize: false,
            dtype: None,
            max_shard_bytes: 5 << 30,
        }
    }
}

/// Writes `model` into `dir` (created if needed).
pub fn save_hf_dir(model: &Model, dir: &Path, options: &ExportOptions) -> Result<()> {
    let mut tensors: BTreeMap<String, Array> = BTreeMap::new();
    let mut quantization: Option<(i32, i32)> = None;
    let mut add = |prefix: &str, weight: &Weight| -> Result<()> {
        if options.dequantize && weight.is_quantized() {
            let dense = weight.dense(options.dtype.unwrap_or(Dtype::Float32))?;
            tensors.insert(format!("{prefix}.weight"), dense);
            return Ok(());
        }
        if let Weight::Quantized {
            group_size, bits, ..
        } = weight
        {
            quantization.get_or_insert((*group_size, *bits));
        }
        for (suffix, array) in weight.named_parts() {
            let array = match (options.dtype, suffix) {
                (Some(dtype), _) if !weight.is_quantized() || suffix != "weight" => {
                    array.as_dtype(dtype)?
                }
                _ => array.clone(),
            };
            tensors.insert(format!("{prefix}.{suffix}"), array);
        }
        Ok(())
    };
    add("model.embed_tokens", &model.embed_tokens)?;
    for (index, layer) in model.layers.iter().enumerate() {
        for projection in Projection::ALL {
            add(&projection.key(index), &layer.projection(projection).weight)?;
        }
    }
    if let Some(head) = &model.lm_head {
        add("lm_head", &head.weight)?;
    }
    let norm_dtype = options.dtype.unwrap_or(model.norm.dtype());
    for (index, layer) in model.layers.iter().enumerate() {
        tensors.insert(
            format!("model.layers.{index}.input_layernorm.weight"),
            layer.input_layernorm.as_dtype(norm_dtype)?,
        );
        tensors.insert(
            format!("model.layers.{index}.post_attention_layernorm.weight"),
            layer.post_attention_layernorm.as_dtype(norm_dtype)?,
        );
    }
    tensors.insert("model.norm.weight".into(), model.norm.as_dtype(norm_dtype)?);

    let mut config = serde_json::to_value(model.args.to_hf()).map_err(|error| Error::Config {
        path: dir.join("config.json"),
        message: error.to_string(),
    })?;
    if let Some((group_size, bits)) = quantization {
        config["quantization"] = serde_json::json!({ "group_size": group_size, "bits": bits });
    }
    config["torch_dtype"] = serde_json::json!(dtype_name(norm_dtype));
    let shards = shards_by_size(&tensors, options.max_shard_bytes);
    write_dir(dir, &config, &tensors, &shards)
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::Float16 => "float16",
        Dtype::Bfloat16 => "bfloat16",
        _ => "float32",
    }
}

/// Groups tensor names into shards of at most `max_shard_bytes` (a tensor
/// larger than that gets a shard of its own).
fn shards_by_size(tensors: &BTreeMap<String, Array>, max_shard_bytes: usize) -> Vec<Vec<&String>> {
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut current = 0_usize;
    for (name, array) in tensors {
        let bytes = array.nbytes();
        if current > 0 && current + bytes > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += bytes;
        if let Some(last) = shards.last_mut() {
            last.push(name);
        }
    }
    shards
}

/// Writes config.json and the tensors as an HF directory: one
/// `model.safetensors`, or the given shards plus `model.safetensors.index.json`.
pub(crate) fn write_dir(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &BTreeMap<String, Array>,
    shards: &[Vec<&String>],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0_usize;
    for (index, names) in shards.iter().enumerate() {
        let arrays: Vec<(&str, &Array)> =
            names.iter().map(|n| (n.as_str(), &tensors[*n])).collect();
        total_size += write_shard(dir, index, count, &arrays, &mut weight_map)?;
    }
    write_index_and_config(dir, config, count, total_size, &weight_map)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

/// Writes shard `index` of `count` (`model.safetensors` when there is one)
/// and records its tensors in `weight_map`; returns its bytes of data.
pub(crate) fn write_shard(
    dir: &Path,
    index: usize,
    count: usize,
    arrays: &[(&str, &Array)],
    weight_map: &mut BTreeMap<String, String>,
) -> Result<usize> {
    let file_name = if count == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{count:05}.safetensors", index + 1)
    };
    let path = dir.join(&file_name);
    let metadata: HashMap<String, String> = [("format".to_string(), "mlx".to_string())].into();
    Array::save_safetensors(arrays.iter().copied(), &metadata, &path).map_err(|error| {
        Error::MlxIo {
            path: path.clone(),
            message: error.to_string(),
        }
    })?;
    let mut bytes = 0;
    for (name, array) in arrays {
        bytes += array.nbytes();
        weight_map.insert((*name).to_string(), file_name.clone());
    }
    Ok(bytes)
}

/// Writes `model.safetensors.index.json` (for more than one shard) and
/// `config.json`.
pub(crate) fn write_index_and_config(
    dir: &Path,
    config: &serde_json::Value,
    count: usize,
    total_size: usize,
    weight_map: &BTreeMap<String, String>,
) -> Result<()> {
    if count > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total_size },
            "weight_map": weight_map,
        });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, index.to_string()).map_err(io_error(&path))?;
    }
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|error| Error::Config {
        path: path.clone(),
        message: error.to_string(),
    })?;
    std::fs::write(&path, text).map_err(io_error(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_model, AttentionScope, LoadOptions, NoAdapter};

    fn logits(model: &Model) -> Vec<f32> {
        let ids = Array::from_slice(&[1_i32, 20, 300, 4000, 5], &[1, 5]);
        let out = model
            .forward(&ids, &NoAdapter, None, AttentionScope::Causal)
            .expect("forward");
        out.eval().expect("eval");
        out.as_slice::<f32>().to_vec()
    }

    #[test]
    fn exported_tiny_model_reloads_with_identical_logits() {
        let config = crate::tiny::tiny_mistral_config();
        let weights = crate::tiny::random_weights(&config, 3).expect("weights");
        let root = tempfile::tempdir().expect("tempdir");
        crate::tiny::write_hf_dir(&root.path().join("src"), &config, &weights, 1).expect("write");
        let original = load_model(
            root.path().join("src").to_str().expect("utf-8"),
            &LoadOptions::default(),
        )
        .expect("load");
        // Small shards force an index.
        let options = ExportOptions {
            max_shard_bytes: 2 << 20,
            ..ExportOptions::default()
        };
        let out = root.path().join("out");
        save_hf_dir(&original, &out, &options).expect("export");
        assert!(out.join("model.safetensors.index.json").is_file());
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("config.json")).expect("config"),
        )
        .expect("json");
        // mlx-lm reads any `quantization` key, null included, as quantized.
        assert!(config.get("quantization").is_none(), "{config}");
        let reloaded =
            load_model(out.to_str().expect("utf-8"), &LoadOptions::default()).expect("reload");
        assert_eq!(logits(&original), logits(&reloaded));
    }

    #[test]
    fn quantized_export_keeps_mlx_quantization() {
        let config = crate::tiny::tiny_mistral_config();
        let weights = crate::tiny::random_weights(&config, 4).expect("weights");
        let root = tempfile::tempdir().expect("tempdir");
        crate::tiny::write_hf_dir(&root.path().join("src"), &config, &weights, 1).expect("write");
        let quantized = load_model(
            root.path().join("src").to_str().expect("utf-8"),
            &LoadOptions {
                quantize: Some((64, 4)),
                ..LoadOptions::default()
            },
        )
        .expect("load");
        let out = root.path().join("q");
        save_hf_dir(&quantized, &out, &ExportOptions::default()).expect("export");
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("config.json")).expect("config"),
        )
        .expect("json");
        assert_eq!(config["quantization"]["bits"], 4);
        assert_eq!(config["quantization"]["group_size"], 64);
        let reloaded =
            load_model(out.to_str().expect("utf-8"), &LoadOptions::default()).expect("reload");
        assert_eq!(logits(&quantized), logits(&reloaded));
    }
}
