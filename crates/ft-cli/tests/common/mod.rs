//! Shared by the binary tests: run the built `ft` as a user would.

#![allow(dead_code, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `ft` with `args`, to be run in the workspace root with no `FT_*`
/// settings from the caller.
pub fn ft_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ft"));
    command.args(args).current_dir(root()).env("NO_COLOR", "1");
    for (key, _) in std::env::vars() {
        if key.starts_with("FT_") && key != "FT_MODELS_DIR" {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `ft` in the workspace root with no `FT_*` settings from the caller.
pub fn ft(args: &[&str]) -> Output {
    ft_command(args).output().expect("run ft")
}
