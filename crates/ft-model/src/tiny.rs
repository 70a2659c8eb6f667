//! Tiny random models written as real Hugging Face directories
//! (config.json, sharded safetensors, index), for fast tests of every layer.

use crate::config::{EosIds, HfConfig};
use crate::{Error, Result};
use mlx_rs::{random, Array};
use std::collections::BTreeMap;
use std::path::Path;

/// Mistral-7B-v0.3's structure scaled down: vocab 32768, GQA 4:1, 2 layers.
pub fn tiny_mistral_config() -> HfConfig {
    HfConfig {
        architectures: vec!["MistralForCausalLM".into()],
        model_type: Some("mistral".into()),
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: Some(2),
        head_dim: Some(8),
        vocab_size: 32768,
        rms_norm_eps: 1e-5,
        rope_theta: 1_000_000.0,
        rope_scaling: None,
        tie_word_embeddings: false,
        sliding_window: None,
        max_position_embeddings: Some(32768),
        bos_token_id: Some(1),
        eos_token_id: Some(EosIds::One(2)),
        quantization: None,
        torch_dtype: Some("float32".into()),
    }
}

/// Random float32 weights for `config`, by checkpoint key.
pub fn random_weights(config: &HfConfig, seed: u64) -> Result<BTreeMap<String, Array>> {
    let args = crate::ModelArgs::from_hf(config).map_err(Error::InvalidRequest)?;
    let hidden = args.hidden_size as i32;
    let mut key = random::key(seed)?;
    let mut normal = |shape: &[i32], scale: f32| -> Result<Array> {
        let (next, sub) = random::split(&key, 2)?;
        key = next;
        Ok(random::normal::<f32>(shape, None, scale, &sub)?)
    };
    let mut weights = BTreeMap::new();
    weights.insert(
        "model.embed_tokens.weight".to_string(),
        normal(&[args.vocab_size as i32, hidden], 0.02)?,
    );
    for layer in 0..args.num_layers {
        for projection in crate::Projection::ALL {
            let (out, fan_in) = args.projection_shape(projection);
            weights.insert(
                format!("{}.weight", projection.key(layer)),
                normal(&[out, fan_in], 1.0 / (fan_in as f32).sqrt())?,
            );
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            weights.insert(
                format!("model.layers.{layer}.{norm}.weight"),
                normal(&[hidden], 0.1)?.add(Array::from_f32(1.0))?,
            );
        }
    }
    weights.insert(
        "model.norm.weight".to_string(),
        normal(&[hidden], 0.1)?.add(Array::from_f32(1.0))?,
    );
    if !args.tie_word_embeddings {
        weights.insert(
            "lm_head.weight".to_string(),
            normal(&[args.vocab_size as i32, hidden], 0.05)?,
        );
    }
    Ok(weights)
}

/// Writes a random-weight checkpoint of `config` (its `config.json` is
/// `config_json`, written verbatim) as `shards` safetensors files of
/// `dtype`, one shard at a time so that at most one shard is in memory: a
/// full-size model (Mistral-7B, 14.5 GB in bfloat16) is written in a
/// fraction of that memory. Shards split at decoder-layer boundaries, as
/// Hugging Face checkpoints do. Returns the shard count written.
pub fn write_random_checkpoint(
    dir: &Path,
    config_json: &serde_json::Value,
    dtype: mlx_rs::Dtype,
    shards: usize,
    seed: u64,
) -> Result<usize> {
    let config: HfConfig =
        serde_json::from_value(config_json.clone()).map_err(|error| Error::Config {
            path: dir.join("config.json"),
            message: error.to_string(),
        })?;
    let args = crate::ModelArgs::from_hf(&config).map_err(Error::InvalidRequest)?;
    let hidden = args.hidden_size as i32;
    let vocab = args.vocab_size as i32;
    // (name, shape, scale; 0 scale means a norm: 1 + small noise)
    let mut plan: Vec<(String, Vec<i32>, f32, usize)> = Vec::new();
    plan.push((
        "model.embed_tokens.weight".into(),
        vec![vocab, hidden],
        0.02,
        0,
    ));
    for layer in 0..args.num_layers {
        for projection in crate::Projection::ALL {
            let (out, fan_in) = args.projection_shape(projection);
            let scale = 1.0 / (fan_in as f32).sqrt();
            plan.push((
                format!("{}.weight", projection.key(layer)),
                vec![out, fan_in],
                scale,
                layer,
            ));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            plan.push((
                format!("model.layers.{layer}.{norm}.weight"),
                vec![hidden],
                0.0,
                layer,
            ));
        }
    }
    let last = args.num_layers.saturating_sub(1);
    plan.push(("model.norm.weight".into(), vec![hidden], 0.0, last));
    if !args.tie_word_embeddings {
        plan.push(("lm_head.weight".into(), vec![vocab, hidden], 0.05, last));
    }
    let count = shards.clamp(1, args.num_layers.max(1));
    let layers_per_shard = args.num_layers.div_ceil(count).max(1);
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut key = random::key(seed)?;
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0;
    for shard in 0..count {
        let mut arrays: Vec<(String, Array)> = Vec::new();
        for (name, shape, scale, layer) in &plan {
            if (layer / layers_per_shard).min(count - 1) != shard {
                continue;
            }
            let (next, sub) = random::split(&key, 2)?;
            key = next;
            let values = if *scale == 0.0 {
                random::normal::<f32>(&shape[..], None, 0.1, &sub)?.add(Array::from_f32(1.0))?
            } else {
                random::normal::<f32>(&shape[..], None, *scale, &sub)?
            };
            let values = values.as_dtype(dtype)?;
            values.eval()?;
            arrays.push((name.clone(), values));
        }
        let borrowed: Vec<(&str, &Array)> = arrays.iter().map(|(n, a)| (n.as_str(), a)).collect();
        total_size += crate::export::write_shard(dir, shard, count, &borrowed, &mut weight_map)?;
    }
    crate::export::write_index_and_config(dir, config_json, count, total_size, &weight_map)?;
    Ok(count)
}

