//! Data-parallel training over MLX's ring backend on loopback: this test
//! binary is started again once per rank (and once for the single-process
//! reference, so every run has a fresh MLX), and the runs are compared.

mod common;

use common::{config, model, tokenizer, train_losses};
use ft_model::distributed::{Backend, Group, Hostfile};
use ft_trainer::{NoCallbacks, Trainer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "FT_DISTRIBUTED_ROLE";
const DIR: &str = "FT_DISTRIBUTED_DIR";
const BATCH: &str = "FT_DISTRIBUTED_BATCH";
const OPTIMIZER: &str = "FT_DISTRIBUTED_OPTIMIZER";
const STEPS: u32 = 6;

/// One run in this process: `single`, or a rank of a group (`rank`).
fn run_role(role: &str) {
    let dir = PathBuf::from(std::env::var(DIR).expect("dir"));
    let batch: u32 = std::env::var(BATCH).expect("batch").parse().expect("batch");
    // Each process writes its own copy of the (identical) data files.
    let data_dir = dir.join(format!(
        "data-{role}-{}",
        std::env::var("MLX_RANK").unwrap_or_default()
    ));
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let mut config = config(&data_dir, STEPS);
    config.training.batch_size = batch;
    config.training.eval_every = 3;
    config.training.save_every = 3;
    if std::env::var(OPTIMIZER).as_deref() == Ok("sgd") {
        config.optimizer.name = ft_config::OptimizerName::Sgd;
        config.optimizer.learning_rate = 0.5;
    } else {
        // A learning rate that moves the weights visibly in a few steps.
        config.optimizer.learning_rate = 5e-3;
    }
    config.checkpoint.output_dir = dir.join(role);
    if role == "resume" {
        // One process continues the data-parallel run from its checkpoint.
        config.checkpoint.resume = Some(dir.join("rank/checkpoints/step-000003"));
    }
    let mut trainer = Trainer::with_model(config, model(3), tokenizer()).expect("trainer");
    if role == "rank" {
        let group = Group::init(Backend::Ring).expect("joins the group");
        trainer.distribute(group).expect("distributes");
    }
    trainer.train(&mut NoCallbacks).expect("trains");
}

fn spawn(test: &str, role: &str, dir: &Path, batch: u32, env: &[(&str, String)]) -> Child {
    let optimizer = std::env::var(OPTIMIZER).unwrap_or_default();
    let mut command = Command::new(std::env::current_exe().expect("exe"));
    command
        .args([test, "--exact", "--nocapture"])
        .env(ROLE, role)
        .env(DIR, dir)
        .env(BATCH, batch.to_string())
        .env(OPTIMIZER, optimizer)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn")
}

fn finish(child: Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut child = child;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "{what} hung");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn adapter(run_dir: &Path) -> HashMap<String, Vec<f32>> {
    let path = run_dir.join("adapter/adapters.safetensors");
    let arrays = mlx_rs::Array::load_safetensors(&path).expect("adapter");
    arrays
        .into_iter()
        .map(|(name, array)| (name, array.as_slice::<f32>().to_vec()))
        .collect()
}

/// `ranks` processes with a global batch of `batch` rows against one
/// process with the same batch: every step's loss agrees to 1e-5 and every
/// adapter value to `tolerance`. (The per-rank gradients are added in
/// another order than one process adds them, so the last bits differ;
/// AdamW divides each update by the root of its squared-gradient average,
/// which magnifies such differences in near-zero gradients, SGD does not.)
fn compare(test: &str, ranks: usize, batch: u32, tolerance: f32) {
    if !ft_config::testing::prerequisite(
        Backend::Ring.is_available(),
        "MLX's ring distributed backend (this MLX build has none)",
        "`cargo xtask setup` (it builds MLX with the ring backend)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = spawn(test, "single", dir.path(), batch, &[]);
    finish(reference, "single-process run");
    let ports = Hostfile::free_loopback_ports(ranks).expect("ports");
    let hostfile = dir.path().join("hosts.json");
    Hostfile::loopback(&hostfile, &ports).expect("hostfile");
    let children: Vec<Child> = (0..ranks)
        .map(|rank| {
            spawn(
                test,
                "rank",
                dir.path(),
                batch,
                &[
                    ("MLX_RANK", rank.to_string()),
                    ("MLX_HOSTFILE", hostfile.display().to_string()),
                ],
            )
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        finish(child, &format!("rank {rank}"));
    }
    let single = train_losses(&dir.path().join("single"));
    let parallel = train_losses(&dir.path().join("rank"));
    assert_eq!(single.len(), STEPS as usize);
    assert_eq!(
        single.iter().map(|s| s.0).collect::<Vec<_>>(),
        parallel.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for ((step, a), (_, b)) in single.iter().zip(&parallel) {
        assert!((a - b).abs() < 1e-5, "step {step}: {a} vs {b}");
    }
    assert!(
        single.first().map(|s| s.1) != single.last().map(|s| s.1),
        "the loss must move for the comparison to mean anything"
    );
    let (a, b) = (
        adapter(&dir.path().join("single")),
        adapter(&dir.path().join("rank")),
    );
    assert_eq!(a.len(), b.len());
    let loss_diff = single
        .iter()
        .zip(&parallel)
        .map(|(x, y)| (x.1 - y.1).abs())
        .fold(0.0f64, f64::max);
    let adapter_diff = a
        .iter()
        .flat_map(|(name, values)| values.iter().zip(&b[name]).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    eprintln!(
        "{ranks} ranks, batch {batch}: max loss diff {loss_diff:.2e}, max adapter diff {adapter_diff:.2e}"
    );
    for (name, values) in &a {
        let other = &b[name];
        let diff = values
            .iter()
            .zip(other)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < tolerance, "{name}: max diff {diff}");
    }
    // Only rank 0 wrote: one run directory with checkpoints and metrics.
    assert!(dir.path().join("rank/checkpoints/step-000003").is_dir());
    // Its checkpoint resumes in one process: the later steps' losses are
    // the single-process run's.
    finish(spawn(test, "resume", dir.path(), batch, &[]), "resumed run");
    let resumed = train_losses(&dir.path().join("resume"));
    assert_eq!(
        resumed.iter().map(|s| s.0).collect::<Vec<_>>(),
        (4..=u64::from(STEPS)).collect::<Vec<_>>()
    );
    for (step, loss) in &resumed {
        let reference = single[*step as usize - 1].1;
        assert!(
            (loss - reference).abs() < 1e-5,
            "resumed step {step}: {loss} vs {reference}"
        );
    }
}

#[test]
fn two_ranks_equal_one_process_with_the_same_global_batch() {
    match std::env::var(ROLE).as_deref() {
        Ok(role) => run_role(role),
        Err(_) => {
            compare(
                "two_ranks_equal_one_process_with_the_same_global_batch",
                2,
                4,
                5e-4,
            );
            std::env::set_var(OPTIMIZER, "sgd");
            compare(
                "two_ranks_equal_one_process_with_the_same_global_batch",
                2,
                4,
                1e-5,
            );
        }
    }
}

#[test]
fn three_ranks_share_an_uneven_batch_by_the_documented_rule() {
    // 4 rows on 3 ranks: 2, 1 and 1 (parallel::shard_range).
    match std::env::var(ROLE).as_deref() {
        Ok(role) => run_role(role),
        Err(_) => {
            std::env::set_var(OPTIMIZER, "sgd");
            compare(
                "three_ranks_share_an_uneven_batch_by_the_documented_rule",
                3,
                4,
                1e-5,
            );
        }
    }
}
