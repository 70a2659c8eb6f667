//! `cargo xtask bench train`: LoRA training speed, memory and loss against
//! mlx-lm's `lora` trainer, on the same fp32 model, data and settings.
//!
//! The mlx-lm side ([`mlx_lm_reference`]) writes a config YAML (so that
//! `lora_parameters` — rank, scale = alpha / rank, dropout — can be set) and
//! runs mlx-lm's own `lora` entry point in the reference venv through the
//! helper's `lora` subcommand, which prints each of mlx-lm's trainer reports
//! as a JSON line. Every step is reported; the first (warm-up) step is left
//! out of the speed. Our side is a second [`TrainRun`] row once ft-trainer
//! exists; `--reference-only` runs the mlx-lm row alone.

use crate::{python, reference, setup, shell};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The demo data set (chat format, `train.jsonl` + `valid.jsonl`).
const DEMO_DATA: &str = "examples/data/demo";
/// A path as a double-quoted string, valid in YAML and TOML alike.
fn quoted(path: &Path) -> Result<String> {
    Ok(format!(
        "\"{}\"",
        reference::path_str(path)?
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    ))
}

/// Steps averaged into [`TrainRun::final_loss`].
pub const FINAL_LOSS_STEPS: usize = 10;

/// One training run's figures, one row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainRun {
    /// Trained (loss) tokens per second over the steps after the first:
    /// the tokens in the loss of each batch (padding excluded) over the
    /// time of the forward, backward and optimizer step.
    pub tokens_per_second: f64,
    /// Peak memory the framework reported (MLX's `get_peak_memory`).
    pub peak_memory_bytes: u64,
    /// Mean training loss of the last [`FINAL_LOSS_STEPS`] steps (fewer if
    /// the run is shorter).
    pub final_loss: f64,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Validation loss after the last step, if one was computed.
    pub validation_loss: Option<f64>,
}

/// What to train: the same for both sides.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    /// An HF model directory (mlx-lm loads nothing else).
    pub model_dir: PathBuf,
    /// A folder with `train.jsonl` and `valid.jsonl` (chat format).
    pub data_dir: PathBuf,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha; mlx-lm's `scale` is `alpha / rank`.
    pub alpha: f64,
    /// LoRA dropout.
    pub dropout: f64,
    /// Adapted layers, counted from the last.
    pub num_layers: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Longer sequences are truncated.
    pub max_seq_length: usize,
    /// Optimizer steps.
    pub iters: usize,
    /// Constant learning rate (AdamW, no weight decay).
    pub learning_rate: f64,
    /// Validation batches before the first and after the last step.
    pub val_batches: usize,
    /// Train on completions only (mlx-lm `mask_prompt`).
    pub mask_prompt: bool,
    /// Data order seed.
    pub seed: u64,
}

impl TrainSpec {
    /// The configuration: rank 8, alpha 16, 16 layers, batch 4.
    pub fn standard(model_dir: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            model_dir,
            data_dir,
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            num_layers: 16,
            batch_size: 4,
            max_seq_length: 512,
            iters: 20,
            learning_rate: 2e-4,
            val_batches: 4,
            mask_prompt: true,
            seed: 0,
        }
    }

    /// mlx-lm's config YAML for this run (every value is a number, a bool
    /// or a path, written as a quoted YAML string).
    fn mlx_lm_yaml(&self, adapter_path: &Path) -> Result<String> {
        Ok(format!(
            "model: {model}\n\
             train: true\n\
             data: {data}\n\
             fine_tune_type: lora\n\
             optimizer: adamw\n\
             optimizer_config:\n  adamw:\n    weight_decay: 0.0\n    bias_correction: true\n\
             seed: {seed}\n\
             num_layers: {layers}\n\
             batch_size: {batch}\n\
             iters: {iters}\n\
             val_batches: {val}\n\
             learning_rate: {lr:e}\n\
             steps_per_report: 1\n\
             steps_per_eval: {eval}\n\
             save_every: {save}\n\
             adapter_path: {adapters}\n\
             max_seq_length: {seq}\n\
             grad_checkpoint: false\n\
             mask_prompt: {mask}\n\
             lora_parameters:\n  rank: {rank}\n  scale: {scale}\n  dropout: {dropout}\n",
            model = quoted(&self.model_dir)?,
            data = quoted(&self.data_dir)?,
            seed = self.seed,
            layers = self.num_layers,
            batch = self.batch_size,
            iters = self.iters,
            val = self.val_batches,
            lr = self.learning_rate,
            eval = self.iters.max(1),
            save = self.iters.max(1),
            adapters = quoted(adapter_path)?,
            seq = self.max_seq_length,
            mask = self.mask_prompt,
            rank = self.rank,
            scale = self.alpha / self.rank as f64,
            dropout = self.dropout,
        ))
    }
}

