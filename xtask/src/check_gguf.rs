//! `cargo xtask check-gguf`: does llama.cpp read what `ft fuse --format
//! gguf` writes, and does it continue a prompt as `ft generate` does?
//!
//! Builds `ft`, reuses a trained adapter (`target/e2e/run/adapter` or this
//! check's own from an earlier run) or trains a short one into
//! `target/check-gguf/run`, fuses it into float32 and float16 GGUF files,
//! and compares llama.cpp's greedy continuation of a raw prompt (PyPI
//! `llama-cpp-python`, built from source once into `.ft/venv-llama-cpp`)
//! with `ft generate`'s on the same file: token ids, leading tokens equal.
//! Not part of `cargo xtask test` (the first run builds llama.cpp).

use crate::shell;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// llama.cpp's Python binding, pinned: the check must not move under us.
const LLAMA_CPP_REQUIREMENT: &str = "llama-cpp-python==0.3.36";
/// Bump when the venv's layout changes.
const VENV_LAYOUT: &str = "venv-llama-cpp-v1";
/// The fewest equal leading tokens that pass.
const MIN_EQUAL: usize = 16;

/// Options of `cargo xtask check-gguf`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The raw prompt both sides continue
    #[arg(long, value_name = "TEXT", default_value = "The capital of France is")]
    prompt: String,
    /// Tokens generated on each side (at least the 16 leading tokens that must
    /// agree)
    #[arg(long, value_name = "N", default_value_t = 24, value_parser = crate::cli::at_least(MIN_EQUAL))]
    tokens: usize,
    /// Train a new adapter even where one can be reused
    #[arg(long)]
    train: bool,
}

fn ft(root: &Path) -> Command {
    let mut command = Command::new(root.join("target/release/ft"));
    command.current_dir(root);
    command
}

/// Runs the check.
pub fn run(root: &Path, options: Options) -> Result<()> {
    let out = root.join("target/check-gguf");
    fs::create_dir_all(&out)?;
    shell::step("cargo build --release -p ft-cli");
    shell::build_ft(root)?;

    let adapter = adapter(root, &out, options.train)?;
    let venv = llama_cpp_venv(root)?;

    let mut failures = Vec::new();
    for dtype in ["float32", "float16"] {
        let file = out.join(format!("fused-{dtype}.gguf"));
        if file.exists() {
            fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        }
        shell::step(&format!(
            "ft fuse --format gguf --dequantize --dtype {dtype}"
        ));
        shell::run(
            ft(root)
                .arg("fuse")
                .arg("--adapter")
                .arg(&adapter)
                .args([
                    "--format",
                    "gguf",
                    "--dequantize",
                    "--dtype",
                    dtype,
                    "--out",
                ])
                .arg(&file),
        )?;

        shell::step(&format!("llama.cpp and ft generate on {}", file.display()));
        let file_text = file.to_str().context("a non-UTF-8 path")?;
        let tokens = options.tokens.to_string();
        let llama = json(&shell::output(
            Command::new(venv.join("bin/python"))
                .arg(root.join("xtask/python/llama_cpp_greedy.py"))
                .args([file_text, &options.prompt, &tokens])
                .current_dir(root),
        )?)?;
        let ours = json(&shell::output(ft(root).args([
            "generate",
            "--model",
            file_text,
            "--raw",
            "--prompt",
            &options.prompt,
            "--max-tokens",
            &tokens,
            "--temp",
            "0",
            "--top-k",
            "0",
            "--repetition-penalty",
            "1",
            "--json",
        ]))?)?;
        let (llama_tokens, ours_tokens) = (ids(&llama, "tokens")?, ids(&ours, "tokens")?);
        let equal = llama_tokens
            .iter()
            .zip(&ours_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{dtype}: llama.cpp {} (llama-cpp-python {})",
            file.display(),
            llama["llama_cpp_version"].as_str().unwrap_or("?")
        );
        println!(
            "  prompt {:?}: llama.cpp ids {:?}, ft ids {:?}",
            options.prompt,
            ids(&llama, "prompt_ids")?,
            ids(&ours, "prompt_ids")?
        );
        let text = |json: &Value| json["text"].as_str().unwrap_or_default().to_string();
        println!(
            "  llama.cpp: {llama_tokens:?}\n             {:?}",
            text(&llama)
        );
        println!(
            "  ft:        {ours_tokens:?}\n             {:?}",
            text(&ours)
        );
        println!(
            "  equal leading tokens: {equal} of {} (llama.cpp) / {} (ft); at least {MIN_EQUAL} needed",
            llama_tokens.len(),
            ours_tokens.len()
        );
        if ids(&llama, "prompt_ids")? != ids(&ours, "prompt_ids")? {
            failures.push(format!("{dtype}: the prompt tokenizes differently"));
        }
        if equal < MIN_EQUAL {
            failures.push(format!("{dtype}: only {equal} equal leading tokens"));
        }
    }
    if !failures.is_empty() {
        bail!("check-gguf failed: {}", failures.join("; "));
    }
    println!("check-gguf: llama.cpp and ft agree on both files");
    Ok(())
}

