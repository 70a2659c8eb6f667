//! Was the machine quiet while a benchmark ran? The load average at its
//! start and, where `/proc` exists (Linux), the CPU time of the whole machine
//! against our own (this process and the children it waited for) during each
//! timed run: whatever else kept a CPU busy then competed with the benchmark.
//! Elsewhere (macOS) only the load average is checked.

use anyhow::Result;
use std::time::Instant;

/// A 1-minute load average above the cores a benchmark uses plus this much
/// at its start: something else was running. (The benchmark's own work just
/// before, a build, raises it to about the cores it used.)
pub const LOAD_MARGIN: f64 = 0.5;

/// Other processes that kept more than this many cores busy on average
/// during a timed run competed with it.
pub const OTHERS_LIMIT_CORES: f64 = 0.25;

/// The cores this process may use (the benchmarks use them all).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time counters at one moment, in clock ticks (Linux `/proc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    /// Every CPU's ticks in every state: wall time times CPUs.
    pub total: u64,
    /// Every CPU's busy ticks: user, nice, system, irq, softirq and steal
    /// (time a hypervisor gave to another machine).
    pub busy: u64,
    /// User and system ticks of this process and of the children it has
    /// waited for (and theirs).
    pub ours: u64,
    /// CPUs in the machine-wide counts.
    pub cpus: usize,
}

impl CpuTicks {
    /// The counters now; `None` without `/proc` (macOS).
    pub fn now() -> Option<Self> {
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (total, busy, cpus) = parse_proc_stat(&machine)?;
        Some(Self {
            total,
            busy,
            ours: parse_self_stat(&own)?,
            cpus,
        })
    }
}

/// `/proc/stat`: all CPUs' total and busy ticks (the `cpu` line; guest time
/// is already inside user and nice) and the number of `cpuN` lines.
fn parse_proc_stat(text: &str) -> Option<(u64, u64, usize)> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    if fields.len() < 4 {
        return None;
    }
    let total = (0..8).map(field).sum();
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    let cpus = text
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .and_then(|rest| rest.chars().next())
                .is_some_and(|c| c.is_ascii_digit())
        })
        .count();
    Some((total, busy, cpus.max(1)))
}

/// `/proc/self/stat`: utime + stime + cutime + cstime (fields 14 to 17;
/// the command name, field 2, is in parentheses and may hold spaces).
fn parse_self_stat(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first word after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    (11..15)
        .map(|index| fields.get(index)?.parse::<u64>().ok())
        .sum()
}

/// How the CPUs were used during a run, in cores (CPU seconds per second).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    /// By this process and its children.
    pub ours: f64,
    /// By everything else (steal included).
    pub others: f64,
    /// CPUs in the machine-wide counts.
    pub cpus: usize,
}

impl CpuUse {
    /// The use between two snapshots; `None` when no time passed.
    pub fn between(before: CpuTicks, after: CpuTicks) -> Option<Self> {
        let total = after.total.checked_sub(before.total)?;
        if total == 0 {
            return None;
        }
        let busy = after.busy.saturating_sub(before.busy);
        let ours = after.ours.saturating_sub(before.ours);
        let cores = |ticks: u64| ticks as f64 / total as f64 * after.cpus as f64;
        Some(Self {
            ours: cores(ours),
            // Per-process and per-CPU counts are sampled apart: ours can
            // come out a tick above the machine's busy time.
            others: cores(busy.saturating_sub(ours)),
            cpus: after.cpus,
        })
    }
}

/// One timed run: its wall time and CPU use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunUse {
    pub wall_seconds: f64,
    /// `None` without `/proc`.
    pub cpu: Option<CpuUse>,
}

/// Runs `work`, timing it and accounting the CPU while it ran (its child
/// processes must have been waited for when it returns).
pub fn measure<T>(work: impl FnOnce() -> Result<T>) -> Result<(T, RunUse)> {
    let before = CpuTicks::now();
    let started = Instant::now();
    let value = work()?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu = before
        .zip(CpuTicks::now())
        .and_then(|(before, after)| CpuUse::between(before, after));
    Ok((value, RunUse { wall_seconds, cpu }))
}