/// The mean of the last [`FINAL_LOSS_STEPS`] per-step losses.
pub fn final_loss(step_losses: &[f64]) -> f64 {
    let tail = &step_losses[step_losses.len().saturating_sub(FINAL_LOSS_STEPS)..];
    if tail.is_empty() {
        return f64::NAN;
    }
    tail.iter().sum::<f64>() / tail.len() as f64
}

/// Runs mlx-lm's `lora` trainer on `spec` in the reference venv; its
/// adapters and config go to `work` (created).
pub fn mlx_lm_reference(
    root: &Path,
    venv: &Path,
    spec: &TrainSpec,
    work: &Path,
) -> Result<TrainRun> {
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let config = work.join("mlx_lm_lora.yaml");
    fs::write(&config, spec.mlx_lm_yaml(&work.join("adapters"))?)?;
    shell::step(&format!(
        "mlx_lm lora: {} steps, rank {}, scale {}, {} layers, batch {} ({})",
        spec.iters,
        spec.rank,
        spec.alpha / spec.rank as f64,
        spec.num_layers,
        spec.batch_size,
        config.display()
    ));
    let out = shell::output(
        Command::new(python::python(venv))
            .arg(python::helper_script(root))
            .arg("lora")
            .arg(&config)
            .env("TOKENIZERS_PARALLELISM", "false")
            .current_dir(root),
    )
    .context("running mlx_lm lora in the reference venv")?;
    let log = work.join("mlx_lm_lora.log");
    fs::write(&log, &out)?;
    parse_reports(&out)
        .with_context(|| format!("reading mlx_lm's reports (log: {})", log.display()))
}

/// Turns the helper's `MLX_REF_TRAIN` / `MLX_REF_VAL` lines into a run.
fn parse_reports(out: &str) -> Result<TrainRun> {
    let mut losses = Vec::new();
    let mut trained = Vec::new();
    let mut seconds = Vec::new();
    let mut peak_gb: f64 = 0.0;
    let mut validation = Vec::new();
    for line in out.lines() {
        if let Some(json) = line.strip_prefix("MLX_REF_TRAIN ") {
            losses.push(python::json_number(json, "train_loss")?);
            trained.push(python::json_number(json, "trained_tokens")?);
            seconds.push(1.0 / python::json_number(json, "iterations_per_second")?);
            peak_gb = peak_gb.max(python::json_number(json, "peak_memory")?);
        } else if let Some(json) = line.strip_prefix("MLX_REF_VAL ") {
            validation.push(python::json_number(json, "val_loss")?);
        }
    }
    if losses.is_empty() {
        bail!("mlx_lm reported no training step");
    }
    // Every step is a report: per-step tokens are the increments of the
    // running total. The first step (graph set-up, allocation) is left out.
    let skip = usize::from(losses.len() > 1);
    let tokens = trained[trained.len() - 1] - if skip == 1 { trained[0] } else { 0.0 };
    let time: f64 = seconds[skip..].iter().sum();
    Ok(TrainRun {
        tokens_per_second: tokens / time,
        peak_memory_bytes: (peak_gb * 1e9) as u64,
        final_loss: final_loss(&losses),
        steps: losses.len(),
        validation_loss: validation.last().copied(),
    })
}

/// Prints runs as a table; rows after the first get ratios to the first.
pub fn print_table(rows: &[(&str, &TrainRun)]) {
    println!("| trainer | trained tokens/s | peak memory | final train loss | val loss | steps |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let Some((_, base)) = rows.first() else {
        return;
    };
    for (index, (name, run)) in rows.iter().enumerate() {
        let ratio = |ours: f64, theirs: f64| {
            if index == 0 {
                String::new()
            } else {
                format!(" ({:.2}x)", ours / theirs)
            }
        };
        println!(
            "| {name} | {:.1}{} | {:.0} MB{} | {:.3} | {} | {} |",
            run.tokens_per_second,
            ratio(run.tokens_per_second, base.tokens_per_second),
            run.peak_memory_bytes as f64 / 1e6,
            ratio(run.peak_memory_bytes as f64, base.peak_memory_bytes as f64),
            run.final_loss,
            run.validation_loss
                .map_or_else(|| "-".to_string(), |loss| format!("{loss:.3}")),
            run.steps
        );
    }
}

