//! The Python reference tools: a virtual environment with mlx-lm, whose MLX
//! runs on the same OpenBLAS as ours, for parity fixtures and benchmarks.
//!
//! `.ft/venv-mlx` is created with `python3 -m venv` and stamped; a second call
//! with the same requirements returns at once.

use crate::{setup, shell};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python MLX of the reference venv: the same release as our runtime
/// (setup's `mlx-cpu`), so both sides run one `libmlx.so` build. On a Mac
/// the plain `mlx` wheel is the Metal build (`mlx[cpu]` is Linux's extra).
const MLX_REQUIREMENT: &str = if cfg!(target_os = "macos") {
    "mlx==0.32.2"
} else {
    "mlx[cpu]==0.32.2"
};
/// The reference trainer and generator.
const MLX_LM_REQUIREMENT: &str = "mlx-lm==0.32.2";
/// mlx-lm asks for `transformers>=5.7.0`; pinned so the tokenizer side does
/// not move under the fixtures.
const TRANSFORMERS_REQUIREMENT: &str = "transformers==5.24.0";
/// Bump when the venv's layout or the BLAS step changes.
const VENV_LAYOUT: &str = "venv-v1";
/// The reference matmul must reach this with OpenBLAS (the reference BLAS
/// gives ~3.5 GFLOP/s on the development machine, OpenBLAS ~250+).
const MIN_GFLOPS: f64 = 30.0;

/// The helper script run inside the venv.
pub fn helper_script(root: &Path) -> PathBuf {
    root.join("xtask/python/mlx_ref.py")
}

/// The venv's interpreter.
pub fn python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

/// Creates (once) `.ft/<name>` with `requirements` installed from PyPI
/// (binary wheels only) and returns it; a stamp with the requirements makes
/// a second call with the same list return at once.
pub fn venv(root: &Path, name: &str, requirements: &[&str]) -> Result<PathBuf> {
    let ft = root.join(".ft");
    let venv = ft.join(name);
    let stamp_path = ft.join(format!("{name}.stamp"));
    let stamp = format!("{VENV_LAYOUT}\n{}\n", requirements.join("\n"));
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && python(&venv).is_file()
    {
        return Ok(venv);
    }
    shell::step(&format!(
        "creating {} ({})",
        venv.display(),
        requirements.join(", ")
    ));
    let _ = fs::remove_file(&stamp_path);
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating a Python venv (Debian: apt-get install python3-venv)")?;
    shell::run(
        Command::new(python(&venv))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
            ])
            .args(requirements),
    )
    .with_context(|| {
        format!(
            "installing {} into {}",
            requirements.join(", "),
            venv.display()
        )
    })?;
    fs::write(&stamp_path, stamp)?;
    Ok(venv)
}

/// Creates (once) `.ft/venv-mlx` with mlx and mlx-lm, puts setup's OpenBLAS
/// behind its MLX, checks the matmul speed, and returns the venv directory.
/// Setup must have run (it provides OpenBLAS).
pub fn reference_venv(root: &Path) -> Result<PathBuf> {
    let ft = root.join(".ft");
    let requirements = [
        MLX_REQUIREMENT,
        MLX_LM_REQUIREMENT,
        TRANSFORMERS_REQUIREMENT,
    ];
    let venv = venv(root, "venv-mlx", &requirements)?;
    let stamp_path = ft.join("venv-mlx-blas.stamp");
    let stamp = format!(
        "{VENV_LAYOUT}\n{}\n{}\n",
        requirements.join("\n"),
        setup::OPENBLAS_WHEEL
    );
    if !cfg!(target_os = "linux")
        || fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        return Ok(venv);
    }
    let site = site_packages(&venv)?;
    match setup::find_bundled_blas_dir(&site)? {
        Some(libs_dir) => {
            shell::step("putting OpenBLAS behind the venv's MLX");
            setup::shim_bundled_blas(
                &ft,
                &libs_dir,
                &site.join("mlx/lib/libmlx.so"),
                &ft.join("venv-mlx-blas"),
            )?;
        }
        None => eprintln!("    the venv's MLX bundles no reference BLAS; leaving it as shipped"),
    }
    let check = blas_check(root, &venv)?;
    eprintln!(
        "    venv MLX {}: fp32 1024^3 matmul {:.0} GFLOP/s ({})",
        check.mlx_version,
        check.gflops,
        if check.openblas {
            "OpenBLAS"
        } else {
            "not OpenBLAS"
        }
    );
    if !check.openblas || check.gflops < MIN_GFLOPS {
        bail!(
            "the reference venv's MLX is not on OpenBLAS ({:.1} GFLOP/s, OpenBLAS loaded: {})",
            check.gflops,
            check.openblas
        );
    }
    fs::write(&stamp_path, stamp)?;
    Ok(venv)
}

