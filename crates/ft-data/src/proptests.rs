//! Property tests across modules: examples round-trip through formatting,
//! tokenization and decoding; and the fuzz targets (`fuzz_*`, run long by
//! `cargo xtask fuzz`, see `ft_config::fuzz`): the JSONL reader and
//! validator on arbitrary bytes and on edited valid lines, the chat
//! formatter on arbitrary conversations and on arbitrary or edited template
//! sources. None may panic; every problem is a located diagnostic or a typed
//! error.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use ft_config::fuzz::{fuzz, mutated};

use crate::diagnostic::{Diagnostic, DiagnosticKind};
use crate::encode::{EncodeOptions, Encoder, OverLengthPolicy, TrainOn};
use crate::error::DataError;
use crate::format::{CheckOptions, Example, Message, Role, ToolCall, ToolSpec};
use crate::jsonl::{parse_jsonl, parse_jsonl_with};
use crate::template::{ChatFormatter, TemplateChoice};
use crate::test_support::{default_model_present, default_tokenizer, tiny_spm};
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
        conversation().prop_map(|messages| Example::Chat {
            messages,
            tools: Vec::new()
        }),
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
            Example::Chat { messages, .. } => serde_json::json!({ "messages": messages }),
            Example::PromptCompletion { prompt, completion } => serde_json::json!({ "prompt": prompt, "completion": completion }),
            Example::Text { text } => serde_json::json!({ "text": text }),
            Example::Preference { .. } => unreachable!(),
        };
        let parsed = parse_jsonl("f", line.to_string().as_bytes(), None);
        prop_assert_eq!(&parsed.examples[0].example, &example);
    }
}

