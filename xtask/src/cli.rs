//! The command line of `cargo xtask`: every command and option, declared
//! once with clap's derive. `cargo xtask` (or `--help`, `help <command>`)
//! prints the usage generated from it; README.md and docs/ quote it, and a
//! test parses every `cargo xtask ...` they show.

use crate::{
    bench_data, bench_distributed, bench_generate, bench_train, check_7b, check_gguf, crash_test,
    fixtures, fuzz, install, setup, soak,
};
use clap::{Args, Parser, Subcommand};

/// Project automation for mlx-ft: set-up, tests, end-to-end demo, benchmarks.
#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    after_help = "The MLX backend on Linux can also be chosen with \
                  FT_MLX_BACKEND=cpu|cuda12|cuda13; the choice is remembered in .ft/backend."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install prerequisites, MLX runtime, BLAS, patched crates, default model
    ///
    /// Idempotent and cached under the git-ignored .ft/ folder. Linux: system
    /// packages (cmake, libclang, a C++ compiler, binutils, pip), the MLX
    /// runtime wheel, OpenBLAS behind it, the patched mlx crates, the default
    /// model. macOS: the upstream mlx crates (Metal) and the default model.
    Setup(setup::Options),
    /// Setup, then fmt --check, clippy -D warnings and the whole test suite
    ///
    /// Also xtask's own tests and `cargo bench --no-run`. Tests that miss a
    /// prerequisite are listed as skipped at the end.
    Test(TestArgs),
    /// Setup, then the main job: validate the demo data, measure the base
    /// model, train (configs/quickstart.toml), measure again, fuse, check
    E2e,
    /// Setup, then `ft doctor`
    Doctor(DoctorArgs),
    /// Benchmarks against mlx-lm / mlx_lm and budgets (docs/benchmarks.md)
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// Setup, then `ft fuse --format gguf` of a trained adapter, llama.cpp vs
    /// `ft generate` on the same file
    ///
    /// Fuses a trained adapter (reused, or 10 quickstart steps into
    /// target/check-gguf; --train: always new) into float32 and float16 GGUF
    /// files, and compares llama.cpp's greedy continuation (llama-cpp-python,
    /// built once into .ft/venv-llama-cpp) with `ft generate`'s on the same
    /// file: at least 16 leading tokens must be equal.
    #[command(name = "check-gguf")]
    CheckGguf(check_gguf::Options),
    /// Setup, then Mistral-7B-Instruct-v0.3 at full size: train each preset,
    /// resume, fuse, generate (by hand, ~50 GB disk)
    ///
    /// Random weights with the model's exact config.json, Mistral's own
    /// tokenizer from mistral-common. A table of load time, s/step, MLX and
    /// RSS peaks and `ft estimate-memory`'s estimates, under target/check-7b.
    #[command(name = "check-7b")]
    Check7b(check_7b::Options),
    /// Setup, then the fuzz targets (JSONL reader/validator, chat templates,
    /// config parsing) for N seconds in all
    ///
    /// Prints executions per target and failures with their shrunk inputs.
    Fuzz(fuzz::Options),
    /// Regenerate a committed test fixture from its reference implementation
    Fixtures {
        #[command(subcommand)]
        fixture: fixtures::Fixture,
    },
    /// Write (or check) the demo data set examples/data/demo/{train,valid}.jsonl
    #[command(name = "demo-data")]
    DemoData(DemoDataArgs),
    /// Setup, then `ft train` killed at random moments, resumed, and compared
    /// with an uninterrupted run
    ///
    /// SIGKILL at random moments and inside checkpoint writes (default 20
    /// trials); each run is resumed and its final adapter compared with an
    /// uninterrupted run's. Then SIGTERM/SIGINT, and a tmpfs that fills up.
    /// Everything goes under target/crash-test.
    #[command(name = "crash-test")]
    CrashTest(crash_test::Options),
    /// Setup, then a long training run (by hand) sampling resident and MLX
    /// memory; prints the slope after the first evaluation
    Soak(soak::Options),
    /// Setup, then the mlx-lm reference venv (.ft/venv-mlx, same OpenBLAS)
    Venv,
    /// Setup, build, then put `ft` in DIR (default ~/.local/bin)
    ///
    /// On macOS with MLX's Metal kernels (mlx.metallib) next to it; on Linux
    /// a small script that runs this checkout's binary.
    Install(install::Options),
    /// Setup, then the test suite under coverage (cargo-llvm-cov, installed
    /// if missing): one line per library crate and an HTML report
    ///
    /// Counts the lines of each library crate's src/ that ran, without test
    /// modules and test-only files; the report goes to
    /// target/coverage/html/html/index.html. Fails when a crate is under
    /// --min-percent or a test failed.
    Coverage(CoverageArgs),
}

/// Options of `cargo xtask coverage`.
#[derive(Debug, Args)]
pub struct CoverageArgs {
    /// The least share of lines each library crate must reach, in percent
    #[arg(long, default_value_t = 80.0, value_parser = percent)]
    pub min_percent: f64,
}

fn percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("expected a number of percent, got {text:?}"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 0 and 100, got {value}"))
    }
}

