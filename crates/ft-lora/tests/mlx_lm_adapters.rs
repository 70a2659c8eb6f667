//! Adapters trained by mlx-lm itself load and give mlx-lm's logits.
//!
//! `cargo xtask fixtures mlx-lm-adapters` ran `mlx_lm lora` 0.32 on the fp32
//! export of the default model three times: mlx-lm's default LoRA (its
//! config has no `lora_parameters.keys`, so every linear layer of the last
//! 16 blocks is adapted), DoRA, and LoRA on a base `mlx_lm convert -q`
//! quantized to 4 bits. It kept each adapter exactly as mlx-lm wrote it
//! (`"__metadata__": null` in the safetensors header included) with the
//! logits mlx-lm computed with it. No Python runs here.

use ft_lora::{AdapterFormat, LoraAdapters};
use ft_model::{load_model, LoadOptions, Model, NoAdapter, Projection};
use serde_json::Value;
use std::path::{Path, PathBuf};

const MODEL: &str = "smollm2-135m-instruct";
const TOLERANCE: f32 = 1e-4;

fn fixture_dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mlx_lm")
        .join(variant)
}

fn fixture(variant: &str) -> Value {
    let path = fixture_dir(variant).join("logits.json");
    let text = std::fs::read_to_string(&path).expect("fixture present");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn fp32_default_model() -> Model {
    let options = LoadOptions {
        dequantize: true,
        ..LoadOptions::default()
    };
    load_model(MODEL, &options).expect("default model loads")
}

/// The default model quantized as `mlx_lm convert -q` does: every linear
/// layer and the (tied) embedding, 4 bits in groups of 64.
fn quantized_like_mlx_lm(mut model: Model) -> Model {
    for layer in &mut model.layers {
        for projection in Projection::ALL {
            let linear = layer.projection_mut(projection);
            linear.weight = linear.weight.quantize(64, 4).expect("quantize");
        }
    }
    model.embed_tokens = model.embed_tokens.quantize(64, 4).expect("quantize");
    model
}

/// The sum of `array` in float32.
fn sum(array: &mlx_rs::Array) -> f64 {
    let total = array
        .as_dtype(mlx_rs::Dtype::Float32)
        .and_then(|a| a.sum(None))
        .expect("sum");
    f64::from(total.item_exact::<f32>())
}

fn check(variant: &str, model: &Model) {
    let fixture = fixture(variant);
    let loaded = LoraAdapters::load(&fixture_dir(variant), &model.args).expect("mlx-lm adapter");
    assert_eq!(loaded.format, AdapterFormat::Mlx);
    let spec = &loaded.adapters.layout.spec;
    // mlx-lm's defaults: every projection of the last 16 blocks, rank 8.
    assert_eq!(spec.targets, Projection::ALL.to_vec(), "{variant}");
    assert_eq!(spec.layers, (14..30).collect::<Vec<_>>(), "{variant}");
    assert_eq!(spec.rank, 8);
    assert_eq!(spec.dora, variant == "dora");

    let with = ft_model::parity::compare(model, &loaded.adapters.view(), &fixture).expect("run");
    let without = ft_model::parity::compare(model, &NoAdapter, &fixture).expect("run");
    println!(
        "{variant}: {} logits, max abs diff {:.3e} ({}); without the adapter {:.3e}",
        with.compared, with.worst.0, with.worst.1, without.worst.0
    );
    assert!(with.compared > 500, "{variant}: {} compared", with.compared);
    // The adapter matters far more than the tolerance: ignoring it fails.
    assert!(
        without.worst.0 > 100.0 * TOLERANCE,
        "{variant}: adapter too weak"
    );
    assert!(
        with.argmax_mismatches.is_empty(),
        "{variant}: {:?}",
        with.argmax_mismatches
    );
    assert!(
        with.worst.0 <= TOLERANCE,
        "{variant}: max abs diff {} > {TOLERANCE} at {}",
        with.worst.0,
        with.worst.1
    );
}

#[test]
fn mlx_lm_default_lora_without_keys_matches_mlx_lm() {
    if ft_config::testing::default_model().is_none() {
        return;
    }
    check("lora", &fp32_default_model());
}

#[test]
fn mlx_lm_dora_matches_mlx_lm() {
    if ft_config::testing::default_model().is_none() {
        return;
    }
    check("dora", &fp32_default_model());
}

#[test]
fn mlx_lm_lora_on_a_quantized_base_matches_mlx_lm() {
    if ft_config::testing::default_model().is_none() {
        return;
    }
    // mlx-lm multiplies with MLX's quantized kernel; on the CPU ft widens
    // to float32 for the BLAS instead, which sums in another order (2e-4 on
    // logits of 20-40). The same kernel here: this test is about the files.
    ft_model::layers::set_matmul_path(ft_model::layers::MatmulPath::Native);
    let model = quantized_like_mlx_lm(fp32_default_model());
    // The same quantized base as mlx-lm's: its scales and biases agree.
    let fixture = fixture("lora-4bit-base");
    let checksums = fixture["base_checksums"].as_object().expect("checksums");
    assert!(!checksums.is_empty());
    let ours: std::collections::HashMap<String, mlx_rs::Array> =
        model.named_weights().into_iter().collect();
    for (key, theirs) in checksums {
        let array = ours
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` in ft's model"));
        let (ours, theirs) = (sum(array), theirs.as_f64().expect("number"));
        assert!(
            (ours - theirs).abs() <= 1e-3 * theirs.abs().max(1.0),
            "{key}: ft {ours}, mlx_lm {theirs}"
        );
    }
    check("lora-4bit-base", &model);
}