/// A valid tool conversation: 1 to 3 tools, each with one required
/// argument; 1 or 2 rounds of 1 to 3 (parallel) calls, each answered by a
/// result; a final answer. Call ids are 9 digits (fit for Mistral v3) when
/// `with_ids`, else absent (results then match by order and name).
fn tool_example() -> impl Strategy<Value = (Example, bool)> {
    (
        1usize..4,
        prop::collection::vec(prop::collection::vec((0usize..3, content()), 1..4), 1..3),
        any::<bool>(),
        content(),
        content(),
    )
        .prop_map(|(tool_count, rounds, with_ids, question, answer)| {
            let tools: Vec<ToolSpec> = (0..tool_count)
                .map(|j| {
                    let raw = serde_json::json!({
                        "type": "function",
                        "function": {
                            "name": format!("f{j}"),
                            "description": format!("function {j}"),
                            "parameters": {
                                "type": "object",
                                "properties": {format!("arg{j}"): {"type": "string"}},
                                "required": [format!("arg{j}")],
                            },
                        },
                    });
                    ToolSpec::try_from(raw).unwrap()
                })
                .collect();
            let mut messages = vec![Message::new(Role::User, question)];
            let mut next_id = 0;
            for calls in rounds {
                let calls: Vec<ToolCall> = calls
                    .into_iter()
                    .map(|(t, value)| {
                        let j = t % tool_count;
                        next_id += 1;
                        ToolCall {
                            id: with_ids.then(|| format!("{next_id:09}")),
                            name: format!("f{j}"),
                            arguments: serde_json::json!({ format!("arg{j}"): value }),
                        }
                    })
                    .collect();
                let results: Vec<Message> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, call)| Message {
                        tool_call_id: call.id.clone(),
                        name: Some(call.name.clone()),
                        ..Message::new(Role::Tool, format!("result {k}"))
                    })
                    .collect();
                messages.push(Message {
                    tool_calls: calls,
                    ..Message::new(Role::Assistant, "")
                });
                messages.extend(results);
            }
            messages.push(Message::new(Role::Assistant, answer));
            (Example::Chat { messages, tools }, with_ids)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A valid tool conversation validates (with Mistral v3's id rule when it
    /// has ids), whether its arguments are written as objects or as JSON
    /// strings, and reads back as the same example; it round-trips through serde.
    #[test]
    fn tool_conversations_validate_and_round_trip(
        (example, with_ids) in tool_example(),
        string_arguments in any::<bool>(),
    ) {
        let Example::Chat { messages, tools } = &example else { unreachable!() };
        let mut line = serde_json::json!({ "messages": messages, "tools": tools });
        if string_arguments {
            for message in line["messages"].as_array_mut().unwrap() {
                for call in message["tool_calls"].as_array_mut().into_iter().flatten() {
                    let text = call["function"]["arguments"].to_string();
                    call["function"]["arguments"] = text.into();
                }
            }
        }
        let options = CheckOptions { mistral_call_ids: with_ids };
        let parsed = parse_jsonl_with("f", line.to_string().as_bytes(), None, &options);
        prop_assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
        prop_assert_eq!(&parsed.examples[0].example, &example);
        prop_assert_eq!(parsed.counts.tool_examples, 1);
        prop_assert_eq!(parsed.counts.tool_calls, example.tool_call_count());
        let text = serde_json::to_string(&example).unwrap();
        prop_assert_eq!(&serde_json::from_str::<Example>(&text).unwrap(), &example);
    }
}

/// The default model's tokenizer, loaded once per process. Whether the model
/// is installed is asked once per test (thread): when it is not, a failure
/// under CI, else the test's skip is recorded (once, not per case).
fn default_model() -> Option<&'static TextTokenizer> {
    static TOKENIZER: std::sync::OnceLock<Option<TextTokenizer>> = std::sync::OnceLock::new();
    thread_local!(static PRESENT: bool = default_model_present());
    if !PRESENT.with(|present| *present) {
        return None;
    }
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

/// A case slower than this counts as a failure (a hang in the making).
const SLOW_CASE: std::time::Duration = std::time::Duration::from_secs(5);

/// The tokenizers the fuzz targets encode with: the tiny SentencePiece one
/// (Mistral v3 format, byte fallback) and, when installed, the default
/// model's (ChatML template).
fn fuzz_tokenizers() -> Vec<&'static TextTokenizer> {
    static TINY: std::sync::OnceLock<TextTokenizer> = std::sync::OnceLock::new();
    let mut all = vec![TINY.get_or_init(tiny_spm)];
    all.extend(default_model());
    all
}

/// Every diagnostic names the file and a line of it (line 0 only for
/// problems of the whole file), and says what kind of problem it is.
fn check_located(
    diagnostics: &[Diagnostic],
    lines: usize,
    context: &str,
) -> Result<(), TestCaseError> {
    for d in diagnostics {
        prop_assert_eq!(&d.file, "f.jsonl", "{}", context);
        let whole_file = matches!(
            d.kind,
            DiagnosticKind::EmptyFile | DiagnosticKind::UnknownFields
        );
        prop_assert!(
            d.line >= 1 && d.line <= lines || d.line == 0 && whole_file,
            "{}: diagnostic at line {} of {}: {}",
            context,
            d.line,
            lines,
            d
        );
        let text = d.to_string();
        prop_assert!(text.starts_with("f.jsonl"), "{}: {}", context, text);
        prop_assert!(!d.message.is_empty(), "{}: empty message", context);
    }
    Ok(())
}

