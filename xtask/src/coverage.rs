//! `cargo xtask coverage`: the test suite under LLVM source-based coverage
//! (cargo-llvm-cov, installed if missing), one line per library crate with
//! the share of its lines that ran, and an HTML report.
//!
//! Counted: the library code of each crate, `crates/<crate>/src`, without
//! its test modules (`#[cfg(test)] mod tests { .. }` at the end of a file)
//! and without files that exist only for tests (`#[cfg(test)] mod x;`).
//! Test code that runs itself would only make the figure look better.

use crate::shell;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library crates whose coverage is reported (the binary `ft-cli` is
/// exercised by the tests too, but is not a library other programs link).
pub const LIBRARY_CRATES: &[&str] = &[
    "ft-config",
    "ft-data",
    "ft-gguf",
    "ft-model",
    "ft-lora",
    "ft-optim",
    "ft-trainer",
];

/// Lines of one crate's library code: how many can run, how many did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineCount {
    /// Lines with code on them.
    pub lines: u64,
    /// Of those, lines that ran at least once.
    pub covered: u64,
}

impl LineCount {
    /// Covered lines in percent (100 for a crate without code).
    pub fn percent(self) -> f64 {
        if self.lines == 0 {
            100.0
        } else {
            self.covered as f64 * 100.0 / self.lines as f64
        }
    }
}

