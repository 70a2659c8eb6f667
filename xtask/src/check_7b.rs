//! `cargo xtask check-7b`: Mistral-7B-Instruct-v0.3 at its real size on this
//! machine (by hand; not part of `cargo xtask test`).
//!
//! 1. Mistral's own v3 tokenizer from PyPI `mistral-common`, turned into
//!    `tokenizer.json` and checked token for token against that package's
//!    encoder (`xtask/python/mistral_tokenizer.py`, venv `.ft/venv-mistral`).
//! 2. A random-weight checkpoint with the model's exact `config.json`
//!    (`configs/models/mistral-7b-instruct-v0.3.json`: 32 layers, hidden
//!    4096, 32/8 heads, FFN 14336, vocab 32768, rope theta 1e6, bfloat16),
//!    three shards and an index, written one shard at a time.
//! 3. `ft convert --quantize 4`: the same model pre-quantized in
//!    mlx-community's layout.
//! 4. Training rows: the bf16 LoRA preset, the QLoRA preset (quantized on
//!    load) and the pre-quantized checkpoint, each at the sequence lengths
//!    given, with gradient checkpointing as the presets have it. Each row:
//!    load time, seconds per step, MLX peak, process peak RSS (`/usr/bin/time
//!    -v`), and `ft estimate-memory`'s prediction for the same settings.
//! 5. A resume of one row, `ft fuse` (HF directory and GGUF float16) and
//!    `ft generate` with the adapter.
//!
//! Everything goes under `target/check-7b/` (about 50 GB of disk at most;
//! `--keep-going` continues after a failed row).

use crate::{python, shell};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const MISTRAL_CONFIG: &str = "configs/models/mistral-7b-instruct-v0.3.json";
const LORA_PRESET: &str = "configs/mistral-7b-instruct-v0.3-m4-24gb.toml";
const QLORA_PRESET: &str = "configs/mistral-7b-instruct-v0.3-qlora-m4.toml";
const MISTRAL_COMMON: &str = "mistral-common==1.13.1";
const TRANSFORMERS: &str = "transformers==5.24.0";

/// Options of `cargo xtask check-7b`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Sequence lengths to train each row at, comma-separated
    #[arg(long, value_name = "N,N", value_delimiter = ',', default_values_t = [64, 128])]
    lengths: Vec<u32>,
    /// Training steps per row and length
    #[arg(long, value_name = "N", default_value_t = 2)]
    steps: u32,
    /// Rows to train, comma-separated: the bf16 LoRA preset, the QLoRA preset
    /// (quantized on load), the pre-quantized checkpoint
    #[arg(
        long,
        value_name = "ROW,ROW",
        value_delimiter = ',',
        value_parser = ["bf16", "qlora", "prequantized"],
        default_values_t = ["bf16".to_string(), "qlora".to_string(), "prequantized".to_string()]
    )]
    rows: Vec<String>,
    /// Also train each row for one step on MLX's own kernels
    /// (FT_MATMUL_PATH=native) at the first length, next to the fp32 expansion
    #[arg(long = "native-baseline")]
    native: bool,
    /// Skip the resume, fuse and generate steps after the rows
    #[arg(long = "no-finish", action = clap::ArgAction::SetFalse)]
    finish: bool,
    /// The same widths with N decoder layers instead of 32
    #[arg(long, value_name = "N")]
    layers: Option<u32>,
}

/// One measured training run.
#[derive(Default)]
struct Row {
    name: String,
    length: u32,
    path: &'static str,
    load_seconds: Option<f64>,
    step_seconds: Vec<f64>,
    losses: Vec<f64>,
    mlx_peak: Option<u64>,
    load_peak: Option<u64>,
    rss_peak: Option<u64>,
    estimate: Option<u64>,
    adapter_bytes: Option<u64>,
    checkpoint_bytes: Option<u64>,
    error: Option<String>,
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    let out = root.join("target/check-7b");
    fs::create_dir_all(&out)?;
    let ft = shell::build_ft(root)?;
    shell::step("cargo build --release -p ft-examples --example random_checkpoint");
    shell::cargo(
        root,
        &[
            "build",
            "--release",
            "-p",
            "ft-examples",
            "--example",
            "random_checkpoint",
        ],
    )?;