/// Runs `ft train` on `spec` with the same settings as the mlx-lm run
/// (constant learning rate, no warmup, validation at the end); its run
/// directory is `work` (recreated). Tokens per second count the loss
/// tokens of the steps after the first, as on mlx-lm's side.
pub fn ft_run(root: &Path, ft: &Path, spec: &TrainSpec, work: &Path) -> Result<TrainRun> {
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let sets = [
        format!("model.path={}", quoted(&spec.model_dir)?),
        format!("data.train={}", quoted(&spec.data_dir.join("train.jsonl"))?),
        format!("data.valid={}", quoted(&spec.data_dir.join("valid.jsonl"))?),
        format!("data.max_seq_len={}", spec.max_seq_length),
        format!("data.mask_prompt={}", spec.mask_prompt),
        format!("lora.rank={}", spec.rank),
        format!("lora.alpha={:?}", spec.alpha),
        format!("lora.dropout={:?}", spec.dropout),
        format!("lora.num_layers={}", spec.num_layers),
        // mlx-lm adapts every linear layer of an adapted block by default.
        "lora.target_modules=\"all-linear\"".to_string(),
        format!("training.steps={}", spec.iters),
        format!("training.batch_size={}", spec.batch_size),
        format!("training.seed={}", spec.seed),
        "training.eval_every=0".to_string(),
        format!("training.eval_batches={}", spec.val_batches),
        "training.save_every=0".to_string(),
        format!("optimizer.learning_rate={:?}", spec.learning_rate),
        "scheduler.kind=\"constant\"".to_string(),
        "scheduler.warmup_steps=0".to_string(),
        format!("checkpoint.output_dir={}", quoted(work)?),
        "logging.plots=false".to_string(),
    ];
    let mut command = std::process::Command::new(ft);
    command.current_dir(root).args([
        "train",
        "--no-progress",
        "--config",
        "configs/quickstart.toml",
    ]);
    for set in &sets {
        command.args(["--set", set]);
    }
    shell::step("ft train (same settings)");
    shell::run(&mut command)?;
    let metrics = std::fs::read_to_string(work.join("metrics.jsonl"))
        .with_context(|| format!("reading {}/metrics.jsonl", work.display()))?;
    let (mut losses, mut tokens, mut seconds, mut peak, mut elapsed, mut validation) =
        (Vec::new(), 0.0, 0.0, 0u64, 0.0f64, None);
    for line in metrics.lines() {
        let record: serde_json::Value = serde_json::from_str(line).context("metrics.jsonl")?;
        let number = |key: &str| record[key].as_f64().unwrap_or(0.0);
        match record["kind"].as_str() {
            Some("train") => {
                let step_seconds = number("elapsed_seconds") - elapsed;
                elapsed = number("elapsed_seconds");
                if number("step") > 1.0 {
                    tokens += number("target_tokens");
                    seconds += step_seconds;
                }
                losses.push(number("loss"));
                peak = peak.max(number("peak_memory_bytes") as u64);
            }
            Some("eval") => validation = Some(number("loss")),
            _ => {}
        }
    }
    if losses.is_empty() || seconds <= 0.0 {
        bail!(
            "{}/metrics.jsonl has no timed training steps",
            work.display()
        );
    }
    Ok(TrainRun {
        tokens_per_second: tokens / seconds,
        peak_memory_bytes: peak,
        final_loss: final_loss(&losses),
        steps: losses.len(),
        validation_loss: validation,
    })
}

