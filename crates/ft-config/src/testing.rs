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
            // One write per line: tests run in parallel processes, and
            // O_APPEND keeps a single small write whole.
            let _ = file.write_all(format!("{test}\t{what}\n").as_bytes());
        }
    }
    false
}

/// The built-in default model's file name (ft-model's
/// `load::DEFAULT_MODEL_FILE`; a test there holds the two together).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `cargo xtask setup` installs the built-in models: `$FT_MODELS_DIR`,
/// else `<checkout>/.ft/models` (ft-model's `load::models_dir()`, for the
/// crates whose tests cannot reach ft-model).
pub fn models_dir() -> std::path::PathBuf {
    std::env::var_os("FT_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ft/models")
        })
}

/// The built-in default model's file under [`models_dir`] when it is
/// installed; otherwise [`prerequisite`]'s failure under CI, or `None` and
/// a recorded skip.
pub fn default_model() -> Option<std::path::PathBuf> {
    let gguf = models_dir().join(DEFAULT_MODEL_FILE);
    prerequisite(
        gguf.is_file(),
        &format!("the default model {}", gguf.display()),
        "cargo xtask setup",
    )
    .then_some(gguf)
}