/// Runs the suite under coverage and prints the table; fails when a crate
/// is under `min_percent` or a test failed.
pub fn run(root: &Path, min_percent: f64) -> Result<()> {
    install(root)?;
    let target = root.join("target/coverage");
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;

    // Profiles of earlier runs name files and binaries that may be gone.
    shell::step("cargo llvm-cov clean --workspace (profiles of earlier runs)");
    shell::cargo(root, &["llvm-cov", "clean", "--workspace"])?;
    shell::step("cargo llvm-cov nextest --workspace (instrumented build, then every test)");
    // The binaries live one folder deeper (target/llvm-cov-target) than the
    // rpath in .cargo/config.toml reaches, so the MLX runtime is named here.
    let runtime = root.join(".ft/mlx/runtime/mlx/lib");
    let inherited = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    let library_path =
        std::env::join_paths(std::iter::once(runtime).chain(std::env::split_paths(&inherited)))
            .context("joining LD_LIBRARY_PATH")?;
    let tests = shell::run(
        shell::cargo_command(root)
            .args([
                "llvm-cov",
                "nextest",
                "--workspace",
                "--no-fail-fast",
                "--no-report",
            ])
            .env("LD_LIBRARY_PATH", library_path),
    );

    shell::step("cargo llvm-cov report --html");
    let html = target.join("html");
    shell::cargo(
        root,
        &[
            "llvm-cov",
            "report",
            "--html",
            "--output-dir",
            path_str(&html)?,
        ],
    )?;
    let lcov_path = target.join("lcov.info");
    shell::cargo(
        root,
        &[
            "llvm-cov",
            "report",
            "--lcov",
            "--output-path",
            path_str(&lcov_path)?,
        ],
    )?;
    let lcov = std::fs::read_to_string(&lcov_path)
        .with_context(|| format!("reading {}", lcov_path.display()))?;
    let counts = crate_counts(root, &lcov)?;

    println!("\ncoverage of library code (lines, test modules excluded):");
    let mut short = Vec::new();
    for name in LIBRARY_CRATES {
        let Some(count) = counts.get(*name) else {
            continue;
        };
        println!(
            "{name:<11} {:>5.1}%  ({} of {} lines)",
            count.percent(),
            count.covered,
            count.lines
        );
        if count.percent() < min_percent {
            short.push(format!("{name} {:.1}%", count.percent()));
        }
    }
    println!("HTML report: {}", html.join("html/index.html").display());
    tests.context("tests failed under coverage (figures above are from the tests that ran)")?;
    if !short.is_empty() {
        bail!("under {min_percent}% of lines: {}", short.join(", "));
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// cargo-llvm-cov and the LLVM tools of the toolchain in use.
fn install(root: &Path) -> Result<()> {
    let has_llvm_cov = shell::cargo_command(root)
        .args(["llvm-cov", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_llvm_cov {
        shell::step("cargo install cargo-llvm-cov --locked (once)");
        shell::cargo(root, &["install", "cargo-llvm-cov", "--locked"])?;
    }
    let installed = shell::output(
        Command::new("rustup")
            .args(["component", "list", "--installed"])
            .current_dir(root),
    )
    .unwrap_or_default();
    if !installed.lines().any(|line| line.starts_with("llvm-tools")) {
        shell::step("rustup component add llvm-tools-preview (once)");
        shell::run(
            Command::new("rustup")
                .args(["component", "add", "llvm-tools-preview"])
                .current_dir(root),
        )?;
    }
    Ok(())
}

/// Per-crate line counts from an lcov report, library code only.
pub fn crate_counts(root: &Path, lcov: &str) -> Result<BTreeMap<String, LineCount>> {
    let mut counts: BTreeMap<String, LineCount> = BTreeMap::new();
    // Per crate: the modules its root declares only for tests.
    let mut test_only: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in parse_lcov(lcov) {
        let Some((krate, relative)) = library_file(root, &record.path) else {
            continue;
        };
        let modules = test_only
            .entry(krate.clone())
            .or_insert_with(|| crate_test_only_modules(root, &krate));
        let stem = relative.file_stem().and_then(|s| s.to_str());
        if stem.is_some_and(|stem| modules.iter().any(|name| name == stem)) {
            continue;
        }
        let source = std::fs::read_to_string(&record.path)
            .with_context(|| format!("reading {}", record.path.display()))?;
        let first_test_line = first_test_module_line(&source);
        let count = counts.entry(krate).or_default();
        for (line, hits) in record.lines {
            if first_test_line.is_some_and(|first| line >= first) {
                continue;
            }
            count.lines += 1;
            count.covered += u64::from(hits > 0);
        }
    }
    Ok(counts)
}

/// One `SF:` section of an lcov file.
#[derive(Debug, PartialEq)]
pub struct LcovFile {
    /// The source file.
    pub path: PathBuf,
    /// `(line, hits)` for every line with code.
    pub lines: Vec<(u64, u64)>,
}

/// The files of an lcov report with their `DA:` line records.
pub fn parse_lcov(text: &str) -> Vec<LcovFile> {
    let mut files = Vec::new();
    let mut current: Option<LcovFile> = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("SF:") {
            current = Some(LcovFile {
                path: PathBuf::from(path),
                lines: Vec::new(),
            });
        } else if let Some(data) = line.strip_prefix("DA:") {
            let mut fields = data.split(',');
            let parsed = (
                fields.next().and_then(|f| f.parse::<u64>().ok()),
                fields.next().and_then(|f| f.parse::<u64>().ok()),
            );
            if let (Some(file), (Some(number), Some(hits))) = (current.as_mut(), parsed) {
                file.lines.push((number, hits));
            }
        } else if line == "end_of_record" {
            files.extend(current.take());
        }
    }
    files
}

/// `(crate, path inside src)` for a file of a library crate's `src/`.
fn library_file(root: &Path, path: &Path) -> Option<(String, PathBuf)> {
    let relative = path.strip_prefix(root.join("crates")).ok()?;
    let mut parts = relative.components();
    let krate = parts.next()?.as_os_str().to_str()?.to_string();
    if !LIBRARY_CRATES.contains(&krate.as_str()) {
        return None;
    }
    let inside = parts.as_path().strip_prefix("src").ok()?;
    Some((krate, inside.to_path_buf()))
}

/// The modules `crates/<krate>/src/lib.rs` declares only for tests.
fn crate_test_only_modules(root: &Path, krate: &str) -> Vec<String> {
    let lib = root.join("crates").join(krate).join("src/lib.rs");
    std::fs::read_to_string(lib)
        .map(|text| test_only_modules(&text))
        .unwrap_or_default()
}

/// Modules a crate root declares only for tests (`#[cfg(test)]` on the line
/// above `mod name;`).
pub fn test_only_modules(crate_root: &str) -> Vec<String> {
    let lines: Vec<&str> = crate_root.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == "#[cfg(test)]")
        .filter_map(|pair| {
            let declaration = pair[1].strip_prefix("pub ").unwrap_or(pair[1]);
            declaration
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
                .map(str::to_string)
        })
        .collect()
}

/// The line (1-based) where a file's test module starts: the first
/// `#[cfg(test)]` at the start of a line followed by a `mod` within two
/// lines (attributes such as `#[allow(..)]` may sit between).
pub fn first_test_module_line(source: &str) -> Option<u64> {
    let lines: Vec<&str> = source.lines().collect();
    lines.iter().enumerate().find_map(|(index, line)| {
        (*line == "#[cfg(test)]"
            && lines[index + 1..]
                .iter()
                .take(3)
                .any(|next| next.starts_with("mod ") || next.starts_with("pub mod ")))
        .then_some(index as u64 + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcov_records_are_read_per_file() {
        let text = "TN:\nSF:/r/crates/ft-optim/src/clip.rs\nFN:1,f\nDA:1,3\nDA:2,0\n\
                    LF:2\nLH:1\nend_of_record\nSF:/r/crates/ft-optim/src/lib.rs\nDA:5,1\nend_of_record\n";
        let files = parse_lcov(text);
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[0].path,
            PathBuf::from("/r/crates/ft-optim/src/clip.rs")
        );
        assert_eq!(files[0].lines, vec![(1, 3), (2, 0)]);
        assert_eq!(files[1].lines, vec![(5, 1)]);
    }

    #[test]
    fn test_modules_and_test_only_files_are_found() {
        let source = "fn a() {}\n\n#[cfg(test)]\n#[allow(clippy::unwrap_used)]\nmod tests {\n}\n";
        assert_eq!(first_test_module_line(source), Some(3));
        assert_eq!(
            first_test_module_line("#[cfg(test)]\nfn helper() {}\n"),
            None
        );
        let root =
            "pub mod a;\n#[cfg(test)]\nmod proptests;\n#[cfg(test)]\npub mod support;\nmod b;\n";
        assert_eq!(test_only_modules(root), vec!["proptests", "support"]);
    }

    #[test]
    fn only_library_sources_count() {
        let root = Path::new("/r");
        assert_eq!(
            library_file(root, Path::new("/r/crates/ft-data/src/batch.rs")),
            Some(("ft-data".to_string(), PathBuf::from("batch.rs")))
        );
        assert_eq!(
            library_file(root, Path::new("/r/crates/ft-cli/src/main.rs")),
            None
        );
        assert_eq!(
            library_file(root, Path::new("/r/crates/ft-data/tests/a.rs")),
            None
        );
        assert_eq!(library_file(root, Path::new("/elsewhere/x.rs")), None);
        assert!(
            (LineCount {
                lines: 4,
                covered: 3
            }
            .percent()
                - 75.0)
                .abs()
                < 1e-9
        );
        assert_eq!(LineCount::default().percent(), 100.0);
    }
}
