//! Checkpoints: everything a run needs to continue exactly where it was.
//!
//! A checkpoint is a directory `checkpoints/step-000050/` holding the
//! adapter (mlx-lm format), the optimizer state, `trainer_state.json` and
//! the effective configuration. It is written under a temporary name
//! (`.step-000050.partial`), synced, and renamed into place, so a crash
//! leaves either the old set of checkpoints or the new one, never a
//! half-written checkpoint under a real name; hidden leftovers are ignored
//! by [`list`] and cleaned by the next [`save`] or [`resolve`]. Before
//! writing, the free space is checked against the checkpoint's size
//! ([`TrainError::DiskFull`]).

use crate::error::io_error;
use crate::{Result, TrainError};
use ft_data::Cursor;
use ft_lora::{AdapterFormat, LoraAdapters};
use ft_model::ModelArgs;
use ft_optim::Optimizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Progress of a run, saved in every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Where the data stream is.
    pub cursor: Cursor,
    /// Best validation loss so far.
    pub best_val_loss: Option<f64>,
    /// Evaluations since the best one (early stopping).
    pub evals_without_improvement: u32,
    /// Non-padding tokens trained on so far.
    pub trained_tokens: u64,
    /// Updates skipped for non-finite values.
    pub skipped_steps: u64,
    /// Seconds spent training so far.
    pub seconds: f64,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const CONFIG_FILE: &str = "config.toml";
/// Sub-directory of a checkpoint holding its adapter.
pub const ADAPTER_DIR: &str = "adapter";

/// The checkpoints directory of a run directory.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The directory of the checkpoint of `step` in a run directory.
pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step-{step:06}"))
}

/// Writes a checkpoint for `state.step` and removes all but the newest
/// `keep_last` (0 keeps all). Returns its directory.
pub fn save(
    run_dir: &Path,
    state: &TrainerState,
    adapters: &LoraAdapters,
    optimizer: &Optimizer,
    config_toml: &str,
    base_model: &str,
    keep_last: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).map_err(io_error(&root))?;
    let final_dir = step_dir(run_dir, state.step);
    let name = final_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp_dir = root.join(format!(".{name}.partial"));
    tidy(&root);
    let needed = checkpoint_bytes(adapters, optimizer, config_toml);
    crate::disk::ensure_space(&root, &final_dir, needed)?;
    let written = write_contents(
        &temp_dir,
        state,
        adapters,
        optimizer,
        config_toml,
        base_model,
    );
    if let Err(error) = written {
        // Measured before the partial files go, as the failed write saw it.
        let available = crate::disk::available_bytes(&root);
        let _ = std::fs::remove_dir_all(&temp_dir);
        return Err(crate::disk::classify_write_failure(
            error, &final_dir, needed, available,
        ));
    }
    if final_dir.exists() {
        // Re-saving the same step (e.g. resumed from an older checkpoint):
        // a crash between these renames leaves `.{name}.stale`, which
        // `tidy` puts back.
        let stale = root.join(format!(".{name}.stale"));
        std::fs::rename(&final_dir, &stale).map_err(io_error(&final_dir))?;
        std::fs::rename(&temp_dir, &final_dir).map_err(io_error(&final_dir))?;
        std::fs::remove_dir_all(&stale).map_err(io_error(&stale))?;
    } else {
        std::fs::rename(&temp_dir, &final_dir).map_err(io_error(&final_dir))?;
    }
    sync_dir(&root);
    if keep_last > 0 {
        let all = list(run_dir)?;
        for old in all.iter().rev().skip(keep_last) {
            retire(old)?;
        }
    }
    Ok(final_dir)
}

/// Writes the files of a checkpoint into `dir` (created afresh) and syncs them.
fn write_contents(
    dir: &Path,
    state: &TrainerState,
    adapters: &LoraAdapters,
    optimizer: &Optimizer,
    config_toml: &str,
    base_model: &str,
) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_error(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    adapters.save(&dir.join(ADAPTER_DIR), AdapterFormat::Mlx, base_model)?;
    optimizer.save(&dir.join(OPTIMIZER_FILE))?;
    write_synced(&dir.join(CONFIG_FILE), config_toml.as_bytes())?;
    let state_json = serde_json::to_string_pretty(state).unwrap_or_default();
    // The state file goes last: a directory with it is complete.
    write_synced(&dir.join(STATE_FILE), state_json.as_bytes())?;
    sync_tree(dir)
}

/// Bytes a checkpoint of these adapters and optimizer state takes on disk
/// (arrays plus headers, small files and block rounding).
pub fn checkpoint_bytes(adapters: &LoraAdapters, optimizer: &Optimizer, config_toml: &str) -> u64 {
    let optimizer_bytes: u64 = optimizer.state_arrays().map(|a| a.nbytes() as u64).sum();
    adapters.size_bytes() + optimizer_bytes + config_toml.len() as u64 + crate::disk::OVERHEAD_BYTES
}

/// Removes an old checkpoint: renamed out of the `step-*` names first, so a
/// crash half-way through the removal never leaves a `step-*` directory
/// that looks complete but lacks files.
fn retire(dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = dir.with_file_name(format!(".{name}.deleting"));
    std::fs::rename(dir, &doomed).map_err(io_error(dir))?;
    std::fs::remove_dir_all(&doomed).map_err(io_error(&doomed))
}