    // --layers N: the same widths with N decoder layers (MLX's own kernels
    // are too slow on the CPU for 32 layers; the per-layer ratio carries).
    let (model, config_path) = match options.layers {
        None => (out.join("model"), root.join(MISTRAL_CONFIG)),
        Some(layers) => {
            let text = fs::read_to_string(root.join(MISTRAL_CONFIG))?;
            let mut config: Value = serde_json::from_str(&text)?;
            config["num_hidden_layers"] = layers.into();
            let path = out.join(format!("config-{layers}-layers.json"));
            fs::write(&path, serde_json::to_string_pretty(&config)?)?;
            (out.join(format!("model-{layers}-layers")), path)
        }
    };
    let out = match options.layers {
        None => out,
        Some(layers) => out.join(format!("{layers}-layers")),
    };
    fs::create_dir_all(&out)?;
    let tokenizer = mistral_tokenizer(root, &model)?;
    println!("tokenizer: {tokenizer}");
    let write_seconds = random_checkpoint(root, &config_path, &model)?;
    let data = write_data(&out)?;

    let mut rows = Vec::new();
    let mut convert_seconds = None;
    for name in &options.rows {
        let (preset, model_path, quantized_copy) = match name.as_str() {
            "bf16" => (LORA_PRESET, model.clone(), false),
            "qlora" => (QLORA_PRESET, model.clone(), false),
            "prequantized" => (
                LORA_PRESET,
                PathBuf::from(format!("{}-4bit", model.display())),
                true,
            ),
            other => bail!("unknown row {other} (bf16, qlora, prequantized)"),
        };
        if quantized_copy && !model_path.join("config.json").is_file() {
            let started = Instant::now();
            shell::step("ft convert --quantize 4 (mlx-community layout)");
            let status = Command::new(&ft)
                .args(["convert", "--model"])
                .arg(&model)
                .arg("--out")
                .arg(&model_path)
                .args([
                    "--dtype",
                    "bfloat16",
                    "--quantize",
                    "4",
                    "--group-size",
                    "64",
                ])
                .status()?;
            if !status.success() {
                bail!("ft convert --quantize 4 failed ({status})");
            }
            convert_seconds = Some(started.elapsed().as_secs_f64());
        }
        let mut paths = vec!["fp32 expansion"];
        if options.native {
            paths.push("MLX kernels");
        }
        for &length in &options.lengths {
            for &path in &paths {
                if path == "MLX kernels" && length != options.lengths[0] {
                    continue;
                }
                let steps = if path == "MLX kernels" {
                    1
                } else {
                    options.steps
                };
                let row = train_row(
                    &ft,
                    &out,
                    name,
                    preset,
                    &model_path,
                    &data,
                    length,
                    steps,
                    path,
                );
                print_row(&row);
                rows.push(row);
            }
        }
    }

    let mut report = String::new();
    writeln!(report, "# cargo xtask check-7b\n")?;
    writeln!(report, "- tokenizer: {tokenizer}")?;
    if let Some(seconds) = write_seconds {
        writeln!(report, "- random checkpoint written in {seconds:.0} s")?;
    }
    if let Some(seconds) = convert_seconds {
        writeln!(
            report,
            "- `ft convert --quantize 4` (mlx-community layout) in {seconds:.0} s"
        )?;
    }
    writeln!(report, "\n{}", table(&rows))?;

    if options.finish {
        if let Some(row) = rows
            .iter()
            .find(|r| r.error.is_none() && r.path == "fp32 expansion")
        {
            let run_dir = out.join(format!("runs/{}-{}", row.name, row.length));
            writeln!(report, "\n{}", finish(&ft, &out, &model, &run_dir, row)?)?;
        }
    }
    let report_path = out.join("report.md");
    fs::write(&report_path, &report)?;
    println!("\n{report}\n(written to {})", report_path.display());
    if rows.iter().any(|r| r.error.is_some()) {
        bail!("some rows failed (see the table)");
    }
    Ok(())
}

