//! Project automation for mlx-ft (the rust-analyzer xtask pattern).
//!
//! `cargo xtask setup` installs everything a fresh clone needs (system
//! packages, the MLX runtime, a fast BLAS, the patched mlx crates, the default
//! model) into git-ignored folders; `test` and `e2e` run it first, so the
//! README's two commands are all a new machine needs.

mod bench_data;
mod bench_distributed;
mod bench_generate;
mod bench_train;
mod check_7b;
mod check_gguf;
mod crash_test;
mod demo_data;
mod e2e;
mod fixtures;
mod fuzz;
mod install;
mod python;
mod reference;
mod setup;
mod shell;
mod soak;
mod sources;

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup [--backend cpu|cuda12|cuda13]   install prerequisites, MLX runtime, BLAS, patched crates, default model
  test                                  setup, then fmt --check, clippy -D warnings and the whole test suite
  e2e                                   setup, then the main job: validate the demo data, measure the base
                                        model, train (configs/quickstart.toml), measure again, fuse, check
  doctor [--json]                       setup, then `ft doctor`
  bench data [--lines N] [--budget-s S] setup, then `ft data validate` on a clean 100k-line chat file: lines/s, tokens/s
  bench generate [--max-tokens N] [--rounds N] [--repeats N]
                                        greedy generation tokens/s, ft-model vs mlx_lm on the same fp32 model
  bench train --reference-only [--iters N] [--data DIR]
                                        LoRA training tokens/s, peak memory, loss of mlx-lm on the demo data
  bench distributed [--steps N]         training tokens/s in one process vs 2 data-parallel ranks on loopback
  check-gguf [--prompt TEXT] [--tokens N] [--train]
                                        setup, then `ft fuse --format gguf` (float32, float16) of a trained adapter
                                        (reused, or 10 quickstart steps into target/check-gguf; --train: always new),
                                        llama.cpp (llama-cpp-python, built once into .ft/venv-llama-cpp) vs
                                        `ft generate` greedy on the same file: at least 16 leading tokens equal
  check-7b [--lengths 64,128] [--steps N] [--rows bf16,qlora,prequantized] [--native-baseline]
                                        setup, then Mistral-7B-Instruct-v0.3 at full size (random weights, Mistral's
                                        own tokenizer from mistral-common): train each preset, resume, fuse, generate;
                                        a table of load time, s/step, MLX and RSS peaks, estimates (by hand, ~50 GB disk)
  fuzz [--seconds N] [--target NAME] [--cases N]
                                        setup, then the fuzz targets (JSONL reader/validator, chat templates,
                                        config parsing) for N seconds in all (default 300): executions per
                                        target, failures with their shrunk inputs
  fixtures chat-template                setup and the reference venv, then the chat-template parity fixture (transformers)
  fixtures logits                       setup and the reference venv, then the mlx_lm logits parity fixture (ft-model)
  fixtures mlx-lm-adapters              setup and the reference venv, then adapters trained by mlx_lm lora with its logits (ft-lora)
  demo-data [--check]                   write (or check) the demo data set examples/data/demo/{train,valid}.jsonl
  crash-test [--trials N] [--seed S] [--model M] [--ft PATH]
                                        setup, then `ft train` killed (SIGKILL) at random moments and inside
                                        checkpoint writes (default 20 trials), resumed, final adapters compared
                                        with an uninterrupted run's; SIGTERM/SIGINT; a tmpfs that fills up
  soak [--minutes M] [--sample-s S]     setup, then a long training run (default 120 min, by hand) sampling
                                        resident and MLX memory; prints the slope after the first evaluation
  venv                                  setup, then the mlx-lm reference venv (.ft/venv-mlx, same OpenBLAS)
  install [--dir DIR]                   setup, build, then put `ft` in DIR (default ~/.local/bin); on macOS
                                        with MLX's Metal kernels (mlx.metallib) next to it

