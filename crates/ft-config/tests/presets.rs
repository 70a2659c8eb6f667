//! Every preset in configs/ parses, validates and says what it is for.

use std::path::{Path, PathBuf};

use ft_config::{
    ConfigLoader, Dtype, LoadedConfig, LoraLayers, Quantization, SchedulerKind, Source,
    TrainingLength,
};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn presets() -> Vec<PathBuf> {
    let mut presets: Vec<PathBuf> = std::fs::read_dir(configs_dir())
        .expect("configs/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "toml")
        })
        .collect();
    presets.sort();
    presets
}

fn load(name: &str) -> LoadedConfig {
    let path = configs_dir().join(name);
    ConfigLoader::new()
        .file(&path)
        .load()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn every_preset_loads_and_validates() {
    let presets = presets();
    assert!(presets.len() >= 5, "{presets:?}");
    for path in presets {
        let loaded = ConfigLoader::new()
            .file(&path)
            .load()
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert_eq!(loaded.config.validate(), Ok(()), "{}", path.display());
        let text = std::fs::read_to_string(&path).expect("readable preset");
        assert!(
            text.starts_with("# "),
            "{} should start with a comment saying what it is for",
            path.display()
        );
    }
}

#[test]
fn mistral_bf16_preset_fits_a_24gb_m4() {
    let config = load("mistral-7b-instruct-v0.3-m4-24gb.toml").config;
    assert_eq!(config.model.path, "mistralai/Mistral-7B-Instruct-v0.3");
    assert_eq!(config.model.dtype, Dtype::Bfloat16);
    assert_eq!(config.model.quantization, Quantization::None);
    assert!((8..=16).contains(&config.lora.rank));
    assert_eq!(config.lora.num_layers, LoraLayers::Last(16));
    assert!((1..=2).contains(&config.training.batch_size));
    assert!((4..=8).contains(&config.training.grad_accumulation));
    // With gradient checkpointing 1024 tokens fit with room to spare
    // (docs/memory.md).
    assert!(config.training.grad_checkpointing);
    assert_eq!(config.data.max_seq_len, 1024);
}

#[test]
fn mistral_qlora_preset_extends_the_bf16_one() {
    let loaded = load("mistral-7b-instruct-v0.3-qlora-m4.toml");
    let spec = loaded.config.model.quantization.spec().expect("quantized");
    assert_eq!((spec.bits, spec.group_size), (4, 64));
    assert_eq!(loaded.config.model.dtype, Dtype::Bfloat16);
    assert!(matches!(
        loaded.source_of("model.dtype"),
        Some(Source::File { depth: 1, .. })
    ));
    assert!(matches!(
        loaded.source_of("model.quantization.bits"),
        Some(Source::File { depth: 0, .. })
    ));
    assert!(loaded.config.training.grad_checkpointing);
    assert_eq!(loaded.config.data.max_seq_len, 2048);
}

#[test]
fn quickstart_uses_the_built_in_model_and_demo_data() {
    let config = load("quickstart.toml").config;
    assert_eq!(config.model.path, "smollm2-135m-instruct");
    assert_eq!(config.model.dtype, Dtype::Float32);
    assert_eq!(
        config.data.train.as_deref(),
        Some(Path::new("examples/data/demo/train.jsonl"))
    );
    assert_eq!(
        config.data.valid.as_deref(),
        Some(Path::new("examples/data/demo/valid.jsonl"))
    );
    assert_eq!(config.lora.rank, 8);
    assert_eq!(config.lora.num_layers, LoraLayers::Last(16));
    assert_eq!(config.training.batch_size, 4);
    assert_eq!(config.data.max_seq_len, 512);
    assert_eq!(config.training.length(), TrainingLength::Steps(100));
    assert_eq!(config.optimizer.learning_rate, 2e-4);
    assert_eq!(config.scheduler.kind, SchedulerKind::Cosine);
    assert!(config.scheduler.warmup_steps_for(100) > 0);
}

#[test]
fn presets_can_be_extended_and_overridden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = configs_dir().join("memory-constrained.toml");
    let mine = dir.path().join("mine.toml");
    std::fs::write(
        &mine,
        format!(
            "extends = {:?}\n[model]\npath = \"models/Other\"\n",
            base.display().to_string()
        ),
    )
    .expect("write");
    let loaded = ConfigLoader::new()
        .file(&mine)
        .overrides(["lora.rank=2"])
        .load()
        .expect("valid");
    assert_eq!(loaded.config.model.path, "models/Other");
    assert_eq!(loaded.config.lora.rank, 2);
    assert!(loaded.config.model.quantization.spec().is_some());
    assert_eq!(loaded.config.data.max_seq_len, 1024);
    assert!(loaded.config.training.grad_checkpointing);
}
