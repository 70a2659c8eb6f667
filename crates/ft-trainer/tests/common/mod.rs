//! Shared by the ft-trainer integration tests: a small Mistral-v3-style
//! tokenizer and a generated chat data set.

#![allow(dead_code)]

use ft_config::{Config, LoraLayers, TargetModules};
use ft_data::{SpmOptions, SpmPiece, TextTokenizer, TokenKind};
use ft_model::{tiny, LoadOptions, Model};
use ft_trainer::metrics::read_metrics;
use ft_trainer::MetricsRecord;
use mlx_rs::Array;
use std::path::Path;

/// A small SentencePiece-BPE tokenizer laid out like Mistral v3's (`<unk>`,
/// `<s>`, `</s>`, `[INST]`, `[/INST]`, byte pieces, then characters and a
/// few words), so the built-in Mistral v3 chat format applies and the model's
/// vocabulary stays small enough for fast tests.
pub fn tokenizer() -> TextTokenizer {
    let piece = |piece: &str, score: f32, kind: TokenKind| SpmPiece {
        piece: piece.into(),
        score,
        kind,
    };
    let mut pieces = vec![
        piece("<unk>", 0.0, TokenKind::Unknown),
        piece("<s>", 0.0, TokenKind::Control),
        piece("</s>", 0.0, TokenKind::Control),
        piece("[INST]", 0.0, TokenKind::Control),
        piece("[/INST]", 0.0, TokenKind::Control),
    ];
    for byte in 0..=255u8 {
        pieces.push(piece(&format!("<0x{byte:02X}>"), 0.0, TokenKind::Byte));
    }
    let mut score = -1.0;
    for word in [
        "▁Where",
        "▁is",
        "▁office",
        "▁Office",
        "▁in",
        "Wh",
        "er",
        "is",
        "of",
        "fi",
        "ce",
    ] {
        pieces.push(piece(word, score, TokenKind::Normal));
        score -= 1.0;
    }
    for c in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?".chars() {
        pieces.push(piece(&c.to_string(), score, TokenKind::Normal));
        score -= 1.0;
    }
    TextTokenizer::from_sentencepiece_bpe(
        pieces,
        SpmOptions {
            bos: Some(1),
            eos: Some(2),
            ..SpmOptions::default()
        },
    )
    .expect("tokenizer")
}

const CITIES: [&str; 16] = [
    "Lisbon", "Oslo", "Lima", "Cairo", "Quito", "Hanoi", "Accra", "Dakar", "Seoul", "Sofia",
    "Riga", "Bern", "Doha", "Kyiv", "Rome", "Baku",
];

pub fn write_data(dir: &Path, name: &str, count: usize) -> std::path::PathBuf {
    let lines: Vec<String> = CITIES
        .iter()
        .cycle()
        .take(count)
        .enumerate()
        .map(|(i, city)| {
            format!(
                r#"{{"messages":[{{"role":"user","content":"Where is office {i}?"}},{{"role":"assistant","content":"Office {i} is in {city}."}}]}}"#
            )
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write data");
    path
}

/// Vocabulary of the test model: room for every id of [`tokenizer`].
pub const VOCAB: usize = 512;
pub const HEAD_SCALE: f32 = 10.0;

/// The tiny random Mistral (2 layers, hidden 64, GQA 4:1) with a small
/// vocabulary and a separate output head.
pub fn model(seed: u64) -> Model {
    model_with(seed, |_| {})
}

/// [`model`] with its weights (by checkpoint key) changed by `edit` first.
pub fn model_with(
    seed: u64,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, Array>),
) -> Model {
    let mut config = tiny::tiny_mistral_config();
    config.vocab_size = VOCAB;
    config.tie_word_embeddings = false;
    let mut weights = tiny::random_weights(&config, seed).expect("weights");
    // A wider output head than the generator's: confident predictions must
    // be reachable through a frozen head for the overfitting test.
    if let Some(head) = weights.get_mut("lm_head.weight") {
        *head = head.multiply(Array::from_f32(HEAD_SCALE)).expect("scale");
    }
    edit(&mut weights);
    let args = ft_model::ModelArgs::from_hf(&config).expect("args");
    ft_model::load::assemble(
        args,
        weights.into_iter().collect(),
        Path::new("tiny"),
        &LoadOptions::default(),
    )
    .expect("model")
}

pub fn config(dir: &Path, steps: u32) -> Config {
    let mut config = Config::default();
    config.data.train = Some(write_data(dir, "train.jsonl", 16));
    config.data.valid = Some(write_data(dir, "valid.jsonl", 8));
    config.data.max_seq_len = 128;
    config.lora.rank = 8;
    config.lora.alpha = 16.0;
    config.lora.target_modules = TargetModules::AllLinear;
    config.lora.num_layers = LoraLayers::All;
    config.training.steps = Some(steps);
    config.training.batch_size = 4;
    config.training.eval_every = 0;
    config.training.save_every = 0;
    config.optimizer.learning_rate = 1e-2;
    config.scheduler.warmup_steps = Some(0);
    config.checkpoint.output_dir = dir.join("run");
    config
}

pub fn train_losses(run_dir: &Path) -> Vec<(u64, f64)> {
    read_metrics(&run_dir.join("metrics.jsonl"))
        .expect("metrics")
        .into_iter()
        .filter_map(|record| match record {
            MetricsRecord::Train(m) => Some((m.step, m.loss)),
            MetricsRecord::Eval(_) => None,
        })
        .collect()
}
