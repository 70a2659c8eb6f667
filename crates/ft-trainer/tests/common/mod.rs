//! Shared by the ft-trainer integration tests: a small Mistral-v3-style
//! tokenizer and a generated chat data set.

#![allow(dead_code)]

use ft_data::{SpmOptions, SpmPiece, TextTokenizer, TokenKind};
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
