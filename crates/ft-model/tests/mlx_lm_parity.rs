//! Logits parity with mlx-lm: the default model, dequantized to fp32, gives
//! the logits mlx_lm 0.32.2 computed on the fp32 HF export of the same model
//! (`ft convert --dtype float32 --dequantize`), within 1e-3.
//!
//! The fixture `fixtures/mlx_lm_logits.json` is written by
//! `cargo xtask fixtures logits` (Python, in the reference venv); this test
//! needs no Python.

use ft_model::{load_model, AttentionScope, LoadOptions, NoAdapter};
use mlx_rs::Array;
use serde_json::Value;
use std::path::Path;

const FIXTURE: &str = include_str!("fixtures/mlx_lm_logits.json");
const MODEL: &str = "smollm2-135m-instruct";
const TOLERANCE: f32 = 1e-3;

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("a list of numbers")
        .iter()
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect()
}

fn usizes(value: &Value) -> Vec<usize> {
    value
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as usize)
        .collect()
}

#[test]
fn default_model_fp32_logits_match_mlx_lm() {
    let gguf = ft_model::load::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !Path::new(&gguf).is_file() {
        println!(
            "skipped: {} is absent (run `cargo xtask setup`)",
            gguf.display()
        );
        return;
    }
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let options = LoadOptions {
        dequantize: true,
        ..LoadOptions::default()
    };
    let model = load_model(MODEL, &options).expect("default model loads");
    let vocab = model.args.vocab_size;
    assert_eq!(fixture["vocab_size"].as_u64(), Some(vocab as u64));

    let mut worst = (0.0_f32, "all equal".to_string());
    let mut compared = 0_usize;
    for prompt in fixture["prompts"].as_array().expect("prompts") {
        let name = prompt["name"].as_str().expect("name");
        let ids: Vec<i32> = usizes(&prompt["ids"]).iter().map(|&id| id as i32).collect();
        let input = Array::from_slice(&ids, &[1, ids.len() as i32]);
        let logits = model
            .forward(&input, &NoAdapter, None, AttentionScope::Causal)
            .expect("forward");
        logits.eval().expect("eval");
        let all = logits.as_slice::<f32>();
        assert_eq!(all.len(), ids.len() * vocab);
        for position in prompt["positions"].as_array().expect("positions") {
            let at = position["position"].as_u64().expect("position") as usize;
            let row = &all[at * vocab..(at + 1) * vocab];
            let stride = position["stride"].as_u64().expect("stride") as usize;
            let mut pairs: Vec<(String, f32, f32)> = Vec::new();
            for (index, expected) in floats(&position["head"]).into_iter().enumerate() {
                pairs.push((format!("id {index}"), row[index], expected));
            }
            for (index, expected) in floats(&position["strided"]).into_iter().enumerate() {
                let id = index * stride;
                pairs.push((format!("id {id}"), row[id], expected));
            }
            let top_ids = usizes(&position["top_ids"]);
            for (&id, expected) in top_ids.iter().zip(floats(&position["top_values"])) {
                pairs.push((format!("top id {id}"), row[id], expected));
            }
            for (what, ours, theirs) in pairs {
                let diff = (ours - theirs).abs();
                compared += 1;
                if diff > worst.0 || !diff.is_finite() {
                    worst = (
                        diff,
                        format!("{name}, position {at}, {what}: ours {ours}, mlx_lm {theirs}"),
                    );
                }
            }
            // The same most likely next token.
            let argmax = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(id, _)| id)
                .expect("non-empty row");
            assert_eq!(argmax, top_ids[0], "{name}, position {at}: argmax differs");
        }
    }
    println!(
        "compared {compared} logits with mlx_lm: max abs diff {:.3e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= TOLERANCE,
        "max abs diff {} > {TOLERANCE} at {}",
        worst.0,
        worst.1
    );
}
