//! `ft data` and `ft config` as a user runs them: the built binary, its
//! output and its exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ft, root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// True when the default model is installed; otherwise a failure under CI,
/// else a recorded skip.
fn default_model_installed() -> bool {
    ft_config::testing::default_model().is_some()
}

/// The 20 defects of `defects20.jsonl`: (line, kind, field).
const DEFECTS: [(u64, &str, Option<&str>); 20] = [
    (1, "unknown_format", None),
    (3, "invalid_json", None),
    (4, "invalid_utf8", None),
    (5, "not_an_object", None),
    (6, "wrong_type", Some("messages")),
    (7, "empty_field", Some("messages")),
    (8, "unknown_role", Some("messages[1].role")),
    (9, "missing_field", Some("messages[1].content")),
    (10, "empty_field", Some("messages[0].content")),
    (11, "wrong_type", Some("messages[1].content")),
    (12, "consecutive_assistant", Some("messages[2].role")),
    (13, "no_assistant_turn", Some("messages")),
    (14, "last_turn_not_assistant", Some("messages[2].role")),
    (15, "system_not_first", Some("messages[1].role")),
    (16, "duplicate", None),
    (17, "unknown_fields", None),
    (18, "format_mismatch", None),
    (19, "consecutive_user", Some("messages[1].role")),
    (20, "assistant_first", Some("messages[0].role")),
    (21, "too_long", None),
];

