//! What a test does when something it needs (the default model, Node, a
//! tmpfs, a backend) is missing: under CI (`CI=true`) it fails and says what
//! to install; elsewhere it is skipped, and the skip is recorded so that
//! `cargo xtask test` lists it as skipped, not passed. In ft-config, the
//! bottom of the crate graph, so that every crate's tests can use it.

/// The file `cargo xtask test` reads skips from (one line per skip).
pub const SKIP_LOG_VAR: &str = "FT_SKIP_LOG";

/// Whether the tests run under CI (`CI` set to anything but `false`/`0`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "false" | "0"))
}

/// `true` when `present`. Otherwise: under CI, panics with `what` is
/// missing and `install`; elsewhere prints and records the skip (in the
/// file named by `FT_SKIP_LOG`, which `cargo xtask test` sets) and returns
/// `false`, and the test returns early.
pub fn prerequisite(present: bool, what: &str, install: &str) -> bool {
    if present {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        !under_ci(),
        "{test}: missing prerequisite under CI: {what}. Install it with: {install}"
    );
    println!("skipped: {what} is missing (install it with: {install})");
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR) {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(file, "{test}\t{what}");
        }
    }
    false
}

/// [`prerequisite`] for the built-in default model, installed by
/// `cargo xtask setup` into `models_dir` (ft-model's `load::models_dir()`).
pub fn default_model_present(models_dir: &std::path::Path) -> bool {
    let gguf = models_dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    prerequisite(
        gguf.is_file(),
        &format!("the default model {}", gguf.display()),
        "cargo xtask setup",
    )
}
