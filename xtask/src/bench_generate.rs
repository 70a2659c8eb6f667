//! `cargo xtask bench generate`: greedy generation speed of ft-model against
//! mlx_lm, in one run, on the same fp32 HF directory (the default model
//! written by `ft convert`) and the same ~128-token chat prompt.
//!
//! Each round runs `ft bench-generate` and the helper's `generate` (mlx_lm
//! `stream_generate`) as separate processes, alternating which goes first;
//! each process does one untimed warm-up and `--repeats` timed runs of
//! exactly `--max-tokens` tokens (no stop token). Both sides count time the
//! same way: prompt = up to the first generated token, decode = the
//! remaining tokens over the time after the first one. Medians and best
//! runs are printed with ratios ours/mlx_lm; the greedy tokens of both must
//! agree.

use crate::{python, reference, setup, shell};
use anyhow::{bail, Result};
use std::path::Path;
use std::process::Command;

/// Options of `cargo xtask bench generate`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Tokens generated per run (no stop token)
    #[arg(long = "max-tokens", value_name = "N", default_value_t = 128, value_parser = crate::cli::at_least(2))]
    max_tokens: usize,
    /// Rounds, each running both sides as separate processes (the first
    /// side alternates)
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = crate::cli::at_least(1))]
    rounds: usize,
    /// Timed runs per side and round, after one untimed warm-up
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = crate::cli::at_least(1))]
    repeats: usize,
}

/// One timed generation.
#[derive(Clone, Debug)]
struct Run {
    prompt_tps: f64,
    decode_tps: f64,
    tokens: Vec<u32>,
}

impl Run {
    fn parse(line: &str) -> Result<Self> {
        Ok(Self {
            prompt_tps: python::json_number(line, "prompt_tps")?,
            decode_tps: python::json_number(line, "decode_tps")?,
            tokens: python::json_numbers(line, "tokens")?
                .into_iter()
                .map(|id| id as u32)
                .collect(),
        })
    }
}

/// Runs the benchmark and prints its table.
pub fn run(root: &Path, options: Options) -> Result<()> {
    setup::run(root, setup::Options::default())?;
    let venv = python::reference_venv(root)?;
    let ft = reference::build_ft(root)?;
    let model = reference::f32_default_model(root, &ft)?;
    let model_str = reference::path_str(&model)?;
    let encoded = python::helper_json(root, &venv, &["encode", model_str])?;
    let ids: Vec<String> = python::json_numbers(&encoded, "ids")?
        .into_iter()
        .map(|id| (id as u32).to_string())
        .collect();
    let ids = ids.join(",");
    let max_tokens = options.max_tokens.to_string();
    let repeats = options.repeats.to_string();
    let load_before = load_average();

    let ours_once = || -> Result<Vec<Run>> {
        let out = shell::output(
            Command::new(&ft)
                .args(["bench-generate", "--model", model_str, "--prompt-ids", &ids])
                .args(["--max-tokens", &max_tokens, "--repeats", &repeats])
                .current_dir(root),
        )?;
        out.lines().map(Run::parse).collect()
    };
    let theirs_once = || -> Result<Vec<Run>> {
        let out = python::helper_json(
            root,
            &venv,
            &[
                "generate",
                model_str,
                &ids,
                "--max-tokens",
                &max_tokens,
                "--repeats",
                &repeats,
            ],
        )?;
        out.lines().map(Run::parse).collect()
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..options.rounds {
        shell::step(&format!(
            "round {}/{}: {} prompt tokens, {} generated, {} timed runs per side",
            round + 1,
            options.rounds,
            ids.split(',').count(),
            options.max_tokens,
            options.repeats
        ));
        if round % 2 == 0 {
            ours.extend(ours_once()?);
            theirs.extend(theirs_once()?);
        } else {
            theirs.extend(theirs_once()?);
            ours.extend(ours_once()?);
        }
    }
    let load_after = load_average();

    let same_tokens = ours
        .iter()
        .chain(&theirs)
        .all(|run| run.tokens == ours[0].tokens);
    // Other work on the machine only ever slows a run down: the best run is
    // the steadier figure on a shared machine, the median the typical one.
    let stats = |runs: &[Run], pick: fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2], values[values.len() - 1])
    };
    let ours_prompt = stats(&ours, |r| r.prompt_tps);
    let ours_decode = stats(&ours, |r| r.decode_tps);
    let theirs_prompt = stats(&theirs, |r| r.prompt_tps);
    let theirs_decode = stats(&theirs, |r| r.decode_tps);
    println!(
        "\ngreedy generation, {} fp32 ({} prompt tokens, {} generated), {} runs per side",
        reference::DEFAULT_MODEL,
        ids.split(',').count(),
        options.max_tokens,
        ours.len()
    );
    println!("| side | prompt tokens/s (median / best) | decode tokens/s (median / best) |");
    println!("| --- | --- | --- |");
    let row = |name: &str, prompt: (f64, f64), decode: (f64, f64)| {
        println!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} |",
            prompt.0, prompt.1, decode.0, decode.1
        );
    };
    row("ft-model", ours_prompt, ours_decode);
    row("mlx_lm", theirs_prompt, theirs_decode);
    println!(
        "| ratio ours/mlx_lm | {:.2}x / {:.2}x | {:.2}x / {:.2}x |",
        ours_prompt.0 / theirs_prompt.0,
        ours_prompt.1 / theirs_prompt.1,
        ours_decode.0 / theirs_decode.0,
        ours_decode.1 / theirs_decode.1
    );
    println!(
        "same greedy tokens on both sides: {}; load average before/after: {load_before}/{load_after}",
        if same_tokens { "yes" } else { "NO" }
    );
    if !same_tokens {
        bail!("ft-model and mlx_lm generated different greedy tokens from the same fp32 model");
    }
    Ok(())
}

/// The 1-minute load average (other work on the machine skews timings).
fn load_average() -> String {
    crate::shell::load_average()
        .map_or_else(|error| format!("({error})"), |load| format!("{load:.2}"))
}
