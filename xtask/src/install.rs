//! `cargo xtask install [--dir DIR]`: puts `ft` on the user's PATH.
//!
//! macOS: MLX is linked statically, so the binary and MLX's Metal kernels
//! (`mlx.metallib`, which MLX looks for next to the executable first) are
//! copied together and the copy runs anywhere. Linux: the binary loads the
//! MLX runtime from this checkout's `.ft/`, so a small script that runs the
//! checkout's binary is installed instead.

use crate::shell;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Options of `cargo xtask install`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Where `ft` goes [default: ~/.local/bin]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    let dir = match options.dir {
        Some(dir) => dir,
        None => default_dir()?,
    };
    let binary = shell::build_ft(root)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let installed = dir.join("ft");
    if cfg!(target_os = "macos") {
        copy_replacing(&binary, &installed)?;
        shell::colocate_metallib(root, &installed)?;
        println!(
            "installed {} and {}",
            installed.display(),
            dir.join("mlx.metallib").display()
        );
    } else {
        let script = format!(
            "#!/bin/sh\n# Written by `cargo xtask install`: the binary loads MLX from its checkout.\nexec {:?} \"$@\"\n",
            binary.display().to_string()
        );
        let _ = fs::remove_file(&installed);
        fs::write(&installed, script)
            .with_context(|| format!("writing {}", installed.display()))?;
        set_executable(&installed)?;
        println!(
            "installed {} (runs {})",
            installed.display(),
            binary.display()
        );
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p == dir));
    if !on_path {
        println!("note: {} is not on your PATH", dir.display());
    }
    Ok(())
}

fn default_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: give --dir")?;
    Ok(PathBuf::from(home).join(".local/bin"))
}

/// Replaces `to` without writing into a running binary's file.
fn copy_replacing(from: &Path, to: &Path) -> Result<()> {
    let partial = to.with_extension("partial");
    fs::copy(from, &partial)
        .with_context(|| format!("copying {} to {}", from.display(), partial.display()))?;
    fs::rename(&partial, to).with_context(|| format!("moving into {}", to.display()))?;
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}