/// `tokenizer.json` from mistral-common, checked against its encoder.
fn mistral_tokenizer(root: &Path, model: &Path) -> Result<String> {
    let venv = python::venv(
        root,
        "venv-mistral",
        &[MISTRAL_COMMON, "sentencepiece", "protobuf", TRANSFORMERS],
    )?;
    let output = shell::output(
        Command::new(python::python(&venv))
            .arg(root.join("xtask/python/mistral_tokenizer.py"))
            .arg(model),
    )
    .context("building tokenizer.json from mistral-common's v3 model")?;
    let line = output.lines().last().unwrap_or_default();
    let result: Value = serde_json::from_str(line).context("the tokenizer script's JSON")?;
    Ok(format!(
        "mistral-common {} v3 SentencePiece model -> tokenizer.json, vocab {}, {} texts and 5 control tokens equal to mistral-common's encoder (\"Hello world!\" = {})",
        result["mistral_common"].as_str().unwrap_or("?"),
        result["vocab_size"],
        result["samples"],
        result["hello_world"]
    ))
}

/// The random-weight checkpoint, written once; seconds taken when written now.
fn random_checkpoint(root: &Path, config: &Path, model: &Path) -> Result<Option<f64>> {
    if model.join("model.safetensors.index.json").is_file() {
        return Ok(None);
    }
    shell::step("writing a random-weight Mistral-7B-Instruct-v0.3 (bfloat16, 3 shards)");
    let started = Instant::now();
    shell::run(
        Command::new(root.join("target/release/examples/random_checkpoint"))
            .arg(config)
            .arg(model)
            .args(["--shards", "3", "--dtype", "bfloat16"]),
    )?;
    Ok(Some(started.elapsed().as_secs_f64()))
}

