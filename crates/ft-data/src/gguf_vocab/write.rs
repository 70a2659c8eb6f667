//! A model's tokenizer as GGUF metadata (`tokenizer.ggml.*` and
//! `tokenizer.chat_template`), the way llama.cpp reads it: for writing a
//! model as a GGUF file.
//!
//! From a GGUF file the `tokenizer.*` keys are taken as they are. From a
//! Hugging Face `tokenizer.json` (BPE only) the vocabulary is rebuilt:
//! byte-level BPE becomes `tokenizer.ggml.model = gpt2` (tokens, token
//! types, merges, and the llama.cpp pre-tokenizer name matching the
//! pre-tokenizer's regexes), SentencePiece-style BPE (byte fallback, `▁`)
//! becomes `llama` (tokens, token types, and scores that rank each piece
//! by the first merge that makes it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use ft_gguf::{GgufMetadata, GgufValue};

use super::gguf_token_type;
use crate::error::{DataError, Result};
use crate::tokenizer::{TextTokenizer, TokenKind, GPT2_REGEX, LLAMA3_REGEX, QWEN2_REGEX};

/// llama.cpp's `tokenizer.ggml.pre` names for the byte-level pre-tokenizers
/// ft-data knows, by their split regexes in order.
const PRE_TOKENIZERS: &[(&str, &[&str])] = &[
    ("gpt-2", &[GPT2_REGEX]),
    ("smollm", &[r"\p{N}", GPT2_REGEX]),
    ("llama-bpe", &[LLAMA3_REGEX]),
    ("qwen2", &[QWEN2_REGEX]),
];

/// The tokenizer of the model at `path` as GGUF metadata: a `.gguf` file
/// (its `tokenizer.*` keys), a `tokenizer.json`, or a model directory
/// holding one (with `tokenizer_config.json` for special tokens and the
/// chat template).
pub fn tokenizer_gguf_metadata(path: &Path) -> Result<BTreeMap<String, GgufValue>> {
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if path.is_file() && is_gguf {
        let metadata = GgufMetadata::read_file(path)?;
        let kv: BTreeMap<String, GgufValue> = metadata
            .kv
            .into_iter()
            .filter(|(key, _)| key.starts_with("tokenizer."))
            .collect();
        if !kv.contains_key("tokenizer.ggml.model") {
            return Err(DataError::tokenizer(format!(
                "{}: the GGUF metadata has no tokenizer (tokenizer.ggml.model)",
                path.display()
            )));
        }
        return Ok(kv);
    }
    let json_path = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    from_tokenizer_json(&json_path)
}

