//! `cargo xtask soak`: a long CPU training run of the default model (by hand,
//! not in CI) with the process's resident memory and MLX's active memory
//! sampled at a fixed interval. After the given time the run gets SIGTERM
//! (which must leave a checkpoint), and the memory slope after the first
//! evaluation is printed in MB per hour. Everything goes under `target/soak/`.

use crate::reference;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Minutes of training before the run gets SIGTERM
    #[arg(long, value_name = "M", default_value_t = 120.0)]
    minutes: f64,
    /// Seconds between memory samples
    #[arg(long = "sample-s", value_name = "S", default_value_t = 60)]
    sample_seconds: u64,
}

/// One memory sample.
struct Sample {
    seconds: f64,
    step: u64,
    rss_mb: f64,
    active_mb: f64,
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    Ok(crate::shell::process_rss_kib(pid)? as f64 / 1024.0)
}

/// The last training record's step and active memory, and the time (in
/// training seconds) of the first evaluation, from `metrics.jsonl`.
fn read_metrics(path: &Path) -> (u64, f64, Option<u64>) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut step = 0;
    let mut active = 0.0;
    let mut first_eval = None;
    for record in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        match record["kind"].as_str() {
            Some("train") => {
                step = record["step"].as_u64().unwrap_or(step);
                active = record["active_memory_bytes"].as_f64().unwrap_or(0.0) / 1e6;
            }
            Some("eval") if first_eval.is_none() => first_eval = record["step"].as_u64(),
            _ => {}
        }
    }
    (step, active, first_eval)
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    let ft = reference::build_ft(root)?;
    let out = root.join("target/soak");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    fs::create_dir_all(&out)?;
    // A copy (same depth under target/, so its rpath still finds MLX): the
    // run outlives rebuilds of target/release/ft.
    let ft = {
        let copy = out.join("ft");
        fs::copy(&ft, &copy).context("copying ft")?;
        copy
    };
    let log = fs::File::create(out.join("train.log"))?;
    let mut child = Command::new(&ft)
        .current_dir(root)
        .args(["train", "--config", "configs/quickstart.toml"])
        .args(["--set", "training.steps=1000000"])
        .args(["--set", "training.eval_every=200"])
        .args(["--set", "training.save_every=500"])
        .args(["--set", "checkpoint.keep_last=2"])
        .args(["--set", "checkpoint.output_dir=\"target/soak/run\""])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting ft train")?;
    let pid = child.id();
    let metrics = out.join("run/metrics.jsonl");
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(options.minutes * 60.0);
    let mut samples: Vec<Sample> = Vec::new();
    let mut csv = String::from("seconds,step,rss_mb,active_mb\n");
    eprintln!(
        "soak: ft train (pid {pid}) for {} min, sampling every {} s into target/soak/samples.csv",
        options.minutes, options.sample_seconds
    );
    loop {
        let next = Duration::from_secs(options.sample_seconds * (samples.len() as u64 + 1));
        while started.elapsed() < next.min(deadline) {
            if let Some(status) = child.try_wait()? {
                bail!("ft train exited early ({status}); see target/soak/train.log");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if started.elapsed() >= deadline {
            break;
        }
        let (step, active_mb, _) = read_metrics(&metrics);
        let sample = Sample {
            seconds: started.elapsed().as_secs_f64(),
            step,
            rss_mb: rss_mb(pid)?,
            active_mb,
        };
        eprintln!(
            "  {:>6.0} s  step {:>6}  RSS {:>7.1} MB  MLX active {:>7.1} MB",
            sample.seconds, sample.step, sample.rss_mb, sample.active_mb
        );
        writeln!(
            csv,
            "{:.1},{},{:.2},{:.2}",
            sample.seconds, sample.step, sample.rss_mb, sample.active_mb
        )?;
        fs::write(out.join("samples.csv"), &csv)?;
        samples.push(sample);
    }
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("sending SIGTERM")?;
    let status = child.wait()?;
    let (last_step, _, first_eval) = read_metrics(&metrics);
    let first_eval = first_eval.context("the run never evaluated; soak longer")?;
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.step > first_eval).collect();
    let per_hour = |pick: fn(&Sample) -> f64| {
        let points: Vec<(f64, f64)> = warm.iter().map(|s| (s.seconds / 3600.0, pick(s))).collect();
        slope(&points)
    };
    let rss_slope = per_hour(|s| s.rss_mb);
    let active_slope = per_hour(|s| s.active_mb);
    let range = |pick: fn(&Sample) -> f64| {
        let values = warm.iter().map(|s| pick(s));
        let min = values.clone().fold(f64::INFINITY, f64::min);
        let max = values.fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    };
    let (rss_min, rss_max) = range(|s| s.rss_mb);
    let (active_min, active_max) = range(|s| s.active_mb);
    let summary = serde_json::json!({
        "minutes": options.minutes,
        "steps": last_step,
        "first_eval_step": first_eval,
        "samples_after_first_eval": warm.len(),
        "rss_mb_per_hour": rss_slope,
        "rss_mb_range": [rss_min, rss_max],
        "active_mb_per_hour": active_slope,
        "active_mb_range": [active_min, active_max],
        "sigterm_exit": status.to_string(),
    });
    fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!(
        "\nsoak: {:.0} min, {last_step} steps; after the first evaluation (step {first_eval}), {} samples:\n\
         resident  {rss_min:.1}..{rss_max:.1} MB, slope {rss_slope:+.2} MB/h\n\
         MLX active {active_min:.1}..{active_max:.1} MB, slope {active_slope:+.2} MB/h\n\
         SIGTERM: {status}",
        options.minutes,
        warm.len()
    );
    if !status.success() {
        bail!("ft train did not exit cleanly on SIGTERM ({status})");
    }
    Ok(())
}