/// `cargo xtask bench train [--reference-only] [--iters N] [--data DIR]`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut reference_only = false;
    let mut iters = None;
    let mut data = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reference-only" => reference_only = true,
            "--iters" => {
                let text = args.next().context("--iters needs a value")?;
                iters = Some(
                    text.parse()
                        .with_context(|| format!("--iters: `{text}` is not a whole number"))?,
                );
            }
            "--data" => data = Some(PathBuf::from(args.next().context("--data needs a folder")?)),
            other => bail!(
                "unknown option `{other}`: bench train [--reference-only] [--iters N] [--data DIR]"
            ),
        }
    }
    setup::run(root, setup::Options::parse(&[])?)?;
    let venv = python::reference_venv(root)?;
    let ft = reference::build_ft(root)?;
    let model = reference::f32_default_model(root, &ft)?;
    let data_dir = data.unwrap_or_else(|| root.join(DEMO_DATA));
    for file in ["train.jsonl", "valid.jsonl"] {
        if !data_dir.join(file).is_file() {
            bail!(
                "{} has no {file}: mlx-lm wants train.jsonl and valid.jsonl in one folder",
                data_dir.display()
            );
        }
    }
    let mut spec = TrainSpec::standard(model, data_dir);
    if let Some(iters) = iters {
        spec.iters = iters;
    }
    let work = root.join("target/bench-train/mlx-lm");
    let reference = mlx_lm_reference(root, &venv, &spec, &work)?;
    println!(
        "\nLoRA training, {} fp32, rank {} (alpha {}), {} layers, batch {}, max_seq_length {}, lr {:e}, {} steps",
        reference::DEFAULT_MODEL,
        spec.rank,
        spec.alpha,
        spec.num_layers,
        spec.batch_size,
        spec.max_seq_length,
        spec.learning_rate,
        spec.iters
    );
    if reference_only {
        print_table(&[("mlx-lm 0.32.2", &reference)]);
        return Ok(());
    }
    let ours = ft_run(root, &ft, &spec, &root.join("target/bench-train/ft"))?;
    print_table(&[("mlx-lm 0.32.2", &reference), ("mlx-ft", &ours)]);
    println!(
        "\nmlx-ft / mlx-lm: {:.2}x tokens/s (target >= 1.5x), {:.2}x peak memory (target <= 1.0x), \
         final loss {:+.1}% (target within 10%)",
        ours.tokens_per_second / reference.tokens_per_second,
        ours.peak_memory_bytes as f64 / reference.peak_memory_bytes.max(1) as f64,
        100.0 * (ours.final_loss / reference.final_loss - 1.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_become_a_run_without_the_first_step() {
        let out = "\
noise
MLX_REF_VAL {\"iteration\": 0, \"val_loss\": 3.0, \"val_time\": 1.0}
MLX_REF_TRAIN {\"iteration\": 1, \"train_loss\": 2.5, \"learning_rate\": 0.0002, \"iterations_per_second\": 0.1, \"tokens_per_second\": 40.0, \"trained_tokens\": 400, \"peak_memory\": 1.5}
MLX_REF_TRAIN {\"iteration\": 2, \"train_loss\": 2.0, \"learning_rate\": 0.0002, \"iterations_per_second\": 0.25, \"tokens_per_second\": 100.0, \"trained_tokens\": 800, \"peak_memory\": 1.75}
MLX_REF_TRAIN {\"iteration\": 3, \"train_loss\": 1.0, \"learning_rate\": 0.0002, \"iterations_per_second\": 0.5, \"tokens_per_second\": 150.0, \"trained_tokens\": 1100, \"peak_memory\": 1.6}
MLX_REF_VAL {\"iteration\": 2, \"val_loss\": 1.25, \"val_time\": 1.0}
";
        let run = parse_reports(out).expect("parses");
        // (800 - 400 + 300) tokens over 4 s + 2 s.
        assert!((run.tokens_per_second - 700.0 / 6.0).abs() < 1e-9);
        assert_eq!(run.peak_memory_bytes, 1_750_000_000);
        assert!((run.final_loss - 5.5 / 3.0).abs() < 1e-12);
        assert_eq!(run.steps, 3);
        assert_eq!(run.validation_loss, Some(1.25));
    }

    #[test]
    fn yaml_sets_the_lora_scale_from_alpha_and_rank() {
        let spec = TrainSpec::standard("/m".into(), "/d".into());
        let yaml = spec.mlx_lm_yaml(Path::new("/a")).expect("yaml");
        assert!(yaml.contains("  rank: 8\n  scale: 2\n"), "{yaml}");
        assert!(yaml.contains("model: \"/m\"\n"), "{yaml}");
        assert!(yaml.contains("learning_rate: 2e-4\n"), "{yaml}");
    }
}