fn from_tokenizer_json(path: &Path) -> Result<BTreeMap<String, GgufValue>> {
    let fail = |message: String| DataError::tokenizer(format!("{}: {message}", path.display()));
    let tokenizer = TextTokenizer::from_tokenizer_json(path)?;
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: PathBuf::from(path),
        source,
    })?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(fail(format!(
            "tokenizer model {}: only BPE vocabularies (byte-level or SentencePiece) can be written to GGUF",
            model["type"]
        )));
    }
    let (mut tokens, mut kinds) = vocabulary(&json, tokenizer.vocab_size()).map_err(&fail)?;
    let merges = merges(&model["merges"]).map_err(&fail)?;

    let mut kv = BTreeMap::new();
    let byte_level = has_component(&json["pre_tokenizer"], "ByteLevel")
        || has_component(&json["decoder"], "ByteLevel");
    let sentencepiece = model["byte_fallback"].as_bool() == Some(true)
        || has_component(&json["decoder"], "ByteFallback")
        || has_component(&json["pre_tokenizer"], "Metaspace");
    if byte_level {
        let pre = byte_level_pre_name(&json["pre_tokenizer"]).ok_or_else(|| {
            fail(format!(
                "the byte-level pre-tokenizer {} has no llama.cpp equivalent known here (known: {})",
                json["pre_tokenizer"],
                PRE_TOKENIZERS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        kv.insert("tokenizer.ggml.model".into(), string("gpt2"));
        kv.insert("tokenizer.ggml.pre".into(), string(pre));
        kv.insert(
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(
                merges
                    .iter()
                    .map(|(a, b)| string(&format!("{a} {b}")))
                    .collect(),
            ),
        );
    } else if sentencepiece {
        let unk = tokenizer.special().unk.map(|id| id as usize);
        for (id, (token, kind)) in tokens.iter().zip(kinds.iter_mut()).enumerate() {
            if Some(id) == unk {
                *kind = TokenKind::Unknown;
            } else if *kind == TokenKind::Normal && is_byte_piece(token) {
                *kind = TokenKind::Byte;
            }
        }
        let scores = merge_scores(&tokens, &merges);
        kv.insert("tokenizer.ggml.model".into(), string("llama"));
        kv.insert(
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(scores.into_iter().map(GgufValue::F32).collect()),
        );
        kv.insert(
            "tokenizer.ggml.add_space_prefix".into(),
            GgufValue::Bool(adds_space_prefix(&json)),
        );
    } else {
        return Err(fail(
            "a BPE vocabulary that is neither byte-level nor SentencePiece-style (byte fallback) cannot be written to GGUF"
                .into(),
        ));
    }
    kv.insert(
        "tokenizer.ggml.token_type".into(),
        GgufValue::Array(
            kinds
                .iter()
                .map(|kind| GgufValue::I32(gguf_token_type(*kind)))
                .collect(),
        ),
    );
    kv.insert(
        "tokenizer.ggml.tokens".into(),
        GgufValue::Array(tokens.drain(..).map(GgufValue::String).collect()),
    );
    let special = tokenizer.special();
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", special.bos),
        ("tokenizer.ggml.eos_token_id", special.eos),
        ("tokenizer.ggml.unknown_token_id", special.unk),
        ("tokenizer.ggml.padding_token_id", special.pad),
    ] {
        if let Some(id) = id {
            kv.insert(key.into(), GgufValue::U32(id));
        }
    }
    kv.insert(
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(special.add_bos),
    );
    kv.insert(
        "tokenizer.ggml.add_eos_token".into(),
        GgufValue::Bool(special.add_eos),
    );
    if let Some(template) = tokenizer.chat_template() {
        kv.insert("tokenizer.chat_template".into(), string(template));
    }
    Ok(kv)
}

fn string(text: &str) -> GgufValue {
    GgufValue::String(text.to_string())
}

/// Every id's piece and kind: the model's vocabulary, then `added_tokens`
/// (special ones are control tokens, others user-defined); ids nobody
/// names become unused `[PAD<id>]` pieces, as llama.cpp's converter writes.
fn vocabulary(
    json: &Value,
    at_least: usize,
) -> std::result::Result<(Vec<String>, Vec<TokenKind>), String> {
    let vocab = json["model"]["vocab"]
        .as_object()
        .ok_or("`model.vocab` is not an object of piece -> id")?;
    let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
    let id_of = |value: &Value, what: &str| {
        value
            .as_u64()
            .and_then(|id| usize::try_from(id).ok())
            .filter(|id| *id < 1 << 24)
            .ok_or_else(|| format!("{what}: id {value} is not a token id"))
    };
    let mut entries: Vec<(usize, String, TokenKind)> = Vec::with_capacity(vocab.len());
    for (piece, id) in vocab {
        entries.push((id_of(id, piece)?, piece.clone(), TokenKind::Normal));
    }
    for token in &added {
        let content = token["content"]
            .as_str()
            .ok_or("an added token has no `content`")?;
        let kind = if token["special"].as_bool() == Some(true) {
            TokenKind::Control
        } else {
            TokenKind::UserDefined
        };
        entries.push((id_of(&token["id"], content)?, content.to_string(), kind));
    }
    let size = entries
        .iter()
        .map(|(id, _, _)| id + 1)
        .max()
        .unwrap_or(0)
        .max(at_least);
    let mut tokens: Vec<Option<String>> = vec![None; size];
    let mut kinds = vec![TokenKind::Unused; size];
    for (id, piece, kind) in entries {
        // An added token that repeats a vocabulary entry keeps the id and
        // takes the added token's kind.
        tokens[id] = Some(piece);
        kinds[id] = kind;
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(id, piece)| piece.unwrap_or_else(|| format!("[PAD{id}]")))
        .collect();
    Ok((tokens, kinds))
}

/// `model.merges`: `"a b"` strings (older files) or `["a", "b"]` pairs.
fn merges(value: &Value) -> std::result::Result<Vec<(String, String)>, String> {
    let Some(items) = value.as_array() else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(rank, item)| match item {
            Value::String(text) => text
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {rank} {text:?} has no space")),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Ok((a.clone(), b.clone())),
                _ => Err(format!("merge {rank} is not a pair of strings")),
            },
            _ => Err(format!("merge {rank} is neither \"a b\" nor [a, b]")),
        })
        .collect()
}

