//! What the mlx-lm comparisons share: a release `ft`, the default model as an
//! fp32 Hugging Face directory written by `ft convert` (the one model both
//! sides load), and `cargo xtask fixtures logits`.

use crate::{python, setup, shell};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built-in default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";
/// Where the fp32 export of the default model goes.
const F32_DIR: &str = ".ft/cache/smollm2-f32";
/// The logits fixture checked by `crates/ft-model/tests/mlx_lm_parity.rs`.
const LOGITS_FIXTURE: &str = "crates/ft-model/tests/fixtures/mlx_lm_logits.json";

/// Builds `ft` in release mode and returns its path.
pub fn build_ft(root: &Path) -> Result<PathBuf> {
    shell::step("cargo build --release -p ft-cli");
    shell::build_ft(root)?;
    Ok(root.join("target/release/ft"))
}

/// Writes the default model as an fp32 HF directory with `ft convert`
/// (every time: it takes a few seconds and follows `ft convert`'s changes).
pub fn f32_default_model(root: &Path, ft: &Path) -> Result<PathBuf> {
    let dir = root.join(F32_DIR);
    shell::step(&format!(
        "ft convert: {DEFAULT_MODEL} -> fp32 HF directory {F32_DIR}"
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    shell::run(
        Command::new(ft)
            .args(["convert", "--model", DEFAULT_MODEL, "--out"])
            .arg(&dir)
            .args(["--dtype", "float32", "--dequantize"])
            .current_dir(root),
    )?;
    Ok(dir)
}

/// `cargo xtask fixtures logits`: mlx_lm's logits of fixed prompts on the
/// fp32 export of the default model, into the committed fixture.
pub fn logits_fixture(root: &Path) -> Result<()> {
    setup::run(root, setup::Options::default())?;
    let venv = python::reference_venv(root)?;
    let ft = build_ft(root)?;
    let model = f32_default_model(root, &ft)?;
    shell::step(&format!("mlx_lm logits -> {LOGITS_FIXTURE}"));
    let fixture = root.join(LOGITS_FIXTURE);
    let out = python::helper_json(
        root,
        &venv,
        &[
            "logits",
            path_str(&model)?,
            path_str(&fixture).context("fixture path")?,
        ],
    )?;
    if !fixture.is_file() {
        bail!("the helper did not write {}", fixture.display());
    }
    println!("{}", out.trim());
    println!("check it with: cargo nextest run -p ft-model --test mlx_lm_parity");
    Ok(())
}

/// A path as UTF-8 (Python receives it as an argument).
pub fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
