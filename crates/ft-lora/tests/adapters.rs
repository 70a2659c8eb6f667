//! Adapters on the tiny random Mistral: step-0 identity, exact counts,
//! both file formats round-trip, fusing equals base + adapter.

use ft_lora::{fuse, AdapterFormat, LoraAdapters, LoraSpec};
use ft_model::{
    tiny::tiny_model, AttentionScope, LinearAdapter, LoadOptions, Model, NoAdapter, Projection,
};
use mlx_rs::{random, Array};

const IDS: [i32; 7] = [1, 450, 7, 32000, 3, 9, 12];

fn logits(model: &Model, adapter: &dyn LinearAdapter) -> Vec<f32> {
    let ids = Array::from_slice(&IDS, &[1, IDS.len() as i32]);
    let out = model
        .forward(&ids, adapter, None, AttentionScope::Causal)
        .expect("forward");
    out.eval().expect("eval");
    out.as_slice::<f32>().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn spec(dora: bool) -> LoraSpec {
    LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Projection::ALL.to_vec(),
        layers: vec![1],
        dora,
    }
}

/// Adapters whose `b` is not zero, so they change the model.
fn trained(model: &Model, dora: bool) -> LoraAdapters {
    let mut adapters = LoraAdapters::init(model, spec(dora), 3).expect("init");
    let key = random::key(9).expect("key");
    for (i, param) in adapters.params.iter_mut().enumerate() {
        let noise = random::normal::<f32>(
            param.shape(),
            None,
            0.05,
            &random::split(&key, 2).expect("split").0,
        )
        .expect("noise")
        .multiply(Array::from_f32(1.0 + i as f32 / 10.0))
        .expect("scale");
        *param = param.add(&noise).expect("add");
    }
    mlx_rs::transforms::eval(adapters.params.iter()).expect("eval");
    adapters
}

#[test]
fn fresh_adapters_leave_the_model_unchanged() {
    let model = tiny_model(5, &LoadOptions::default()).expect("model");
    let base = logits(&model, &NoAdapter);
    for dora in [false, true] {
        let adapters = LoraAdapters::init(&model, spec(dora), 1).expect("init");
        let adapted = logits(&model, &adapters.view());
        assert!(max_abs_diff(&base, &adapted) < 1e-5, "dora={dora}");
    }
}

#[test]
fn trainable_parameters_are_counted_exactly() {
    let model = tiny_model(5, &LoadOptions::default()).expect("model");
    let adapters = LoraAdapters::init(&model, spec(false), 1).expect("init");
    // Tiny Mistral: hidden 64, 8 heads x 8 = 64 q, 2 kv heads x 8 = 16, ffn from config.
    let args = &model.args;
    let expected: u64 = Projection::ALL
        .iter()
        .map(|&p| {
            let (out, fan_in) = args.projection_shape(p);
            4 * (out as u64 + fan_in as u64)
        })
        .sum();
    assert_eq!(adapters.layout.trainable_parameters(), expected);
    let counted: u64 = adapters.params.iter().map(|p| p.size() as u64).sum();
    assert_eq!(counted, expected);
    assert_eq!(adapters.size_bytes(), expected * 4);
}

#[test]
fn both_formats_reload_with_identical_logits() {
    let model = tiny_model(5, &LoadOptions::default()).expect("model");
    for dora in [false, true] {
        let adapters = trained(&model, dora);
        let expected = logits(&model, &adapters.view());
        assert!(max_abs_diff(&expected, &logits(&model, &NoAdapter)) > 1e-3);
        for format in [AdapterFormat::Mlx, AdapterFormat::Peft] {
            let dir = tempfile::tempdir().expect("tempdir");
            adapters.save(dir.path(), format, "tiny").expect("save");
            let loaded = LoraAdapters::load(dir.path(), &model.args).expect("load");
            assert_eq!(loaded.format, format);
            assert_eq!(loaded.base_model.as_deref(), Some("tiny"));
            assert_eq!(loaded.adapters.layout.spec, adapters.layout.spec);
            let got = logits(&model, &loaded.adapters.view());
            assert_eq!(got, expected, "{format:?} dora={dora}");
        }
    }
}

#[test]
fn peft_files_use_peft_names_and_layouts() {
    let model = tiny_model(5, &LoadOptions::default()).expect("model");
    let adapters = trained(&model, false);
    let dir = tempfile::tempdir().expect("tempdir");
    adapters
        .save(dir.path(), AdapterFormat::Peft, "tiny")
        .expect("save");
    let tensors =
        Array::load_safetensors(dir.path().join("adapter_model.safetensors")).expect("read");
    let a = &tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"];
    assert_eq!(a.shape(), &[4, 64]);
    assert_eq!(b.shape(), &[64, 4]);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["base_model_name_or_path"], "tiny");
}

#[test]
fn an_adapter_for_another_model_is_refused_with_the_names() {
    let model = tiny_model(5, &LoadOptions::default()).expect("model");
    let adapters = trained(&model, false);
    let dir = tempfile::tempdir().expect("tempdir");
    adapters
        .save(dir.path(), AdapterFormat::Mlx, "tiny")
        .expect("save");
    let mut other = model.args.clone();
    other.hidden_size = 32;
    let error = LoraAdapters::load(dir.path(), &other).expect_err("mismatch");
    let message = error.to_string();
    assert!(message.contains("shape mismatches"), "{message}");
    assert!(
        message.contains("model.layers.1.self_attn.q_proj.lora_a"),
        "{message}"
    );
}

#[test]
fn fused_model_equals_base_plus_adapter() {
    for quantize in [false, true] {
        let options = LoadOptions {
            quantize: quantize.then_some((64, 8)),
            ..LoadOptions::default()
        };
        let model = tiny_model(5, &options).expect("model");
        for dora in [false, true] {
            let adapters = trained(&model, dora);
            let expected = logits(&model, &adapters.view());
            let fused = fuse(&model, &adapters, false).expect("fuse");
            let got = logits(&fused, &NoAdapter);
            let diff = max_abs_diff(&expected, &got);
            assert!(diff < 1e-3, "quantized={quantize} dora={dora}: {diff}");
        }
    }
}

/// mlx-lm writes no `lora_parameters.keys` by default (it adapts every
/// linear layer of a block): the targets come from the tensor names.
#[test]
fn an_mlx_adapter_without_keys_infers_its_targets_from_the_tensors() {
    let model = tiny_model(5, &LoadOptions::default()).expect("model");
    let mut partial = spec(false);
    partial.targets = vec![Projection::Q, Projection::V, Projection::Down];
    let mut adapters = LoraAdapters::init(&model, partial.clone(), 3).expect("init");
    for param in adapters.params.iter_mut() {
        *param = param.add(Array::from_f32(0.01)).expect("shift");
    }
    let expected = logits(&model, &adapters.view());
    for keys in [None, Some(serde_json::Value::Null)] {
        let dir = tempfile::tempdir().expect("tempdir");
        adapters
            .save(dir.path(), AdapterFormat::Mlx, "tiny")
            .expect("save");
        let config_path = dir.path().join("adapter_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read"))
                .expect("json");
        let parameters = config["lora_parameters"].as_object_mut().expect("object");
        match &keys {
            None => parameters.remove("keys"),
            Some(value) => parameters.insert("keys".into(), value.clone()),
        };
        std::fs::write(&config_path, config.to_string()).expect("write");
        let loaded = LoraAdapters::load(dir.path(), &model.args).expect("load");
        assert_eq!(loaded.adapters.layout.spec.targets, partial.targets);
        assert_eq!(logits(&model, &loaded.adapters.view()), expected);
    }
}
