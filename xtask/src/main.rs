//! Project automation for mlx-ft (the rust-analyzer xtask pattern).
//!
//! `cargo xtask setup` installs everything a fresh clone needs (system
//! packages, the MLX runtime, a fast BLAS, the patched mlx crates, the default
//! model) into git-ignored folders; `test` and `e2e` run it first, so the
//! README's two commands are all a new machine needs.

#![forbid(unsafe_code)]

mod bench_data;
mod bench_distributed;
mod bench_generate;
mod bench_train;
mod check_7b;
mod check_gguf;
mod cli;
mod coverage;
mod crash_test;
mod demo_data;
mod e2e;
mod fixtures;
mod fuzz;
mod install;
mod machine;
mod python;
mod reference;
mod setup;
mod shell;
mod soak;
mod sources;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use cli::{Bench, Cli, Command};
use std::path::{Path, PathBuf};

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        // `cargo xtask` alone: the usage, as `--help` prints it.
        Cli::command().print_help()?;
        return Ok(());
    };
    let root = repo_root();
    let setup = |root: &Path| setup::run(root, setup::Options::default());
    match command {
        Command::Setup(options) => setup::run(&root, options)?,
        Command::Test(args) => {
            setup(&root)?;
            test(&root, &args.extra)?;
        }
        Command::Coverage(args) => {
            setup(&root)?;
            coverage::run(&root, args.min_percent)?;
        }
        Command::E2e => {
            setup(&root)?;
            e2e::run(&root)?;
        }
        Command::Doctor(args) => {
            setup(&root)?;
            let mut cargo_args = vec![
                "run",
                "--quiet",
                "--release",
                "-p",
                "ft-cli",
                "--",
                "doctor",
            ];
            if args.json {
                cargo_args.push("--json");
            }
            shell::cargo(&root, &cargo_args)?;
        }
        Command::Venv => {
            setup(&root)?;
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
        Command::Bench { bench } => match bench {
            Bench::Data(options) => {
                setup(&root)?;
                bench_data::run(&root, options)?;
            }
            // These two run set-up themselves.
            Bench::Generate(options) => bench_generate::run(&root, options)?,
            Bench::Train(options) => bench_train::run(&root, options)?,
            Bench::Distributed(options) => {
                setup(&root)?;
                bench_distributed::run(&root, options)?
            }
        },
        Command::CrashTest(options) => {
            setup(&root)?;
            crash_test::run(&root, options)?;
        }
        Command::Check7b(options) => {
            setup(&root)?;
            check_7b::run(&root, options)?;
        }
        Command::CheckGguf(options) => {
            setup(&root)?;
            check_gguf::run(&root, options)?;
        }
        Command::Soak(options) => {
            setup(&root)?;
            soak::run(&root, options)?;
        }
        // Each fixture runs the set-up it needs.
        Command::Fixtures { fixture } => fixtures::run(&root, fixture)?,
        Command::Install(options) => {
            setup(&root)?;
            install::run(&root, options)?;
        }
        Command::Fuzz(options) => {
            setup(&root)?;
            fuzz::run(&root, options)?;
        }
        Command::DemoData(args) => demo_data::run(&root, args.check)?,
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