/// Chat examples long enough to fill every sequence length tried.
fn write_data(out: &Path) -> Result<PathBuf> {
    let dir = out.join("data");
    fs::create_dir_all(&dir)?;
    let sentence = "The quick brown fox jumps over the lazy dog while the river runs past \
                    the old mill and the bells of the town ring out the hour. ";
    let mut lines = String::new();
    for index in 0..16 {
        let record = serde_json::json!({
            "messages": [
                {"role": "user", "content": format!("Story {index}: tell me a long story.")},
                {"role": "assistant", "content": sentence.repeat(40)},
            ]
        });
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    let path = dir.join("train.jsonl");
    fs::write(&path, &lines)?;
    // One validation example: the end-of-run evaluation is not measured.
    let first = lines.lines().next().unwrap_or_default();
    fs::write(dir.join("valid.jsonl"), format!("{first}\n"))?;
    Ok(path)
}

#[allow(clippy::too_many_arguments)]
fn train_row(
    ft: &Path,
    out: &Path,
    name: &str,
    preset: &str,
    model: &Path,
    data: &Path,
    length: u32,
    steps: u32,
    path: &'static str,
) -> Row {
    let mut row = Row {
        name: name.into(),
        length,
        path,
        ..Row::default()
    };
    let suffix = if path == "MLX kernels" { "-native" } else { "" };
    let run_dir = out.join(format!("runs/{name}-{length}{suffix}"));
    let _ = fs::remove_dir_all(&run_dir);
    let sets = [
        format!("model.path={:?}", model.display().to_string()),
        format!("data.train={:?}", data.display().to_string()),
        format!(
            "data.valid={:?}",
            data.with_file_name("valid.jsonl").display().to_string()
        ),
        "training.eval_batches=1".into(),
        format!("data.max_seq_len={length}"),
        "data.over_length=\"truncate\"".into(),
        "data.template=\"mistral-v3\"".into(),
        format!("training.steps={steps}"),
        "training.batch_size=1".into(),
        "training.grad_accumulation=1".into(),
        "training.eval_every=0".into(),
        format!("training.save_every={steps}"),
        "scheduler.warmup_steps=0".into(),
        format!("checkpoint.output_dir={:?}", run_dir.display().to_string()),
        "logging.plots=false".into(),
    ];
    let result = (|| -> Result<()> {
        let mut estimate = Command::new(ft);
        estimate.args(["estimate-memory", "--json", "--config", preset]);
        for set in &sets {
            estimate.args(["--set", set]);
        }
        if path == "MLX kernels" {
            estimate.env("FT_MATMUL_PATH", "native");
        }
        let json: Value = serde_json::from_str(shell::output(&mut estimate)?.trim())
            .context("ft estimate-memory --json")?;
        row.estimate = json["total"].as_u64();

        let mut train = Command::new("/usr/bin/time");
        train.arg("-v").arg(ft).args(["train", "--config", preset]);
        for set in &sets {
            train.args(["--set", set]);
        }
        if path == "MLX kernels" {
            train.env("FT_MATMUL_PATH", "native");
        }
        shell::step(&format!(
            "ft train: {name}, {length} tokens, {steps} steps, {path}"
        ));
        let output = train.output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        fs::create_dir_all(&run_dir)?;
        fs::write(run_dir.join("train.log"), format!("{stdout}\n{stderr}"))?;
        row.rss_peak = max_rss(&stderr);
        let loaded = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("loaded     in "))
            .unwrap_or_default();
        row.load_seconds = loaded
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok());
        row.load_peak = loaded
            .rsplit_once("MLX peak ")
            .and_then(|(_, size)| parse_size(size.trim()));
        if !output.status.success() {
            bail!(
                "ft train failed ({}): {}",
                output.status,
                own_tail(&stderr, 25).join("\n")
            );
        }
        let metrics = fs::read_to_string(run_dir.join("metrics.jsonl"))?;
        let mut previous = 0.0;
        for record in metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            if record["kind"] != "train" {
                continue;
            }
            let elapsed = record["elapsed_seconds"].as_f64().unwrap_or(0.0);
            row.step_seconds.push(elapsed - previous);
            previous = elapsed;
            row.losses.extend(record["loss"].as_f64());
            row.mlx_peak = row.mlx_peak.max(record["peak_memory_bytes"].as_u64());
        }
        row.adapter_bytes = Some(shell::dir_bytes(&run_dir.join("adapter")));
        let checkpoints = run_dir.join("checkpoints");
        row.checkpoint_bytes = fs::read_dir(&checkpoints)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(|entry| entry.ok())
            .map(|entry| shell::dir_bytes(&entry.path()));
        Ok(())
    })();
    if let Err(error) = result {
        row.error = Some(format!("{error:#}"));
    }
    row
}

/// The peak RSS `/usr/bin/time -v` reported in `stderr`, in bytes.
fn max_rss(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The last `lines` lines the command itself wrote to `stderr`, before
/// `/usr/bin/time -v`'s report.
fn own_tail(stderr: &str, lines: usize) -> Vec<&str> {
    let own = stderr
        .split_once("\tCommand being timed:")
        .map_or(stderr, |(before, _)| before);
    let mut tail: Vec<&str> = own.lines().rev().take(lines).collect();
    tail.reverse();
    tail
}

/// `12.34 GB` (ft's human_bytes) back to bytes.
fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = text.split_once(' ')?;
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    Some((number.parse::<f64>().ok()? * scale) as u64)
}

fn gb(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.2}", b as f64 / 1e9))
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6))
}

/// Seconds per step: the mean of the steps after the first (which also
/// pays for first-use allocation), or the only step.
fn per_step(row: &Row) -> Option<f64> {
    match row.step_seconds.as_slice() {
        [] => None,
        [only] => Some(*only),
        [_, rest @ ..] => Some(rest.iter().sum::<f64>() / rest.len() as f64),
    }
}

fn print_row(row: &Row) {
    println!("{}", table(std::slice::from_ref(row)));
}

fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| row | tokens | products | load s | load MLX peak GB | s/step | losses | step MLX peak GB | process RSS peak GB | estimate GB | estimate/step peak | adapter MB | checkpoint MB |\n\
         | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        if let Some(error) = &row.error {
            let first = error.lines().next().unwrap_or_default();
            let _ = writeln!(
                text,
                "| {} | {} | {} | failed: {} |",
                row.name, row.length, row.path, first
            );
            continue;
        }
        let ratio = match (row.estimate, row.mlx_peak) {
            (Some(e), Some(p)) if p > 0 => format!("{:.3}", e as f64 / p as f64),
            _ => "-".into(),
        };
        let losses: Vec<String> = row.losses.iter().map(|l| format!("{l:.4}")).collect();
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            row.length,
            row.path,
            row.load_seconds.map_or("-".into(), |s| format!("{s:.1}")),
            gb(row.load_peak),
            per_step(row).map_or("-".into(), |s| format!("{s:.1}")),
            losses.join(", "),
            gb(row.mlx_peak),
            gb(row.rss_peak),
            gb(row.estimate),
            ratio,
            mb(row.adapter_bytes),
            mb(row.checkpoint_bytes),
        );
    }
    text
}

/// Resume one step, fuse (HF directory, GGUF float16) and generate.
fn finish(ft: &Path, out: &Path, model: &Path, run_dir: &Path, row: &Row) -> Result<String> {
    let mut lines = String::new();
    let timed = |what: &str, command: &mut Command| -> Result<String> {
        shell::step(what);
        let started = Instant::now();
        let output = Command::new("/usr/bin/time")
            .arg("-v")
            .arg(command.get_program())
            .args(command.get_args())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let rss = max_rss(&stderr);
        let seconds = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Ok(format!(
                "- {what}: FAILED ({}) after {seconds:.0} s: {}",
                output.status,
                own_tail(&stderr, 15).join(" / ")
            ));
        }
        Ok(format!(
            "- {what}: {seconds:.0} s, peak RSS {} GB{}",
            gb(rss),
            stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(" ({})", l.trim()))
                .unwrap_or_default()
        ))
    };
    let config = run_dir.join("config.toml");
    let steps = row.step_seconds.len() + 1;
    lines.push_str(&timed(
        &format!(
            "resume {} at {} tokens for one more step",
            row.name, row.length
        ),
        Command::new(ft)
            .args(["train", "--config"])
            .arg(&config)
            .arg("--resume")
            .arg(run_dir)
            .args(["--set", &format!("training.steps={steps}")]),
    )?);
    lines.push('\n');
    let adapter = run_dir.join("adapter");
    let fused = out.join("fused");
    let _ = fs::remove_dir_all(&fused);
    lines.push_str(&timed(
        "ft fuse (HF directory, bfloat16)",
        Command::new(ft)
            .args(["fuse", "--model"])
            .arg(model)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(&fused)
            .arg("--dequantize"),
    )?);
    lines.push('\n');
    let gguf = out.join("fused-f16.gguf");
    let _ = fs::remove_file(&gguf);
    lines.push_str(&timed(
        "ft fuse --format gguf --dtype float16",
        Command::new(ft)
            .args(["fuse", "--model"])
            .arg(model)
            .arg("--adapter")
            .arg(&adapter)
            .args(["--format", "gguf", "--dtype", "float16", "--out"])
            .arg(&gguf),
    )?);
    lines.push('\n');
    lines.push_str(&timed(
        "ft generate with the adapter (8 tokens)",
        Command::new(ft)
            .args(["generate", "--model"])
            .arg(model)
            .arg("--adapter")
            .arg(&adapter)
            .args(["--prompt", "Tell me a story.", "--max-tokens", "8"]),
    )?);
    lines.push('\n');
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_v_reports_are_read_and_kept_apart_from_the_commands_own_output() {
        let stderr =
            "loading...\nerror: out of memory at step 3\n\tCommand being timed: \"ft train\"\n\
                      \tMaximum resident set size (kbytes): 15246312\n\tExit status: 1\n";
        assert_eq!(max_rss(stderr), Some(15_246_312 * 1024));
        assert_eq!(own_tail(stderr, 1), ["error: out of memory at step 3"]);
        assert_eq!(own_tail(stderr, 5).len(), 2);
        assert_eq!(max_rss("no report"), None);
        assert_eq!(parse_size("14.50 GB"), Some(14_500_000_000));
    }
}