fn json(text: &str) -> Result<Value> {
    let line = text
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON object in\n{text}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

fn ids(json: &Value, key: &str) -> Result<Vec<u64>> {
    json[key]
        .as_array()
        .and_then(|items| items.iter().map(Value::as_u64).collect())
        .with_context(|| format!("`{key}` is not a list of token ids in {json}"))
}

/// A trained adapter for the default model: the e2e run's, this check's
/// own from an earlier run, or (always with `train`) a short new run: 10
/// steps of the quickstart.
fn adapter(root: &Path, out: &Path, train: bool) -> Result<PathBuf> {
    for candidate in [root.join("target/e2e/run/adapter"), out.join("run/adapter")] {
        if !train && candidate.join("adapters.safetensors").is_file() {
            println!("reusing the adapter {}", candidate.display());
            return Ok(candidate);
        }
    }
    let run_dir = out.join("run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).with_context(|| format!("clearing {}", run_dir.display()))?;
    }
    shell::step("ft train --config configs/quickstart.toml, 10 steps");
    let run_text = run_dir.to_str().context("a non-UTF-8 path")?;
    shell::run(ft(root).args([
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "training.steps=10",
        "--set",
        "training.eval_every=10",
        "--set",
        "training.save_every=10",
        "--set",
        &format!("checkpoint.output_dir=\"{run_text}\""),
    ]))?;
    Ok(run_dir.join("adapter"))
}

/// Creates (once) `.ft/venv-llama-cpp` with llama-cpp-python, which pip
/// builds from source (llama.cpp, CMake; scikit-build-core fetches CMake
/// and Ninja from PyPI when the system has none recent enough).
fn llama_cpp_venv(root: &Path) -> Result<PathBuf> {
    let ft_dir = root.join(".ft");
    let venv = ft_dir.join("venv-llama-cpp");
    let stamp_path = ft_dir.join("venv-llama-cpp.stamp");
    let stamp = format!("{VENV_LAYOUT}\n{LLAMA_CPP_REQUIREMENT}\n");
    let python = venv.join("bin/python");
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) && python.is_file() {
        return Ok(venv);
    }
    shell::step(&format!(
        "creating {} with {LLAMA_CPP_REQUIREMENT}: pip builds llama.cpp from source \
         (once; about 10-20 minutes on 2 cores)",
        venv.display()
    ));
    let started = Instant::now();
    let _ = fs::remove_file(&stamp_path);
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating a Python venv (Debian: apt-get install python3-venv)")?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    shell::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .arg(LLAMA_CPP_REQUIREMENT)
            .env("CMAKE_BUILD_PARALLEL_LEVEL", jobs.to_string()),
    )
    .context(
        "installing llama-cpp-python (needs a C++ compiler; cargo xtask setup installs g++)",
    )?;
    fs::write(&stamp_path, stamp)?;
    println!(
        "    {LLAMA_CPP_REQUIREMENT} installed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(venv)
}