/// SentencePiece scores: llama.cpp merges the adjacent pair whose joined
/// piece scores highest, so each piece scores minus the rank of the first
/// merge that makes it; pieces no merge makes (characters, bytes, control
/// tokens) score below all of them.
fn merge_scores(tokens: &[String], merges: &[(String, String)]) -> Vec<f32> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(id, piece)| (piece.as_str(), id))
        .collect();
    let mut scores: Vec<Option<f32>> = vec![None; tokens.len()];
    for (rank, (a, b)) in merges.iter().enumerate() {
        if let Some(&id) = ids.get(format!("{a}{b}").as_str()) {
            scores[id].get_or_insert(-(rank as f32));
        }
    }
    scores
        .into_iter()
        .enumerate()
        .map(|(id, score)| score.unwrap_or(-((merges.len() + id) as f32)))
        .collect()
}

fn is_byte_piece(piece: &str) -> bool {
    piece.len() == 6
        && piece.starts_with("<0x")
        && piece.ends_with('>')
        && piece[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether text gets SentencePiece's dummy `▁` prefix: a `Prepend("▁")`
/// normalizer or a Metaspace pre-tokenizer that prepends.
fn adds_space_prefix(json: &Value) -> bool {
    let mut components = Vec::new();
    flatten(&json["normalizer"], &mut components);
    flatten(&json["pre_tokenizer"], &mut components);
    components.iter().any(|c| match c["type"].as_str() {
        Some("Prepend") => c["prepend"].as_str() == Some("▁"),
        Some("Metaspace") => c["prepend_scheme"]
            .as_str()
            .map_or(c["add_prefix_space"].as_bool() == Some(true), |scheme| {
                scheme != "never"
            }),
        _ => false,
    })
}

/// The llama.cpp pre-tokenizer name whose regexes equal those of a
/// byte-level pre-tokenizer (Split regexes, `Digits` one by one, and
/// ByteLevel's own GPT-2 regex when `use_regex` is on), if any.
fn byte_level_pre_name(pre_tokenizer: &Value) -> Option<&'static str> {
    let mut components = Vec::new();
    flatten(pre_tokenizer, &mut components);
    let mut regexes: Vec<&str> = Vec::new();
    for component in components {
        match component["type"].as_str()? {
            "Split" => regexes.push(component["pattern"]["Regex"].as_str()?),
            "Digits" if component["individual_digits"].as_bool() == Some(true) => {
                regexes.push(r"\p{N}");
            }
            "ByteLevel" => {
                if component["add_prefix_space"].as_bool() == Some(true) {
                    return None;
                }
                if component["use_regex"].as_bool() != Some(false) {
                    regexes.push(GPT2_REGEX);
                }
            }
            _ => return None,
        }
    }
    PRE_TOKENIZERS
        .iter()
        .find(|(_, known)| *known == regexes.as_slice())
        .map(|(name, _)| *name)
}

/// The components of a (possibly nested) `Sequence`, in order.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    let nested = ["pretokenizers", "normalizers", "decoders"]
        .iter()
        .find_map(|key| value[*key].as_array());
    match nested {
        Some(items) => items.iter().for_each(|item| flatten(item, out)),
        None if value.is_object() => out.push(value),
        None => {}
    }
}

