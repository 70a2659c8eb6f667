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

/// One line about the GPU from MLX's device info.
fn describe_gpu(info: &std::collections::BTreeMap<String, runtime::DeviceInfoValue>) -> String {
    use runtime::DeviceInfoValue::{Size, Text};
    let text = |key: &str| match info.get(key) {
        Some(Text(value)) => Some(value.clone()),
        _ => None,
    };
    let bytes = |key: &str| match info.get(key) {
        Some(Size(value)) => Some(ft_trainer::disk::human_bytes(*value)),
        _ => None,
    };
    let mut parts = Vec::new();
    if let Some(name) = text("device_name").or_else(|| text("architecture")) {
        parts.push(name);
    }
    if let Some(memory) = bytes("memory_size") {
        parts.push(format!("{memory} memory"));
    }
    if let Some(working_set) = bytes("max_recommended_working_set_size") {
        parts.push(format!("recommended working set {working_set}"));
    }
    if parts.is_empty() {
        parts.push("available".into());
    }
    parts.join(", ")
}

fn describe_rate(rate: &runtime::MatmulRate) -> (bool, String) {
    (
        true,
        format!(
            "{:.1} GFLOP/s over {} products (max relative error {:.1e})",
            rate.gflops, rate.repetitions, rate.max_relative_error
        ),
    )
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
    let on_gpu = matches!(device, Ok("gpu"));

    // Metal: the kernels' library must be where MLX looks, before any GPU op.
    let metallib = runtime::check_metallib();
    if cfg!(target_os = "macos") {
        checks.push(Check::from_result("Metal kernels", &metallib, |found| {
            (
                true,
                found.as_ref().map_or_else(
                    || "MLX's default location (~/.mlx/...)".to_string(),
                    |path| path.display().to_string(),
                ),
            )
        }));
    }
    let gpu = if metallib.is_ok() {
        runtime::gpu_info()
    } else {
        Ok(None)
    };
    if let Ok(Some(info)) = &gpu {
        checks.push(Check {
            name: "GPU",
            ok: true,
            detail: describe_gpu(info),
        });
    }
    let gpu_matmul = match &gpu {
        Ok(Some(_)) => Some(runtime::measure_matmul(
            MATMUL_N,
            Duration::from_millis(1500),
            true,
        )),
        _ => None,
    };
    if let Some(rate) = &gpu_matmul {
        checks.push(Check::from_result(
            "fp32 matmul 1024 (gpu)",
            rate,
            describe_rate,
        ));
    }

    // The CPU stream's products go to the BLAS: measured there, on the CPU.
    let matmul = runtime::measure_matmul(MATMUL_N, Duration::from_millis(1500), false);
    // Looked up after the matmul so that the BLAS is certainly in use.
    let blas = runtime::blas_binding();
    let blas_ok = !(blas.name.starts_with("reference") || blas.name == "none found");
    let mut blas_detail = blas.name.clone();
    if let Some(library) = blas
        .backend_library
        .as_ref()
        .or(blas.sgemm_library.as_ref())
    {
        blas_detail.push_str(&format!(" [{library}]"));
    }
    if on_gpu {
        blas_detail.push_str(" (CPU operations only; training runs on the GPU)");
    }
    checks.push(Check {
        name: "BLAS",
        ok: blas_ok,
        detail: blas_detail,
    });
    checks.push(Check::from_result(
        "fp32 matmul 1024 (cpu)",
        &matmul,
        |rate| {
            let (_, detail) = describe_rate(rate);
            (rate.gflops >= MIN_CPU_GFLOPS, detail)
        },
    ));
    // Measured choice on the CPU backend (docs/mistral-7b.md): MLX's
    // quantized and bf16 kernels there are far slower than the BLAS.
    let path = ft_model::layers::matmul_path();
    checks.push(Check {
        name: "quantized/bf16 products",
        ok: true,
        detail: format!(
            "{}{}",
            path.describe(),
            if path == ft_model::layers::MatmulPath::ExpandToFloat32 {
                "; training uses it with gradient checkpointing (FT_MATMUL_PATH=native|fp32 overrides)"
            } else {
                ""
            }
        ),
    });
    let memory_limit = mlx_rs::memory::memory_limit().map(|bytes| bytes as u64);
    checks.push(Check::from_result(
        "MLX memory limit",
        &memory_limit,
        |bytes| {
            let mut detail = ft_trainer::disk::human_bytes(*bytes);
            if runtime::recommended_working_set().is_some() {
                detail.push_str(
                    "; training wires up to the recommended working set ([memory] wired_limit_gb)",
                );
            }
            (true, detail)
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
            "gpu": gpu.as_ref().ok(),
            "gpu_matmul": gpu_matmul.as_ref().and_then(|rate| rate.as_ref().ok()),
            "metallib": metallib.as_ref().ok(),
            "matmul_path": ft_model::layers::matmul_path(),
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
