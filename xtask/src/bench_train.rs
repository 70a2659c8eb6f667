//! `cargo xtask bench train`: LoRA training speed, memory and loss of
//! `ft train` against mlx-lm's `lora` trainer, on the same fp32 model, data
//! and settings.
//!
//! The mlx-lm side ([`mlx_lm_reference`]) writes a config YAML (so that
//! `lora_parameters` — rank, scale = alpha / rank, dropout — can be set) and
//! runs mlx-lm's own `lora` entry point in the reference venv through the
//! helper's `lora` subcommand, which prints each of mlx-lm's trainer reports
//! as a JSON line. Our side ([`ft_run`]) runs `ft train` with the same
//! settings and reads its `metrics.jsonl`. Every step is reported; the first
//! (warm-up) step is left out of the speed.
//!
//! One run per side swings by more than the margin over the target on a
//! shared machine, so the sides run interleaved for `--rounds` rounds (3 by
//! default), alternating which goes first; the summary is the median of the
//! per-round ratios with their min and max, and a warning where another
//! process competed for the CPU ([`crate::machine`]). `--reference-only`
//! runs the mlx-lm side alone.

use crate::machine::{self, RunUse};
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

/// Optimizer steps per run unless `--iters` says otherwise.
pub const DEFAULT_ITERS: usize = 20;
/// The two sides as the tables name them.
const REFERENCE_NAME: &str = "mlx-lm 0.32.2";
const OURS_NAME: &str = "mlx-ft";

/// Options of `cargo xtask bench train`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Run the mlx-lm side alone (no `ft train`)
    #[arg(long = "reference-only")]
    pub(crate) reference_only: bool,
    /// Optimizer steps per run (the first, warm-up step is not timed)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ITERS, value_parser = crate::cli::at_least(2))]
    pub(crate) iters: usize,
    /// Folder with train.jsonl and valid.jsonl (chat format)
    /// [default: examples/data/demo]
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Rounds, each running both sides once, one after the other, alternating
    /// which goes first; the summary is the median with min and max
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = crate::cli::at_least(1))]
    pub(crate) rounds: usize,
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
            iters: DEFAULT_ITERS,
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

/// One side's run in one round: its figures and what the machine did.
#[derive(Clone, Debug)]
struct Measured {
    run: TrainRun,
    usage: RunUse,
}

/// One round: both sides, one after the other (no `ours` with
/// `--reference-only`).
#[derive(Clone, Debug)]
struct Round {
    ours_first: bool,
    reference: Measured,
    ours: Option<Measured>,
}

/// The median and range of one figure over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Of the values that are numbers (NaN left out); `None` if none is.
    /// An even count's median is the mean of the middle two.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        values.sort_by(f64::total_cmp);
        let (min, max) = (*values.first()?, *values.last()?);
        let middle = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[middle]
        } else {
            (values[middle - 1] + values[middle]) / 2.0
        };
        Some(Self { median, min, max })
    }

    /// `median (min .., max ..)`, each value written by `write`.
    pub fn show(&self, write: impl Fn(f64) -> String) -> String {
        format!(
            "{} (min {}, max {})",
            write(self.median),
            write(self.min),
            write(self.max)
        )
    }
}

/// Ours against the reference over the rounds, from the per-round pairs:
/// ratios of tokens/s and of peak memory, relative differences of the final
/// training loss and of the validation loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    pub tokens_per_second: Spread,
    pub peak_memory: Spread,
    pub final_loss: Option<Spread>,
    pub validation_loss: Option<Spread>,
}

