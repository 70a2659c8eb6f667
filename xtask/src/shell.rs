//! Running commands with readable failures.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Prints a step header so long runs show where they are.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming it.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout; a non-zero exit is an error with stderr.
pub fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `cargo` command in `dir`, with the cargo that runs xtask.
pub fn cargo_command(dir: &Path) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(dir);
    command
}

/// `cargo <args>` in `dir`, with the cargo that runs xtask.
pub fn cargo(dir: &Path, args: &[&str]) -> Result<()> {
    run(cargo_command(dir).args(args))
}

/// `cargo build --release -p ft-cli`; on macOS also puts MLX's Metal
/// kernels (`mlx.metallib`, built under `target/mlx-metal`) next to the
/// binary, where MLX looks first. Returns the binary.
pub fn build_ft(root: &Path) -> Result<std::path::PathBuf> {
    cargo(root, &["build", "--release", "-p", "ft-cli"])?;
    let binary = root.join("target/release/ft");
    if cfg!(target_os = "macos") {
        colocate_metallib(root, &binary)?;
    }
    Ok(binary)
}

/// Copies `target/mlx-metal/mlx.metallib` next to `binary`.
pub fn colocate_metallib(root: &Path, binary: &Path) -> Result<()> {
    let built = root.join("target/mlx-metal/mlx.metallib");
    let dir = binary
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", binary.display()))?;
    if !built.is_file() {
        anyhow::bail!(
            "{} is missing after the build: MLX's Metal kernels were not compiled \
             (is MLX_RS_METAL_PATH overridden? see docs/macos.md)",
            built.display()
        );
    }
    std::fs::copy(&built, dir.join("mlx.metallib")).map_err(|error| {
        anyhow::anyhow!("copying {} to {}: {error}", built.display(), dir.display())
    })?;
    Ok(())
}

/// Bytes of the files under `dir`, recursively (0 when it cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                dir_bytes(&path)
            } else {
                entry.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// Whether a program is on PATH.
pub fn has_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

pub fn has_nextest() -> bool {
    has_program("cargo-nextest")
}

/// Resident memory of a process in KiB: `/proc/PID/status` on Linux, `ps`
/// elsewhere (macOS). An error, never 0, when neither can be read.
pub fn process_rss_kib(pid: u32) -> anyhow::Result<u64> {
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        if let Some(kib) = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
        {
            return Ok(kib);
        }
    }
    let listing = output(
        std::process::Command::new("ps")
            .args(["-o", "rss=", "-p"])
            .arg(pid.to_string()),
    )
    .map_err(|error| anyhow::anyhow!("resident memory of process {pid}: {error:#}"))?;
    listing
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("resident memory of process {pid}: `ps` printed {listing:?}"))
}

/// The 1-minute load average: `/proc/loadavg` on Linux, `sysctl -n
/// vm.loadavg` (`{ 1.52 1.31 1.20 }`) on macOS.
pub fn load_average() -> anyhow::Result<f64> {
    let text = match std::fs::read_to_string("/proc/loadavg") {
        Ok(text) => text,
        Err(_) => output(std::process::Command::new("sysctl").args(["-n", "vm.loadavg"]))
            .map_err(|error| anyhow::anyhow!("load average not available: {error:#}"))?,
    };
    parse_load_average(&text).ok_or_else(|| anyhow::anyhow!("load average: cannot read {text:?}"))
}

fn parse_load_average(text: &str) -> Option<f64> {
    text.split_whitespace()
        .find(|word| *word != "{")
        .and_then(|word| word.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_reads_linux_and_macos_formats() {
        assert_eq!(
            parse_load_average("0.52 0.58 0.59 1/467 12345\n"),
            Some(0.52)
        );
        assert_eq!(parse_load_average("{ 1.52 1.31 1.20 }\n"), Some(1.52));
        assert_eq!(parse_load_average(""), None);
        assert!(load_average().expect("this machine has one") >= 0.0);
    }

    #[test]
    fn resident_memory_of_this_process_is_read_and_agrees_with_ps() {
        let pid = std::process::id();
        let kib = process_rss_kib(pid).expect("rss");
        assert!(kib > 100, "{kib} KiB");
        // The portable path (what macOS uses) gives the same order of size.
        let by_ps: u64 = output(
            std::process::Command::new("ps")
                .args(["-o", "rss=", "-p"])
                .arg(pid.to_string()),
        )
        .expect("ps")
        .trim()
        .parse()
        .expect("a number");
        assert!(by_ps > kib / 2 && by_ps < kib * 2, "{by_ps} vs {kib}");
        assert!(process_rss_kib(u32::MAX).is_err());
    }
}