/// `lib/python3.X/site-packages` of a venv.
fn site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path().join("site-packages");
        if path.is_dir() {
            return Ok(path);
        }
    }
    bail!("no site-packages under {}", lib.display())
}

/// What the helper's `blas` subcommand measured.
pub struct BlasCheck {
    /// `mx.__version__`.
    pub mlx_version: String,
    /// fp32 1024^3 matmul speed.
    pub gflops: f64,
    /// Whether the process mapped setup's OpenBLAS.
    pub openblas: bool,
}

/// Runs the helper's `blas` check in the venv.
pub fn blas_check(root: &Path, venv: &Path) -> Result<BlasCheck> {
    let json = helper_json(root, venv, &["blas"])?;
    Ok(BlasCheck {
        mlx_version: json_str(&json, "mlx_version")?.to_string(),
        gflops: json_number(&json, "matmul_1024_gflops")?,
        openblas: json.contains("\"openblas_loaded\": true"),
    })
}

/// Runs `mlx_ref.py <args>` in the venv and returns its stdout (one JSON
/// document).
pub fn helper_json(root: &Path, venv: &Path, args: &[&str]) -> Result<String> {
    shell::output(
        Command::new(python(venv))
            .arg(helper_script(root))
            .args(args)
            .current_dir(root),
    )
    .with_context(|| format!("running xtask/python/mlx_ref.py {}", args.join(" ")))
}

/// The number after `"key": ` in a flat JSON text (xtask has no JSON parser).
pub fn json_number(json: &str, key: &str) -> Result<f64> {
    let raw = json_raw(json, key)?;
    let end = raw
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(raw.len());
    raw[..end]
        .parse()
        .with_context(|| format!("`{key}` is not a number in {json}"))
}

/// The string after `"key": ` in a flat JSON text (no escapes expected).
pub fn json_str<'a>(json: &'a str, key: &str) -> Result<&'a str> {
    let raw = json_raw(json, key)?;
    let inner = raw
        .strip_prefix('"')
        .with_context(|| format!("`{key}` is not a string in {json}"))?;
    let end = inner
        .find('"')
        .with_context(|| format!("unterminated `{key}` in {json}"))?;
    Ok(&inner[..end])
}

/// The `[...]` list of numbers after `"key": ` (not nested).
pub fn json_numbers(json: &str, key: &str) -> Result<Vec<f64>> {
    let raw = json_raw(json, key)?;
    let inner = raw
        .strip_prefix('[')
        .with_context(|| format!("`{key}` is not a list in {json}"))?;
    let end = inner
        .find(']')
        .with_context(|| format!("unterminated `{key}` list"))?;
    inner[..end]
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse()
                .with_context(|| format!("`{key}` has a non-number `{item}`"))
        })
        .collect()
}

fn json_raw<'a>(json: &'a str, key: &str) -> Result<&'a str> {
    let pattern = format!("\"{key}\":");
    let start = json
        .find(&pattern)
        .with_context(|| format!("no `{key}` in {json}"))?;
    Ok(json[start + pattern.len()..].trim_start())
}
