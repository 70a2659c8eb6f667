//! Checks of the MLX runtime this process runs on: version, default device,
//! the BLAS library MLX's matrix products actually go to, a measured fp32
//! matmul rate and a gradient check. `ft doctor` prints these.

use crate::{Error, Result};
use mlx_rs::{random, Array, Device, DeviceType};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Physical memory of the machine in bytes (`sysconf`, Linux and macOS).
pub fn physical_memory() -> Option<u64> {
    crate::ffi::os::physical_memory()
}

/// CPU time of this process so far (all threads, user and system): less
/// sensitive to other work on the machine than wall time.
pub fn process_cpu_time() -> Duration {
    crate::ffi::os::process_cpu_time()
}

/// The MLX version libmlx reports, e.g. `0.32.2`.
pub fn mlx_version() -> String {
    crate::ffi::mlx::version()
}

/// `cpu` or `gpu`: where MLX runs operations by default.
pub fn default_device() -> Result<&'static str> {
    let device = Device::try_default()?;
    Ok(match device.get_type()? {
        DeviceType::Cpu => "cpu",
        DeviceType::Gpu => "gpu",
    })
}

/// Whether MLX has a GPU backend here (Metal on a Mac, CUDA when built for it).
pub fn gpu_available() -> bool {
    crate::ffi::mlx::gpu_available()
}

/// One value of MLX's `device_info`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DeviceInfoValue {
    /// A name, e.g. `device_name` or `architecture`.
    Text(String),
    /// A size or count, e.g. `memory_size` or `max_recommended_working_set_size` (bytes).
    Size(u64),
}

/// What MLX reports about the GPU (device 0): on Metal `device_name`,
/// `architecture`, `memory_size`, `max_recommended_working_set_size`,
/// `max_buffer_length`; on CUDA the device's name and memory. `None` when
/// there is no GPU backend.
pub fn gpu_info() -> Result<Option<BTreeMap<String, DeviceInfoValue>>> {
    if !gpu_available() {
        return Ok(None);
    }
    let failed = |what: &str| Error::CheckFailed {
        check: "GPU device info",
        expected: "MLX's device_info for gpu:0".into(),
        got: format!("{what} failed"),
    };
    crate::ffi::mlx::gpu_device_info().map(Some).map_err(failed)
}

/// The GPU's recommended working set in bytes (Metal), if MLX reports one.
pub fn recommended_working_set() -> Option<u64> {
    match gpu_info().ok()??.get("max_recommended_working_set_size") {
        Some(DeviceInfoValue::Size(bytes)) => Some(*bytes),
        _ => None,
    }
}

/// The Metal kernels' library file MLX loads on first GPU use.
pub const METALLIB: &str = "mlx.metallib";

/// Where MLX looks for [`METALLIB`], in its order: next to the executable,
/// then the directory baked in when mlx-sys was built (`MLX_RS_METAL_PATH`,
/// which the workspace's `.cargo/config.toml` sets to `target/mlx-metal`).
/// The second is absent for builds outside the workspace (upstream's default
/// under `~/.mlx`, which only MLX knows).
pub fn metallib_candidates(executable: Option<&Path>) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = executable.and_then(Path::parent) {
        candidates.push(dir.join(METALLIB));
    }
    if let Some(dir) = option_env!("MLX_RS_METAL_PATH") {
        candidates.push(Path::new(dir).join(METALLIB));
    }
    candidates
}

/// On Metal, the [`METALLIB`] MLX will load; an error naming every place
/// looked at when there is none (instead of MLX's failure at the first GPU
/// operation). `Ok(None)` off Metal, or when this build does not know MLX's
/// baked-in path.
pub fn check_metallib() -> Result<Option<PathBuf>> {
    if !cfg!(target_os = "macos") {
        return Ok(None);
    }
    let executable = std::env::current_exe().ok();
    find_metallib(
        &metallib_candidates(executable.as_deref()),
        option_env!("MLX_RS_METAL_PATH").is_some(),
    )
}

/// The first existing candidate; when none exists and `complete` says the
/// list is all MLX searches, an error that names them and the fix.
pub fn find_metallib(candidates: &[PathBuf], complete: bool) -> Result<Option<PathBuf>> {
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(Some(found.clone()));
    }
    if !complete {
        return Ok(None);
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(Error::CheckFailed {
        check: "MLX Metal kernels (mlx.metallib)",
        expected: format!("the file at one of: {}", looked.join(", ")),
        got: "none of them exists: copy target/mlx-metal/mlx.metallib from the build next to \
              this `ft` (`cargo xtask install` does), or rebuild with `cargo build --release -p \
              ft-cli` (docs/macos.md)"
            .into(),
    })
}

