//! `ft launch` and `ft train --distributed` on loopback with the default
//! model: a short two-rank run, and a rank killed mid-run.

mod common;

use common::ft_command;
use ft_model::distributed::{Backend, Hostfile};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// MLX's ring backend, or (outside CI) a recorded skip.
fn ring_backend_present() -> bool {
    ft_config::testing::prerequisite(
        Backend::Ring.is_available(),
        "MLX's ring distributed backend (this MLX build has none)",
        "`cargo xtask setup` (it builds MLX with the ring backend)",
    )
}

/// A few short steps of the quickstart configuration into `run_dir`.
fn train_args(run_dir: &Path, steps: u32) -> Vec<String> {
    [
        "train",
        "--config",
        "configs/quickstart.toml",
        "--no-progress",
        "--set",
        &format!("training.steps={steps}"),
        "--set",
        "training.batch_size=2",
        "--set",
        "training.eval_every=0",
        "--set",
        "training.save_every=2",
        "--set",
        "scheduler.warmup_steps=1",
        "--set",
        "data.max_seq_len=64",
        "--set",
        &format!("checkpoint.output_dir={:?}", run_dir.display().to_string()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn launch_runs_two_ranks_and_only_rank_0_writes() {
    if !ring_backend_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("run");
    let mut args = vec![
        "launch".to_string(),
        "--ranks".into(),
        "2".into(),
        "--".into(),
    ];
    args.extend(train_args(&run_dir, 3));
    let out = ft_command(&args).output().expect("ft launch");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ranks      2"), "{text}");
    assert!(
        text.contains("[rank 1] rank 1 of 2: 3 steps done"),
        "{text}"
    );
    assert!(run_dir.join("adapter/adapters.safetensors").is_file());
    assert!(run_dir.join("checkpoints/step-000002").is_dir());
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics");
    let steps = metrics
        .lines()
        .filter(|line| line.contains("\"kind\":\"train\""))
        .count();
    assert_eq!(steps, 3, "one line per step, from rank 0 only:\n{metrics}");
}

#[test]
fn a_killed_rank_stops_the_other_with_a_message_naming_it() {
    if !ring_backend_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("run");
    let hostfile = dir.path().join("hosts.json");
    let ports = Hostfile::free_loopback_ports(2).expect("ports");
    Hostfile::loopback(&hostfile, &ports).expect("hostfile");
    let spawn = |rank: usize| {
        let mut args = train_args(&run_dir, 1000);
        args.extend([
            "--distributed".to_string(),
            hostfile.display().to_string(),
            "--rank".into(),
            rank.to_string(),
        ]);
        ft_command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a rank")
    };
    let mut rank0 = spawn(0);
    let mut rank1 = spawn(1);
    // Kill rank 1 once the run has made a few steps (rank 0's metrics).
    let metrics = run_dir.join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(240);
    while std::fs::read_to_string(&metrics)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 3
    {
        assert!(Instant::now() < deadline, "the run made no progress");
        assert!(
            rank0.try_wait().expect("wait").is_none(),
            "rank 0 exited early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rank1.kill().expect("kill rank 1");
    let _ = rank1.wait();
    let killed = Instant::now();
    while rank0.try_wait().expect("wait").is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "rank 0 still running 60 s after rank 1 died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped_after = killed.elapsed();
    let out = rank0.wait_with_output().expect("rank 0 output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("rank 0 stopped {stopped_after:?} after rank 1 was killed:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lost the connection to rank 1"), "{stderr}");
    assert!(stderr.contains("Resume from"), "{stderr}");
    // The last checkpoint is complete and loadable.
    let latest = ft_trainer::checkpoint::resolve(&run_dir).expect("a checkpoint");
    assert!(latest.join("trainer_state.json").is_file());
}
