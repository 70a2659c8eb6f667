//! Predicted vs measured peak training memory (`ft estimate-memory`'s
//! model), on the default model and on a 2-layer random model with
//! Mistral-7B's widths. Heavy (about 4 GB and a minute), so run by hand:
//! `cargo nextest run -p ft-trainer --test memory --run-ignored only --no-capture`.

mod common;

use common::{tokenizer, write_data};
use ft_config::{Config, LoraLayers};
use ft_trainer::memory::{data_extent, estimate, model_args};
use ft_trainer::{NoCallbacks, Trainer};
use std::path::Path;

fn check(label: &str, predicted: u64, measured: u64) {
    let ratio = predicted as f64 / measured as f64;
    println!(
        "{label}: predicted {:.1} MB, measured {:.1} MB, ratio {ratio:.3}",
        predicted as f64 / 1e6,
        measured as f64 / 1e6
    );
    assert!(
        (0.85..=1.15).contains(&ratio),
        "{label}: off by more than 15%"
    );
}

/// Predicted and measured peak of 6 quickstart steps on the demo data.
fn default_model_peak(grad_checkpointing: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ft_config::ConfigLoader::new()
        .file(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quickstart.toml"))
        .load()
        .expect("quickstart")
        .config;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    config.data.train = Some(root.join("examples/data/demo/train.jsonl"));
    config.data.valid = None;
    config.training.steps = Some(6);
    config.training.grad_checkpointing = grad_checkpointing;
    config.scheduler.warmup_steps = Some(1);
    config.checkpoint.output_dir = dir.path().join("run");
    let args = model_args(&config.model.path).expect("model args");
    let (length, targets) = data_extent(&config).expect("extent");
    let predicted = estimate(&config, &args, length, targets).total;
    mlx_rs::memory::reset_peak_memory().expect("reset");
    let mut trainer = Trainer::new(config).expect("trainer");
    let summary = trainer.train(&mut NoCallbacks).expect("train");
    (predicted, summary.peak_memory_bytes)
}

#[test]
#[ignore = "loads the default model and trains; run by hand"]
fn the_default_model_fits_its_estimate() {
    let (predicted, measured) = default_model_peak(false);
    check("SmolLM2-135M fp32, batch 4", predicted, measured);
}

#[test]
#[ignore = "loads the default model and trains; run by hand"]
fn gradient_checkpointing_fits_its_estimate() {
    let (predicted, measured) = default_model_peak(true);
    check(
        "SmolLM2-135M fp32, batch 4, gradient checkpointing",
        predicted,
        measured,
    );
}

#[test]
#[ignore = "builds a 0.7B-parameter random model (about 4 GB); run by hand"]
fn a_model_with_mistral_7b_widths_fits_its_estimate() {
    let mut hf = ft_model::tiny::tiny_mistral_config();
    hf.hidden_size = 4096;
    hf.intermediate_size = 14336;
    hf.num_attention_heads = 32;
    hf.num_key_value_heads = Some(8);
    hf.head_dim = Some(128);
    hf.vocab_size = 32768;
    let args = ft_model::ModelArgs::from_hf(&hf).expect("args");
    let weights = ft_model::tiny::random_weights(&hf, 1).expect("weights");
    let options = ft_model::LoadOptions {
        dtype: Some(mlx_rs::Dtype::Bfloat16),
        ..Default::default()
    };
    let model = ft_model::load::assemble(
        args.clone(),
        weights.into_iter().collect(),
        Path::new("mistral-widths"),
        &options,
    )
    .expect("model");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.model.dtype = ft_config::Dtype::Bfloat16;
    config.data.train = Some(write_data(dir.path(), "train.jsonl", 16));
    config.data.max_seq_len = 128;
    config.lora.num_layers = LoraLayers::All;
    config.training.steps = Some(2);
    config.training.batch_size = 4;
    config.training.eval_every = 0;
    config.training.save_every = 0;
    config.scheduler.warmup_steps = Some(0);
    config.checkpoint.output_dir = dir.path().join("run");
    let tokenizer = tokenizer();
    let (train, _) = ft_trainer::load_datasets(&config, &tokenizer).expect("data");
    let length = train
        .examples
        .iter()
        .map(|e| e.len() as u64)
        .max()
        .unwrap_or(1);
    let targets = 4 * train
        .examples
        .iter()
        .map(|e| e.target_count() as u64)
        .max()
        .unwrap_or(1);
    let predicted = estimate(&config, &args, length, targets).total;
    mlx_rs::memory::reset_peak_memory().expect("reset");
    let mut trainer = Trainer::with_model(config, model, tokenizer).expect("trainer");
    let summary = trainer.train(&mut NoCallbacks).expect("train");
    check(
        "2 layers of Mistral-7B widths, bf16, batch 4",
        predicted,
        summary.peak_memory_bytes,
    );
}
