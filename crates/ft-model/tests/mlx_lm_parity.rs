//! Logits parity with mlx-lm: the default model, dequantized to fp32, gives
//! the logits mlx_lm 0.32.2 computed on the fp32 HF export of the same model
//! (`ft convert --dtype float32 --dequantize`), within 1e-3.
//!
//! The fixture `fixtures/mlx_lm_logits.json` is written by
//! `cargo xtask fixtures logits` (Python, in the reference venv); this test
//! needs no Python.

use ft_model::{load_model, LoadOptions, NoAdapter};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/mlx_lm_logits.json");
const MODEL: &str = "smollm2-135m-instruct";
const TOLERANCE: f32 = 1e-3;

#[test]
fn default_model_fp32_logits_match_mlx_lm() {
    if ft_config::testing::default_model().is_none() {
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

    let parity = ft_model::parity::compare(&model, &NoAdapter, &fixture).expect("forward");
    assert!(
        parity.argmax_mismatches.is_empty(),
        "argmax differs at {:?}",
        parity.argmax_mismatches
    );
    println!(
        "compared {} logits with mlx_lm: max abs diff {:.3e} ({})",
        parity.compared, parity.worst.0, parity.worst.1
    );
    assert!(
        parity.compared > 500,
        "only {} logits compared",
        parity.compared
    );
    assert!(
        parity.worst.0 <= TOLERANCE,
        "max abs diff {} > {TOLERANCE} at {}",
        parity.worst.0,
        parity.worst.1
    );
}