/// One line per sign that the machine was not quiet: a load average at the
/// start above `cores` + [`LOAD_MARGIN`], a run during which other
/// processes kept more than [`OTHERS_LIMIT_CORES`] busy. Empty: quiet.
pub fn busy_warnings(
    load_at_start: Option<f64>,
    cores: usize,
    runs: &[(String, RunUse)],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(load) = load_at_start {
        let limit = cores as f64 + LOAD_MARGIN;
        if load > limit {
            warnings.push(format!(
                "the 1-minute load average was {load:.2} at the start, above {limit:.1} \
                 ({cores} cores + {LOAD_MARGIN}): other processes were running"
            ));
        }
    }
    for (label, run) in runs {
        if let Some(cpu) = run.cpu {
            if cpu.others > OTHERS_LIMIT_CORES {
                warnings.push(format!(
                    "{label}: other processes kept {:.2} of {} CPUs busy on average \
                     during its {:.0} s (it used {:.2})",
                    cpu.others, cpu.cpus, run.wall_seconds, cpu.ours
                ));
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_gives_total_busy_and_cpus() {
        let text = "cpu  100 5 20 800 10 1 2 3 7 0\n\
                    cpu0 50 2 10 400 5 1 1 1 3 0\n\
                    cpu1 50 3 10 400 5 0 1 2 4 0\n\
                    intr 12345\nctxt 999\n";
        // total: the first 8 fields; busy: all but idle and iowait.
        assert_eq!(parse_proc_stat(text), Some((941, 131, 2)));
        assert_eq!(parse_proc_stat("cpu  1 2\n"), None);
        assert_eq!(parse_proc_stat("intr 1\n"), None);
    }

    #[test]
    fn self_stat_sums_own_and_children_times_past_an_odd_name() {
        let text = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194304 99 0 0 0 \
                    11 22 33 44 20 0 1 0 102866 3133440 412\n";
        assert_eq!(parse_self_stat(text), Some(11 + 22 + 33 + 44));
        assert_eq!(parse_self_stat("4242 (short) S 1 2"), None);
    }

    #[test]
    fn this_machine_has_counters_on_linux() {
        if cfg!(target_os = "linux") {
            let ticks = CpuTicks::now().expect("/proc");
            assert!(ticks.total >= ticks.busy && ticks.cpus >= 1, "{ticks:?}");
        }
    }

    #[test]
    fn cpu_use_splits_busy_time_into_ours_and_others() {
        let before = CpuTicks {
            total: 1_000,
            busy: 100,
            ours: 10,
            cpus: 2,
        };
        // 10 s on 2 CPUs at 100 ticks/s: 2000 ticks; 1500 busy, 1200 ours.
        let after = CpuTicks {
            total: 3_000,
            busy: 1_600,
            ours: 1_210,
            cpus: 2,
        };
        let use_ = CpuUse::between(before, after).expect("time passed");
        assert!((use_.ours - 1.2).abs() < 1e-12, "{use_:?}");
        assert!((use_.others - 0.3).abs() < 1e-12, "{use_:?}");
        assert_eq!(CpuUse::between(after, after), None);
        // Ours a little above the machine's busy count: nobody else.
        let skewed = CpuTicks {
            ours: 1_700,
            ..after
        };
        assert_eq!(CpuUse::between(before, skewed).map(|u| u.others), Some(0.0));
    }

    fn run(others: f64) -> RunUse {
        RunUse {
            wall_seconds: 100.0,
            cpu: Some(CpuUse {
                ours: 1.8,
                others,
                cpus: 2,
            }),
        }
    }

    #[test]
    fn a_quiet_machine_gives_no_warning() {
        let runs = [
            ("round 1 mlx-ft".to_string(), run(0.02)),
            ("round 1 mlx-lm".to_string(), run(0.0)),
            (
                "round 2 mlx-lm".to_string(),
                RunUse {
                    wall_seconds: 90.0,
                    cpu: None,
                },
            ),
        ];
        // Our own previous work keeps the load average near the cores.
        assert!(busy_warnings(Some(2.4), 2, &runs).is_empty());
        assert!(busy_warnings(None, 2, &runs).is_empty());
    }

    #[test]
    fn load_at_the_start_or_other_processes_during_a_run_warn() {
        let load = busy_warnings(Some(3.1), 2, &[]);
        assert_eq!(load.len(), 1);
        assert!(
            load[0].contains("3.10") && load[0].contains("2 cores"),
            "{load:?}"
        );
        let runs = [
            ("round 1 mlx-ft".to_string(), run(0.1)),
            ("round 2 mlx-lm".to_string(), run(0.9)),
        ];
        let competing = busy_warnings(Some(0.3), 2, &runs);
        assert_eq!(competing.len(), 1, "{competing:?}");
        assert!(
            competing[0].starts_with("round 2 mlx-lm: other processes kept 0.90 of 2 CPUs"),
            "{competing:?}"
        );
        assert_eq!(busy_warnings(Some(4.0), 2, &runs).len(), 2);
    }

    #[test]
    fn measure_times_the_work_and_counts_a_child() {
        let ((), run) = measure(|| {
            let status = std::process::Command::new("sh")
                .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
                .status()?;
            anyhow::ensure!(status.success());
            Ok(())
        })
        .expect("runs");
        assert!(run.wall_seconds > 0.0);
        if let Some(cpu) = run.cpu {
            assert!(cpu.ours >= 0.0 && cpu.others >= 0.0, "{cpu:?}");
        }
    }
}