fn diagnostics(report: &Value) -> Vec<(u64, String, Option<String>)> {
    report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap(),
                d["kind"].as_str().unwrap().to_string(),
                d["field"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn expected(defects: &[(u64, &str, Option<&str>)]) -> Vec<(u64, String, Option<String>)> {
    defects
        .iter()
        .map(|(line, kind, field)| (*line, kind.to_string(), field.map(str::to_string)))
        .collect()
}

#[test]
fn validate_reports_twenty_located_defects_and_exits_1() {
    if !default_model_installed() {
        return;
    }
    let file = fixture("defects20.jsonl");
    let file = file.to_str().unwrap();
    let args = [
        "data",
        "validate",
        file,
        "--model",
        "smollm2-135m-instruct",
        "--max-seq-len",
        "64",
    ];

    // Text: one `file:line: severity[kind] field: message` line per defect.
    let output = ft(&args);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stdout(&output);
    let located: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")))
        .collect();
    assert_eq!(located.len(), 20, "{text}");
    for ((line, kind, field), message) in DEFECTS.iter().zip(&located) {
        let severity = if message.contains(": error[") {
            "error"
        } else {
            "warning"
        };
        let mut start = format!("{file}:{line}: {severity}[{kind}]");
        if let Some(field) = field {
            start.push_str(&format!(" {field}:"));
        }
        assert!(
            message.starts_with(&start),
            "{message:?} should start with {start:?}"
        );
    }
    assert!(
        text.contains("problems       15 errors, 5 warnings"),
        "{text}"
    );
    assert!(stderr(&output).contains("15 errors"), "{}", stderr(&output));

    // JSON: the same, with expected/got details.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let output = ft(&json_args);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(diagnostics(&report), expected(&DEFECTS));
    assert_eq!(report["ok"], false);
    let at = |line: u64| {
        report["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["line"] == line)
            .unwrap()
            .clone()
    };
    assert_eq!(at(8)["got"], "\"bot\"");
    assert_eq!(at(11)["got"], "number 42");
    assert_eq!(at(16)["related_line"], 2);
    assert_eq!(at(18)["expected"], "chat");
    assert_eq!(at(21)["expected"], "at most 64 tokens");
    assert_eq!(report["counts"]["errors"], 15);
    assert_eq!(report["stats"]["truncated"], 1);
    assert_eq!(report["stats"]["max_len"], 64);
}

#[test]
fn structure_only_without_a_tokenizer() {
    let file = fixture("defects20.jsonl");
    let output = ft(&["data", "validate", file.to_str().unwrap(), "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    // Lengths need a tokenizer: every defect but the last.
    assert_eq!(diagnostics(&report), expected(&DEFECTS[..19]));
    assert!(report.get("stats").is_none());
}

#[test]
fn clean_data_exits_0_with_statistics() {
    if !default_model_installed() {
        return;
    }
    let output = ft(&[
        "data",
        "validate",
        "examples/data/demo/train.jsonl",
        "examples/data/demo/valid.jsonl",
        "--model",
        "smollm2-135m-instruct",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(
        text.contains("files          2 (480 lines, 0 blank)"),
        "{text}"
    );
    assert!(
        text.contains("examples       480 readable (chat 480)"),
        "{text}"
    );
    assert!(
        text.contains("problems       0 errors, 0 warnings"),
        "{text}"
    );
    assert!(text.contains("length histogram"), "{text}");

    let output = ft(&[
        "data",
        "stats",
        "examples/data/demo/train.jsonl",
        "--model",
        "smollm2-135m-instruct",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stats: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(stats["stats"]["examples"], 400);
    assert_eq!(stats["stats"]["per_format"]["chat"], 400);
    // The demo's examples stay short (issue 6: under ~100 tokens each).
    assert!(
        stats["stats"]["max_len"].as_u64().unwrap() <= 100,
        "{stats}"
    );
    assert_eq!(stats["epoch"]["batches"], 100);
}

#[test]
fn missing_files_are_a_user_error() {
    let output = ft(&["data", "validate", "no/such/a.jsonl", "no/such/b.jsonl"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("no/such/a.jsonl") && err.contains("no/such/b.jsonl"),
        "{err}"
    );
    let output = ft(&[
        "data",
        "validate",
        "examples/data/demo/valid.jsonl",
        "--tokenizer",
        "no-such-model",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

#[test]
fn render_json_has_ids_and_mask_per_example() {
    if !default_model_installed() {
        return;
    }
    let output = ft(&[
        "data",
        "render",
        "examples/data/demo/train.jsonl",
        "--tokenizer",
        "smollm2-135m-instruct",
        "--json",
        "--limit",
        "3",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let train = std::fs::read_to_string(root().join("examples/data/demo/train.jsonl")).unwrap();
    for (example, source) in lines.iter().zip(train.lines()) {
        let ids = example["ids"].as_array().unwrap();
        let mask = example["mask"].as_array().unwrap();
        assert_eq!(ids.len(), mask.len());
        assert_eq!(example["pieces"].as_array().unwrap().len(), ids.len());
        // Only the assistant's answer and its closing token are trained on.
        let source: Value = serde_json::from_str(source).unwrap();
        let answer = source["messages"][2]["content"].as_str().unwrap();
        assert_eq!(
            example["targets"],
            serde_json::json!([format!("{answer}<|im_end|>")])
        );
        let trained = mask.iter().filter(|m| **m == true).count();
        assert!(
            trained > 3 && trained < ids.len() / 2,
            "{trained} of {}",
            ids.len()
        );
    }
    assert_eq!(lines[1]["source"]["line"], 2);

    // Text view: trained spans in [[...]] when not on a terminal.
    let output = ft(&[
        "data",
        "render",
        "examples/data/demo/train.jsonl",
        "--tokenizer",
        "smollm2-135m-instruct",
        "--limit",
        "1",
    ]);
    let text = stdout(&output);
    assert!(text.contains("[[name="), "{text}");
    assert!(text.contains("<|im_end|>]]"), "{text}");
    assert!(!text.contains('\x1b'), "no colour when piped");
}

#[test]
fn render_with_the_chatml_template() {
    if !default_model_installed() {
        return;
    }
    let output = ft(&[
        "data",
        "render",
        "examples/data/demo/valid.jsonl",
        "--tokenizer",
        "smollm2-135m-instruct",
        "--template",
        "chatml",
        "--json",
        "--limit",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let example: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let text = example["text"].as_str().unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nExtract the person"),
        "{text}"
    );
    assert!(text.ends_with("<|im_end|>\n"), "{text}");
}

#[test]
fn config_show_tells_where_each_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "[lora]\nrank = 4\n[data]\nmax_seq_len = 512\n").unwrap();
    let config = config.to_str().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ft"));
    command
        .args([
            "config",
            "show",
            "--config",
            config,
            "--set",
            "optimizer.learning_rate=3e-4",
        ])
        .env("FT_TRAINING__BATCH_SIZE", "2");
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("rank ="), format!("rank = 4 # from file {config}"));
    assert_eq!(
        line("max_seq_len ="),
        format!("max_seq_len = 512 # from file {config}")
    );
    assert_eq!(
        line("batch_size ="),
        "batch_size = 2 # from env FT_TRAINING__BATCH_SIZE"
    );
    assert_eq!(
        line("learning_rate ="),
        "learning_rate = 0.0003 # from --set optimizer.learning_rate=3e-4"
    );
    assert_eq!(line("alpha ="), "alpha = 16.0 # from default");

    let output = ft(&[
        "config",
        "show",
        "--config",
        config,
        "--set",
        "lora.alpha=8",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let shown: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(shown["config"]["lora"]["rank"], 4);
    assert_eq!(shown["sources"]["lora.rank"], format!("file {config}"));
    assert_eq!(shown["sources"]["lora.alpha"], "--set lora.alpha=8");
    assert_eq!(shown["sources"]["training.steps"], "default");
}

#[test]
fn invalid_configuration_lists_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[lora]\nrank = 0\n[data]\nformat = \"csv\"\n").unwrap();
    let output = ft(&["config", "show", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("lora.rank") && err.contains("data.format"),
        "{err}"
    );
    let output = ft(&["config", "show", "--config", "no/such/config.toml"]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn config_reference_is_the_committed_document() {
    let output = ft(&["config", "reference"]);
    assert_eq!(output.status.code(), Some(0));
    let committed = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    assert_eq!(stdout(&output), committed);
}

/// The tool-call defects of `tools.jsonl` (line 1 is a valid tool
/// conversation, line 6 a plain chat): (line, kind, field).
const TOOL_DEFECTS: [(u64, &str, Option<&str>); 4] = [
    (2, "unmatched_tool_result", Some("messages[2].tool_call_id")),
    (
        3,
        "unknown_function",
        Some("messages[1].tool_calls[0].function.name"),
    ),
    (
        4,
        "invalid_arguments",
        Some("messages[1].tool_calls[0].function.arguments"),
    ),
    (
        5,
        "invalid_tool_schema",
        Some("tools[0].function.parameters.type"),
    ),
];

#[test]
fn validate_checks_tool_calls() {
    let file = fixture("tools.jsonl");
    let output = ft(&["data", "validate", file.to_str().unwrap(), "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(diagnostics(&report), expected(&TOOL_DEFECTS));
    assert_eq!(report["counts"]["tool_examples"], 1);
    assert_eq!(report["counts"]["tool_calls"], 1);

    // Text output: located, with expected and got.
    let output = ft(&["data", "validate", file.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(
        text.contains(
            "tools.jsonl:3: error[unknown_function] messages[1].tool_calls[0].function.name: a \
             call to a function `tools` does not define (expected one of \"get_weather\", got \
             \"get_time\")"
        ),
        "{text}"
    );
    assert!(
        text.contains("tools          1 example with tools, 1 tool call"),
        "{text}"
    );

    // Mistral v3 asks for 9-character call ids.
    let output = ft(&[
        "data",
        "validate",
        file.to_str().unwrap(),
        "--template",
        "mistral-v3",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains(
            "tools.jsonl:1: error[invalid_tool_call_id] messages[1].tool_calls[0].id: Mistral v3 \
             needs 9-character call ids such as `a1b2c3d4e`; rename the id in the call and its \
             result (expected 9 ASCII letters or digits, got \"call_1\")"
        ),
        "{text}"
    );
}

#[test]
fn a_template_that_drops_tool_calls_is_reported() {
    if !default_model_installed() {
        return;
    }
    let file = fixture("tools.jsonl");
    // SmolLM2's template prints contents only: the call would train as an empty turn.
    let output = ft(&[
        "data",
        "validate",
        file.to_str().unwrap(),
        "--model",
        "smollm2-135m-instruct",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let first = &report["diagnostics"][0];
    assert_eq!(
        (first["line"].as_u64(), first["kind"].as_str()),
        (Some(1), Some("template"))
    );
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("does not render tool calls"),
        "{first}"
    );
    assert_eq!(report["stats"]["tool_examples"], 1);
    assert_eq!(report["stats"]["tool_calls"], 1);
}
