//! MLX's ring backend on loopback: two processes (this test binary started
//! again as each rank) join a group and reduce arrays.

use ft_model::distributed::{Backend, Group, Hostfile};
use mlx_rs::Array;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "FT_DISTRIBUTED_TEST_ROLE";

/// MLX's ring backend, or (outside CI) a recorded skip.
fn ring_backend_present() -> bool {
    ft_config::testing::prerequisite(
        Backend::Ring.is_available(),
        "MLX's ring distributed backend (this MLX build has none)",
        "`cargo xtask setup` (it builds MLX with the ring backend)",
    )
}

/// Starts `ranks` copies of this test binary running `test` as ranks of a
/// loopback group; returns each one's exit status and output.
fn spawn_ranks(test: &str, ranks: usize, role: &str) -> Vec<(std::process::ExitStatus, String)> {
    let dir = tempfile::tempdir().expect("loopback test");
    let ports = Hostfile::free_loopback_ports(ranks).expect("loopback test");
    let hostfile = dir.path().join("hosts.json");
    Hostfile::loopback(&hostfile, &ports).expect("loopback test");
    let exe = std::env::current_exe().expect("loopback test");
    let children: Vec<_> = (0..ranks)
        .map(|rank| {
            Command::new(&exe)
                .args([test, "--exact", "--nocapture"])
                .env(ROLE, role)
                .env("MLX_RANK", rank.to_string())
                .env("MLX_HOSTFILE", &hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("loopback test")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    children
        .into_iter()
        .map(|mut child| {
            while child.try_wait().expect("loopback test").is_none() {
                assert!(Instant::now() < deadline, "a rank hung");
                std::thread::sleep(Duration::from_millis(50));
            }
            let out = child.wait_with_output().expect("loopback test");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status, text)
        })
        .collect()
}

#[test]
fn ranks_on_loopback_sum_arrays() {
    match std::env::var(ROLE).as_deref() {
        Ok("sum") => {
            let group = Group::init(Backend::Ring).expect("loopback test");
            let rank = group.rank() as f32;
            let a = Array::from_slice(&[rank, 1.0, 2.0], &[3]);
            let b = Array::from_slice(&[10.0 * rank; 4], &[2, 2]);
            let single = group.all_sum(&a).expect("loopback test");
            let flat = group.all_sum_flat(&[a, b]).expect("loopback test");
            mlx_rs::transforms::eval([&single, &flat[0], &flat[1]]).expect("loopback test");
            println!(
                "RESULT rank={} size={} single={:?} a={:?} b={:?} shape={:?}",
                group.rank(),
                group.size(),
                single.as_slice::<f32>(),
                flat[0].as_slice::<f32>(),
                flat[1].as_slice::<f32>(),
                flat[1].shape()
            );
        }
        Ok(_) => {}
        Err(_) => {
            if !ring_backend_present() {
                return;
            }
            for ranks in [2usize, 3] {
                let results = spawn_ranks("ranks_on_loopback_sum_arrays", ranks, "sum");
                // ranks 0..n: sum of ranks in a[0], n in a[1], 2n in a[2], 10*sum in b.
                let rank_sum: usize = (0..ranks).sum();
                let expected = format!(
                    "size={ranks} single={:?} a={:?} b={:?} shape=[2, 2]",
                    [rank_sum as f32, ranks as f32, 2.0 * ranks as f32],
                    [rank_sum as f32, ranks as f32, 2.0 * ranks as f32],
                    [10.0 * rank_sum as f32; 4]
                );
                for (rank, (status, output)) in results.iter().enumerate() {
                    assert!(
                        status.success(),
                        "rank {rank} of {ranks}: {status}\n{output}"
                    );
                    assert!(
                        output.contains(&format!("RESULT rank={rank} {expected}")),
                        "rank {rank} of {ranks}: expected {expected}\n{output}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_lost_rank_stops_the_others() {
    match std::env::var(ROLE).as_deref() {
        Ok("lose") => {
            let group = Group::init(Backend::Ring).expect("loopback test");
            let x = Array::from_slice(&[1.0f32; 1024], &[1024]);
            for round in 0.. {
                if group.rank() == 1 && round == 3 {
                    println!("rank 1 leaves");
                    std::process::exit(0);
                }
                let sum = group.all_sum(&x).expect("loopback test");
                if let Err(error) = sum.eval() {
                    println!("RESULT rank {} round {round}: error {error}", group.rank());
                    std::process::exit(3);
                }
            }
        }
        Ok(_) => {}
        Err(_) => {
            if !ring_backend_present() {
                return;
            }
            let started = Instant::now();
            let results = spawn_ranks("a_lost_rank_stops_the_others", 2, "lose");
            println!("{:?}\n{}", started.elapsed(), results[0].1);
            assert!(!results[0].0.success(), "{}", results[0].1);
        }
    }
}

/// The quickstart adapters' gradients: 16 layers x 7 projections x (A, B)
/// of SmolLM2-135M (hidden 576, kv 192, FFN 1536) at rank 8.
fn lora_shaped_arrays(rank_value: f32) -> Vec<Array> {
    let shapes: [(i32, i32); 7] = [
        (576, 576),
        (576, 192),
        (576, 192),
        (576, 576),
        (576, 1536),
        (576, 1536),
        (1536, 576),
    ];
    (0..16)
        .flat_map(|_| shapes)
        .flat_map(|(input, output)| {
            [
                Array::from_slice(&vec![rank_value; (input * 8) as usize], &[input, 8]),
                Array::from_slice(&vec![rank_value; (8 * output) as usize], &[8, output]),
            ]
        })
        .collect()
}

#[test]
fn flattened_and_per_array_exchanges_agree_and_are_timed() {
    match std::env::var(ROLE).as_deref() {
        Ok("time") => {
            let group = Group::init(Backend::Ring).expect("loopback test");
            let arrays = lora_shaped_arrays(group.rank() as f32 + 1.0);
            let mut timings = Vec::new();
            for flat in [true, false, true, false] {
                // One exchange per array is slow (a ring round trip each): time fewer.
                let rounds = if flat { 10 } else { 1 };
                let started = Instant::now();
                for _ in 0..rounds {
                    let sums = if flat {
                        group.all_sum_flat(&arrays).expect("loopback test")
                    } else {
                        arrays
                            .iter()
                            .map(|a| group.all_sum(a).expect("loopback test"))
                            .collect()
                    };
                    mlx_rs::transforms::eval(&sums).expect("loopback test");
                    // ranks 0 and 1 contribute 1 and 2: every element sums to 3.
                    let last = sums.last().expect("loopback test");
                    assert_eq!(last.as_slice::<f32>()[0], 3.0);
                }
                timings.push((flat, started.elapsed() / rounds));
            }
            println!(
                "RESULT rank {}: {} arrays, 245,760 floats; {timings:?}",
                group.rank(),
                arrays.len()
            );
        }
        Ok(_) => {}
        Err(_) => {
            if !ring_backend_present() {
                return;
            }
            let results = spawn_ranks(
                "flattened_and_per_array_exchanges_agree_and_are_timed",
                2,
                "time",
            );
            for (status, output) in &results {
                assert!(status.success(), "{output}");
                println!(
                    "{}",
                    output
                        .lines()
                        .find(|l| l.starts_with("RESULT"))
                        .unwrap_or("")
                );
            }
        }
    }
}
