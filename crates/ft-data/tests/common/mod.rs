//! Helpers shared by the integration tests: fixtures, the default model's
//! tokenizer, and the reference JavaScript tokenizers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// `<workspace>/crates/ft-data/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A file under the fixtures folder.
pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The default model's tokenizer, or `None` before `cargo xtask setup` has
/// installed the model (a failure under CI, else a recorded skip).
pub fn default_tokenizer() -> Option<ft_data::TextTokenizer> {
    ft_config::testing::default_model().map(|gguf| ft_data::TextTokenizer::from_gguf(gguf).unwrap())
}

fn tool_works(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when `node` and `npm` run; otherwise a failure under CI, else a
/// recorded skip.
pub fn node_available(what: &str) -> bool {
    ft_config::testing::prerequisite(
        tool_works("node") && tool_works("npm"),
        &format!("Node.js (`node` and `npm`, which {what} needs)"),
        "apt-get install nodejs npm (macOS: brew install node)",
    )
}

/// Installs `package@version` into the git-ignored
/// `<workspace>/.ft/npm/<package>@<version>` unless it is already there;
/// returns its `node_modules`. One folder per package, so installing one
/// never prunes another.
pub fn install_package(package: &str, version: &str) -> PathBuf {
    // Tests of one binary run in parallel: one npm at a time.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.ft/npm")
        .join(format!("{package}@{version}"));
    let modules = prefix.join("node_modules");
    let manifest = modules.join(package).join("package.json");
    let installed = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string));
    if installed.as_deref() != Some(version) {
        std::fs::create_dir_all(&prefix).unwrap();
        let status = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(format!("{package}@{version}"))
            .status()
            .expect("run npm");
        assert!(status.success(), "npm install {package}@{version} failed");
    }
    modules
}

/// Runs a fixture script with node and parses its JSON output.
pub fn run_node(script: &str, args: &[&Path]) -> serde_json::Value {
    let output = Command::new("node")
        .arg(fixtures().join(script))
        .args(args)
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "node {script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The committed corpus of test strings.
pub fn corpus() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("mistral_corpus.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of strings.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A JSON array of `[left, right]` string pairs (BPE merges).
pub fn merge_pairs(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let pair = strings(pair);
            (pair[0].clone(), pair[1].clone())
        })
        .collect()
}
