//! `ft train` killed and resumed, as in `cargo xtask crash-test` but short:
//! SIGKILL inside a checkpoint write and mid-training, SIGTERM and SIGINT
//! (a checkpoint before exiting, exit code 0), each resumed with `--resume`
//! to the same final adapter bytes as an uninterrupted run; and a run into
//! a tmpfs that fills up (exit code 1, the path and bytes in the message,
//! the previous checkpoint resumable). The model is a tiny random Mistral
//! with the default model's tokenizer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 8;

/// A run set-up: the tiny model, the data and a configuration, in a temp dir.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// `None` when the default model is absent (a failure under CI, else a
    /// recorded skip).
    fn new() -> Option<Self> {
        ft_config::testing::default_model()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("model");
        // The default model's tokenizer files, then tiny weights in place of its own.
        let output = common::ft(&[
            "convert",
            "--model",
            "smollm2-135m-instruct",
            "--out",
            model.to_str().expect("utf-8"),
        ]);
        assert!(output.status.success(), "{output:?}");
        std::fs::remove_file(model.join("model.safetensors")).expect("remove weights");
        let mut hf = ft_model::tiny::tiny_mistral_config();
        hf.vocab_size = 49152;
        let weights = ft_model::tiny::random_weights(&hf, 3).expect("weights");
        ft_model::tiny::write_hf_dir(&model, &hf, &weights, 1).expect("write model");
        let line = |i: usize| {
            format!(
                r#"{{"messages":[{{"role":"user","content":"Where is office {i}?"}},{{"role":"assistant","content":"Office {i} is in Lima."}}]}}"#
            ) + "\n"
        };
        std::fs::write(
            dir.path().join("train.jsonl"),
            (0..16).map(line).collect::<String>(),
        )
        .expect("train");
        std::fs::write(
            dir.path().join("valid.jsonl"),
            (16..20).map(line).collect::<String>(),
        )
        .expect("valid");
        let config = dir.path().join("crash.toml");
        std::fs::write(
            &config,
            format!(
                r#"[model]
path = "{model}"
[lora]
rank = 4
dropout = 0.1
target_modules = "all-linear"
num_layers = "all"
[data]
train = "{root}/train.jsonl"
valid = "{root}/valid.jsonl"
max_seq_len = 64
[training]
steps = {STEPS}
batch_size = 4
seed = 99
eval_every = 4
save_every = 1
[optimizer]
learning_rate = 1e-3
[scheduler]
warmup_steps = 1
[checkpoint]
keep_last = 2
[logging]
plots = false
"#,
                model = model.display(),
                root = dir.path().display()
            ),
        )
        .expect("config");
        Some(Self { dir, config })
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, run: &Path, resume: bool) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ft"));
        command
            .current_dir(common::root())
            .env("NO_COLOR", "1")
            // Tests run side by side on small machines: one BLAS thread each.
            .env("OPENBLAS_NUM_THREADS", "1")
            .args(["train", "--no-progress", "--config"])
            .arg(&self.config)
            .arg("--set")
            .arg(format!("checkpoint.output_dir=\"{}\"", run.display()));
        for (key, _) in std::env::vars() {
            if key.starts_with("FT_") && key != "FT_MODELS_DIR" {
                command.env_remove(key);
            }
        }
        if resume {
            command.arg("--resume").arg(run);
        }
        command
    }

    /// Runs to the end; panics with the output on failure.
    fn train(&self, run: &Path, resume: bool) -> Output {
        let output = self.command(run, resume).output().expect("run ft");
        assert!(
            output.status.success(),
            "ft train (resume: {resume}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn spawn(&self, run: &Path) -> Child {
        self.command(run, false)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ft")
    }
}

fn adapter_bytes(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("adapter/adapters.safetensors")).expect("final adapter")
}

