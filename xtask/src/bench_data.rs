//! `cargo xtask bench data`: how fast `ft data validate` checks and
//! tokenizes a large clean chat data set with the default model's tokenizer.
//!
//! Writes `target/bench-data/chat-<N>.jsonl` (git-ignored; 100,000 lines by
//! default, `--lines N` to change) once, builds `ft` in release mode, runs
//! `ft data validate FILE --model smollm2-135m-instruct --json` and prints
//! lines/s, tokens/s and the total time. Fails when the run reports an error
//! or takes longer than the budget (30 s, `--budget-s S` to change).

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::demo_data::{json_escape, random_example, Rng, Templates, SYSTEM};
use crate::shell;

/// Lines in the default benchmark file.
const DEFAULT_LINES: usize = 100_000;
/// The issue's budget for 100,000 lines on the 2-core development machine.
const DEFAULT_BUDGET_S: f64 = 30.0;
/// The model whose tokenizer is used.
const MODEL: &str = "smollm2-135m-instruct";

/// Options of `cargo xtask bench data`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Lines in the generated chat file
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LINES, value_parser = crate::cli::at_least(1))]
    lines: usize,
    /// Fail when validating the file takes longer than this many seconds
    #[arg(long = "budget-s", value_name = "S", default_value_t = DEFAULT_BUDGET_S)]
    budget_s: f64,
}

/// A clean chat data set: every line valid and unique; one in three
/// conversations has two exchanges.
pub fn chat_lines(count: usize, seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut templates = Templates(Vec::new());
    let mut out = String::with_capacity(count * 300);
    for i in 0..count {
        let template = templates.next(&mut rng);
        let example = random_example(&mut rng, template);
        let message = |role: &str, content: &str| {
            format!(
                "{{\"role\":\"{role}\",\"content\":\"{}\"}}",
                json_escape(content)
            )
        };
        let mut messages = vec![
            message("system", SYSTEM),
            message("user", &format!("Record {i}: {}", example.sentence)),
            message("assistant", &example.answer()),
        ];
        if i % 3 == 0 {
            messages.push(message("user", "And the year only?"));
            messages.push(message("assistant", &example.year.to_string()));
        }
        out.push_str("{\"messages\":[");
        out.push_str(&messages.join(","));
        out.push_str("]}\n");
    }
    out
}

/// The first number after `"key":` in `json` (the output is ft's own, with
/// known keys, so a search is enough).
fn json_number(json: &str, key: &str) -> Option<f64> {
    let needle = format!("\"{key}\":");
    let at = json.find(&needle)? + needle.len();
    let rest = &json[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Runs the benchmark.
pub fn run(root: &Path, options: Options) -> Result<()> {
    let dir = root.join("target/bench-data");
    let file: PathBuf = dir.join(format!("chat-{}.jsonl", options.lines));
    if !file.is_file() {
        shell::step(&format!("writing {}", file.display()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(&file, chat_lines(options.lines, 42))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    shell::step("cargo build --release -p ft-cli");
    shell::build_ft(root)?;
    let ft = root.join("target/release/ft");
    shell::step(&format!(
        "ft data validate {} --model {MODEL}",
        file.display()
    ));
    let started = Instant::now();
    let output = Command::new(&ft)
        .args(["data", "validate"])
        .arg(&file)
        .args(["--model", MODEL, "--json"])
        .current_dir(root)
        .output()
        .with_context(|| format!("could not start {}", ft.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "ft data validate failed ({}):\n{}\n{}",
            output.status,
            stdout.chars().take(2000).collect::<String>(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let lines = json_number(&stdout, "lines").context("no line count in ft's output")?;
    let warnings = json_number(&stdout, "warnings").unwrap_or(0.0);
    let stats = stdout.find("\"stats\":").map_or("", |at| &stdout[at..]);
    let tokens = json_number(stats, "tokens").context("no token count in ft's output")?;
    println!(
        "bench data: {lines:.0} lines, {tokens:.0} tokens, {warnings:.0} warnings in {seconds:.2} s: \
         {:.0} lines/s, {:.0} tokens/s (budget {:.0} s)",
        lines / seconds,
        tokens / seconds,
        options.budget_s
    );
    if seconds > options.budget_s {
        bail!(
            "ft data validate took {seconds:.1} s, over the {:.0} s budget",
            options.budget_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_unique_and_numbers_are_found() {
        let text = chat_lines(50, 1);
        let lines: std::collections::BTreeSet<&str> = text.lines().collect();
        assert_eq!(lines.len(), 50);
        assert!(text
            .lines()
            .all(|l| l.starts_with("{\"messages\":[") && l.ends_with("]}")));
        let json = r#"{"counts":{"files":1,"lines":12,"warnings":0},"stats":{"tokens":345}}"#;
        assert_eq!(json_number(json, "lines"), Some(12.0));
        assert_eq!(json_number(json, "tokens"), Some(345.0));
        assert_eq!(json_number(json, "absent"), None);
    }
}
