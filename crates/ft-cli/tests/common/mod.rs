//! Shared by the binary tests: run the built `ft` as a user would.

#![allow(dead_code, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `ft` in the workspace root with no `FT_*` settings from the caller.
pub fn ft(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ft"));
    command.args(args).current_dir(root()).env("NO_COLOR", "1");
    for (key, _) in std::env::vars() {
        if key.starts_with("FT_") && key != "FT_MODELS_DIR" {
            command.env_remove(key);
        }
    }
    command.output().expect("run ft")
}