/// Reads `bytes` as a JSONL file and encodes what it holds with each fuzz
/// tokenizer under `options`: no panic, every problem located, and only
/// lines without errors become examples.
fn read_and_encode(bytes: &[u8], options: &EncodeOptions) -> Result<(), TestCaseError> {
    let started = std::time::Instant::now();
    let parsed = parse_jsonl("f.jsonl", bytes, None);
    let lines = parsed.counts.lines.max(1);
    check_located(&parsed.diagnostics, lines, "read")?;
    for example in &parsed.examples {
        let line = example.source.line;
        let errors_there = parsed
            .diagnostics
            .iter()
            .any(|d| d.line == line && d.is_error());
        prop_assert!(!errors_there, "line {} is an example and an error", line);
    }
    for tokenizer in fuzz_tokenizers() {
        let encoder = match Encoder::new(tokenizer, options.clone()) {
            Ok(encoder) => encoder,
            // Mistral v3 markup with a vocabulary that lacks [INST]: refused, typed.
            Err(DataError::Template { .. }) => continue,
            Err(other) => return Err(TestCaseError::fail(format!("encoder: {other:?}"))),
        };
        let encoded = encoder.encode_all(&parsed.examples);
        check_located(&encoded.diagnostics, lines, "encode")?;
        for example in &encoded.examples {
            prop_assert_eq!(example.ids.len(), example.mask.len());
            prop_assert!(example.ids.len() <= options.max_len);
        }
    }
    prop_assert!(
        started.elapsed() < SLOW_CASE,
        "{} bytes took {:?}",
        bytes.len(),
        started.elapsed()
    );
    Ok(())
}

fn encode_options() -> impl Strategy<Value = EncodeOptions> {
    (
        2_usize..96,
        prop_oneof![
            Just(OverLengthPolicy::Truncate),
            Just(OverLengthPolicy::Drop),
            Just(OverLengthPolicy::Error)
        ],
        prop_oneof![Just(TrainOn::Completions), Just(TrainOn::All)],
        prop_oneof![
            Just(TemplateChoice::Auto),
            Just(TemplateChoice::MistralV3),
            Just(TemplateChoice::Raw)
        ],
    )
        .prop_map(|(max_len, over_length, train_on, template)| EncodeOptions {
            max_len,
            over_length,
            train_on,
            template,
            parallel: false,
            ..EncodeOptions::default()
        })
}

/// JSON-looking lines: the fields and values the formats use, in any order.
fn json_ish_line() -> impl Strategy<Value = String> {
    r#"\{("(messages|prompt|completion|text|label|role|content|chosen|tools|tool_calls|tool_call_id|function|name|arguments|parameters|type|id)": ?(\[|\{|"[a-zé <|>\[\]/]{0,8}"|"tool"|"function"|"object"|true|false|1|-0\.5e9|null|\]|\}|,)){0,10}\}?"#
}

/// The JSONL reader and validator on arbitrary bytes: raw bytes, newlines,
/// JSON-looking lines, byte-order marks and carriage returns.
#[test]
fn fuzz_jsonl_bytes() {
    let line = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..120),
        json_ish_line().prop_map(String::into_bytes),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\r".to_vec()),
        Just(Vec::new()),
    ];
    let file = prop::collection::vec(line, 0..12).prop_map(|lines| lines.join(&b'\n'));
    fuzz(
        "jsonl_bytes",
        64,
        (file, encode_options()),
        |(bytes, options)| read_and_encode(&bytes, &options),
    );
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// Valid and defective lines of the fixtures and the demo data, edited at
/// random with JSON syntax, roles, special tokens and odd Unicode.
#[test]
fn fuzz_jsonl_mutated_lines() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for name in [
        "tests/fixtures/chat_small.jsonl",
        "tests/fixtures/preference_small.jsonl",
        "tests/fixtures/defects.jsonl",
        "tests/fixtures/defects_preference.jsonl",
        "tests/fixtures/tools.jsonl",
        "../../examples/data/demo/train.jsonl",
    ] {
        let text = fixture(name);
        seeds.extend(text.split(|b| *b == b'\n').take(40).map(<[u8]>::to_vec));
        // Whole small files too, so edits can join and split lines.
        if text.len() < 4096 {
            seeds.push(text);
        }
    }
    let dictionary: Vec<Vec<u8>> = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "\\",
        "\\u0000",
        "\\ud800",
        "\\n",
        "\n",
        "\r\n",
        "\"role\"",
        "\"content\"",
        "\"messages\"",
        "\"prompt\"",
        "\"completion\"",
        "\"text\"",
        "\"label\"",
        "\"system\"",
        "\"user\"",
        "\"assistant\"",
        "\"tool\"",
        "null",
        "true",
        "1e999",
        "-0",
        "\"\"",
        "[]",
        "{}",
        "<|im_start|>",
        "<|im_end|>",
        "[INST]",
        "[/INST]",
        "</s>",
        "<s>",
        "{{",
        "{%",
        "\u{FEFF}",
        "\u{F8F0}ft-assistant-open\u{F8F1}",
        "é",
        "日本",
        "🤖",
        "\u{200D}",
        "\u{0}",
    ]
    .iter()
    .map(|token| token.as_bytes().to_vec())
    .chain([vec![0xff], vec![0xc3], vec![0xed, 0xa0, 0x80]])
    .collect();
    fuzz(
        "jsonl_mutated_lines",
        64,
        (mutated(seeds, dictionary, 8), encode_options()),
        |(bytes, options)| read_and_encode(&bytes, &options),
    );
}

