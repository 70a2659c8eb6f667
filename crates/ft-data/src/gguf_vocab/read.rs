//! A tokenizer from a GGUF file's `tokenizer.ggml.*` keys, the way
//! llama.cpp builds it: `gpt2` (byte-level BPE: tokens, token types,
//! merges, the `tokenizer.ggml.pre` family) or `llama` (SentencePiece BPE:
//! tokens, token types, scores), plus special tokens and the chat template.

use std::path::Path;

use ft_gguf::GgufMetadata;

use crate::error::{DataError, Result};
use crate::tokenizer::{SpecialTokens, SpmOptions, SpmPiece, TextTokenizer, TokenKind};

impl TextTokenizer {
    /// Loads the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let meta = GgufMetadata::read_file(path.as_ref())?;
        let mut tokenizer = Self::from_gguf_metadata(&meta)
            .map_err(|e| DataError::tokenizer(format!("{}: {e}", path.as_ref().display())))?;
        if tokenizer.chat_template().is_some() {
            tokenizer.set_chat_template_origin(format!(
                "{} metadata `tokenizer.chat_template`",
                path.as_ref().display()
            ));
        }
        Ok(tokenizer)
    }

    /// Builds the tokenizer described by GGUF metadata
    /// (`tokenizer.ggml.model` = `gpt2` or `llama`).
    pub fn from_gguf_metadata(meta: &GgufMetadata) -> Result<Self> {
        let model = meta.get_str("tokenizer.ggml.model")?;
        let tokens = meta.get_str_array("tokenizer.ggml.tokens")?;
        let kinds: Vec<TokenKind> = match meta.get_i64_array("tokenizer.ggml.token_type")? {
            Some(types) if types.len() == tokens.len() => {
                types.into_iter().map(TokenKind::from_gguf).collect()
            }
            Some(types) => {
                return Err(DataError::tokenizer(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    types.len(),
                    tokens.len()
                )))
            }
            None => vec![TokenKind::Normal; tokens.len()],
        };
        let bos = meta.get_u32("tokenizer.ggml.bos_token_id")?;
        let eos = meta.get_u32("tokenizer.ggml.eos_token_id")?;
        let pad = meta.get_u32("tokenizer.ggml.padding_token_id")?;
        let unk = meta.get_u32("tokenizer.ggml.unknown_token_id")?;
        for (name, id) in [
            ("bos", bos),
            ("eos", eos),
            ("padding", pad),
            ("unknown", unk),
        ] {
            if let Some(id) = id {
                if id as usize >= tokens.len() {
                    return Err(DataError::tokenizer(format!(
                        "{name} token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    )));
                }
            }
        }
        let chat_template = match meta.get("tokenizer.chat_template") {
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| DataError::tokenizer("tokenizer.chat_template is not a string"))?
                    .to_string(),
            ),
            None => None,
        };
        match model {
            "gpt2" => {
                let merges = meta.get_str_array("tokenizer.ggml.merges")?;
                let merges = merges
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| {
                                DataError::tokenizer(format!("merge {i} {m:?} has no space"))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let pre = match meta.get("tokenizer.ggml.pre") {
                    Some(v) => v.as_str().unwrap_or("default"),
                    None => "default",
                };
                let add_bos = meta
                    .get_bool("tokenizer.ggml.add_bos_token")?
                    .unwrap_or(false);
                let add_eos = meta
                    .get_bool("tokenizer.ggml.add_eos_token")?
                    .unwrap_or(false);
                let special = SpecialTokens {
                    bos,
                    eos,
                    pad,
                    unk,
                    add_bos,
                    add_eos,
                    end_of_turn: Vec::new(),
                };
                Self::from_byte_level_bpe(&tokens, &kinds, merges, pre, special, chat_template)
            }
            "llama" => {
                let scores = meta
                    .get_f64_array("tokenizer.ggml.scores")?
                    .ok_or_else(|| {
                        DataError::tokenizer(
                            "a llama (SentencePiece) vocabulary needs tokenizer.ggml.scores",
                        )
                    })?;
                if scores.len() != tokens.len() {
                    return Err(DataError::tokenizer(format!(
                        "tokenizer.ggml.scores has {} entries for {} tokens",
                        scores.len(),
                        tokens.len()
                    )));
                }
                let pieces = tokens
                    .iter()
                    .zip(&scores)
                    .zip(&kinds)
                    .map(|((piece, score), kind)| SpmPiece {
                        piece: (*piece).to_string(),
                        score: *score as f32,
                        kind: *kind,
                    })
                    .collect();
                let options = SpmOptions {
                    merges: None,
                    add_space_prefix: meta
                        .get_bool("tokenizer.ggml.add_space_prefix")?
                        .unwrap_or(true),
                    bos,
                    eos,
                    pad,
                    add_bos: meta
                        .get_bool("tokenizer.ggml.add_bos_token")?
                        .unwrap_or(true),
                    add_eos: meta
                        .get_bool("tokenizer.ggml.add_eos_token")?
                        .unwrap_or(false),
                };
                let mut tok = Self::from_sentencepiece_bpe(pieces, options)?;
                tok.set_chat_template(chat_template);
                Ok(tok)
            }
            other => Err(DataError::tokenizer(format!(
                "unsupported tokenizer.ggml.model {other:?} (supported: gpt2, llama)"
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ft_gguf::GgufValue;

    use super::*;
    use crate::test_support::{default_model_path, default_model_present, gguf_metadata, tiny_spm};

    #[test]
    fn builds_sentencepiece_from_gguf_metadata() {
        let tiny = tiny_spm();
        let n = tiny.vocab_size() as u32;
        let mut tokens = Vec::new();
        let mut scores = Vec::new();
        let mut types = Vec::new();
        for id in 0..n {
            let piece = tiny.piece(id).unwrap();
            let kind = match id {
                0 => 2,
                1..=4 => 3,
                _ if piece.starts_with("<0x") => 6,
                _ => 1,
            };
            scores.push(GgufValue::F32(-(id as f32)));
            types.push(GgufValue::I32(kind));
            tokens.push(GgufValue::String(piece));
        }
        let meta = gguf_metadata(&[
            ("tokenizer.ggml.model", GgufValue::String("llama".into())),
            ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
            ("tokenizer.ggml.scores", GgufValue::Array(scores)),
            ("tokenizer.ggml.token_type", GgufValue::Array(types)),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
            (
                "tokenizer.chat_template",
                GgufValue::String("{{ messages[0].content }}".into()),
            ),
        ]);
        let tok = TextTokenizer::from_gguf_metadata(&meta).unwrap();
        let s = tok.special();
        assert_eq!(
            (s.bos, s.eos, s.add_bos, s.unk),
            (Some(1), Some(2), true, Some(0))
        );
        assert!(tok.chat_template().is_some());
        // Merges derived from the scores give the same pieces as the original.
        for text in ["the world", "hi ab", "ab ab éh"] {
            assert_eq!(
                tok.encode_literal(text).unwrap(),
                tiny.encode_literal(text).unwrap(),
                "{text}"
            );
            let ids = tok.encode_literal(text).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        // Control tokens are never made from text by merges.
        assert!(!tok.encode_literal("[INST]").unwrap().contains(&3));

        // Broken metadata gives errors, not panics.
        let meta = gguf_metadata(&[("tokenizer.ggml.model", GgufValue::String("rwkv".into()))]);
        assert!(TextTokenizer::from_gguf_metadata(&meta).is_err());
        let meta = gguf_metadata(&[
            ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
            (
                "tokenizer.ggml.tokens",
                GgufValue::Array(vec![GgufValue::String("a".into())]),
            ),
            (
                "tokenizer.ggml.merges",
                GgufValue::Array(vec![GgufValue::String("a".into())]),
            ),
        ]);
        let err = TextTokenizer::from_gguf_metadata(&meta)
            .unwrap_err()
            .to_string();
        assert!(err.contains("merge 0"), "{err}");
    }

    #[test]
    fn default_model_gguf_tokenizer() {
        if !default_model_present() {
            return;
        }
        let path = default_model_path();
        let tok = TextTokenizer::from_gguf(&path).unwrap();
        let s = tok.special();
        assert_eq!((s.bos, s.eos, s.add_bos), (Some(1), Some(2), false));
        assert!(s.end_of_turn.contains(&2) && s.end_of_turn.contains(&0));
        assert_eq!(tok.encode("<|im_start|>user").unwrap()[0], 1);
        let text = "Hello world! 12345  tabs\tand\nnewlines — ünïcode 🤖";
        let ids = tok.encode_literal(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        // Digits are split one by one for this family.
        let digits = tok.encode_literal("2024").unwrap();
        assert_eq!(digits.len(), 4);
        assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    }

    #[test]
    fn reads_the_default_model_when_present() {
        if !default_model_present() {
            return;
        }
        let meta = GgufMetadata::read_file(default_model_path()).unwrap();
        assert_eq!(meta.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(
            meta.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            49152
        );
        assert!(meta
            .get_str("tokenizer.chat_template")
            .unwrap()
            .contains("<|im_start|>"));
    }
}
