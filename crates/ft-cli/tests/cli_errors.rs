//! Every error a user can hit in `ft train`, `ft generate`, `ft eval`,
//! `ft fuse` and `ft export`, as listed in docs/troubleshooting.md: the
//! built binary, its message and its exit code (1: the user's to fix).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ft;
use std::path::Path;

/// Runs `ft`, expects exit code 1 and every `needle` in stderr.
fn fails_with(args: &[&str], needles: &[&str]) {
    let output = ft(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "ft {args:?}\nstderr: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "ft {args:?}: {needle:?} not in\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn temp_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_missing_config_file_is_named() {
    fails_with(
        &["train", "--config", "no/such/config.toml"],
        &["no/such/config.toml"],
    );
}

#[test]
fn an_out_of_range_setting_gives_the_key_and_the_range() {
    fails_with(
        &[
            "train",
            "--config",
            "configs/quickstart.toml",
            "--set",
            "training.batch_size=0",
        ],
        &["training.batch_size", "got 0"],
    );
}

#[test]
fn an_unknown_key_gets_a_suggestion() {
    fails_with(
        &[
            "train",
            "--config",
            "configs/quickstart.toml",
            "--set",
            "training.batch_sise=2",
        ],
        &["training.batch_sise", "training.batch_size"],
    );
}

#[test]
fn training_without_data_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = temp_file(dir.path(), "c.toml", "[training]\nsteps = 2\n");
    fails_with(&["train", "--config", &config], &["data.train"]);
}

#[test]
fn a_missing_training_file_is_named() {
    fails_with(
        &[
            "train",
            "--config",
            "configs/quickstart.toml",
            "--set",
            "data.train=\"no/such/train.jsonl\"",
        ],
        &["no/such/train.jsonl"],
    );
}

#[test]
fn broken_training_data_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let data = temp_file(
        dir.path(),
        "train.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \n",
    );
    fails_with(
        &[
            "train",
            "--config",
            "configs/quickstart.toml",
            "--set",
            &format!("data.train=\"{data}\""),
        ],
        &["train.jsonl:2"],
    );
}

#[test]
fn an_unknown_model_lists_the_built_in_ones() {
    fails_with(
        &["generate", "--model", "no-such-model", "--prompt", "hi"],
        &["no-such-model", "smollm2-135m-instruct"],
    );
}

#[test]
fn generate_needs_a_prompt_or_chat() {
    fails_with(&["generate"], &["--prompt"]);
}

#[test]
fn an_invalid_sampling_flag_is_refused() {
    fails_with(
        &["generate", "--prompt", "hi", "--top-p", "0"],
        &["--top-p"],
    );
}

#[test]
fn a_directory_without_an_adapter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--adapter",
            dir.path().to_str().unwrap(),
        ],
        &["not an adapter directory"],
    );
}

#[test]
fn an_adapter_for_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        r#"{"fine_tune_type":"lora","num_layers":1,"lora_parameters":{"rank":2,"scale":1.0,"dropout":0.0,"keys":["self_attn.q_proj"]}}"#,
    )
    .unwrap();
    // A rank-2 adapter for a model with 64 hidden features, not 576,
    // written as a raw safetensors file (header length, JSON header, data).
    let tensors = r#"{"model.layers.29.self_attn.q_proj.lora_a":{"dtype":"F32","shape":[64,2],"data_offsets":[0,512]},"model.layers.29.self_attn.q_proj.lora_b":{"dtype":"F32","shape":[2,64],"data_offsets":[512,1024]}}"#;
    let mut bytes = (tensors.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(tensors.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 1024));
    std::fs::write(adapter.join("adapters.safetensors"), bytes).unwrap();
    fails_with(
        &[
            "generate",
            "--prompt",
            "hi",
            "--adapter",
            adapter.to_str().unwrap(),
        ],
        &[
            "does not fit this model",
            "model.layers.29.self_attn.q_proj.lora_a",
        ],
    );
}

#[test]
fn fuse_refuses_a_non_empty_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    temp_file(dir.path(), "keep.txt", "mine");
    fails_with(
        &[
            "fuse",
            "--adapter",
            "x",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        &["not empty"],
    );
}

#[test]
fn resuming_from_something_that_is_not_a_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &[
            "train",
            "--config",
            "configs/quickstart.toml",
            "--resume",
            dir.path().to_str().unwrap(),
        ],
        &["neither a checkpoint"],
    );
}

#[test]
fn eval_of_a_missing_file_names_it() {
    fails_with(
        &["eval", "--data", "no/such/valid.jsonl"],
        &["no/such/valid.jsonl"],
    );
}