fn last_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["kind"] == "train")
        .filter_map(|record| record["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Complete checkpoints (with their state file) by name, oldest first.
fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("trainer_state.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("step-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `ready` holds or the child exits; panics after two minutes.
fn wait_for(child: &mut Child, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        if child.try_wait().expect("poll").is_some() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run made no progress"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The resumed run's files tell one story: metrics steps 1..=STEPS once,
/// no temporary directories left.
fn assert_clean(run: &Path) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let steps: Vec<u64> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a whole JSON line"))
        .filter(|record| record["kind"] == "train")
        .filter_map(|record| record["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>());
    assert_eq!(hidden(&run.join("checkpoints")), Vec::<String>::new());
    assert_eq!(hidden(run), Vec::<String>::new());
}

#[test]
fn killed_and_signalled_runs_resume_to_the_uninterrupted_adapter() {
    let Some(setup) = Setup::new() else { return };
    let reference = setup.run_dir("reference");
    setup.train(&reference, false);
    let expected = adapter_bytes(&reference);

    // SIGKILL right after the temporary directory of checkpoint 3 appears
    // (inside its write, unless the write is faster than the poll), then
    // SIGKILL in the middle of step 6.
    for (name, aim) in [("in-write", "write"), ("mid-run", "step")] {
        let run = setup.run_dir(name);
        let mut child = setup.spawn(&run);
        let partial = run.join("checkpoints/.step-000003.partial");
        match aim {
            "write" => wait_for(&mut child, || partial.exists()),
            _ => wait_for(&mut child, || last_step(&run) >= 5),
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        println!(
            "{name}: killed after step {}, leftovers {:?}, checkpoints {:?}",
            last_step(&run),
            hidden(&run.join("checkpoints")),
            checkpoints(&run)
        );
        assert!(!checkpoints(&run).is_empty(), "{name}: no checkpoint");
        setup.train(&run, true);
        assert!(adapter_bytes(&run) == expected, "{name}: adapters differ");
        assert_clean(&run);
    }

    // SIGTERM and SIGINT: a checkpoint of the step reached, exit code 0.
    for signal in ["TERM", "INT"] {
        let run = setup.run_dir(&format!("sig{signal}"));
        let mut child = setup.spawn(&run);
        wait_for(&mut child, || last_step(&run) >= 2);
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success());
        let output = child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "SIG{signal}: {stdout}");
        assert!(
            stdout.contains("interrupted after"),
            "SIG{signal}: {stdout}"
        );
        let stopped = last_step(&run);
        assert!(
            stopped < STEPS,
            "SIG{signal} came too late to test anything"
        );
        assert_eq!(
            checkpoints(&run).last().cloned(),
            Some(format!("step-{stopped:06}")),
            "SIG{signal}: no checkpoint of the last step"
        );
        setup.train(&run, true);
        assert!(
            adapter_bytes(&run) == expected,
            "SIG{signal}: adapters differ"
        );
        assert_clean(&run);
    }
}

/// Unmounts on drop (through `sudo -n` when the mount needed it).
#[cfg(target_os = "linux")]
struct Mount(PathBuf, bool);

#[cfg(target_os = "linux")]
impl Drop for Mount {
    fn drop(&mut self) {
        let mut command = if self.1 {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "umount"]);
            sudo
        } else {
            Command::new("umount")
        };
        let _ = command.arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size_kib` at `point`: as root, else through
/// passwordless `sudo` (CI runners); `Ok(true)` when sudo was used.
#[cfg(target_os = "linux")]
fn mount_tmpfs(point: &Path, size_kib: u64) -> Result<bool, String> {
    let mut last = String::new();
    for sudo in [false, true] {
        let mut command = if sudo {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "mount"]);
            sudo
        } else {
            Command::new("mount")
        };
        match command
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(point)
            .stderr(Stdio::piped())
            .output()
        {
            Ok(out) if out.status.success() => return Ok(sudo),
            Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(error) => last = format!("cannot run mount: {error}"),
        }
    }
    Err(last)
}

// tmpfs is a Linux file system; on macOS this test does not exist (not skipped).
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_stops_with_the_bytes_needed_and_the_last_checkpoint_intact() {
    let Some(setup) = Setup::new() else { return };
    let reference = setup.run_dir("reference");
    setup.train(&reference, false);
    let newest = checkpoints(&reference).pop().expect("a checkpoint");
    let checkpoint_bytes: u64 = walk(&reference.join("checkpoints").join(newest));
    // Room for about three checkpoints; keep_last = 0 keeps them all.
    let size_kib = (3 * checkpoint_bytes + 96 * 1024) / 1024;
    let mount_point = setup.run_dir("small-disk");
    std::fs::create_dir_all(&mount_point).expect("mount point");
    let mounted = mount_tmpfs(&mount_point, size_kib);
    if !ft_config::testing::prerequisite(
        mounted.is_ok(),
        &format!(
            "a small tmpfs mounted by the test ({})",
            mounted.as_ref().err().map_or("", String::as_str)
        ),
        "run the tests on Linux as root or with passwordless sudo, where `mount -t tmpfs` works",
    ) {
        return;
    }
    let _unmount = Mount(mount_point.clone(), mounted.unwrap_or(false));
    let run = mount_point.join("run");
    let output = setup
        .command(&run, false)
        .args(["--set", "checkpoint.keep_last=0"])
        .output()
        .expect("run ft");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    println!("{stderr}");
    assert!(stderr.contains("not enough disk space for"), "{stderr}");
    // A checkpoint or the best adapter, whichever write found the disk full.
    assert!(stderr.contains(&run.display().to_string()), "{stderr}");
    assert!(stderr.contains(" bytes) free"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(hidden(&run.join("checkpoints")), Vec::<String>::new());
    let saved = checkpoints(&run);
    assert!(!saved.is_empty(), "no checkpoint before the disk filled");
    // The newest checkpoint carries the run to the end on a larger disk.
    let copy = setup.run_dir("moved");
    copy_dir(&run, &copy);
    setup.train(&copy, true);
    assert!(adapter_bytes(&copy) == adapter_bytes(&reference));
}

#[cfg(target_os = "linux")]
fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
