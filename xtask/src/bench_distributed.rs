//! `cargo xtask bench distributed`: the same training run (the quickstart
//! configuration on the default model, dropout off) in one process and as
//! 2 data-parallel ranks on loopback (`ft launch`), side by side: trained
//! tokens per second, seconds per step, and the largest per-step loss
//! difference. On one machine this measures the overhead of the exchange
//! (the ranks share its cores), not a speed-up.

use crate::reference;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

struct Run {
    tokens_per_second: f64,
    seconds_per_step: f64,
    losses: Vec<f64>,
}

/// Steps after the first (which pays for warm-up) from a run's metrics.
fn read_run(run_dir: &Path) -> Result<Run> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let steps: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["kind"] == "train")
        .collect();
    if steps.len() < 3 {
        bail!("{}: fewer than 3 steps", path.display());
    }
    let timed = &steps[1..];
    let tokens: f64 = timed.iter().filter_map(|s| s["real_tokens"].as_f64()).sum();
    let first = steps[0]["elapsed_seconds"].as_f64().unwrap_or(0.0);
    let last = timed[timed.len() - 1]["elapsed_seconds"]
        .as_f64()
        .unwrap_or(0.0);
    let seconds = (last - first).max(1e-9);
    Ok(Run {
        tokens_per_second: tokens / seconds,
        seconds_per_step: seconds / timed.len() as f64,
        losses: steps.iter().filter_map(|s| s["loss"].as_f64()).collect(),
    })
}

/// Options of `cargo xtask bench distributed`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Training steps of each run
    #[arg(long, value_name = "N", default_value_t = 12)]
    steps: u32,
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    let steps = options.steps;
    let ft = reference::build_ft(root)?;
    let out = root.join("target/bench-distributed");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let train = |run: &str| -> Vec<String> {
        [
            "train",
            "--config",
            "configs/quickstart.toml",
            "--no-progress",
            "--set",
            &format!("training.steps={steps}"),
            "--set",
            "training.eval_every=0",
            "--set",
            "training.save_every=0",
            "--set",
            "scheduler.warmup_steps=1",
            "--set",
            "lora.dropout=0.0",
            "--set",
            &format!("checkpoint.output_dir=\"target/bench-distributed/{run}\""),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    crate::shell::step("one process");
    crate::shell::run(Command::new(&ft).current_dir(root).args(train("one")))?;
    crate::shell::step("2 ranks on loopback (ft launch)");
    crate::shell::run(
        Command::new(&ft)
            .current_dir(root)
            .args(["launch", "--ranks", "2", "--"])
            .args(train("two")),
    )?;
    let one = read_run(&out.join("one"))?;
    let two = read_run(&out.join("two"))?;
    let loss_diff = one
        .losses
        .iter()
        .zip(&two.losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    println!("\nbench distributed: quickstart on the default model, {steps} steps of batch 4\n");
    println!("| run                | tokens/s | s/step |");
    println!("|--------------------|----------|--------|");
    for (name, run) in [("1 process", &one), ("2 ranks (loopback)", &two)] {
        println!(
            "| {name:<18} | {:>8.1} | {:>6.2} |",
            run.tokens_per_second, run.seconds_per_step
        );
    }
    println!(
        "\n2 ranks / 1 process: {:.2}x tokens/s; largest per-step loss difference {loss_diff:.2e}",
        two.tokens_per_second / one.tokens_per_second
    );
    Ok(())
}
