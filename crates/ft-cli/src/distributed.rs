//! Data-parallel training from the command line: `ft train --distributed
//! HOSTFILE --rank N` joins a run over MLX's ring backend, and `ft launch`
//! starts every rank of a run on this machine.

use crate::common::{model_failure, train_failure};
use crate::Failure;
use anyhow::anyhow;
use ft_model::distributed::{Backend, Group, Hostfile};
use ft_trainer::Trainer;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `ft train` flags of a data-parallel run.
#[derive(Debug, Clone, clap::Args)]
pub struct DistributedArgs {
    /// Join a data-parallel run: MLX's ring hostfile, a JSON array with one
    /// ["host:port"] list per rank (see docs/distributed.md).
    #[arg(long, value_name = "HOSTFILE")]
    pub distributed: Option<PathBuf>,
    /// This process's rank in the hostfile (default: the MLX_RANK variable).
    #[arg(long, requires = "distributed")]
    pub rank: Option<usize>,
    /// Seconds a rank waits for the others (to connect, or to finish a step
    /// or an evaluation) before it gives up with an error.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub distributed_timeout: u64,
}

/// Stops the process when the run makes no progress for too long: a rank
/// blocked in an exchange with a machine that vanished would otherwise
/// wait forever. Checkpoints are written atomically, so exiting is safe.
pub struct Watchdog {
    started: Instant,
    last_progress_ms: Arc<AtomicU64>,
}

impl Watchdog {
    fn start(rank: usize, timeout: Duration) -> Self {
        let started = Instant::now();
        let last_progress_ms = Arc::new(AtomicU64::new(0));
        let seen = last_progress_ms.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let idle = started.elapsed().as_millis() as u64 - seen.load(Ordering::Relaxed);
            if idle > timeout.as_millis() as u64 {
                eprintln!(
                    "error: distributed run: rank {rank} waited {} s for the other ranks without \
                     progress; a rank stopped or cannot be reached (raise --distributed-timeout \
                     for very slow steps). Checkpoints already written are intact.",
                    timeout.as_secs()
                );
                std::process::exit(1);
            }
        });
        Self {
            started,
            last_progress_ms,
        }
    }

    /// Records progress (a finished step or evaluation).
    pub fn alive(&self) {
        self.last_progress_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Joins the run `args` describes (if any) and hands the group to the trainer.
pub fn join(args: &DistributedArgs, trainer: &mut Trainer) -> Result<Option<Watchdog>, Failure> {
    let Some(hostfile) = &args.distributed else {
        return Ok(None);
    };
    let hosts = Hostfile::read(hostfile).map_err(model_failure)?;
    let rank = match args.rank {
        Some(rank) => rank,
        None => std::env::var("MLX_RANK")
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| {
                Failure::User(anyhow!(
                    "--distributed needs this process's rank: --rank N or MLX_RANK=N"
                ))
            })?,
    };
    if rank >= hosts.size() {
        return Err(Failure::User(anyhow!(
            "--rank {rank}, but {} lists {} ranks (0..{})",
            hostfile.display(),
            hosts.size(),
            hosts.size() - 1
        )));
    }
    // MLX's ring backend reads its settings from the environment.
    std::env::set_var("MLX_HOSTFILE", hostfile);
    std::env::set_var("MLX_RANK", rank.to_string());
    let watchdog = Watchdog::start(rank, Duration::from_secs(args.distributed_timeout.max(1)));
    if rank == 0 {
        eprintln!(
            "waiting for {} ranks ({})...",
            hosts.size(),
            hostfile.display()
        );
    }
    let group = Group::init(Backend::Ring).map_err(model_failure)?;
    trainer.distribute(group).map_err(train_failure)?;
    watchdog.alive();
    Ok(Some(watchdog))
}

/// Arguments of `ft launch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: ft launch --ranks 2 -- train --config configs/quickstart.toml\n\n\
                  Every rank is `ft <ARGS> --distributed <hostfile> --rank R` on 127.0.0.1; rank 0's \
                  output is shown, the others' errors are prefixed with their rank. To train \
                  across machines, run `ft train --distributed HOSTFILE --rank R` on each \
                  (docs/distributed.md)."
)]
pub struct LaunchArgs {
    /// Number of ranks to start on this machine.
    #[arg(long, default_value_t = 2)]
    ranks: usize,
    /// The `ft` command every rank runs (usually `train --config FILE ...`).
    #[arg(last = true, required = true)]
    args: Vec<String>,
}

/// Runs `ft launch`.
pub fn launch(args: &LaunchArgs) -> Result<(), Failure> {
    if args.ranks == 0 {
        return Err(Failure::User(anyhow!("--ranks must be at least 1")));
    }
    let exe = std::env::current_exe()
        .map_err(|error| Failure::Internal(anyhow!("cannot find the ft binary: {error}")))?;
    let ports = Hostfile::free_loopback_ports(args.ranks).map_err(model_failure)?;
    let hostfile = std::env::temp_dir().join(format!("ft-launch-{}.json", std::process::id()));
    Hostfile::loopback(&hostfile, &ports).map_err(model_failure)?;
    let mut children = Vec::with_capacity(args.ranks);
    for rank in 0..args.ranks {
        let mut command = Command::new(&exe);
        command
            .args(&args.args)
            .arg("--distributed")
            .arg(&hostfile)
            .args(["--rank", &rank.to_string()]);
        if rank > 0 {
            command.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .map_err(|error| Failure::Internal(anyhow!("cannot start rank {rank}: {error}")))?;
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[rank {rank}] {line}");
                }
            });
        }
        children.push(child);
    }
    // When one rank fails, the others are stopped after a grace period
    // (they usually notice the lost connection themselves first).
    let mut failed: Option<(usize, i32)> = None;
    let mut failed_at: Option<Instant> = None;
    let mut running: Vec<Option<std::process::Child>> = children.into_iter().map(Some).collect();
    while running.iter().any(Option::is_some) {
        for (rank, slot) in running.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            let status = child
                .try_wait()
                .map_err(|error| Failure::Internal(anyhow!("waiting for rank {rank}: {error}")))?;
            if let Some(status) = status {
                if !status.success() && failed.is_none() {
                    failed = Some((rank, status.code().unwrap_or(2)));
                    failed_at = Some(Instant::now());
                }
                *slot = None;
            }
        }
        if failed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(10)) {
            for child in running.iter_mut().flatten() {
                let _ = child.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&hostfile);
    match failed {
        None => Ok(()),
        Some((rank, code)) => {
            let error = anyhow!("rank {rank} of {} failed (exit code {code})", args.ranks);
            Err(if code == 1 {
                Failure::User(error)
            } else {
                Failure::Internal(error)
            })
        }
    }
}