/// MLX's memory settings, as the trainer applies them (see `[memory]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MemorySettings {
    /// MLX's memory limit in bytes, when set.
    pub limit: Option<u64>,
    /// Wired limit in bytes on Metal, when set.
    pub wired_limit: Option<u64>,
    /// Buffer cache limit in bytes, when set.
    pub cache_limit: Option<u64>,
}

/// What MLX had before and has after [`apply_memory_settings`], in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct AppliedMemory {
    /// The memory limit in force afterwards.
    pub limit: u64,
    /// The wired limit set (Metal only), when one was.
    pub wired_limit: Option<u64>,
    /// The cache limit set, when one was.
    pub cache_limit: Option<u64>,
}

/// Applies `settings` to MLX. The wired limit is applied only when a GPU
/// backend is present (MLX's CPU backend has no wired memory).
pub fn apply_memory_settings(settings: &MemorySettings) -> Result<AppliedMemory> {
    let to_usize = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
    if let Some(limit) = settings.limit {
        mlx_rs::memory::set_memory_limit(to_usize(limit))?;
    }
    let mut applied = AppliedMemory::default();
    if let Some(limit) = settings.cache_limit {
        mlx_rs::memory::set_cache_limit(to_usize(limit))?;
        applied.cache_limit = Some(limit);
    }
    if let Some(limit) = settings.wired_limit.filter(|_| gpu_available()) {
        mlx_rs::memory::set_wired_limit(to_usize(limit))?;
        applied.wired_limit = Some(limit);
    }
    applied.limit = mlx_rs::memory::memory_limit()? as u64;
    Ok(applied)
}

/// Which BLAS library MLX's `cblas_sgemm` calls resolve to in this process.
#[derive(Clone, Debug, Serialize)]
pub struct BlasBinding {
    /// A short human name, e.g. `OpenBLAS 0.3.34 (SapphireRapids)`.
    pub name: String,
    /// The loaded file that provides `cblas_sgemm` (what libmlx binds to).
    pub sgemm_library: Option<String>,
    /// The loaded file that does the work when `sgemm_library` forwards to
    /// another one (mlx-ft's shim on Linux forwards to OpenBLAS).
    pub backend_library: Option<String>,
    /// OpenBLAS's own build description, when OpenBLAS is loaded.
    pub openblas_config: Option<String>,
    /// The CPU kernel OpenBLAS selected, when OpenBLAS is loaded.
    pub openblas_core: Option<String>,
}

/// Looks the BLAS up in the running process with `dlsym`/`dladdr`.
pub fn blas_binding() -> BlasBinding {
    use crate::ffi::os::{call_string_getter, library_defining};
    let sgemm_library = library_defining("cblas_sgemm");
    let backend_library = library_defining("scipy_cblas_sgemm");
    let openblas_config = call_string_getter(&["openblas_get_config", "scipy_openblas_get_config"]);
    let openblas_core =
        call_string_getter(&["openblas_get_corename", "scipy_openblas_get_corename"]);
    let worker = backend_library
        .as_deref()
        .or(sgemm_library.as_deref())
        .unwrap_or("");
    let name = if let Some(config) = &openblas_config {
        let version = config
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        match &openblas_core {
            Some(core) => format!("{version} ({core})"),
            None => version,
        }
    } else if worker.contains("Accelerate") || worker.contains("vecLib") {
        "Apple Accelerate".to_string()
    } else if worker.contains("mkl") {
        "Intel MKL".to_string()
    } else if worker.contains("blis") {
        "BLIS".to_string()
    } else if worker.contains("libblas") {
        "reference BLAS (Netlib)".to_string()
    } else if worker.is_empty() {
        "none found".to_string()
    } else {
        "unknown".to_string()
    };
    BlasBinding {
        name,
        sgemm_library,
        backend_library,
        openblas_config,
        openblas_core,
    }
}

/// Threads OpenBLAS uses for one call, when OpenBLAS is the BLAS.
pub fn blas_threads() -> Option<i32> {
    crate::ffi::os::call_int_getter(&["openblas_get_num_threads", "scipy_openblas_get_num_threads"])
}

