//! The macOS build settings that nobody here can run, held in place by a
//! check that runs everywhere (docs/macos.md):
//!
//! - MLX's C++ is built Release in every profile: upstream mlx-sys picks
//!   `CMAKE_BUILD_TYPE=Debug` whenever its build script has debug
//!   assertions, so the dev profile's build scripts must not have them;
//! - `mlx.metallib` goes under `target/` (cached with it on CI, found by
//!   test binaries), not upstream's `~/.mlx/...`;
//! - the macOS CI job is pinned, caches that folder and runs the main job.

use ft_integration_tests::repo_root;

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

#[test]
fn build_scripts_have_no_debug_assertions_in_the_dev_profile() {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let setting = manifest
        .get("profile")
        .and_then(|p| p.get("dev"))
        .and_then(|p| p.get("build-override"))
        .and_then(|p| p.get("debug-assertions"))
        .and_then(toml::Value::as_bool);
    assert_eq!(
        setting,
        Some(false),
        "[profile.dev.build-override] debug-assertions = false is needed: upstream mlx-sys \
         builds MLX (and its Metal kernels) as Debug when its build script has debug assertions"
    );
}

#[test]
fn upstream_mlx_sys_still_chooses_its_build_type_and_metallib_path_as_assumed() {
    // The crate as cargo builds it (setup copies it here; on Linux with our
    // edits at the top of build.rs only).
    let build = read(".ft/patched/mlx-sys/build.rs");
    assert!(
        build.contains("#[cfg(debug_assertions)]")
            && build.contains(r#"config.define("CMAKE_BUILD_TYPE", "Debug");"#),
        "mlx-sys no longer picks Debug from debug_assertions: revisit \
         [profile.dev.build-override] in Cargo.toml"
    );
    assert!(
        build.contains(r#"env::var_os("MLX_RS_METAL_PATH")"#),
        "mlx-sys no longer reads MLX_RS_METAL_PATH: revisit .cargo/config.toml [env]"
    );
}

#[test]
fn the_metal_library_is_built_under_target() {
    let config: toml::Value = toml::from_str(&read(".cargo/config.toml")).expect("config");
    let entry = config
        .get("env")
        .and_then(|env| env.get("MLX_RS_METAL_PATH"))
        .expect(".cargo/config.toml sets [env] MLX_RS_METAL_PATH");
    let value = entry.get("value").and_then(toml::Value::as_str);
    let relative = entry.get("relative").and_then(toml::Value::as_bool);
    assert_eq!(value, Some("target/mlx-metal"), "{entry:?}");
    assert_eq!(
        relative,
        Some(true),
        "the path must be the checkout's target/"
    );
    // ft-model sees the same value at compile time (runtime::metallib_candidates).
    assert!(read("crates/ft-model/src/runtime.rs").contains("option_env!(\"MLX_RS_METAL_PATH\")"));
}

/// The lines of one job of the CI workflow.
fn job<'a>(workflow: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = workflow.lines().skip_while(|line| *line != header);
    let mut job = vec![lines.next().unwrap_or_default()];
    job.extend(lines.take_while(|line| line.is_empty() || line.starts_with("    ")));
    job
}

#[test]
fn the_macos_ci_job_is_pinned_cached_and_runs_the_main_job() {
    let workflow = read(".github/workflows/ci.yml");
    let macos = job(&workflow, "macos");
    assert!(macos.len() > 5, "no macos job in ci.yml");
    let runner = macos
        .iter()
        .find_map(|line| line.trim().strip_prefix("runs-on:"))
        .map(str::trim)
        .expect("runs-on");
    assert!(
        runner.starts_with("macos-") && !runner.contains("latest") && runner != "macos-13",
        "pin an Apple-silicon runner image, not {runner}"
    );
    let text = macos.join("\n");
    assert!(text.contains("run: cargo xtask test"), "{text}");
    assert!(text.contains("run: cargo xtask e2e"), "{text}");
    assert!(text.contains("run: cargo xtask doctor"), "{text}");
    assert!(
        text.contains("            target\n"),
        "the cache must hold target/ (and with it target/mlx-metal)"
    );
}
