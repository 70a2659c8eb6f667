//! `cargo xtask e2e`: the main job on the built-in default model and the
//! demo data set. Validates the data, measures the base model (held-out
//! loss and the extraction task), trains with `configs/quickstart.toml`,
//! measures again, fuses the adapter and checks the fused model's logits,
//! then prints a before/after table. Everything it writes is under
//! `target/e2e/`.

use crate::shell;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const TRAIN: &str = "examples/data/demo/train.jsonl";
const VALID: &str = "examples/data/demo/valid.jsonl";
/// A well-formed answer of the demo task (see examples/data/demo/README.md).
const FORMAT: &str = r"^name=[^;]+; city=[^;]+; year=\d{4}$";

/// Held-out figures of one model.
struct Scores {
    loss: f64,
    perplexity: f64,
    exact: f64,
    format: f64,
    samples: Vec<(String, String, String)>,
}

fn ft(root: &Path) -> Command {
    let mut command = Command::new(root.join("target/release/ft"));
    command.current_dir(root);
    command
}

fn scores(root: &Path, adapter: Option<&str>) -> Result<Scores> {
    let mut command = ft(root);
    command.args([
        "eval",
        "--data",
        VALID,
        "--generate",
        "--format-regex",
        FORMAT,
        "--show",
        "2",
        "--max-tokens",
        "24",
        "--json",
    ]);
    if let Some(adapter) = adapter {
        command.args(["--adapter", adapter]);
    }
    let text = shell::output(&mut command)?;
    let json: Value = serde_json::from_str(text.trim()).context("parsing `ft eval --json`")?;
    let number = |pointer: &str| {
        json.pointer(pointer)
            .and_then(Value::as_f64)
            .with_context(|| format!("`ft eval --json` has no number at {pointer}"))
    };
    let samples = json
        .pointer("/task/samples")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|s| {
                    let field = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                    (field("prompt"), field("reference"), field("reply"))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Scores {
        loss: number("/loss")?,
        perplexity: number("/perplexity")?,
        exact: number("/task/exact_match")?,
        format: number("/task/format_match")?,
        samples,
    })
}

/// Runs the main job.
pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    let out = root.join("target/e2e");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    shell::step("cargo build --release -p ft-cli");
    shell::build_ft(root)?;
    shell::step("ft doctor");
    shell::run(ft(root).arg("doctor"))?;
    shell::step("ft data validate: the demo data set");
    shell::run(ft(root).args([
        "data",
        "validate",
        TRAIN,
        VALID,
        "--model",
        "smollm2-135m-instruct",
    ]))?;
    shell::step("ft eval: the base model on the held-out split");
    let before = scores(root, None)?;
    shell::step("ft train --config configs/quickstart.toml");
    let run_dir = "target/e2e/run";
    shell::run(ft(root).args([
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        &format!("checkpoint.output_dir=\"{run_dir}\""),
    ]))?;
    let adapter = format!("{run_dir}/adapter");
    shell::step("ft eval: the fine-tuned model on the held-out split");
    let after = scores(root, Some(&adapter))?;
    shell::step("ft fuse: merge the adapter, reload, compare logits with base + adapter");
    shell::run(ft(root).args([
        "fuse",
        "--adapter",
        &adapter,
        "--out",
        "target/e2e/fused",
        "--dequantize",
    ]))?;
    shell::step("ft generate: the fused model");
    shell::run(ft(root).args([
        "generate",
        "--model",
        "target/e2e/fused",
        "--system",
        "Extract the person, city and year. Answer exactly as: name=<name>; city=<city>; year=<year>",
        "--prompt",
        "After the war, Ingrid Okafor opened a small clinic in Valparaiso in 1948.",
        "--max-tokens",
        "32",
    ]))?;

    let loss_drop = 1.0 - after.loss / before.loss;
    let exact_gain = 100.0 * (after.exact - before.exact);
    println!("\nmlx-ft e2e: SmolLM2-135M-Instruct, LoRA on the demo extraction task (80 held-out examples)\n");
    println!("| held-out          | before | after  |");
    println!("|-------------------|--------|--------|");
    println!(
        "| loss              | {:>6.4} | {:>6.4} |",
        before.loss, after.loss
    );
    println!(
        "| perplexity        | {:>6.3} | {:>6.3} |",
        before.perplexity, after.perplexity
    );
    println!(
        "| exact match       | {:>5.1}% | {:>5.1}% |",
        100.0 * before.exact,
        100.0 * after.exact
    );
    println!(
        "| format match      | {:>5.1}% | {:>5.1}% |",
        100.0 * before.format,
        100.0 * after.format
    );
    println!(
        "\nloss {:.1}% lower, exact match {:+.1} points; {:.0} s in all",
        100.0 * loss_drop,
        exact_gain,
        started.elapsed().as_secs_f64()
    );
    for (label, scores) in [("before", &before), ("after", &after)] {
        for (prompt, reference, reply) in &scores.samples {
            println!("\n[{label}] {prompt}\n  expected: {reference}\n  got:      {reply}");
        }
    }
    if exact_gain < 20.0 && loss_drop < 0.30 {
        bail!(
            "fine-tuning did not help enough: exact match {exact_gain:+.1} points (need +20) and \
             loss {:.1}% lower (need 30%)",
            100.0 * loss_drop
        );
    }
    println!("\ne2e: all steps passed");
    Ok(())
}