impl Comparison {
    /// From `(reference, ours)` pairs, one per round; `None` without any.
    pub fn of(pairs: &[(&TrainRun, &TrainRun)]) -> Option<Self> {
        Some(Self {
            tokens_per_second: Spread::of(
                pairs
                    .iter()
                    .map(|(theirs, ours)| ours.tokens_per_second / theirs.tokens_per_second),
            )?,
            peak_memory: Spread::of(pairs.iter().map(|(theirs, ours)| {
                ours.peak_memory_bytes as f64 / theirs.peak_memory_bytes.max(1) as f64
            }))?,
            final_loss: Spread::of(
                pairs
                    .iter()
                    .map(|(theirs, ours)| ours.final_loss / theirs.final_loss - 1.0),
            ),
            validation_loss: Spread::of(pairs.iter().filter_map(|(theirs, ours)| {
                Some(ours.validation_loss? / theirs.validation_loss? - 1.0)
            })),
        })
    }
}

/// Each figure's median over `runs` (the step count of the first run);
/// `None` without runs.
pub fn median_run(runs: &[&TrainRun]) -> Option<TrainRun> {
    let median =
        |pick: fn(&TrainRun) -> f64| Spread::of(runs.iter().map(|run| pick(run))).map(|s| s.median);
    Some(TrainRun {
        tokens_per_second: median(|run| run.tokens_per_second)?,
        peak_memory_bytes: median(|run| run.peak_memory_bytes as f64)? as u64,
        final_loss: median(|run| run.final_loss).unwrap_or(f64::NAN),
        steps: runs.first()?.steps,
        validation_loss: Spread::of(runs.iter().filter_map(|run| run.validation_loss))
            .map(|s| s.median),
    })
}

fn megabytes(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

fn loss(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |loss| format!("{loss:.3}"))
}

fn ratio(value: f64) -> String {
    format!("{value:.2}x")
}

fn percent(value: f64) -> String {
    format!("{:+.1}%", 100.0 * value)
}

fn table_row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}

/// Every run of every round, in the order the rounds ran.
fn print_rounds(rounds: &[Round]) {
    println!(
        "| round | trainer | ran | trained tokens/s | peak memory | final train loss | val loss \
         | steps | wall | CPU cores ours / others |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (index, round) in rounds.iter().enumerate() {
        let mut sides = vec![(REFERENCE_NAME, &round.reference, !round.ours_first)];
        if let Some(ours) = &round.ours {
            sides.push((OURS_NAME, ours, round.ours_first));
        }
        for (name, side, first) in sides {
            let cpu = side.usage.cpu.map_or_else(
                || "-".to_string(),
                |cpu| format!("{:.2} / {:.2} of {}", cpu.ours, cpu.others, cpu.cpus),
            );
            table_row(&[
                (index + 1).to_string(),
                name.to_string(),
                if first { "1st" } else { "2nd" }.to_string(),
                format!("{:.1}", side.run.tokens_per_second),
                megabytes(side.run.peak_memory_bytes),
                format!("{:.3}", side.run.final_loss),
                loss(side.run.validation_loss),
                side.run.steps.to_string(),
                format!("{:.0} s", side.usage.wall_seconds),
                cpu,
            ]);
        }
    }
}