/// Message contents that stress templates and tokenizers.
fn hostile_content() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just(String::new()),
        Just(" \n\t ".to_string()),
        "(<\\|im_start\\|>|<\\|im_end\\|>|\\[INST\\]|\\[/INST\\]|</s>|<s>|<unk>|\\{\\{|\\}\\}|\\{%|%\\}|\u{F8F0}ft-assistant-open\u{F8F1}|\u{F8F0}ft-assistant-close\u{F8F1}|[a-zé日🤖 ]{1,6}|\\\\|\\n){1,8}",
        content(),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::System),
        Just(Role::User),
        Just(Role::Assistant),
        Just(Role::Tool)
    ]
}

/// Conversations in any order of roles (system late, assistant first,
/// repeated turns, none at all) with hostile contents.
fn any_conversation() -> impl Strategy<Value = Vec<Message>> {
    prop::collection::vec(
        (role(), hostile_content()).prop_map(|(role, content)| Message::new(role, content)),
        0..7,
    )
}

/// Rendering and tokenizing must end in ids with one mask entry each, or a
/// typed template/tokenizer error.
fn check_formatter(
    formatter: &ChatFormatter,
    tokenizer: &TextTokenizer,
    messages: &[Message],
) -> Result<(), TestCaseError> {
    let started = std::time::Instant::now();
    match formatter.encode(tokenizer, messages) {
        Ok(out) => prop_assert_eq!(out.ids.len(), out.mask.len()),
        Err(DataError::Template { message } | DataError::Tokenizer { message }) => {
            prop_assert!(!message.is_empty());
        }
        Err(other) => prop_assert!(false, "untyped error: {other:?}"),
    }
    if messages.last().is_some_and(|m| m.role == Role::User) {
        match formatter.encode_prompt(tokenizer, messages) {
            Ok(_) | Err(DataError::Template { .. } | DataError::Tokenizer { .. }) => {}
            Err(other) => prop_assert!(false, "untyped error: {other:?}"),
        }
    }
    prop_assert!(
        started.elapsed() < SLOW_CASE,
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// The chat formatters (the model's Jinja template, Mistral v3, raw) on
/// arbitrary conversations.
#[test]
fn fuzz_template_messages() {
    let mut formatters = Vec::new();
    for tokenizer in fuzz_tokenizers() {
        for choice in [
            TemplateChoice::Auto,
            TemplateChoice::MistralV3,
            TemplateChoice::Raw,
            TemplateChoice::Jinja(TEMPLATE_SEEDS[1].to_string()),
        ] {
            if let Ok(formatter) = ChatFormatter::new(&choice, tokenizer) {
                formatters.push((formatter, tokenizer));
            }
        }
    }
    assert!(formatters.len() >= 3, "{} formatters", formatters.len());
    fuzz(
        "template_messages",
        64,
        (0..formatters.len(), any_conversation()),
        |(index, messages)| {
            let (formatter, tokenizer) = &formatters[index];
            check_formatter(formatter, tokenizer, &messages)
        },
    );
}

/// Chat templates of real model families (shortened), the seeds of the
/// template-source target.
const TEMPLATE_SEEDS: &[&str] = &[
    // ChatML (SmolLM2, Qwen).
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    // Llama 3.
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    // Mistral v0.3 (Hugging Face), with its role checks.
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}{{- bos_token }}{%- for message in loop_messages %}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- if message['role'] == 'user' %}{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content']|trim + eos_token}}{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}{%- endif %}{%- endfor %}",
    // Zephyr, with a namespace and filters.
    "{% set ns = namespace(n=0) %}{% for message in messages %}{% set ns.n = ns.n + 1 %}{{ '<|' ~ message.role ~ '|>\n' ~ message.content | replace('\r', '') ~ eos_token ~ '\n' }}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}{{ ns.n | string | length * '' }}",
    // Gemma, with strftime and slicing.
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'][:4000] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}{# {{ strftime_now('%Y-%m-%d') }} #}",
];

/// Template sources: the seeds edited at random with Jinja syntax, filters,
/// loops and calls, and arbitrary text. A source that compiles is then
/// rendered on a few conversations.
#[test]
fn fuzz_template_sources() {
    let seeds: Vec<Vec<u8>> = TEMPLATE_SEEDS
        .iter()
        .map(|seed| seed.as_bytes().to_vec())
        .collect();
    let dictionary: Vec<Vec<u8>> = [
        "{{",
        "}}",
        "{%",
        "%}",
        "{#",
        "#}",
        "{%-",
        "-%}",
        "(",
        ")",
        "[",
        "]",
        "'",
        "\"",
        "|",
        "~",
        "+",
        "*",
        "/",
        "//",
        "%",
        ".",
        ",",
        ":",
        "=",
        "==",
        "!=",
        " and ",
        " or ",
        " not ",
        " in ",
        " is ",
        "{% for m in messages %}",
        "{% endfor %}",
        "{% if x %}",
        "{% endif %}",
        "{% else %}",
        "{% set x = 1 %}",
        "{% macro f(a) %}{{ f(a) }}{% endmacro %}{{ f(1) }}",
        "loop.index",
        "loop.cycle('a','b')",
        "messages",
        "message['content']",
        "message.role",
        "bos_token",
        "eos_token",
        "add_generation_prompt",
        "raise_exception('x')",
        "strftime_now('%Y')",
        "namespace(a=1)",
        "range(5)",
        "| trim",
        "| tojson",
        "| length",
        "| upper",
        "| list",
        "| join(',')",
        "| reverse",
        "| int",
        "| default('d')",
        "[::-1]",
        "[1:]",
        "999999999",
        "{% for i in range(100000) %}",
        "* 100000",
        "-1",
        "1e308",
        "none",
        "true",
        "'\\u{0}'",
        "\u{0}",
        "é",
        "\n",
    ]
    .iter()
    .map(|token| token.as_bytes().to_vec())
    .collect();
    let source = prop_oneof![
        3 => mutated(seeds, dictionary, 6)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        1 => any::<String>(),
    ];
    let conversations: Vec<Vec<Message>> = vec![
        vec![
            Message::new(Role::User, "hi"),
            Message::new(Role::Assistant, "hello"),
        ],
        vec![
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "q"),
            Message::new(Role::Assistant, "a"),
            Message::new(Role::User, "<|im_end|>{{ x }}"),
        ],
        Vec::new(),
    ];
    let tokenizers = fuzz_tokenizers();
    fuzz("template_sources", 64, source, |source| {
        for tokenizer in &tokenizers {
            let choice = TemplateChoice::Jinja(source.clone());
            let formatter = match ChatFormatter::new(&choice, tokenizer) {
                Ok(formatter) => formatter,
                Err(DataError::Template { message }) => {
                    prop_assert!(
                        message.contains("(in chat:") || message.starts_with("line "),
                        "compile error without a location: {}",
                        message
                    );
                    return Ok(());
                }
                Err(other) => return Err(TestCaseError::fail(format!("untyped: {other:?}"))),
            };
            for messages in &conversations {
                check_formatter(&formatter, tokenizer, messages)?;
            }
        }
        Ok(())
    });
}