/// Writes `weights` as an HF directory: config.json plus safetensors split
/// into `shards` files with a `model.safetensors.index.json` (one shard:
/// a single `model.safetensors`).
pub fn write_hf_dir(
    dir: &Path,
    config: &HfConfig,
    weights: &BTreeMap<String, Array>,
    shards: usize,
) -> Result<()> {
    let config = serde_json::to_value(config).map_err(|error| Error::Config {
        path: dir.join("config.json"),
        message: error.to_string(),
    })?;
    let names: Vec<&String> = weights.keys().collect();
    let per_shard = names.len().div_ceil(shards.max(1)).max(1);
    let shards: Vec<Vec<&String>> = names.chunks(per_shard).map(<[_]>::to_vec).collect();
    crate::export::write_dir(dir, &config, weights, &shards)
}

/// The tiny random Mistral assembled in memory (no files), as `load_model`
/// would load it with `options`.
pub fn tiny_model(seed: u64, options: &crate::LoadOptions) -> Result<crate::Model> {
    let config = tiny_mistral_config();
    let args = crate::ModelArgs::from_hf(&config).map_err(Error::InvalidRequest)?;
    let weights = random_weights(&config, seed)?;
    crate::load::assemble(
        args,
        weights.into_iter().collect(),
        Path::new("<tiny random mistral>"),
        options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_checkpoint_is_written_shard_by_shard_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = serde_json::to_value(tiny_mistral_config()).expect("json");
        let written = write_random_checkpoint(dir.path(), &config, mlx_rs::Dtype::Bfloat16, 3, 4)
            .expect("write");
        assert_eq!(written, 2, "two layers: at most two shards");
        assert!(dir
            .path()
            .join("model-00001-of-00002.safetensors")
            .is_file());
        assert!(dir.path().join("model.safetensors.index.json").is_file());
        let model = crate::load_model(
            dir.path().to_str().expect("utf-8"),
            &crate::LoadOptions::default(),
        )
        .expect("load");
        assert_eq!(model.args.num_layers, 2);
    }
    use crate::{load_model, AttentionScope, LoadOptions, NoAdapter};

    fn logits_of(dir: &Path, options: &LoadOptions) -> Vec<f32> {
        let model = load_model(dir.to_str().expect("utf-8 path"), options).expect("loads");
        let ids = Array::from_slice(&[1_i32, 450, 7, 32000, 3, 9], &[1, 6]);
        let logits = model
            .forward(&ids, &NoAdapter, None, AttentionScope::Causal)
            .expect("forward");
        logits.eval().expect("eval");
        logits.as_slice::<f32>().to_vec()
    }

    #[test]
    fn sharded_and_single_file_give_identical_logits() {
        let config = tiny_mistral_config();
        let weights = random_weights(&config, 11).expect("weights");
        let root = tempfile::tempdir().expect("tempdir");
        write_hf_dir(&root.path().join("single"), &config, &weights, 1).expect("single");
        write_hf_dir(&root.path().join("sharded"), &config, &weights, 3).expect("sharded");
        assert!(root
            .path()
            .join("sharded/model.safetensors.index.json")
            .is_file());
        let single = logits_of(&root.path().join("single"), &LoadOptions::default());
        let sharded = logits_of(&root.path().join("sharded"), &LoadOptions::default());
        assert_eq!(single.len(), 6 * 32768);
        assert_eq!(single, sharded);
    }

    #[test]
    fn quantize_on_load_changes_logits_by_a_bounded_amount() {
        let config = tiny_mistral_config();
        let weights = random_weights(&config, 5).expect("weights");
        let root = tempfile::tempdir().expect("tempdir");
        write_hf_dir(root.path(), &config, &weights, 1).expect("write");
        let dense = logits_of(root.path(), &LoadOptions::default());
        let rms = |values: &mut dyn Iterator<Item = f32>| {
            let (sum, count) = values.fold((0.0_f64, 0_usize), |(s, n), v| {
                (s + f64::from(v) * f64::from(v), n + 1)
            });
            (sum / count as f64).sqrt()
        };
        let dense_rms = rms(&mut dense.iter().copied());
        // Relative RMS error bounds for random Gaussian weights, group 32:
        // per weight ~0.6% (8-bit) and ~10% (4-bit), compounding over 2 layers + head.
        let mut errors = Vec::new();
        for (bits, bound) in [(8, 0.03), (4, 0.45)] {
            let quantized = logits_of(
                root.path(),
                &LoadOptions {
                    quantize: Some((32, bits)),
                    ..LoadOptions::default()
                },
            );
            let error = rms(&mut dense.iter().zip(&quantized).map(|(a, b)| a - b)) / dense_rms;
            assert!(error > 0.0, "{bits}-bit quantization changed nothing");
            assert!(error <= bound, "{bits}-bit: relative RMS error {error}");
            eprintln!("{bits}-bit quantize-on-load: relative RMS logit error {error:.4}");
            errors.push(error);
        }
        assert!(
            errors[1] > 4.0 * errors[0],
            "4-bit should be much coarser: {errors:?}"
        );
    }

    #[test]
    fn missing_extra_and_misshapen_tensors_are_listed() {
        let config = tiny_mistral_config();
        let mut weights = random_weights(&config, 2).expect("weights");
        weights.remove("model.layers.1.mlp.up_proj.weight");
        weights.insert("model.layers.0.extra.weight".into(), Array::from_f32(1.0));
        weights.insert(
            "model.layers.0.self_attn.k_proj.weight".into(),
            mlx_rs::ops::zeros::<f32>(&[3, 64]).expect("zeros"),
        );
        let root = tempfile::tempdir().expect("tempdir");
        write_hf_dir(root.path(), &config, &weights, 1).expect("write");
        let error = load_model(
            root.path().to_str().expect("utf-8"),
            &LoadOptions::default(),
        )
        .expect_err("rejected")
        .to_string();
        assert!(
            error.contains("model.layers.1.mlp.up_proj.weight"),
            "{error}"
        );
        assert!(error.contains("model.layers.0.extra.weight"), "{error}");
        assert!(
            error.contains("model.layers.0.self_attn.k_proj.weight"),
            "{error}"
        );
    }

    #[test]
    fn cached_decoding_matches_the_full_forward_pass() {
        let config = tiny_mistral_config();
        let weights = random_weights(&config, 9).expect("weights");
        let root = tempfile::tempdir().expect("tempdir");
        write_hf_dir(root.path(), &config, &weights, 1).expect("write");
        let model = load_model(
            root.path().to_str().expect("utf-8"),
            &LoadOptions::default(),
        )
        .expect("loads");
        let ids = [1_i32, 17, 300, 4000, 12, 8];
        let full = model
            .forward(
                &Array::from_slice(&ids, &[1, 6]),
                &NoAdapter,
                None,
                AttentionScope::Causal,
            )
            .expect("forward");
        let mut cache = crate::KvCache::new(2);
        // Prompt in a chunk of 4 (explicit offset mask later), then 1 + 1.
        let _ = model
            .forward(
                &Array::from_slice(&ids[..4], &[1, 4]),
                &NoAdapter,
                Some(&mut cache),
                AttentionScope::Causal,
            )
            .expect("prefill");
        let step = model
            .forward(
                &Array::from_slice(&ids[4..], &[1, 2]),
                &NoAdapter,
                Some(&mut cache),
                AttentionScope::Causal,
            )
            .expect("chunk");
        let full = full.as_slice::<f32>();
        let step = step.as_slice::<f32>();
        let vocab = 32768;
        let tail = &full[4 * vocab..];
        let max_diff = tail
            .iter()
            .zip(step)
            .fold(0.0_f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_diff < 1e-4, "cached vs full: {max_diff}");
    }
}
