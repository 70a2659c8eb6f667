//! ft-data renders the default model's chat template exactly as Hugging Face
//! transformers' `apply_chat_template` does, for the committed conversations
//! of `fixtures/chat_template_smollm2.json` (written by `cargo xtask fixtures
//! chat-template`; no Python here).
//!
//! The fixture's template is rendered with a stand-in tokenizer; with the
//! model installed, also with the GGUF's own tokenizer and template (which
//! must equal the fixture's), and the token ids are checked too.

#![allow(clippy::unwrap_used)]

use ft_data::{ChatFormatter, Message, TemplateChoice, TextTokenizer};
use serde::Deserialize;

mod common;

use common::{default_tokenizer, fixture};

#[derive(Debug, Deserialize)]
struct Fixture {
    template: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    add_generation_prompt: bool,
    messages: Vec<Message>,
    expected: String,
}

fn load() -> Fixture {
    let text = std::fs::read_to_string(fixture("chat_template_smollm2.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A word-level tokenizer that knows only the special tokens: enough to
/// render text (rendering needs the BOS/EOS texts, not the vocabulary).
fn stand_in(fixture: &Fixture) -> TextTokenizer {
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 1, "content": fixture.bos_token, "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": fixture.eos_token, "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "[UNK]",
                  "vocab": {"[UNK]": 0, fixture.bos_token.as_str(): 1, fixture.eos_token.as_str(): 2}}
    });
    let tokenizer = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap();
    let config =
        serde_json::json!({"bos_token": fixture.bos_token, "eos_token": fixture.eos_token});
    TextTokenizer::from_hf_parts(tokenizer, &config, Some(fixture.template.clone())).unwrap()
}

#[test]
fn renders_like_transformers() {
    let fixture = load();
    assert!(fixture.cases.len() >= 10, "{} cases", fixture.cases.len());
    let real = default_tokenizer();
    if let Some(tokenizer) = &real {
        assert_eq!(
            tokenizer.chat_template(),
            Some(fixture.template.as_str()),
            "the model's template changed: run `cargo xtask fixtures chat-template`"
        );
    }
    // The stand-in always; the real tokenizer too when the model is installed.
    for tokenizer in std::iter::once(stand_in(&fixture)).chain(real) {
        let formatter = ChatFormatter::new(&TemplateChoice::Auto, &tokenizer).unwrap();
        let mut failures = Vec::new();
        for case in &fixture.cases {
            let got = formatter
                .render_text(&case.messages, case.add_generation_prompt)
                .unwrap()
                .unwrap();
            if got != case.expected {
                failures.push(format!(
                    "{}:\n  expected {:?}\n  got      {:?}",
                    case.name, case.expected, got
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn token_ids_are_those_of_the_rendered_text() {
    let fixture = load();
    let Some(tokenizer) = default_tokenizer() else {
        return;
    };
    let formatter = ChatFormatter::new(&TemplateChoice::Auto, &tokenizer).unwrap();
    for case in fixture.cases.iter().filter(|c| !c.add_generation_prompt) {
        let encoded = formatter.encode(&tokenizer, &case.messages).unwrap();
        let mut expected = tokenizer.encode(&case.expected).unwrap();
        let special = tokenizer.special();
        if let (true, Some(bos)) = (special.add_bos, special.bos) {
            if expected.first() != Some(&bos) {
                expected.insert(0, bos);
            }
        }
        assert_eq!(encoded.ids, expected, "{}", case.name);
        // The trained tokens decode to the assistant turns, each with its end token.
        let trained: Vec<u32> = encoded
            .ids
            .iter()
            .zip(&encoded.mask)
            .filter(|(_, m)| **m)
            .map(|(id, _)| *id)
            .collect();
        let assistant: String = case
            .messages
            .iter()
            .filter(|m| m.role == ft_data::Role::Assistant)
            .map(|m| format!("{}{}", m.content, fixture.eos_token))
            .collect();
        assert_eq!(
            tokenizer.decode(&trained, false).unwrap(),
            assistant,
            "{}",
            case.name
        );
    }
}