/// Found by `fuzz_template_sources`'s dictionary: templates that would run
/// for hours or allocate without bound end in a typed error, quickly.
#[test]
fn runaway_templates_end_in_a_typed_error() {
    let tok = tiny_spm();
    let chat = vec![
        Message::new(Role::User, "hi"),
        Message::new(Role::Assistant, "yo"),
    ];
    for source in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ range(100000) | list | string * 100000 }}",
        "{{ 'x' * 1000000000 }}",
        "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}",
    ] {
        let started = std::time::Instant::now();
        let formatter = ChatFormatter::new(&TemplateChoice::Jinja(source.into()), &tok).unwrap();
        let error = formatter.encode(&tok, &chat).unwrap_err();
        assert!(
            matches!(error, DataError::Template { .. }),
            "{source}: {error}"
        );
        assert!(
            started.elapsed() < SLOW_CASE,
            "{source}: {:?}",
            started.elapsed()
        );
    }
}

/// The render budget that stops runaway templates leaves room for the
/// longest example a JSONL line may hold, through every seed template.
#[test]
fn the_longest_line_renders_within_the_template_budget() {
    let tok = tiny_spm();
    let long = "word ".repeat((crate::jsonl::MAX_LINE_BYTES - 200) / 5);
    let chat = vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, long.clone()),
        Message::new(Role::Assistant, long),
    ];
    for source in TEMPLATE_SEEDS {
        let formatter =
            ChatFormatter::new(&TemplateChoice::Jinja(source.to_string()), &tok).unwrap();
        match formatter.render_text(&chat, false) {
            Ok(text) => assert!(text.unwrap().len() > 7_000_000),
            // Templates that refuse a system message refuse it here too.
            Err(error) => assert!(error.to_string().contains("System role"), "{error}"),
        }
    }
}