/// `cargo xtask bench <name>`.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Setup, then `ft data validate` on a clean 100k-line chat file:
    /// lines/s, tokens/s
    Data(bench_data::Options),
    /// Greedy generation tokens/s, ft-model vs mlx_lm on the same fp32 model
    ///
    /// Each round runs both sides as separate processes, alternating which
    /// goes first; medians and best runs with ratios ours/mlx_lm.
    Generate(bench_generate::Options),
    /// LoRA training tokens/s, peak memory and loss, `ft train` vs mlx-lm on
    /// the demo data: median (min-max) of interleaved rounds
    ///
    /// Each round runs both sides once, one after the other, alternating which
    /// goes first; the summary gives the median of the per-round ratios with
    /// their min-max, and warns when other processes competed for the CPU
    /// (load average, CPU time of other processes during each run).
    Train(bench_train::Options),
    /// Training tokens/s in one process vs 2 data-parallel ranks on loopback
    Distributed(bench_distributed::Options),
}

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo nextest run --workspace` (or `cargo test
    /// --workspace`), e.g. `-p ft-data`
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub extra: Vec<String>,
}

/// Options of `cargo xtask doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Options of `cargo xtask demo-data`.
#[derive(Debug, Args)]
pub struct DemoDataArgs {
    /// Regenerate in memory and fail where the committed files differ
    #[arg(long)]
    pub check: bool,
}

/// A whole-number option with a lower bound: `value_parser = at_least(1)`.
pub fn at_least(
    min: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let value: usize = text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a whole number"))?;
        if value < min {
            Err(format!("must be at least {min}"))
        } else {
            Ok(value)
        }
    }
}