/// Cleans what interrupted writes left in a checkpoints directory: a
/// checkpoint swapped out by a re-save (`.step-N.stale`, complete) goes back
/// under its name when that name is free; partial, stale and half-deleted
/// directories are removed. Best effort: a failure only leaves a hidden
/// directory that [`list`] ignores.
fn tidy(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut leftovers: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".step-"))
        })
        .collect();
    leftovers.sort();
    for path in leftovers {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(step) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".stale"))
        {
            let home = root.join(step);
            if !home.exists() && path.join(STATE_FILE).is_file() {
                if std::fs::rename(&path, &home).is_ok() {
                    sync_dir(root);
                    tracing::warn!(checkpoint = %home.display(), "restored a checkpoint an interrupted re-save had moved aside");
                }
                continue;
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot remove what an interrupted write left");
        }
    }
}

/// Writes a run's adapter directory (`adapter/`, `best-adapter/`) so that
/// a crash leaves either the previous adapter or the new one: the files go
/// to `.NAME.partial` next to it, are synced, and replace it by renames.
/// Refuses with [`TrainError::DiskFull`] when the disk cannot hold it.
pub fn save_adapter(adapters: &LoraAdapters, dir: &Path, base_model: &str) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into());
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    let temp = parent.join(format!(".{name}.partial"));
    let old = parent.join(format!(".{name}.old"));
    for leftover in [&temp, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(io_error(leftover))?;
        }
    }
    let needed = adapters.size_bytes() + crate::disk::OVERHEAD_BYTES;
    crate::disk::ensure_space(parent, dir, needed)?;
    let written = adapters
        .save(&temp, AdapterFormat::Mlx, base_model)
        .map_err(TrainError::from)
        .and_then(|()| sync_tree(&temp));
    if let Err(error) = written {
        let available = crate::disk::available_bytes(parent);
        let _ = std::fs::remove_dir_all(&temp);
        return Err(crate::disk::classify_write_failure(
            error, dir, needed, available,
        ));
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io_error(dir))?;
        std::fs::rename(&temp, dir).map_err(io_error(dir))?;
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    } else {
        std::fs::rename(&temp, dir).map_err(io_error(dir))?;
    }
    sync_dir(parent);
    Ok(())
}

/// Puts back an adapter directory that a crash between the two renames of
/// [`save_adapter`] left as `.NAME.old`.
fn restore_adapter(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let old = parent.join(format!(".{}.old", name.to_string_lossy()));
    if !dir.exists() && old.is_dir() && std::fs::rename(&old, dir).is_ok() {
        sync_dir(parent);
    }
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = checkpoints_dir(run_dir);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(&root)(error)),
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && path.join(STATE_FILE).is_file()
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The checkpoint to resume from: `path` itself when it is a checkpoint,
/// else the newest checkpoint of the run directory `path`.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    // A run directory: first undo what a crash may have left half-done.
    tidy(&checkpoints_dir(path));
    for adapter in [ADAPTER_DIR, "best-adapter"] {
        restore_adapter(&path.join(adapter));
    }
    list(path)?.pop().ok_or_else(|| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: "neither a checkpoint (no trainer_state.json) nor a run directory with \
                  checkpoints/step-*"
            .into(),
    })
}

/// What a checkpoint holds.
pub struct Loaded {
    /// Run progress.
    pub state: TrainerState,
    /// The adapters.
    pub adapters: LoraAdapters,
}

/// Reads a checkpoint's state and adapter, and restores `optimizer`.
pub fn load(dir: &Path, args: &ModelArgs, optimizer: &mut Optimizer) -> Result<Loaded> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io_error(&state_path))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|error| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("{STATE_FILE}: {error}"),
        })?;
    let adapters = LoraAdapters::load(&dir.join(ADAPTER_DIR), args)?.adapters;
    optimizer.load(&dir.join(OPTIMIZER_FILE), adapters.params.len())?;
    Ok(Loaded { state, adapters })
}

/// The configuration saved with a checkpoint.
pub fn saved_config(dir: &Path) -> Result<String> {
    let path = dir.join(CONFIG_FILE);
    std::fs::read_to_string(&path).map_err(io_error(&path))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else if let Ok(file) = std::fs::File::open(&path) {
            file.sync_all().map_err(io_error(&path))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Makes a rename durable; best effort (not every filesystem allows it).
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_state(path: &Path) {
        std::fs::create_dir_all(path.join(ADAPTER_DIR)).expect("dir");
        std::fs::write(path.join(STATE_FILE), "{}").expect("state");
    }

    #[test]
    fn resuming_a_run_dir_undoes_what_interrupted_writes_left() {
        let run = tempfile::tempdir().expect("tempdir");
        let root = checkpoints_dir(run.path());
        dir_with_state(&root.join("step-000002"));
        // Killed between the two renames of a re-save, during a write, and
        // half-way through removing an old checkpoint.
        dir_with_state(&root.join(".step-000003.stale"));
        dir_with_state(&root.join(".step-000003.partial"));
        std::fs::create_dir_all(root.join(".step-000004.partial")).expect("partial");
        dir_with_state(&root.join(".step-000001.deleting"));
        // Killed between the renames of an adapter save.
        std::fs::create_dir_all(run.path().join(".adapter.old")).expect("old");
        std::fs::create_dir_all(run.path().join(".adapter.partial")).expect("partial");

        assert_eq!(
            resolve(run.path()).expect("resolve"),
            root.join("step-000003")
        );
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["step-000002", "step-000003"]);
        assert!(run.path().join(ADAPTER_DIR).is_dir());
        assert!(!run.path().join(".adapter.old").exists());
    }

    #[test]
    fn hidden_directories_are_never_checkpoints() {
        let run = tempfile::tempdir().expect("tempdir");
        let root = checkpoints_dir(run.path());
        dir_with_state(&root.join(".step-000009.partial"));
        dir_with_state(&root.join("step-000001"));
        assert_eq!(list(run.path()).expect("list"), [root.join("step-000001")]);
    }
}
