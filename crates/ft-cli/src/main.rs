//! `ft`: the mlx-ft command line.
//!
//! Turns the library crates' typed errors into one readable paragraph and an
//! exit code: 0 ok, 1 user error or failed check, 2 internal error.

#![forbid(unsafe_code)]

mod bench;
mod common;
mod config_cmd;
mod convert;
mod data;
mod distributed;
mod doctor;
mod estimate;
mod eval;
mod fuse;
mod generate;
mod inspect;
mod plot;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// LoRA fine-tuning of instruction LLMs on MLX.
#[derive(Debug, Parser)]
#[command(name = "ft", version, about, propagate_version = true)]
struct Cli {
    /// More detail: the chain of causes of an error, debug logs (-vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fine-tune a model with LoRA from a configuration file.
    ///
    /// Example: `ft train --config configs/quickstart.toml --set training.steps=50`
    Train(train::Args),
    /// Generate text with a model and, optionally, an adapter (streamed).
    ///
    /// Example: `ft generate --adapter runs/quickstart/adapter --prompt "Extract ..."`
    Generate(generate::Args),
    /// Loss, perplexity and target-token count of a model (with an adapter) on a dataset.
    ///
    /// Example: `ft eval --adapter runs/quickstart/adapter --data examples/data/demo/valid.jsonl`
    Eval(eval::Args),
    /// Merge an adapter into its base model and save the result as a model directory.
    ///
    /// Example: `ft fuse --adapter runs/quickstart/adapter --out fused --dequantize`
    Fuse(fuse::FuseArgs),
    /// Predict peak training memory from a configuration, before loading any weight.
    ///
    /// Example: `ft estimate-memory --config configs/mistral-7b-instruct-v0.3-m4-24gb.toml`
    EstimateMemory(estimate::Args),
    /// Rewrite an adapter in mlx-lm or Hugging Face PEFT format.
    ///
    /// Example: `ft export --adapter runs/quickstart/adapter --format peft --out adapter-peft`
    Export(fuse::ExportArgs),
    /// Check the MLX runtime: version, device, BLAS, matmul speed, gradients.
    ///
    /// Example: `ft doctor --json`
    Doctor(doctor::Args),
    /// Load a model and describe it: architecture, parameters, quantization, a forward pass.
    ///
    /// Example: `ft inspect --model smollm2-135m-instruct`
    Inspect(inspect::Args),
    /// Write a model (GGUF, HF directory, built-in name) as an HF safetensors directory.
    ///
    /// Example: `ft convert --model smollm2-135m-instruct --out smollm2-f32 --dequantize`
    Convert(convert::Args),
    /// Greedy generation timings, one JSON line per run (for `cargo xtask bench generate`).
    #[command(hide = true)]
    BenchGenerate(bench::Args),
    /// Check, describe and render dataset files: located problems, token
    /// statistics, and what the model sees (ids, pieces, loss mask).
    ///
    /// Example: `ft data validate train.jsonl --model smollm2-135m-instruct`
    Data(data::Args),
    /// Start every rank of a data-parallel run on this machine (loopback).
    ///
    /// Example: `ft launch --ranks 2 -- train --config configs/quickstart.toml`
    Launch(distributed::LaunchArgs),
    /// Show the effective configuration with where each value came from, or
    /// the configuration reference.
    ///
    /// Example: `ft config show --config configs/quickstart.toml --set lora.rank=4`
    Config(config_cmd::Args),
}

/// How a command ended, beyond success.
#[derive(Debug)]
pub enum Failure {
    /// The user's input or environment is wrong (exit code 1).
    User(anyhow::Error),
    /// A bug or an unexpected failure inside mlx-ft (exit code 2).
    Internal(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout with 0; a usage mistake is a
            // user error (1), not clap's default 2, which means "internal" here.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let json_log = match &cli.command {
        Command::Train(args) => args.json_log_file(),
        _ => None,
    };
    init_logging(cli.verbose, json_log);
    // Metal: say where the kernels' library was looked for, before MLX fails
    // at its first GPU operation (`ft doctor` reports it as a check).
    let uses_gpu = !matches!(
        cli.command,
        Command::Data(_) | Command::Config(_) | Command::Doctor(_)
    );
    if uses_gpu {
        if let Err(error) = ft_model::runtime::check_metallib() {
            report(&anyhow::Error::new(error), cli.verbose);
            return ExitCode::from(1);
        }
    }
    let outcome = match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Fuse(args) => fuse::run_fuse(&args),
        Command::Export(args) => fuse::run_export(&args),
        Command::EstimateMemory(args) => estimate::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::BenchGenerate(args) => bench::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Launch(args) => distributed::launch(&args),
        Command::Config(args) => config_cmd::run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`ft data validate ... | head`):
        // stop quietly, like other Unix tools. (SIGPIPE itself stays ignored:
        // MLX's distributed backend must see EPIPE on a lost peer, not die.)
        Err(Failure::User(error) | Failure::Internal(error)) if is_broken_pipe(&error) => {
            ExitCode::SUCCESS
        }
        Err(Failure::User(error)) => {
            report(&error, cli.verbose);
            ExitCode::from(1)
        }
        Err(Failure::Internal(error)) => {
            report(&error, cli.verbose);
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn report(error: &anyhow::Error, verbose: u8) {
    if verbose > 0 {
        eprintln!("error: {error:?}");
    } else {
        eprintln!("error: {error}");
    }
}

/// Human-readable logs on stderr (warnings by default, `-v` debug, `FT_LOG`
/// overrides); with `json_file`, every event from `info` up also goes there
/// as JSON lines.
fn init_logging(verbose: u8, json_file: Option<std::path::PathBuf>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let json = json_file.and_then(|path| {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::sync::Mutex::new(file))
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            ),
            Err(error) => {
                eprintln!(
                    "warning: cannot open the JSON log {}: {error}",
                    path.display()
                );
                None
            }
        }
    });
    tracing_subscriber::registry()
        .with(terminal)
        .with(json)
        .init();
}
