//! `ft convert` as a user runs it: the default GGUF model becomes an HF
//! directory whose weights and tokenizer match the GGUF's, and an HF
//! directory converts again with its tokenizer files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ft_data::TextTokenizer;
use ft_model::{load_model, AttentionScope, LoadOptions, NoAdapter};
use std::path::PathBuf;

mod common;

use common::ft;

const MODEL: &str = "smollm2-135m-instruct";

/// The default model's GGUF, or `None` when it is absent (a failure under
/// CI, else a recorded skip).
fn default_gguf() -> Option<PathBuf> {
    ft_config::testing::default_model()
}

fn convert(args: &[&str]) {
    let output = ft(args);
    assert!(
        output.status.success(),
        "ft {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn logits(model: &str, options: &LoadOptions) -> Vec<f32> {
    let model = load_model(model, options).expect("loads");
    let ids = mlx_rs::Array::from_slice(&[1_i32, 9690, 198, 2683, 359, 253], &[1, 6]);
    let out = model
        .forward(&ids, &NoAdapter, None, AttentionScope::Causal)
        .expect("forward");
    out.eval().expect("eval");
    out.as_slice::<f32>().to_vec()
}

#[test]
fn gguf_converts_to_an_hf_dir_with_the_same_weights_and_tokenizer() {
    let Some(gguf) = default_gguf() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("f32");
    let out_str = out.to_str().expect("utf-8");
    convert(&[
        "convert",
        "--model",
        MODEL,
        "--out",
        out_str,
        "--dequantize",
    ]);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }

    let dequantized = LoadOptions {
        dequantize: true,
        ..LoadOptions::default()
    };
    assert_eq!(
        logits(MODEL, &dequantized),
        logits(out_str, &LoadOptions::default())
    );

    let ours = TextTokenizer::from_path(&out).expect("exported tokenizer loads");
    let original = TextTokenizer::from_gguf(&gguf).expect("GGUF tokenizer loads");
    let text = "<|im_start|>user\nIn 2010, Zoë paid 12,345 € — ok?<|im_end|>\n";
    assert_eq!(
        ours.encode(text).expect("encode"),
        original.encode(text).expect("encode")
    );
    assert_eq!(
        ours.decode(&original.encode(text).expect("encode"), false)
            .expect("decode"),
        text
    );
    assert_eq!(ours.special().bos, original.special().bos);
    assert_eq!(ours.special().eos, original.special().eos);
    assert_eq!(ours.special().add_bos, original.special().add_bos);
    assert_eq!(ours.chat_template(), original.chat_template());
}

#[test]
fn hf_dir_converts_with_its_tokenizer_files_and_a_new_dtype() {
    if default_gguf().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    let first_str = first.to_str().expect("utf-8");
    convert(&[
        "convert",
        "--model",
        MODEL,
        "--out",
        first_str,
        "--dequantize",
    ]);
    convert(&[
        "convert",
        "--model",
        first_str,
        "--out",
        second.to_str().expect("utf-8"),
        "--dtype",
        "bfloat16",
    ]);
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(first.join(file)).expect("read"),
            std::fs::read(second.join(file)).expect("read"),
            "{file} differs"
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(second.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["torch_dtype"], "bfloat16");
    let bf16_bytes = std::fs::metadata(second.join("model.safetensors"))
        .expect("weights")
        .len();
    let f32_bytes = std::fs::metadata(first.join("model.safetensors"))
        .expect("weights")
        .len();
    assert!(
        bf16_bytes * 2 <= f32_bytes + (1 << 20),
        "{bf16_bytes} vs {f32_bytes}"
    );
}

#[test]
fn convert_refuses_to_write_over_its_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), "{}").expect("write");
    let path = dir.path().to_str().expect("utf-8");
    let output = ft(&["convert", "--model", path, "--out", path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is the model itself"), "{stderr}");
}
