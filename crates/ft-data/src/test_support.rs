//! Helpers shared by the unit tests.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use crate::tokenizer::{SpmOptions, SpmPiece, TextTokenizer, TokenKind};

/// The default model of the project (present after `cargo xtask setup`).
pub fn default_model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.ft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default model's tokenizer, or `None` (with a note) when absent.
pub fn default_tokenizer() -> Option<TextTokenizer> {
    let path = default_model_path();
    if !path.exists() {
        eprintln!("skip: {} not found", path.display());
        return None;
    }
    Some(TextTokenizer::from_gguf(path).unwrap())
}

/// A tiny SentencePiece-BPE tokenizer laid out like Mistral v3's:
/// `<unk>`, `<s>`, `</s>`, `[INST]`, `[/INST]`, 256 byte pieces, then text.
pub fn tiny_spm() -> TextTokenizer {
    let mut pieces = vec![
        SpmPiece {
            piece: "<unk>".into(),
            score: 0.0,
            kind: TokenKind::Unknown,
        },
        SpmPiece {
            piece: "<s>".into(),
            score: 0.0,
            kind: TokenKind::Control,
        },
        SpmPiece {
            piece: "</s>".into(),
            score: 0.0,
            kind: TokenKind::Control,
        },
        SpmPiece {
            piece: "[INST]".into(),
            score: 0.0,
            kind: TokenKind::Control,
        },
        SpmPiece {
            piece: "[/INST]".into(),
            score: 0.0,
            kind: TokenKind::Control,
        },
    ];
    for b in 0..=255u8 {
        pieces.push(SpmPiece {
            piece: format!("<0x{b:02X}>"),
            score: 0.0,
            kind: TokenKind::Byte,
        });
    }
    let text = [
        "▁a", "▁ab", "ab", "▁the", "he", "th", "▁t", "▁h", "▁hi", "hi", "▁w", "or", "ld", "▁wor",
        "▁world",
    ];
    let mut score = -1.0;
    for t in text {
        pieces.push(SpmPiece {
            piece: t.into(),
            score,
            kind: TokenKind::Normal,
        });
        score -= 1.0;
    }
    for c in
        "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()[]/".chars()
    {
        pieces.push(SpmPiece {
            piece: c.to_string(),
            score,
            kind: TokenKind::Normal,
        });
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
    .unwrap()
}