/// Sets the threads OpenBLAS uses for one call; `false` when the BLAS is not
/// OpenBLAS (Accelerate and others manage their own threads).
pub fn set_blas_threads(threads: i32) -> bool {
    crate::ffi::os::call_int_setter(
        &["openblas_set_num_threads", "scipy_openblas_set_num_threads"],
        threads.max(1),
    )
}

/// A timed fp32 square matrix product.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulRate {
    /// `cpu` (MLX's CPU backend: the BLAS) or `gpu`.
    pub device: &'static str,
    /// Matrix size n (n x n times n x n).
    pub n: usize,
    /// Timed repetitions (after one warm-up).
    pub repetitions: usize,
    /// Achieved rate, 2 n^3 per product.
    pub gflops: f64,
    /// Largest relative error of a corner of the product against f64 sums.
    pub max_relative_error: f64,
}

/// Times `n x n` fp32 matmuls on the CPU (`gpu` false: MLX's CPU backend,
/// i.e. the BLAS) or the GPU for about `budget`, and checks a corner of the
/// result against a float64 computation done in Rust.
pub fn measure_matmul(n: usize, budget: Duration, gpu: bool) -> Result<MatmulRate> {
    let device = if gpu { Device::gpu() } else { Device::cpu() };
    mlx_rs::with_device(device, || timed_matmul(n, budget, gpu))
}