/// Each side's medians; ours with the median of the per-round ratios.
fn print_medians(reference: &TrainRun, ours: Option<(&TrainRun, &Comparison)>) {
    println!("| trainer | trained tokens/s | peak memory | final train loss | val loss | steps |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut rows = vec![(REFERENCE_NAME, reference, None)];
    if let Some((run, comparison)) = ours {
        rows.push((OURS_NAME, run, Some(comparison)));
    }
    for (name, run, comparison) in rows {
        let with_ratio = |text: String, spread: Option<Spread>| match spread {
            Some(spread) => format!("{text} ({})", ratio(spread.median)),
            None => text,
        };
        table_row(&[
            name.to_string(),
            with_ratio(
                format!("{:.1}", run.tokens_per_second),
                comparison.map(|c| c.tokens_per_second),
            ),
            with_ratio(
                megabytes(run.peak_memory_bytes),
                comparison.map(|c| c.peak_memory),
            ),
            format!("{:.3}", run.final_loss),
            loss(run.validation_loss),
            run.steps.to_string(),
        ]);
    }
}

/// Runs the benchmark: `--rounds` interleaved rounds, then the table of
/// every run, the medians, the ratios' medians with min and max, and
/// whether the machine was quiet.
pub fn run(root: &Path, options: Options) -> Result<()> {
    setup::run(root, setup::Options::default())?;
    let venv = python::reference_venv(root)?;
    let ft = reference::build_ft(root)?;
    let model = reference::f32_default_model(root, &ft)?;
    let data_dir = options.data.clone().unwrap_or_else(|| root.join(DEMO_DATA));
    for file in ["train.jsonl", "valid.jsonl"] {
        if !data_dir.join(file).is_file() {
            bail!(
                "{} has no {file}: mlx-lm wants train.jsonl and valid.jsonl in one folder",
                data_dir.display()
            );
        }
    }
    let mut spec = TrainSpec::standard(model, data_dir);
    spec.iters = options.iters;

    let cores = machine::cores();
    let load_at_start = shell::load_average().ok();
    let mut rounds: Vec<Round> = Vec::with_capacity(options.rounds);
    for number in 1..=options.rounds {
        // Odd rounds start with ours, even rounds with mlx-lm: a machine
        // that warms up or slows down over time favours neither side.
        let ours_first = !options.reference_only && number % 2 == 1;
        shell::step(&format!(
            "round {number}/{}: {} first",
            options.rounds,
            if ours_first {
                OURS_NAME
            } else {
                REFERENCE_NAME
            }
        ));
        let dir = root.join(format!("target/bench-train/round-{number}"));
        let reference_side = || -> Result<Measured> {
            let (run, usage) =
                machine::measure(|| mlx_lm_reference(root, &venv, &spec, &dir.join("mlx-lm")))?;
            Ok(Measured { run, usage })
        };
        let ours_side = || -> Result<Measured> {
            let (run, usage) = machine::measure(|| ft_run(root, &ft, &spec, &dir.join("ft")))?;
            Ok(Measured { run, usage })
        };
        let round = if options.reference_only {
            Round {
                ours_first,
                reference: reference_side()?,
                ours: None,
            }
        } else if ours_first {
            let ours = ours_side()?;
            Round {
                ours_first,
                reference: reference_side()?,
                ours: Some(ours),
            }
        } else {
            let reference = reference_side()?;
            Round {
                ours_first,
                reference,
                ours: Some(ours_side()?),
            }
        };
        let mut line = format!(
            "round {number}: {REFERENCE_NAME} {:.1} tokens/s",
            round.reference.run.tokens_per_second
        );
        if let Some(ours) = &round.ours {
            line += &format!(
                ", {OURS_NAME} {:.1} tokens/s ({})",
                ours.run.tokens_per_second,
                ratio(ours.run.tokens_per_second / round.reference.run.tokens_per_second)
            );
        }
        eprintln!("{line}");
        rounds.push(round);
    }
    let load_at_end = shell::load_average().ok();

    println!(
        "\nLoRA training, {} fp32, rank {} (alpha {}), {} layers, batch {}, max_seq_length {}, \
         lr {:e}, {} steps; {} round(s), {}",
        reference::DEFAULT_MODEL,
        spec.rank,
        spec.alpha,
        spec.num_layers,
        spec.batch_size,
        spec.max_seq_length,
        spec.learning_rate,
        spec.iters,
        rounds.len(),
        if options.reference_only {
            "mlx-lm only"
        } else {
            "interleaved: odd rounds mlx-ft first, even rounds mlx-lm first"
        }
    );
    print_rounds(&rounds);

    let references: Vec<&TrainRun> = rounds.iter().map(|r| &r.reference.run).collect();
    let ours: Vec<&TrainRun> = rounds
        .iter()
        .filter_map(|r| r.ours.as_ref().map(|m| &m.run))
        .collect();
    let pairs: Vec<(&TrainRun, &TrainRun)> = rounds
        .iter()
        .filter_map(|r| r.ours.as_ref().map(|m| (&r.reference.run, &m.run)))
        .collect();
    let comparison = Comparison::of(&pairs);
    let reference_median = median_run(&references).context("no round ran")?;
    let ours_median = median_run(&ours);
    println!(
        "\nmedian of {} round(s){}:",
        rounds.len(),
        if comparison.is_some() {
            " (ratios: the median of the per-round ratios)"
        } else {
            ""
        }
    );
    print_medians(
        &reference_median,
        ours_median.as_ref().zip(comparison.as_ref()),
    );
    if let Some(comparison) = &comparison {
        println!(
            "\n{OURS_NAME} / {REFERENCE_NAME}, median of {} interleaved round(s):",
            pairs.len()
        );
        println!(
            "  trained tokens/s  {}  target >= 1.5x",
            comparison.tokens_per_second.show(ratio)
        );
        println!(
            "  peak memory       {}  target <= 1.0x",
            comparison.peak_memory.show(ratio)
        );
        // The training losses cover different tokens (mlx-lm's mask also
        // takes the newline after the end-of-turn token), so the learning
        // per step is compared on the validation loss.
        if let Some(spread) = comparison.final_loss {
            println!(
                "  final train loss  {}  (masks differ: not comparable, docs/benchmarks.md)",
                spread.show(percent)
            );
        }
        if let Some(spread) = comparison.validation_loss {
            println!(
                "  val loss          {}  target: at most 10% above",
                spread.show(percent)
            );
        }
        if pairs.len() < 3 {
            println!("  (fewer than 3 rounds: the min and max say little about the spread)");
        }
    }

    let show_load =
        |load: Option<f64>| load.map_or_else(|| "?".to_string(), |load| format!("{load:.2}"));
    let runs: Vec<(String, RunUse)> = rounds
        .iter()
        .enumerate()
        .flat_map(|(index, round)| {
            let reference = (
                format!("round {} {REFERENCE_NAME}", index + 1),
                round.reference.usage,
            );
            let ours = round
                .ours
                .as_ref()
                .map(|ours| (format!("round {} {OURS_NAME}", index + 1), ours.usage));
            std::iter::once(reference).chain(ours)
        })
        .collect();
    let others = runs
        .iter()
        .filter_map(|(_, run)| run.cpu.map(|cpu| cpu.others))
        .max_by(f64::total_cmp);
    println!(
        "\nmachine: {cores} cores; 1-minute load average {} at the start, {} at the end; {}",
        show_load(load_at_start),
        show_load(load_at_end),
        match others {
            Some(others) =>
                format!("other processes kept at most {others:.2} cores busy during a run"),
            None => "CPU accounting not available here (no /proc): load average only".to_string(),
        }
    );
    let warnings = machine::busy_warnings(load_at_start, cores, &runs);
    if warnings.is_empty() {
        println!("the machine was quiet during the runs");
    } else {
        println!(
            "WARNING: the machine was busy; these figures are not a quiet machine's \
             (rerun when nothing else runs):"
        );
        for warning in &warnings {
            println!("WARNING:   {warning}");
        }
    }
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

    fn train_run(tokens_per_second: f64, peak_mb: u64, final_loss: f64) -> TrainRun {
        TrainRun {
            tokens_per_second,
            peak_memory_bytes: peak_mb * 1_000_000,
            final_loss,
            steps: 20,
            validation_loss: Some(final_loss / 2.0),
        }
    }

    #[test]
    fn spread_is_the_median_with_min_and_max() {
        let odd = Spread::of([1.45, 1.55, 1.25]).expect("values");
        assert_eq!(
            odd,
            Spread {
                median: 1.45,
                min: 1.25,
                max: 1.55
            }
        );
        let even = Spread::of([4.0, 1.0, 3.0, 2.0]).expect("values");
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        let one = Spread::of([0.78]).expect("a value");
        assert_eq!((one.median, one.min, one.max), (0.78, 0.78, 0.78));
        assert_eq!(Spread::of([f64::NAN, 2.0]).map(|s| s.median), Some(2.0));
        assert_eq!(Spread::of(Vec::new()), None);
        assert_eq!(Spread::of([f64::NAN]), None);
        assert_eq!(odd.show(ratio), "1.45x (min 1.25x, max 1.55x)");
        let change = Spread::of([-0.05, 0.012]).expect("values");
        assert_eq!(change.show(percent), "-1.9% (min -5.0%, max +1.2%)");
    }

    #[test]
    fn comparison_takes_the_median_of_the_per_round_ratios() {
        // Three rounds of the issue: 1.55x, then 1.45x and 1.25x.
        let theirs = [
            train_run(32.0, 1200, 0.40),
            train_run(30.0, 1180, 0.40),
            train_run(40.0, 1190, 0.40),
        ];
        let ours = [
            train_run(49.6, 900, 0.42),
            train_run(43.5, 944, 0.42),
            train_run(50.0, 952, 0.42),
        ];
        let pairs: Vec<(&TrainRun, &TrainRun)> = theirs.iter().zip(&ours).collect();
        let comparison = Comparison::of(&pairs).expect("rounds");
        let tokens = comparison.tokens_per_second;
        assert!((tokens.median - 1.45).abs() < 1e-12, "{tokens:?}");
        assert!((tokens.min - 1.25).abs() < 1e-12, "{tokens:?}");
        assert!((tokens.max - 1.55).abs() < 1e-12, "{tokens:?}");
        let memory = comparison.peak_memory;
        assert!((memory.min - 0.75).abs() < 1e-12 && (memory.max - 0.8).abs() < 1e-12);
        let loss = comparison.final_loss.expect("losses");
        assert!((loss.median - 0.05).abs() < 1e-12, "{loss:?}");
        assert!(comparison.validation_loss.is_some());
        assert_eq!(Comparison::of(&[]), None);
        // A round without a validation loss leaves it out of that figure.
        let no_val = TrainRun {
            validation_loss: None,
            ..theirs[0].clone()
        };
        let comparison = Comparison::of(&[(&no_val, &ours[0])]).expect("a round");
        assert_eq!(comparison.validation_loss, None);
    }

    #[test]
    fn median_run_takes_each_figure_apart() {
        let runs = [
            train_run(30.0, 1000, 0.3),
            train_run(50.0, 900, 0.1),
            train_run(40.0, 1100, 0.2),
        ];
        let refs: Vec<&TrainRun> = runs.iter().collect();
        let median = median_run(&refs).expect("runs");
        assert_eq!(median.tokens_per_second, 40.0);
        assert_eq!(median.peak_memory_bytes, 1_000_000_000);
        assert_eq!(median.final_loss, 0.2);
        assert_eq!(median.validation_loss, Some(0.1));
        assert_eq!(median.steps, 20);
        assert_eq!(median_run(&[]), None);
    }

    #[test]
    fn tables_print_for_both_sides_and_for_the_reference_alone() {
        let usage = |cpu| RunUse {
            wall_seconds: 90.0,
            cpu,
        };
        let measured = |run: TrainRun, cpu| Measured {
            run,
            usage: usage(cpu),
        };
        let cpu = machine::CpuUse {
            ours: 1.9,
            others: 0.02,
            cpus: 2,
        };
        let rounds = [
            Round {
                ours_first: true,
                reference: measured(train_run(33.3, 1181, 0.37), Some(cpu)),
                ours: Some(measured(train_run(50.4, 921, 0.12), None)),
            },
            Round {
                ours_first: false,
                reference: measured(train_run(30.0, 1181, 0.37), None),
                ours: None,
            },
        ];
        print_rounds(&rounds);
        let reference = train_run(33.3, 1181, 0.37);
        let ours = train_run(50.4, 921, 0.12);
        let comparison = Comparison::of(&[(&reference, &ours)]).expect("a round");
        print_medians(&reference, Some((&ours, &comparison)));
        print_medians(&reference, None);
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
