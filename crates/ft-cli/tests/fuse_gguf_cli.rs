//! `ft fuse --format gguf` as a user runs it: the default model plus a
//! non-zero adapter becomes one GGUF file that reloads with the logits of
//! base + adapter (the command's own check) and carries the base's
//! tokenizer and chat template; wrong combinations are refused up front.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ft;
use ft_data::TextTokenizer;
use ft_lora::{AdapterFormat, LoraAdapters, LoraSpec};
use ft_model::{LoadOptions, Projection};

const MODEL: &str = "smollm2-135m-instruct";

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let output = ft(args);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn gguf_output_paths_and_dtypes_are_checked_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    let file = file.to_str().unwrap();
    let (code, stderr) = stderr_of(&["fuse", "--adapter", "x", "--out", file]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--format gguf"), "{stderr}");

    let (code, stderr) = stderr_of(&[
        "fuse",
        "--adapter",
        "x",
        "--out",
        file,
        "--format",
        "gguf",
        "--dtype",
        "bfloat16",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("float32 or float16"), "{stderr}");

    std::fs::write(file, "taken").unwrap();
    let (code, stderr) = stderr_of(&["fuse", "--adapter", "x", "--out", file, "--format", "gguf"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
}

#[test]
fn fused_gguf_keeps_logits_and_tokenizer() {
    let Some(base) = ft_config::testing::default_model() else {
        return;
    };
    let model = ft_model::load_model(
        MODEL,
        &LoadOptions {
            dequantize: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![Projection::Q, Projection::K, Projection::Down],
        layers: vec![28, 29],
        dora: false,
    };
    let mut adapters = LoraAdapters::init(&model, spec, 7).unwrap();
    // B starts at zero (fused = base); make it count, Q and K included, so
    // a wrong row order in the file would show in the check.
    for (index, param) in adapters.params.iter_mut().enumerate() {
        if index % 2 == 1 {
            let shape = param.shape().to_vec();
            let key = mlx_rs::random::key(100 + index as u64).unwrap();
            *param = mlx_rs::random::normal::<f32>(&shape, None, 0.05, &key).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    adapters
        .save(&adapter_dir, AdapterFormat::Mlx, MODEL)
        .unwrap();
    let out = dir.path().join("fused");
    let output = ft(&[
        "fuse",
        "--adapter",
        adapter_dir.to_str().unwrap(),
        "--format",
        "gguf",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(stderr.contains("implies --dequantize"), "{stderr}");

    let file = out.join("model.gguf");
    let original = TextTokenizer::from_gguf(&base).unwrap();
    let written = TextTokenizer::from_gguf(&file).unwrap();
    for text in [
        "The capital of France is",
        "<|im_start|>user\nhi 123<|im_end|>",
    ] {
        assert_eq!(
            original.encode(text).unwrap(),
            written.encode(text).unwrap()
        );
    }
    assert_eq!(original.special(), written.special());
    assert_eq!(original.chat_template(), written.chat_template());
    let fused = ft_model::load_model(file.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(fused.lm_head.is_none(), "tied embeddings stay tied");
    assert_eq!(fused.args.vocab_size, model.args.vocab_size);
}