fn timed_matmul(n: usize, budget: Duration, gpu: bool) -> Result<MatmulRate> {
    let side = n as i32;
    let key = random::key(7)?;
    let keys = random::split(&key, 2)?;
    let a = random::normal::<f32>(&[side, side][..], None, None, &keys.0)?;
    let b = random::normal::<f32>(&[side, side][..], None, None, &keys.1)?;
    a.eval()?;
    b.eval()?;
    let product = a.matmul(&b)?;
    product.eval()?;

    let mut repetitions = 0;
    let started = Instant::now();
    while repetitions < 3 || (started.elapsed() < budget && repetitions < 200) {
        a.matmul(&b)?.eval()?;
        repetitions += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let gflops = 2.0 * (n as f64).powi(3) * repetitions as f64 / seconds / 1e9;

    let (a_data, b_data, c_data) = (
        a.as_slice::<f32>(),
        b.as_slice::<f32>(),
        product.as_slice::<f32>(),
    );
    let corner = n.min(8);
    let mut max_relative_error = 0.0_f64;
    for row in 0..corner {
        for col in 0..corner {
            let (exact, magnitude) = (0..n).fold((0.0_f64, 0.0_f64), |(sum, abs), k| {
                let term = f64::from(a_data[row * n + k]) * f64::from(b_data[k * n + col]);
                (sum + term, abs + term.abs())
            });
            let error = (f64::from(c_data[row * n + col]) - exact).abs() / magnitude.max(1e-30);
            max_relative_error = max_relative_error.max(error);
        }
    }
    if max_relative_error > 1e-5 {
        return Err(Error::CheckFailed {
            check: "fp32 matmul accuracy",
            expected: "relative error <= 1e-5".into(),
            got: format!("{max_relative_error:e}"),
        });
    }
    Ok(MatmulRate {
        device: if gpu { "gpu" } else { "cpu" },
        n,
        repetitions,
        gflops,
        max_relative_error,
    })
}

/// `value_and_grad` of f(x) = sum(x^3 + sin x) against f' = 3x^2 + cos x.
#[derive(Clone, Debug, Serialize)]
pub struct GradientCheck {
    /// Largest absolute difference between MLX's and the analytic gradient.
    pub max_abs_error: f64,
    /// Difference between MLX's and the analytic value of f.
    pub value_error: f64,
}

/// Runs the gradient check; an error above 1e-5 is [`Error::CheckFailed`].
pub fn gradient_check() -> Result<GradientCheck> {
    let points = [-1.5_f32, -0.3, 0.0, 0.7, 2.0];
    let x = Array::from_slice(&points, &[points.len() as i32]);
    let f = |inputs: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
        let x = &inputs[0];
        let cubed = x.multiply(x)?.multiply(x)?;
        Ok(vec![cubed.add(x.sin()?)?.sum(None)?])
    };
    let (values, grads) = mlx_rs::transforms::value_and_grad(f)(&[x])?;
    let value = f64::from(
        values[0]
            .as_slice::<f32>()
            .first()
            .copied()
            .unwrap_or(f32::NAN),
    );
    let expected_value: f64 = points
        .iter()
        .map(|&p| f64::from(p).powi(3) + f64::from(p).sin())
        .sum();
    let max_abs_error = grads[0]
        .as_slice::<f32>()
        .iter()
        .zip(points)
        .map(|(&got, p)| (f64::from(got) - (3.0 * f64::from(p).powi(2) + f64::from(p).cos())).abs())
        .fold(0.0, f64::max);
    let check = GradientCheck {
        max_abs_error,
        value_error: (value - expected_value).abs(),
    };
    if check.max_abs_error > 1e-5 || check.value_error > 1e-5 {
        return Err(Error::CheckFailed {
            check: "value_and_grad of sum(x^3 + sin x)",
            expected: "errors <= 1e-5".into(),
            got: format!("{check:?}"),
        });
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_pinned_release_or_newer() {
        let version = mlx_version();
        assert!(
            version.starts_with("0."),
            "unexpected MLX version {version}"
        );
    }

    #[test]
    fn gradient_matches_the_analytic_derivative() {
        let check = gradient_check().expect("gradient check");
        assert!(check.max_abs_error <= 1e-5);
    }

    #[test]
    fn matmul_is_accurate() {
        let rate = measure_matmul(128, Duration::from_millis(10), false).expect("matmul");
        assert!(rate.max_relative_error <= 1e-5);
        assert!(rate.gflops > 0.0);
    }

    #[test]
    fn metallib_search_names_every_place_and_finds_the_first_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("bin/ft");
        let baked = dir.path().join("target/mlx-metal");
        let candidates = vec![exe.with_file_name(METALLIB), baked.join(METALLIB)];
        let error = find_metallib(&candidates, true).expect_err("nothing there");
        let message = error.to_string();
        assert!(
            message.contains(&candidates[0].display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&candidates[1].display().to_string()),
            "{message}"
        );
        assert!(message.contains("cargo xtask install"), "{message}");
        // An incomplete list (upstream's ~/.mlx default) is not an error.
        assert_eq!(find_metallib(&candidates, false).expect("unknown"), None);
        std::fs::create_dir_all(&baked).expect("mkdir");
        std::fs::write(baked.join(METALLIB), b"x").expect("write");
        assert_eq!(
            find_metallib(&candidates, true).expect("found"),
            Some(candidates[1].clone())
        );
        std::fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        std::fs::write(&candidates[0], b"x").expect("write");
        assert_eq!(
            find_metallib(&candidates, true).expect("found"),
            Some(candidates[0].clone()),
            "next to the executable comes first, as in MLX"
        );
        // This workspace bakes target/mlx-metal in (.cargo/config.toml).
        let own = metallib_candidates(Some(Path::new("/opt/ft/bin/ft")));
        assert_eq!(own[0], Path::new("/opt/ft/bin").join(METALLIB));
        assert!(
            own.get(1)
                .is_some_and(|p| p.ends_with("target/mlx-metal/mlx.metallib")),
            "{own:?}"
        );
    }

    #[test]
    fn memory_settings_reach_mlx() {
        let before = mlx_rs::memory::memory_limit().expect("limit") as u64;
        let applied = apply_memory_settings(&MemorySettings {
            limit: Some(3 << 30),
            wired_limit: Some(1 << 30),
            cache_limit: Some(256 << 20),
        })
        .expect("apply");
        assert_eq!(applied.limit, 3 << 30);
        assert_eq!(applied.cache_limit, Some(256 << 20));
        // No GPU backend here: the wired limit is not MLX's to set.
        assert_eq!(applied.wired_limit.is_some(), gpu_available());
        mlx_rs::memory::set_memory_limit(before as usize).expect("restore");
    }

    #[test]
    fn gpu_info_is_absent_without_a_gpu_backend() {
        let info = gpu_info().expect("device info");
        assert_eq!(info.is_some(), gpu_available());
        if let Some(info) = info {
            assert!(!info.is_empty());
        }
    }

    #[test]
    fn blas_is_found_in_the_process() {
        // Force libmlx (and its BLAS) to be used at least once.
        measure_matmul(64, Duration::from_millis(1), false).expect("matmul");
        let blas = blas_binding();
        assert!(blas.sgemm_library.is_some(), "{blas:?}");
        if cfg!(target_os = "linux") {
            assert!(blas.name.starts_with("OpenBLAS"), "{blas:?}");
        }
    }
}
