//! Property tests across modules: parsing never panics, examples round-trip
//! through formatting, tokenization and decoding.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use crate::diagnostic::Diagnostic;
use crate::encode::{EncodeOptions, Encoder};
use crate::format::{Example, Message, Role};
use crate::jsonl::parse_jsonl;
use crate::template::TemplateChoice;
use crate::test_support::{default_tokenizer, tiny_spm};
use crate::tokenizer::TextTokenizer;

/// Text without `▁` (SentencePiece decodes it as a space) and not blank.
fn content() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?'\\n\\t()éü日本🤖<>|_-]{0,30}[a-zA-Z0-9é日🤖.!]"
}

fn conversation() -> impl Strategy<Value = Vec<Message>> {
    (
        prop::option::of(content()),
        prop::collection::vec((content(), content()), 1..4),
    )
        .prop_map(|(system, turns)| {
            let mut messages: Vec<Message> = system
                .map(|s| Message::new(Role::System, s))
                .into_iter()
                .collect();
            for (user, assistant) in turns {
                messages.push(Message::new(Role::User, user));
                messages.push(Message::new(Role::Assistant, assistant));
            }
            messages
        })
}

fn example() -> impl Strategy<Value = Example> {
    prop_oneof![
        conversation().prop_map(|messages| Example::Chat { messages }),
        (content(), content())
            .prop_map(|(prompt, completion)| Example::PromptCompletion { prompt, completion }),
        content().prop_map(|text| Example::Text { text }),
    ]
}

/// Decoded runs of trained tokens.
fn trained_runs(tokenizer: &TextTokenizer, ids: &[u32], mask: &[bool]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (&id, &m) in ids.iter().zip(mask) {
        if m {
            run.push(id);
        } else if !run.is_empty() {
            runs.push(tokenizer.decode(&std::mem::take(&mut run), false).unwrap());
        }
    }
    if !run.is_empty() {
        runs.push(tokenizer.decode(&run, false).unwrap());
    }
    runs
}

/// The example's trained text decodes back to what it should teach.
fn check_round_trip(tokenizer: &TextTokenizer, example: &Example, end: &str) {
    let encoder = Encoder::new(tokenizer, EncodeOptions::default()).unwrap();
    let out = encoder.encode(example).unwrap();
    assert_eq!(out.ids.len(), out.mask.len());
    assert!(!out.mask[0]);
    match example {
        Example::Text { text } => {
            assert_eq!(tokenizer.decode(&out.ids, true).unwrap(), *text);
        }
        other => {
            let answers: Vec<String> = other
                .as_messages()
                .unwrap()
                .into_iter()
                .filter(|m| m.role == Role::Assistant)
                .map(|m| m.content)
                .collect();
            let runs = trained_runs(tokenizer, &out.ids, &out.mask);
            assert_eq!(runs.len(), answers.len(), "{runs:?} vs {answers:?}");
            for (run, answer) in runs.iter().zip(&answers) {
                let expected = format!("{answer}{end}");
                // A token straddling the start may carry a little whitespace of the markup.
                let extra = run
                    .strip_suffix(&expected)
                    .unwrap_or_else(|| panic!("{run:?} !~ {expected:?}"));
                assert!(extra.trim().is_empty(), "{run:?} vs {expected:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let line: Vec<u8> = bytes.into_iter().filter(|b| *b != b'\n').collect();
        let parsed = parse_jsonl("f", &line, None);
        let errors = parsed.diagnostics.iter().filter(|d| d.is_error()).count();
        prop_assert!(parsed.examples.len() + usize::from(errors > 0) == 1);
    }

    #[test]
    fn json_like_lines_never_panic(line in r#"\{("(messages|prompt|completion|text|label|role|content)": ?(\[|\{|"[a-z ]{0,5}"|true|1|null|\]|\}|,)){0,8}\}?"#) {
        let parsed = parse_jsonl("f", line.as_bytes(), None);
        let has_error = parsed.diagnostics.iter().any(Diagnostic::is_error);
        prop_assert!(parsed.examples.len() == 1 || has_error);
        prop_assert!(!(parsed.examples.len() == 1 && has_error));
    }

    #[test]
    fn examples_round_trip_mistral_format(example in example()) {
        check_round_trip(&tiny_spm(), &example, "</s>");
    }

    #[test]
    fn examples_round_trip_chatml_template(example in example()) {
        if let Some(tokenizer) = default_model() {
            check_round_trip(tokenizer, &example, "<|im_end|>");
        }
    }

    #[test]
    fn serialized_examples_parse_back(example in example()) {
        let line = match &example {
            Example::Chat { messages } => serde_json::json!({ "messages": messages }),
            Example::PromptCompletion { prompt, completion } => serde_json::json!({ "prompt": prompt, "completion": completion }),
            Example::Text { text } => serde_json::json!({ "text": text }),
            Example::Preference { .. } => unreachable!(),
        };
        let parsed = parse_jsonl("f", line.to_string().as_bytes(), None);
        prop_assert_eq!(&parsed.examples[0].example, &example);
    }
}

fn default_model() -> Option<&'static TextTokenizer> {
    static TOKENIZER: std::sync::OnceLock<Option<TextTokenizer>> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(default_tokenizer).as_ref()
}

#[test]
fn raw_format_round_trips() {
    let tokenizer = tiny_spm();
    let options = EncodeOptions {
        template: TemplateChoice::Raw,
        ..EncodeOptions::default()
    };
    let encoder = Encoder::new(&tokenizer, options).unwrap();
    let out = encoder
        .encode(&Example::PromptCompletion {
            prompt: "hi".into(),
            completion: "the world".into(),
        })
        .unwrap();
    assert_eq!(
        tokenizer.decode(&out.ids, false).unwrap(),
        "<s> hi the world</s>"
    );
    assert_eq!(
        trained_runs(&tokenizer, &out.ids, &out.mask),
        vec!["the world</s>"]
    );
}