/// A number of seconds above zero.
pub fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(seconds),
        Ok(_) => Err("must be a number of seconds above 0".to_string()),
        Err(_) => Err(format!("`{text}` is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo-xtask").chain(line.split_whitespace()))
    }

    fn parses(line: &str) -> Cli {
        parse(line).unwrap_or_else(|error| panic!("`cargo xtask {line}`: {error}"))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_parses() {
        let lines = [
            "",
            "setup",
            "setup --backend cpu",
            "setup --backend cuda12",
            "setup --backend cuda-13",
            "test",
            "test -p ft-data --no-fail-fast",
            "e2e",
            "doctor",
            "doctor --json",
            "bench data",
            "bench data --lines 1000 --budget-s 12.5",
            "bench generate --max-tokens 64 --rounds 2 --repeats 1",
            "bench train",
            "bench train --reference-only --iters 10 --data examples/data/demo --rounds 5",
            "bench distributed --steps 6",
            "check-gguf --prompt Hello --tokens 32 --train",
            "check-7b --lengths 64,128,256 --steps 1 --rows bf16,qlora --native-baseline",
            "check-7b --no-finish --layers 4",
            "fuzz --seconds 60 --target template --cases 100",
            "fixtures chat-template",
            "fixtures logits",
            "fixtures mlx-lm-adapters",
            "demo-data",
            "demo-data --check",
            "crash-test --trials 3 --seed 7 --model tiny --ft target/release/ft",
            "soak --minutes 1.5 --sample-s 5",
            "venv",
            "install",
            "install --dir /tmp/bin",
            "coverage",
            "coverage --min-percent 75.5",
        ];
        for line in lines {
            parses(line);
        }
    }

    #[test]
    fn options_get_their_values_and_defaults() {
        let Some(Command::Setup(options)) = parses("setup --backend cuda-12").command else {
            panic!("setup");
        };
        assert_eq!(options.backend, Some(setup::Backend::Cuda12));
        let Some(Command::Test(test)) = parses("test -p ft-data -E all()").command else {
            panic!("test");
        };
        assert_eq!(test.extra, ["-p", "ft-data", "-E", "all()"]);
        let Some(Command::Bench {
            bench: Bench::Train(train),
        }) = parses("bench train").command
        else {
            panic!("bench train");
        };
        assert_eq!(
            (train.rounds, train.iters, train.reference_only, train.data),
            (3, 20, false, None)
        );
        let rendered = format!("{:?}", parses("check-7b --lengths 32,48").command);
        assert!(rendered.contains("lengths: [32, 48]"), "{rendered}");
        assert!(
            rendered.contains("\"bf16\", \"qlora\", \"prequantized\""),
            "{rendered}"
        );
        assert!(rendered.contains("finish: true"), "{rendered}");
        let rendered = format!("{:?}", parses("check-7b --no-finish").command);
        assert!(rendered.contains("finish: false"), "{rendered}");
        assert!(parses("").command.is_none());
    }

    #[test]
    fn bad_command_lines_fail() {
        let bad = [
            "nonsense",
            "setup --backend metal",
            "setup extra",
            "bench",
            "bench nonsense",
            "bench data --lines 0",
            "bench data --lines many",
            "bench generate --max-tokens 1",
            "bench generate --rounds 0",
            "bench train --rounds 0",
            "bench train --iters",
            "bench train --unknown",
            "check-gguf --tokens 8",
            "check-7b --rows bf16,fp8",
            "check-7b --lengths 64,x",
            "fuzz --seconds 0",
            "fuzz --seconds -3",
            "fixtures",
            "fixtures other",
            "demo-data --check extra",
            "doctor --table",
            "install --dir",
            "venv now",
            "coverage --min-percent 101",
            "coverage --min-percent lots",
        ];
        for line in bad {
            assert!(parse(line).is_err(), "`cargo xtask {line}` parsed");
        }
        let error = parse("bench train --rounds 0")
            .expect_err("rounds 0")
            .to_string();
        assert!(
            error.contains("--rounds") && error.contains("at least 1"),
            "{error}"
        );
    }

    #[test]
    fn help_lists_every_command() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("Usage: cargo xtask"), "{help}");
        for command in Cli::command().get_subcommands() {
            assert!(help.contains(command.get_name()), "{help}");
        }
        let mut cli = Cli::command();
        let train = cli
            .find_subcommand_mut("bench")
            .and_then(|bench| bench.find_subcommand_mut("train"))
            .expect("bench train")
            .render_long_help()
            .to_string();
        for option in [
            "--rounds",
            "--iters",
            "--data",
            "--reference-only",
            "[default: 3]",
        ] {
            assert!(train.contains(option), "{train}");
        }
    }

    /// Every `cargo xtask ...` that README.md and docs/*.md show, with its
    /// alternatives (`a|b`) and optional parts (`[--x N]`) expanded and
    /// placeholders filled in, must parse: the docs quote the real usage.
    #[test]
    fn commands_quoted_in_the_docs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits in the repository root");
        let mut files = vec![root.join("README.md")];
        let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
            .expect("docs/")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
        let mut checked = 0;
        let mut failures = String::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("readable");
            for quoted in quoted_commands(&text) {
                for line in expand(&quoted) {
                    checked += 1;
                    // `--help` parses: clap answers it with the usage.
                    let result = parse(&line).map(drop).or_else(|error| match error.kind() {
                        clap::error::ErrorKind::DisplayHelp => Ok(()),
                        _ => Err(error),
                    });
                    if let Err(error) = result {
                        let error = error.to_string();
                        let first = error.lines().next().unwrap_or_default();
                        failures.push_str(&format!(
                            "  {}: `cargo xtask {line}`: {first}\n",
                            file.strip_prefix(root).unwrap_or(file).display()
                        ));
                    }
                }
            }
        }
        assert!(checked > 20, "only {checked} quoted commands found");
        assert!(
            failures.is_empty(),
            "docs quote commands that do not parse:\n{failures}"
        );
    }

    /// The text after `cargo xtask` of every quoted command: inline code
    /// (which may wrap over lines) and lines of code blocks, comments cut.
    fn quoted_commands(text: &str) -> Vec<String> {
        const START: &str = "cargo xtask";
        let mut out = Vec::new();
        let mut in_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
            } else if in_block {
                if let Some(rest) = line.trim_start().strip_prefix(START) {
                    out.push(
                        rest.split('#')
                            .next()
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    );
                }
            }
        }
        // Inline code: between a backtick and the next one, outside blocks.
        let mut outside = String::new();
        let mut in_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
            } else if !in_block {
                outside.push_str(line);
                outside.push('\n');
            }
        }
        for (index, span) in outside.split('`').enumerate() {
            let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
            if index % 2 == 1 {
                if let Some(rest) = span.strip_prefix(START) {
                    out.push(rest.trim().to_string());
                }
            }
        }
        out
    }

    /// The command lines a quoted usage stands for: `[...]` kept,
    /// `a|b` as each alternative, placeholders given sample values;
    /// none for `...` or `<name>` (a pattern, not a command).
    fn expand(quoted: &str) -> Vec<String> {
        if quoted.contains("...") || quoted.contains('<') {
            return Vec::new();
        }
        let words: Vec<String> = quoted
            .replace(['[', ']'], " ")
            .split_whitespace()
            .map(|word| match word {
                "N" | "M" | "S" => "3".to_string(),
                "DIR" | "PATH" => "/tmp/xtask-doc".to_string(),
                "NAME" | "TEXT" => "name".to_string(),
                other => other.to_string(),
            })
            .collect();
        let mut lines = vec![String::new()];
        for word in words {
            let choices: Vec<&str> = word.split('|').collect();
            lines = lines
                .iter()
                .flat_map(|line| choices.iter().map(move |choice| format!("{line} {choice}")))
                .collect();
        }
        lines
            .into_iter()
            .map(|line| line.trim().to_string())
            .collect()
    }

    #[test]
    fn doc_usages_expand_to_command_lines() {
        assert_eq!(
            expand("bench generate|train [--iters N]"),
            ["bench generate --iters 3", "bench train --iters 3"]
        );
        assert!(expand("bench <name>").is_empty());
        let text = "run `cargo xtask fixtures\nlogits` and `cargo\n  xtask venv`\n\
                    ```\ncargo xtask e2e   # main\n```\n";
        assert_eq!(quoted_commands(text), ["e2e", "fixtures logits", "venv"]);
    }
}
