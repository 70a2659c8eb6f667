//! `ft`: the mlx-ft command line.
//!
//! Turns the library crates' typed errors into one readable paragraph and an
//! exit code: 0 ok, 1 user error or failed check, 2 internal error.

mod bench;
mod config_cmd;
mod convert;
mod data;
mod doctor;
mod inspect;

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
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let outcome = match cli.command {
        Command::Doctor(args) => doctor::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::BenchGenerate(args) => bench::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Config(args) => config_cmd::run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
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

fn report(error: &anyhow::Error, verbose: u8) {
    if verbose > 0 {
        eprintln!("error: {error:?}");
    } else {
        eprintln!("error: {error}");
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
