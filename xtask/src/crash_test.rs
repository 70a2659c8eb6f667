//! `cargo xtask crash-test`: `ft train` killed at random moments must resume
//! to the same final adapter as a run that was never interrupted.
//!
//! Every trial starts a run, kills it with SIGKILL (at a random time, or
//! right inside a checkpoint write), checks what is on disk (the newest
//! checkpoint is complete and its files are whole), resumes it with
//! `ft train --resume` to the end and compares the final adapter with the
//! uninterrupted run's, byte for byte (tensor values when the bytes differ).
//! Then SIGTERM and SIGINT (a checkpoint must be written before exiting,
//! exit code 0), and a run into a small tmpfs that fills up (a clear error,
//! exit code 1, the previous checkpoint resumable). The model is a tiny
//! random Llama with the default model's tokenizer, so a trial takes
//! seconds; `--model` trains another one. Everything goes under
//! `target/crash-test/`.

use crate::{reference, shell};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 24;
const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// Options of `cargo xtask crash-test`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Random kills (each resumed and compared with the uninterrupted run)
    #[arg(long, value_name = "N", default_value_t = 20)]
    trials: usize,
    /// Seed of the kill times [default: the clock]
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Train this model (a name or path as `ft train` takes it) instead of a
    /// tiny random Llama
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// Use this `ft` binary instead of building one
    #[arg(long, value_name = "PATH")]
    ft: Option<PathBuf>,
}

impl Options {
    /// `--seed`, or one from the clock.
    fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
    }
}

