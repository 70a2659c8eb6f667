//! `ft doctor`: is this machine ready to fine-tune?

use crate::Failure;
use anyhow::anyhow;
use ft_model::runtime;
use serde_json::json;
use std::time::Duration;

/// Below this fp32 rate the CPU backend is on an unoptimised BLAS
/// (the wheel's reference BLAS gives ~3.5 GFLOP/s, OpenBLAS 100+).
const MIN_CPU_GFLOPS: f64 = 10.0;
const MATMUL_N: usize = 1024;

/// Options of `ft doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

impl Check {
    /// A check from a measurement: `judge` gives (passed, detail) for a
    /// value; an error fails the check with its message.
    fn from_result<T, E: std::fmt::Display>(
        name: &'static str,
        result: &Result<T, E>,
        judge: impl FnOnce(&T) -> (bool, String),
    ) -> Self {
        let (ok, detail) = match result {
            Ok(value) => judge(value),
            Err(error) => (false, error.to_string()),
        };
        Self { name, ok, detail }
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let mut checks = Vec::new();
    let mlx_version = runtime::mlx_version();
    checks.push(Check {
        name: "MLX version",
        ok: true,
        detail: mlx_version.clone(),
    });
    let device = runtime::default_device();
    checks.push(Check::from_result("default device", &device, |device| {
        (true, (*device).to_string())
    }));
    let on_cpu = matches!(device, Ok("cpu"));

    let matmul = runtime::measure_matmul(MATMUL_N, Duration::from_millis(1500));
    // Looked up after the matmul so that the BLAS is certainly in use.
    let blas = runtime::blas_binding();
    let blas_ok = !(on_cpu && (blas.name.starts_with("reference") || blas.name == "none found"));
    let mut blas_detail = blas.name.clone();
    if let Some(library) = blas
        .backend_library
        .as_ref()
        .or(blas.sgemm_library.as_ref())
    {
        blas_detail.push_str(&format!(" [{library}]"));
    }
    checks.push(Check {
        name: "BLAS",
        ok: blas_ok,
        detail: blas_detail,
    });
    checks.push(Check::from_result(
        "fp32 matmul 1024x1024",
        &matmul,
        |rate| {
            (
                !on_cpu || rate.gflops >= MIN_CPU_GFLOPS,
                format!(
                    "{:.1} GFLOP/s over {} products (max relative error {:.1e})",
                    rate.gflops, rate.repetitions, rate.max_relative_error
                ),
            )
        },
    ));
    let gradient = runtime::gradient_check();
    checks.push(Check::from_result("gradient check", &gradient, |check| {
        (
            true,
            format!(
                "value_and_grad of sum(x^3 + sin x): max abs error {:.1e}",
                check.max_abs_error
            ),
        )
    }));

    let all_ok = checks.iter().all(|check| check.ok);
    if args.json {
        let object = json!({
            "ft_version": env!("CARGO_PKG_VERSION"),
            "mlx_version": mlx_version,
            "device": device.as_ref().ok(),
            "blas": blas,
            "matmul": matmul.as_ref().ok(),
            "gradient_check": gradient.as_ref().ok(),
            "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
            "ok": all_ok,
        });
        println!("{object}");
    } else {
        println!("mlx-ft {} doctor", env!("CARGO_PKG_VERSION"));
        for check in &checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            println!("  {mark}  {:<22} {}", check.name, check.detail);
        }
        println!(
            "{}",
            if all_ok {
                "all checks passed"
            } else {
                "some checks failed"
            }
        );
    }
    if all_ok {
        Ok(())
    } else {
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        Err(Failure::User(anyhow!(
            "doctor: failed checks: {} (run `cargo xtask setup` to reinstall the MLX runtime)",
            failed.join(", ")
        )))
    }
}
