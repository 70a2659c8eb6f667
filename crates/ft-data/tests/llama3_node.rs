//! Cross-check of the byte-level BPE path (GGUF `gpt2` tokenizers) against
//! the reference JavaScript encoder `llama3-tokenizer-js@1.2.0`: the real
//! Llama 3 vocabulary and merges, built the way a GGUF with
//! `tokenizer.ggml.pre = llama-bpe` is, must encode a corpus identically.
//!
//! Needs `node` and `npm`; without them it fails under CI and is otherwise
//! skipped (the skip recorded for `cargo xtask test`).

#![allow(clippy::unwrap_used)]

use ft_data::{SpecialTokens, TextTokenizer, TokenKind};

mod common;

#[test]
fn matches_llama3_tokenizer_js() {
    if !common::node_available("the Llama 3 cross-check") {
        return;
    }
    let modules = common::install_package("llama3-tokenizer-js", "1.2.0");
    let corpus_path = common::fixtures().join("mistral_corpus.json");
    let dump = common::run_node("llama3_dump.cjs", &[&modules, &corpus_path]);
    let vocab = common::strings(&dump["vocab"]);
    let merges = common::merge_pairs(&dump["merges"]);
    let encodings: Vec<Vec<u32>> = serde_json::from_value(dump["encodings"].clone()).unwrap();
    assert_eq!(vocab.len(), 128_256);

    // As in a Llama 3 GGUF: the 256 tokens after the 128000 text pieces are control tokens.
    let tokens: Vec<&str> = vocab.iter().map(String::as_str).collect();
    let kinds: Vec<TokenKind> = (0..vocab.len())
        .map(|id| {
            if id >= 128_000 {
                TokenKind::Control
            } else {
                TokenKind::Normal
            }
        })
        .collect();
    let special = SpecialTokens {
        bos: Some(128_000),
        eos: Some(128_009),
        add_bos: true,
        ..SpecialTokens::default()
    };
    let tokenizer =
        TextTokenizer::from_byte_level_bpe(&tokens, &kinds, merges, "llama-bpe", special, None)
            .unwrap();
    assert!(tokenizer.special().end_of_turn.contains(&128_009));

    let corpus = common::corpus();
    let mut mismatches = Vec::new();
    for (text, expected) in corpus.iter().zip(&encodings) {
        let ours = tokenizer.encode(text).unwrap();
        if &ours != expected {
            mismatches.push(format!(
                "{text:?}\n  ours:      {ours:?}\n  reference: {expected:?}"
            ));
        }
        assert_eq!(&tokenizer.decode(&ours, false).unwrap(), text);
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        corpus.len(),
        mismatches.join("\n")
    );
}