/// xorshift64*: reproducible kill times from `--seed` without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    let built = match &options.ft {
        Some(path) => path.clone(),
        None => reference::build_ft(root)?,
    };
    let out = root.join("target/crash-test");
    if out.exists() {
        unmount_if_mounted(&out.join("full"));
        fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    fs::create_dir_all(&out)?;
    // A copy at the same depth under target/ (its rpath still finds MLX):
    // rebuilds of target/release/ft during the test do not change it.
    let ft = out.join("ft");
    fs::copy(&built, &ft).with_context(|| format!("copying {}", built.display()))?;
    let seed = options.seed();
    let mut rng = Rng(seed | 1);
    let model = match &options.model {
        Some(model) => model.clone(),
        None => tiny_model(&ft, &out.join("tiny-model"), &mut rng)?
            .display()
            .to_string(),
    };
    write_data(&out)?;
    let config = out.join("crash.toml");
    fs::write(&config, config_toml(&model, &out))?;
    let harness = Harness { ft, config, out };

    eprintln!(
        "crash-test: {} trials, seed {}, model {model}",
        options.trials, seed
    );
    let started = Instant::now();
    let reference_dir = harness.out.join("reference");
    let (reference_seconds, step_seconds) = harness.reference(&reference_dir)?;
    let reference = RunFiles::read(&reference_dir)?;
    eprintln!(
        "reference: {STEPS} steps uninterrupted in {reference_seconds:.1} s, \
         adapter {} bytes",
        reference.adapter.len()
    );

    let mut report = String::new();
    let mut failures = Vec::new();
    let mut in_writes = 0;
    let mut byte_identical = 0;
    println!("trial  kill at   step  phase                      resumed from   final adapter");
    for trial in 1..=options.trials {
        // A uniformly random moment of the run (start-up included), a
        // random moment of a random step (its computation, evaluation or
        // checkpoint), or right inside a checkpoint write, in turn.
        let aim = match trial % 3 {
            1 => Aim::At(reference_seconds * (0.05 + 0.8 * rng.unit())),
            2 => Aim::InWrite {
                step: 1 + (rng.next() % (STEPS - 1)),
                delay: Duration::from_micros(rng.next() % 3000),
            },
            _ => Aim::AfterStep {
                step: 1 + (rng.next() % (STEPS - 1)),
                delay: step_seconds.mul_f64(1.5 * rng.unit()),
            },
        };
        let outcome = harness.trial(trial, aim, &reference);
        match outcome {
            Ok(result) => {
                if result.phase.starts_with("checkpoint write") {
                    in_writes += 1;
                }
                if result.identical == Identity::Bytes {
                    byte_identical += 1;
                }
                let line = format!(
                    "{trial:>5}  {:>6.3} s  {:>4}  {:<25}  {:<13}  {}",
                    result.seconds,
                    result.step,
                    result.phase,
                    result.resumed_from,
                    result.identical.describe()
                );
                println!("{line}");
                writeln!(report, "{line}")?;
            }
            Err(error) => {
                let line = format!("{trial:>5}  FAILED: {error:#}");
                println!("{line}");
                writeln!(report, "{line}")?;
                failures.push(format!("trial {trial}: {error:#}"));
            }
        }
    }
    let resumed = options.trials - failures.len();

    println!("\nsignals (a checkpoint must be written before exiting):");
    for signal in ["TERM", "INT"] {
        match harness.signal_trial(signal, &reference) {
            Ok(line) => {
                println!("  SIG{signal}: {line}");
                writeln!(report, "SIG{signal}: {line}")?;
            }
            Err(error) => {
                println!("  SIG{signal}: FAILED: {error:#}");
                failures.push(format!("SIG{signal}: {error:#}"));
            }
        }
    }

    println!("\ndisk full (a tmpfs that fills up):");
    match harness.disk_full_trial(&reference) {
        Ok(line) => {
            println!("  {line}");
            writeln!(report, "disk full: {line}")?;
        }
        Err(error) => {
            println!("  FAILED: {error:#}");
            failures.push(format!("disk full: {error:#}"));
        }
    }

    let summary = format!(
        "{resumed}/{} resumed, {} ({byte_identical} byte-identical); {in_writes} kills landed \
         inside checkpoint writes; {:.0} s",
        options.trials,
        if resumed == options.trials {
            "identical final adapters"
        } else {
            "NOT all identical"
        },
        started.elapsed().as_secs_f64()
    );
    fs::write(
        harness.out.join("report.txt"),
        format!("{report}\n{summary}\n"),
    )?;
    println!("\n{summary}");
    if !failures.is_empty() {
        bail!(
            "{} failure(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// When to kill a run.
#[derive(Clone, Copy)]
enum Aim {
    /// This many seconds after it started.
    At(f64),
    /// `delay` after the temporary directory of checkpoint `step` appears.
    InWrite { step: u64, delay: Duration },
    /// `delay` after the metrics record of `step` appears.
    AfterStep { step: u64, delay: Duration },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Identity {
    Bytes,
    Values,
}

impl Identity {
    fn describe(self) -> &'static str {
        match self {
            Identity::Bytes => "byte-identical",
            Identity::Values => "value-identical (bytes differ)",
        }
    }
}

struct TrialResult {
    seconds: f64,
    step: u64,
    phase: String,
    resumed_from: String,
    identical: Identity,
}

/// The files of a finished run that must match the uninterrupted run's.
struct RunFiles {
    adapter: Vec<u8>,
    best_adapter: Vec<u8>,
}

impl RunFiles {
    fn read(run: &Path) -> Result<Self> {
        let read = |sub: &str| {
            let path = run.join(sub).join("adapters.safetensors");
            fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            adapter: read("adapter")?,
            best_adapter: read("best-adapter")?,
        })
    }
}

struct Harness {
    ft: PathBuf,
    config: PathBuf,
    out: PathBuf,
}

impl Harness {
    fn command(&self, run: &Path, resume: bool) -> Command {
        let mut command = Command::new(&self.ft);
        command
            .arg("train")
            .arg("--config")
            .arg(&self.config)
            .arg("--no-progress")
            .arg("--set")
            .arg(format!("checkpoint.output_dir={}", toml_path(run)));
        if resume {
            command.arg("--resume").arg(run);
        }
        // One BLAS thread: on a small machine shared with other jobs a
        // spinning second thread made steps several times slower.
        if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
            command.env("OPENBLAS_NUM_THREADS", "1");
        }
        command.stdin(Stdio::null());
        command
    }

    /// Runs `ft train` to the end; a failure carries its output.
    fn train(&self, run: &Path, resume: bool) -> Result<Output> {
        let output = self
            .command(run, resume)
            .output()
            .context("starting ft train")?;
        if !output.status.success() {
            bail!(
                "ft train{} exited with {}:\n{}",
                if resume { " --resume" } else { "" },
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// The uninterrupted run: its wall time, and the mean wall time of a
    /// step with its evaluation and checkpoint (after the first step).
    fn reference(&self, run: &Path) -> Result<(f64, Duration)> {
        let mut child = self.spawn(run)?;
        let started = Instant::now();
        let metrics = run.join("metrics.jsonl");
        let mut first_step = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if first_step.is_none() && last_train_step(&metrics) >= 1 {
                first_step = Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if !status.success() {
            bail!(
                "the uninterrupted run exited with {status}; see {}",
                run.with_extension("log").display()
            );
        }
        let total = started.elapsed();
        let per_step = total.saturating_sub(first_step.unwrap_or_default()) / (STEPS as u32 - 1);
        Ok((total.as_secs_f64(), per_step))
    }

    fn spawn(&self, run: &Path) -> Result<Child> {
        fs::create_dir_all(run)?;
        let log = fs::File::create(run.with_extension("log"))?;
        self.command(run, false)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting ft train")
    }

    fn trial(&self, trial: usize, aim: Aim, reference: &RunFiles) -> Result<TrialResult> {
        let run = self.out.join(format!("trial-{trial:02}"));
        let mut child = self.spawn(&run)?;
        let started = Instant::now();
        match aim {
            Aim::At(seconds) => {
                let deadline = Duration::from_secs_f64(seconds);
                while started.elapsed() < deadline && child.try_wait()?.is_none() {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Aim::InWrite { step, delay } => {
                let partial = run
                    .join("checkpoints")
                    .join(format!(".step-{step:06}.partial"));
                while !partial.exists() && child.try_wait()?.is_none() {
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(delay);
            }
            Aim::AfterStep { step, delay } => {
                let metrics = run.join("metrics.jsonl");
                while last_train_step(&metrics) < step && child.try_wait()?.is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(delay);
            }
        }
        // SIGKILL (a no-op error when the run already ended).
        let _ = child.kill();
        let seconds = started.elapsed().as_secs_f64();
        child.wait()?;
        let phase = phase_after_kill(&run);
        let step = last_train_step(&run.join("metrics.jsonl"));
        let newest = check_checkpoints(&run)?;
        let resumed_from = match &newest {
            Some((name, _)) => name.clone(),
            None => "(none: fresh)".into(),
        };
        self.train(&run, newest.is_some())?;
        let identical = compare_run(&run, reference)?;
        Ok(TrialResult {
            seconds,
            step,
            phase,
            resumed_from,
            identical,
        })
    }

    /// SIGTERM or SIGINT after a few steps: exit code 0, a checkpoint of the
    /// step the run stopped at, then a resume to the reference adapter.
    fn signal_trial(&self, signal: &str, reference: &RunFiles) -> Result<String> {
        let run = self.out.join(format!("sig{}", signal.to_lowercase()));
        let mut child = self.spawn(&run)?;
        let metrics = run.join("metrics.jsonl");
        let started = Instant::now();
        while last_train_step(&metrics) < 3 {
            if child.try_wait()?.is_some() {
                bail!("the run ended before the signal was sent");
            }
            if started.elapsed() > Duration::from_secs(300) {
                let _ = child.kill();
                bail!("no third step after 300 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} failed");
        }
        let status = child.wait()?;
        let stopped_at = last_train_step(&metrics);
        let log = fs::read_to_string(run.with_extension("log")).unwrap_or_default();
        if status.code() != Some(0) {
            bail!("exit status {status} (expected 0); log:\n{log}");
        }
        if !log.contains("interrupted") {
            bail!("no \"interrupted\" line in the output:\n{log}");
        }
        let newest = check_checkpoints(&run)?.context("no checkpoint after the signal")?;
        let expected = format!("step-{stopped_at:06}");
        if newest.0 != expected {
            bail!(
                "the newest checkpoint is {}, the run stopped after step {stopped_at}",
                newest.0
            );
        }
        self.train(&run, true)?;
        let identical = compare_run(&run, reference)?;
        Ok(format!(
            "exit 0 after step {stopped_at}, checkpoint {expected} written, resumed: {}",
            identical.describe()
        ))
    }

    /// A run into a tmpfs too small for all its checkpoints: exit code 1
    /// with the disk-full message, no partial checkpoint left, and the
    /// newest checkpoint resumes (from a copy on a larger disk) to the
    /// reference adapter.
    fn disk_full_trial(&self, reference: &RunFiles) -> Result<String> {
        if !cfg!(target_os = "linux") {
            return Ok(format!(
                "not available on {}: the trial fills a Linux tmpfs (mount -t tmpfs)",
                std::env::consts::OS
            ));
        }
        let mount_point = self.out.join("full");
        fs::create_dir_all(&mount_point)?;
        // Room for about three checkpoints of the reference run (keep_last
        // is 0 below, so the disk fills a few steps in).
        let (newest, _) = check_checkpoints(&self.out.join("reference"))?
            .context("the reference run left no checkpoint")?;
        let checkpoint_bytes =
            shell::dir_bytes(&self.out.join("reference/checkpoints").join(newest));
        let size_kib = (3 * checkpoint_bytes + 96 * 1024) / 1024;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(&mount_point)
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                return Ok(format!(
                    "skipped: mount -t tmpfs is not permitted here ({})",
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
            Err(error) => return Ok(format!("skipped: cannot run mount ({error})")),
        }
        let _unmount = Unmount(mount_point.clone());
        let run = mount_point.join("run");
        let output = self
            .command(&run, false)
            .arg("--set")
            .arg("checkpoint.keep_last=0")
            .output()
            .context("starting ft train")?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.code() != Some(1) {
            bail!(
                "exit status {} (expected 1) on a {size_kib} KiB disk:\n{stderr}",
                output.status
            );
        }
        let message = stderr
            .lines()
            .find(|line| line.starts_with("error:"))
            .unwrap_or_default()
            .to_string();
        if !message.contains("not enough disk space for")
            || !message.contains(&mount_point.display().to_string())
            || !message.contains("bytes")
        {
            bail!("the error does not name the path and the bytes needed:\n{stderr}");
        }
        let leftovers = hidden_entries(&run.join("checkpoints"));
        if !leftovers.is_empty() {
            bail!("temporary checkpoint directories left behind: {leftovers:?}");
        }
        let (newest, _) =
            check_checkpoints(&run)?.context("no checkpoint before the disk filled")?;
        // The newest checkpoint must carry the run to the end on a larger disk.
        let copy = self.out.join("disk-full-resumed");
        copy_dir(&run, &copy)?;
        self.train(&copy, true)?;
        let identical = compare_run(&copy, reference)?;
        Ok(format!(
            "exit 1 on a {size_kib} KiB tmpfs, {newest} intact, resumed elsewhere: {}; message: {}",
            identical.describe(),
            message
        ))
    }
}

/// Unmounts the tmpfs when the disk-full trial ends, however it ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_if_mounted(&self.0);
    }
}

fn unmount_if_mounted(path: &Path) {
    let mounted = fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split_whitespace().nth(1) == path.to_str());
    if mounted {
        let _ = Command::new("umount").arg(path).status();
    }
}

/// What the run was doing when it was killed, from what it left on disk.
fn phase_after_kill(run: &Path) -> String {
    let hidden = hidden_entries(&run.join("checkpoints"));
    if let Some(name) = hidden.iter().find(|n| n.ends_with(".partial")) {
        let step = name
            .trim_start_matches(".step-")
            .trim_end_matches(".partial");
        return format!("checkpoint write ({})", step.trim_start_matches('0'));
    }
    if hidden.iter().any(|n| n.ends_with(".deleting")) {
        return "checkpoint rotation".into();
    }
    if hidden.iter().any(|n| n.ends_with(".stale")) {
        return "checkpoint swap".into();
    }
    let run_hidden = hidden_entries(run);
    if run_hidden.iter().any(|n| n.starts_with(".adapter.")) {
        return "final adapter write".into();
    }
    if run_hidden.iter().any(|n| n.starts_with(".best-adapter.")) {
        return "best-adapter write".into();
    }
    if run.join("adapter/adapters.safetensors").is_file() {
        return "after the end".into();
    }
    if last_train_step(&run.join("metrics.jsonl")) == 0 {
        return "start-up or step 1".into();
    }
    "training".into()
}

fn hidden_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The newest complete checkpoint (name, step) after checking that every
/// complete one is whole: its state parses and names its step, its
/// safetensors files are as long as their headers say.
fn check_checkpoints(run: &Path) -> Result<Option<(String, u64)>> {
    let root = run.join("checkpoints");
    let mut complete: Vec<(String, u64)> = Vec::new();
    for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = name.strip_prefix("step-") else {
            continue;
        };
        let dir = entry.path();
        let state_path = dir.join("trainer_state.json");
        if !state_path.is_file() {
            continue;
        }
        let state: Value = serde_json::from_slice(&fs::read(&state_path)?)
            .with_context(|| format!("{} does not parse", state_path.display()))?;
        let step = state["step"]
            .as_u64()
            .context("trainer_state.json: no step")?;
        if number.parse::<u64>().ok() != Some(step) {
            bail!("{} holds step {step}", dir.display());
        }
        for file in ["adapter/adapters.safetensors", "optimizer.safetensors"] {
            check_safetensors(&dir.join(file))?;
        }
        serde_json::from_slice::<Value>(&fs::read(dir.join("adapter/adapter_config.json"))?)
            .with_context(|| format!("{}: adapter_config.json", dir.display()))?;
        complete.push((name, step));
    }
    complete.sort();
    Ok(complete.pop())
}

/// A safetensors file's tensors by name: (dtype, shape, bytes).
type Tensors = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn read_safetensors(path: &Path) -> Result<Tensors> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or_else(|| bad("shorter than its header length"))?;
    let header = bytes
        .get(8..8 + header_len)
        .ok_or_else(|| bad("cut inside its header"))?;
    let header: Value = serde_json::from_slice(header).map_err(|_| bad("bad header"))?;
    let data = &bytes[8 + header_len..];
    let mut tensors = Tensors::new();
    let mut end = 0;
    for (name, info) in header.as_object().ok_or_else(|| bad("header"))? {
        if name == "__metadata__" {
            continue;
        }
        let offsets: Vec<usize> = info["data_offsets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_default();
        let [from, to] = offsets[..] else {
            return Err(bad("tensor without offsets"));
        };
        let slice = data.get(from..to).ok_or_else(|| bad("cut short"))?;
        end = end.max(to);
        let shape = info["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let dtype = info["dtype"].as_str().unwrap_or_default().to_string();
        tensors.insert(name.clone(), (dtype, shape, slice.to_vec()));
    }
    if data.len() != end {
        return Err(bad("longer than its tensors"));
    }
    Ok(tensors)
}

fn check_safetensors(path: &Path) -> Result<()> {
    read_safetensors(path).map(|_| ())
}

/// Whether the run's final (and best) adapter equals the reference's.
fn compare_run(run: &Path, reference: &RunFiles) -> Result<Identity> {
    let got = RunFiles::read(run)?;
    let leftovers: Vec<String> = hidden_entries(&run.join("checkpoints"))
        .into_iter()
        .chain(hidden_entries(run))
        .collect();
    if !leftovers.is_empty() {
        bail!("leftovers after the resumed run finished: {leftovers:?}");
    }
    check_metrics(&run.join("metrics.jsonl"))?;
    let mut identity = Identity::Bytes;
    for (name, mine, theirs) in [
        ("adapter", &got.adapter, &reference.adapter),
        ("best-adapter", &got.best_adapter, &reference.best_adapter),
    ] {
        if mine == theirs {
            continue;
        }
        let path = run.join(name).join("adapters.safetensors");
        let ours = read_safetensors(&path)?;
        let reference_path = run
            .with_file_name("reference")
            .join(name)
            .join("adapters.safetensors");
        if ours != read_safetensors(&reference_path)? {
            bail!("{} differs from the uninterrupted run's", path.display());
        }
        identity = Identity::Values;
    }
    Ok(identity)
}

/// metrics.jsonl after a resumed run: every line parses, and the training
/// records are steps 1..=STEPS, each once.
fn check_metrics(path: &Path) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut steps = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let record: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), number + 1))?;
        if record["kind"] == "train" {
            steps.push(record["step"].as_u64().unwrap_or(0));
        }
    }
    if steps != (1..=STEPS).collect::<Vec<_>>() {
        bail!("{}: training steps {steps:?}", path.display());
    }
    Ok(())
}

fn last_train_step(metrics: &Path) -> u64 {
    fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["kind"] == "train")
        .filter_map(|record| record["step"].as_u64())
        .max()
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)?.flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn toml_path(path: &Path) -> String {
    format!(
        "\"{}\"",
        path.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

fn config_toml(model: &str, out: &Path) -> String {
    let quote = |p: &Path| toml_path(p);
    format!(
        r#"# Written by `cargo xtask crash-test`: short steps, a checkpoint after
# every step, dropout on, a fixed seed.
[model]
path = "{model}"
dtype = "float32"

[lora]
rank = 8
alpha = 16.0
dropout = 0.1
target_modules = "all-linear"
num_layers = "all"

[data]
train = {train}
valid = {valid}
max_seq_len = 64

[training]
steps = {STEPS}
batch_size = 4
seed = 1234
eval_every = 6
save_every = 1

[optimizer]
learning_rate = 1e-3

[scheduler]
kind = "cosine"
warmup_steps = 2

[checkpoint]
output_dir = "unused"
keep_last = 3

[logging]
plots = false
"#,
        train = quote(&out.join("train.jsonl")),
        valid = quote(&out.join("valid.jsonl")),
    )
}

fn write_data(out: &Path) -> Result<()> {
    const CITIES: [&str; 16] = [
        "Lisbon", "Oslo", "Lima", "Cairo", "Quito", "Hanoi", "Accra", "Dakar", "Seoul", "Sofia",
        "Riga", "Bern", "Doha", "Kyiv", "Rome", "Baku",
    ];
    let lines = |range: std::ops::Range<usize>| {
        range
            .map(|i| {
                json!({"messages": [
                    {"role": "user", "content": format!("Where is office {i}?")},
                    {"role": "assistant", "content": format!("Office {i} is in {}.", CITIES[i % 16])},
                ]})
                .to_string()
                    + "\n"
            })
            .collect::<String>()
    };
    fs::write(out.join("train.jsonl"), lines(0..48))?;
    fs::write(out.join("valid.jsonl"), lines(48..56))?;
    Ok(())
}

/// A tiny random Llama (2 layers, hidden 64, the default model's vocabulary
/// and tokenizer) as an HF directory: `ft convert` writes the tokenizer
/// files, then the config and weights are replaced.
fn tiny_model(ft: &Path, dir: &Path, rng: &mut Rng) -> Result<PathBuf> {
    let output = Command::new(ft)
        .args(["convert", "--model", DEFAULT_MODEL, "--out"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("running ft convert")?;
    if !output.status.success() {
        bail!(
            "ft convert --model {DEFAULT_MODEL} failed (run `cargo xtask setup` for the model):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("model") && name.contains("safetensors") {
            fs::remove_file(entry.path())?;
        }
    }
    let (vocab, hidden, inter, layers, heads, kv_heads) = (49152u64, 64u64, 128u64, 2, 4u64, 2u64);
    let head_dim = hidden / heads;
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": true,
        "max_position_embeddings": 8192,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    });
    fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let mut tensors: Vec<(String, Vec<u64>, f64, f64)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![vocab, hidden],
        0.02,
        0.0,
    )];
    for layer in 0..layers {
        let p = format!("model.layers.{layer}");
        for (name, out, fan_in) in [
            ("self_attn.q_proj", heads * head_dim, hidden),
            ("self_attn.k_proj", kv_heads * head_dim, hidden),
            ("self_attn.v_proj", kv_heads * head_dim, hidden),
            ("self_attn.o_proj", hidden, heads * head_dim),
            ("mlp.gate_proj", inter, hidden),
            ("mlp.up_proj", inter, hidden),
            ("mlp.down_proj", hidden, inter),
        ] {
            let scale = 1.0 / (fan_in as f64).sqrt();
            tensors.push((format!("{p}.{name}.weight"), vec![out, fan_in], scale, 0.0));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("{p}.{norm}.weight"), vec![hidden], 0.1, 1.0));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![hidden], 0.1, 1.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data: Vec<u8> = Vec::new();
    for (name, shape, scale, mean) in &tensors {
        let count: u64 = shape.iter().product();
        let from = data.len();
        for _ in 0..count {
            data.extend_from_slice(&((mean + scale * rng.normal()) as f32).to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [from, data.len()]}),
        );
    }
    let mut header = serde_json::to_string(&Value::Object(header))?;
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    fs::write(dir.join("model.safetensors"), bytes)?;
    Ok(dir.to_path_buf())
}
