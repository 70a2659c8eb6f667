//! Helpers shared by the unit tests.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ft_gguf::{GgufMetadata, GgufValue, GgufWriter};

use crate::tokenizer::{SpmOptions, SpmPiece, TextTokenizer, TokenKind};

/// The default model of the project (present after `cargo xtask setup`).
pub fn default_model_path() -> PathBuf {
    ft_config::testing::models_dir().join(ft_config::testing::DEFAULT_MODEL_FILE)
}

/// Whether the default model is installed; when it is not, a failure under
/// CI, else a recorded skip (`ft_config::testing::prerequisite`).
pub fn default_model_present() -> bool {
    ft_config::testing::default_model().is_some()
}

/// The default model's tokenizer, or `None` when the model is absent (a
/// failure under CI, else a recorded skip).
pub fn default_tokenizer() -> Option<TextTokenizer> {
    ft_config::testing::default_model().map(|gguf| TextTokenizer::from_gguf(gguf).unwrap())
}

/// A GGUF file holding the metadata `pairs` and no tensors, as
/// `ft_gguf`'s writer encodes it.
pub fn gguf_bytes(pairs: &[(&str, GgufValue)]) -> Vec<u8> {
    let kv = pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect();
    GgufWriter::new(Vec::new(), &kv, &[])
        .and_then(GgufWriter::finish)
        .unwrap()
}

/// The metadata `pairs`, written as a GGUF file and read back.
pub fn gguf_metadata(pairs: &[(&str, GgufValue)]) -> GgufMetadata {
    let bytes = gguf_bytes(pairs);
    GgufMetadata::read(bytes.as_slice(), bytes.len() as u64).unwrap()
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