/// Found by `fuzz_template_sources` (stack overflows that aborted the
/// process): long operator chains and namespaces stored in themselves are
/// refused before minijinja compiles them.
#[test]
fn templates_that_overflow_the_stack_are_refused() {
    let tok = tiny_spm();
    for source in [
        format!("{{{{ {}1 }}}}", "-".repeat(100_000)),
        format!("{{{{ {}1 }}}}", "not ".repeat(100_000)),
        format!("{{{{ 1{} }}}}", " + 1".repeat(100_000)),
        format!("{{{{ 'a'{} }}}}", " ~ 'a'".repeat(100_000)),
        format!("{{{{ x{} }}}}", ".a".repeat(100_000)),
        format!("{{% set y = x{} %}}", " | trim".repeat(100_000)),
    ] {
        let error = ChatFormatter::new(&TemplateChoice::Jinja(source), &tok).unwrap_err();
        assert!(error.to_string().contains("operators"), "{error}");
    }
    // A namespace stored in itself, directly or through an alias.
    for source in [
        "{% set ns = namespace(n=0) %}{% set ns.n = ns %}{{ ns }}",
        "{%- set ns = namespace() -%}{% set alias = ns %}{% set ns.n = [alias] %}",
        "{% macro f(x) %}{% set x.y = x %}{% endmacro %}",
    ] {
        let error = ChatFormatter::new(&TemplateChoice::Jinja(source.into()), &tok).unwrap_err();
        assert!(error.to_string().contains("stores a namespace"), "{error}");
    }
    // Ordinary templates pass both checks.
    for source in TEMPLATE_SEEDS {
        ChatFormatter::new(&TemplateChoice::Jinja(source.to_string()), &tok).unwrap();
    }
}