The MLX backend on Linux can also be chosen with FT_MLX_BACKEND=cpu|cuda12|cuda13;
the choice is remembered in .ft/backend.";

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    let root = repo_root();
    match command.as_str() {
        "setup" => {
            setup::run(&root, setup::Options::parse(rest)?)?;
        }
        "test" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            test(&root, rest)?;
        }
        "e2e" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            e2e::run(&root)?;
        }
        "doctor" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            let mut args = vec![
                "run",
                "--quiet",
                "--release",
                "-p",
                "ft-cli",
                "--",
                "doctor",
            ];
            args.extend(rest.iter().map(String::as_str));
            shell::cargo(&root, &args)?;
        }
        "venv" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            let venv = python::reference_venv(&root)?;
            let check = python::blas_check(&root, &venv)?;
            println!(
                "{}: MLX {}, fp32 1024^3 matmul {:.0} GFLOP/s, OpenBLAS: {}",
                venv.display(),
                check.mlx_version,
                check.gflops,
                check.openblas
            );
        }
        "bench" => match rest.first().map(String::as_str) {
            Some("data") => {
                setup::run(&root, setup::Options::parse(&[])?)?;
                bench_data::run(&root, &rest[1..])?;
            }
            Some("generate") => bench_generate::run(&root, &rest[1..])?,
            Some("train") => bench_train::run(&root, &rest[1..])?,
            Some("distributed") => {
                setup::run(&root, setup::Options::parse(&[])?)?;
                bench_distributed::run(&root, &rest[1..])?
            }
            _ => bail!(
                "usage: cargo xtask bench data|generate|train|distributed [options]\n\n{USAGE}"
            ),
        },
        "crash-test" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            crash_test::run(&root, rest)?;
        }
        "check-7b" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            check_7b::run(&root, rest)?;
        }
        "check-gguf" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            check_gguf::run(&root, rest)?;
        }
        "soak" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            soak::run(&root, rest)?;
        }
        "fixtures" => fixtures::run(&root, rest)?,
        "install" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            install::run(&root, rest)?;
        }
        "fuzz" => {
            setup::run(&root, setup::Options::parse(&[])?)?;
            fuzz::run(&root, rest)?;
        }
        "demo-data" => demo_data::run(&root, rest)?,
        "help" | "-h" | "--help" => println!("{USAGE}"),
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
    Ok(())
}

/// The repository root: xtask lives in `<root>/xtask`.
fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// Formatting, lints and every test of the workspace.
fn test(root: &Path, extra: &[String]) -> Result<()> {
    shell::step("cargo fmt --check");
    shell::cargo(root, &["fmt", "--all", "--check"])?;
    shell::cargo(
        root,
        &["fmt", "--manifest-path", "xtask/Cargo.toml", "--check"],
    )?;
    // xtask's own unit tests (set-up checks, parsers): a separate workspace.
    shell::step("cargo test --manifest-path xtask/Cargo.toml");
    shell::cargo(
        root,
        &["test", "--quiet", "--manifest-path", "xtask/Cargo.toml"],
    )?;
    shell::step("cargo clippy --workspace --all-targets -- -D warnings");
    shell::cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The criterion benchmarks (`cargo bench`) must keep compiling.
    shell::step("cargo bench --workspace --no-run");
    shell::cargo(root, &["bench", "--workspace", "--no-run", "--quiet"])?;
    // MLX is not thread-safe: nextest gives every test its own process.
    let mut args: Vec<&str> = if shell::has_nextest() {
        shell::step("cargo nextest run --workspace");
        vec!["nextest", "run", "--workspace", "--no-fail-fast"]
    } else {
        shell::step("cargo test --workspace -- --test-threads=1");
        vec!["test", "--workspace", "--no-fail-fast"]
    };
    args.extend(extra.iter().map(String::as_str));
    if !shell::has_nextest() {
        args.extend(["--", "--test-threads=1"]);
    }
    // Tests that miss a prerequisite (outside CI) record it here
    // (ft_model::testing::prerequisite); the test harness counts them as
    // passed, so they are listed as skipped after it.
    let skip_log = root.join("target/ft-skipped-tests.log");
    let _ = std::fs::remove_file(&skip_log);
    std::env::set_var("FT_SKIP_LOG", &skip_log);
    let result = shell::cargo(root, &args);
    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skipped: Vec<&str> = skipped.lines().filter(|l| !l.is_empty()).collect();
    if skipped.is_empty() {
        println!("skipped for a missing prerequisite: none");
    } else {
        println!(
            "SKIPPED, not passed: {} test(s) missed a prerequisite (the summary above counts them as passed):",
            skipped.len()
        );
        for line in &skipped {
            println!("  {}", line.replace('\t', ": "));
        }
    }
    result
}
