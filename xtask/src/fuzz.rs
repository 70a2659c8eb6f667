//! `cargo xtask fuzz [--seconds N] [--target NAME] [--cases N]`: the fuzz
//! targets (the `fuzz_*` property tests of ft-config, ft-data and ft-model, see
//! `ft_config::fuzz`) run for a long, by-hand session instead of the
//! normal suite's few cases. cargo-fuzz would need a nightly compiler; these
//! are proptest properties driven through their time budget.
//!
//! The unit-test binaries are built once, each target runs in its own
//! process with `PROPTEST_CASES` (default: practically unlimited) and an
//! equal share of `--seconds` as its `FT_FUZZ_SECONDS` budget, and reports
//! its executions through `FT_FUZZ_REPORT`. A target that fails prints its
//! shrunk input; one that overruns its budget by far counts as hung.

use crate::shell;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Crates whose unit tests hold fuzz targets.
const CRATES: &[&str] = &["ft-config", "ft-data", "ft-model"];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds in all, shared equally between the targets
    #[arg(long, value_name = "N", default_value_t = 300.0, value_parser = crate::cli::positive_seconds)]
    seconds: f64,
    /// Only the targets whose name contains NAME
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// proptest cases per target at most [default: as many as the time allows]
    #[arg(long, value_name = "N", default_value_t = u64::from(u32::MAX), hide_default_value = true)]
    cases: u64,
}

/// One fuzz target: the test binary and the test's name in it.
struct Target {
    krate: &'static str,
    binary: PathBuf,
    test: String,
}

impl Target {
    /// The name the target reports (`fuzz_jsonl_bytes` -> `jsonl_bytes`).
    fn short(&self) -> &str {
        let name = self.test.rsplit("::").next().unwrap_or(&self.test);
        name.strip_prefix("fuzz_").unwrap_or(name)
    }
}

/// What one target's run came to.
struct Outcome {
    executions: u64,
    seconds: f64,
    slowest: f64,
    failure: Option<String>,
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    let targets = find_targets(root, options.target.as_deref())?;
    if targets.is_empty() {
        bail!("no fuzz target matches {:?}", options.target);
    }
    let out_dir = root.join("target/fuzz");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let report = out_dir.join("report.jsonl");
    let _ = std::fs::remove_file(&report);
    let budget = options.seconds / targets.len() as f64;
    shell::step(&format!(
        "{} fuzz targets, {budget:.0} s each, up to {} cases",
        targets.len(),
        options.cases
    ));
    let mut outcomes = Vec::new();
    for target in &targets {
        let log = out_dir.join(format!("{}.log", target.short()));
        eprintln!("  {} ({}) ...", target.short(), target.krate);
        let outcome = run_target(target, budget, options.cases, &report, &log)?;
        outcomes.push((target, outcome, log));
    }

    println!(
        "\n{:<24} {:>12} {:>9} {:>10} {:>12}  result",
        "target", "executions", "seconds", "exec/s", "slowest (s)"
    );
    let mut total = 0;
    let mut failed = Vec::new();
    for (target, outcome, log) in &outcomes {
        total += outcome.executions;
        let rate = outcome.executions as f64 / outcome.seconds.max(1e-9);
        println!(
            "{:<24} {:>12} {:>9.1} {:>10.0} {:>12.3}  {}",
            target.short(),
            outcome.executions,
            outcome.seconds,
            rate,
            outcome.slowest,
            if outcome.failure.is_some() {
                "FAILED"
            } else {
                "ok"
            }
        );
        if let Some(failure) = &outcome.failure {
            failed.push(format!(
                "{} ({}): {failure}\n  log: {}",
                target.short(),
                target.krate,
                log.display()
            ));
        }
    }
    println!("{:<24} {:>12}", "total", total);
    if !failed.is_empty() {
        bail!(
            "{} fuzz target(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// Builds the unit-test binaries of [`CRATES`] and lists their `fuzz_*` tests.
fn find_targets(root: &Path, only: Option<&str>) -> Result<Vec<Target>> {
    shell::step("building the unit tests of the crates with fuzz targets");
    let mut command = shell::cargo_command(root);
    command
        .args(["test", "--no-run", "--lib", "--message-format=json"])
        .stderr(Stdio::inherit());
    for krate in CRATES {
        command.args(["-p", krate]);
    }
    let messages = shell::output(&mut command)?;
    let mut targets = Vec::new();
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(executable), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) else {
            continue;
        };
        let Some(krate) = CRATES.iter().find(|k| k.replace('-', "_") == name) else {
            continue;
        };
        let listing = shell::output(Command::new(executable).args(["--list", "--format=terse"]))?;
        for test in listing.lines().filter_map(|l| l.strip_suffix(": test")) {
            let is_fuzz = test
                .rsplit("::")
                .next()
                .is_some_and(|n| n.starts_with("fuzz_"));
            if is_fuzz && only.is_none_or(|only| test.contains(only)) {
                targets.push(Target {
                    krate,
                    binary: PathBuf::from(executable),
                    test: test.to_string(),
                });
            }
        }
    }
    Ok(targets)
}

/// Runs one target with its budget; its output goes to `log`.
fn run_target(
    target: &Target,
    budget: f64,
    cases: u64,
    report: &Path,
    log: &Path,
) -> Result<Outcome> {
    let output =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let last_input = log.with_extension("last-input");
    let _ = std::fs::remove_file(&last_input);
    let started = Instant::now();
    let mut child = Command::new(&target.binary)
        .args(["--exact", &target.test, "--nocapture", "--test-threads=1"])
        .env("PROPTEST_CASES", cases.to_string())
        .env("FT_FUZZ_SECONDS", format!("{budget}"))
        .env("FT_FUZZ_REPORT", report)
        .env("FT_FUZZ_LAST_INPUT", &last_input)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .with_context(|| format!("starting {}", target.binary.display()))?;
    // The budget stops new cases; a case running on long after it is a hang.
    let limit = Duration::from_secs_f64(budget * 2.0 + 120.0);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let seconds = started.elapsed().as_secs_f64();
    let reported = std::fs::read_to_string(report)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .rfind(|entry| entry["target"].as_str() == Some(target.short()));
    let Some(entry) = reported else {
        let mut why = match status {
            None => format!("hung: still running after {:.0} s", limit.as_secs_f64()),
            Some(status) => format!("exited ({status}) without a report (a crash?)"),
        };
        // The input that was running when the process died.
        if let Ok(bytes) = std::fs::read(&last_input) {
            // The last input ends at the first NUL (older, longer ones follow).
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            let input = String::from_utf8_lossy(&bytes[..end]);
            let shown: String = input.chars().take(2000).collect();
            why += &format!("\n  last input ({}):\n  {shown}", last_input.display());
        }
        return Ok(Outcome {
            executions: 0,
            seconds,
            slowest: 0.0,
            failure: Some(why),
        });
    };
    let mut failure = entry["failure"].as_str().map(|f| {
        // The first lines: the reason and the start of the shrunk input.
        f.lines().take(12).collect::<Vec<_>>().join("\n  ")
    });
    if failure.is_none() && !status.is_some_and(|s| s.success()) {
        failure = Some(format!("the test process failed ({status:?})"));
    }
    Ok(Outcome {
        executions: entry["executions"].as_u64().unwrap_or(0),
        seconds: entry["seconds"].as_f64().unwrap_or(seconds),
        slowest: entry["slowest_case_seconds"].as_f64().unwrap_or(0.0),
        failure,
    })
}