fn has_component(value: &Value, kind: &str) -> bool {
    let mut components = Vec::new();
    flatten(value, &mut components);
    components.iter().any(|c| c["type"].as_str() == Some(kind))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_support::{default_tokenizer, gguf_bytes, gguf_metadata, tiny_spm};

    const SAMPLES: &[&str] = &[
        "The capital of France is Paris.",
        "hi world, the ab 2024 ab-ab!",
        "  leading spaces and\ttabs\nnew lines 12345 é ü 日本",
        "[INST] the world [/INST]",
        "<|im_start|>user\nhello<|im_end|>",
    ];

    /// Writes `kv` as a GGUF file's metadata and reads the tokenizer back.
    fn through_gguf(kv: BTreeMap<String, GgufValue>) -> TextTokenizer {
        let pairs: Vec<(&str, GgufValue)> =
            kv.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        TextTokenizer::from_gguf_metadata(&gguf_metadata(&pairs)).unwrap()
    }

    fn assert_same_encodings(a: &TextTokenizer, b: &TextTokenizer) {
        assert_eq!(a.vocab_size(), b.vocab_size());
        for text in SAMPLES {
            assert_eq!(a.encode(text).unwrap(), b.encode(text).unwrap(), "{text:?}");
            assert_eq!(
                a.encode_literal(text).unwrap(),
                b.encode_literal(text).unwrap(),
                "{text:?}"
            );
        }
        assert_eq!(a.special(), b.special());
        assert_eq!(a.chat_template(), b.chat_template());
    }

    fn write_hf(dir: &Path, tokenizer: &TextTokenizer, config: Value) {
        tokenizer
            .inner()
            .save(dir.join("tokenizer.json"), false)
            .unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    }

    #[test]
    fn sentencepiece_tokenizer_json_becomes_a_llama_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        write_hf(
            dir.path(),
            &tiny_spm(),
            serde_json::json!({
                "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                "add_bos_token": true, "chat_template": "{{ bos_token }}[INST]"
            }),
        );
        let original = TextTokenizer::from_path(dir.path()).unwrap();
        let kv = tokenizer_gguf_metadata(dir.path()).unwrap();
        assert_eq!(kv["tokenizer.ggml.model"], string("llama"));
        assert_eq!(kv["tokenizer.ggml.add_space_prefix"], GgufValue::Bool(true));
        let types = kv["tokenizer.ggml.token_type"].as_array().unwrap();
        assert_eq!(types[0], GgufValue::I32(2), "<unk>");
        assert_eq!(types[3], GgufValue::I32(3), "[INST]");
        assert_eq!(types[5], GgufValue::I32(6), "<0x00>");
        assert_eq!(types[261], GgufValue::I32(1), "▁a");
        let rebuilt = through_gguf(kv);
        assert_same_encodings(&original, &rebuilt);
        assert_eq!(rebuilt.special().bos, Some(1));
        assert!(rebuilt.special().add_bos);
    }

    #[test]
    fn byte_level_tokenizer_json_becomes_a_gpt2_vocabulary() {
        let Some(default) = default_tokenizer() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        write_hf(
            dir.path(),
            &default,
            serde_json::json!({
                "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>",
                "add_bos_token": false,
                "chat_template": default.chat_template().unwrap(),
            }),
        );
        let original = TextTokenizer::from_path(dir.path()).unwrap();
        let kv = tokenizer_gguf_metadata(dir.path()).unwrap();
        assert_eq!(kv["tokenizer.ggml.model"], string("gpt2"));
        assert_eq!(kv["tokenizer.ggml.pre"], string("smollm"));
        assert_eq!(kv["tokenizer.ggml.merges"].as_array().unwrap().len(), 48900);
        let rebuilt = through_gguf(kv);
        assert_same_encodings(&original, &rebuilt);
    }

    #[test]
    fn gguf_source_keeps_its_tokenizer_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let bytes = gguf_bytes(&[
            ("general.architecture", string("llama")),
            ("tokenizer.ggml.model", string("gpt2")),
            ("tokenizer.ggml.pre", string("smollm")),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ]);
        std::fs::write(&path, bytes).unwrap();
        let kv = tokenizer_gguf_metadata(&path).unwrap();
        assert_eq!(
            kv.keys().collect::<Vec<_>>(),
            vec![
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre"
            ]
        );
        std::fs::write(
            &path,
            gguf_bytes(&[("general.architecture", string("llama"))]),
        )
        .unwrap();
        let error = tokenizer_gguf_metadata(&path).unwrap_err().to_string();
        assert!(error.contains("tokenizer.ggml.model"), "{error}");
    }

    #[test]
    fn pre_tokenizer_names_follow_the_regexes() {
        let split = |regex: &str| serde_json::json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
        let byte_level = |use_regex: bool| serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let sequence =
            |items: Vec<Value>| serde_json::json!({"type": "Sequence", "pretokenizers": items});
        assert_eq!(byte_level_pre_name(&byte_level(true)), Some("gpt-2"));
        assert_eq!(
            byte_level_pre_name(&sequence(vec![split(LLAMA3_REGEX), byte_level(false)])),
            Some("llama-bpe")
        );
        assert_eq!(
            byte_level_pre_name(&sequence(vec![
                serde_json::json!({"type": "Digits", "individual_digits": true}),
                byte_level(true)
            ])),
            Some("smollm")
        );
        assert_eq!(
            byte_level_pre_name(&sequence(vec![split(r"\s+"), byte_level(false)])),
            None
        );
    }

    #[test]
    fn unsupported_models_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::json!({
            "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}
        });
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        let error = tokenizer_gguf_metadata(dir.path()).unwrap_err().to_string();
        assert!(error.contains("only BPE"), "{error}");
    }

    #[test]
    fn scores_rank_pieces_by_their_first_merge() {
        let tokens: Vec<String> = ["a", "b", "ab", "c", "abc", "ca"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let merges = vec![
            ("a".to_string(), "b".to_string()),
            ("ab".to_string(), "c".to_string()),
            ("c".to_string(), "a".to_string()),
        ];
        assert_eq!(
            merge_scores(&tokens, &merges),
            vec![-3.0, -4.0, 0.0, -6.0, -1.0, -2.0]
        );
        assert!(is_byte_piece("<0x0A>") && !is_byte_piece("<0xZZ>") && !is_byte_piece("<s>"));
    }
}
