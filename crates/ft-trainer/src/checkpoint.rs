//! Checkpoints: everything a run needs to continue exactly where it was.
//!
//! A checkpoint is a directory `checkpoints/step-000050/` holding the
//! adapter (mlx-lm format), the optimizer state, `trainer_state.json` and
//! the effective configuration. It is written under a temporary name and
//! renamed into place, so a crash leaves either the old set of checkpoints
//! or the new one, never a half-written checkpoint under a real name.

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
    let name = format!("step-{:06}", state.step);
    let final_dir = root.join(&name);
    let temp_dir = root.join(format!(".{name}.partial"));
    if temp_dir.exists() {
        std::fs::remove_dir_all(&temp_dir).map_err(io_error(&temp_dir))?;
    }
    std::fs::create_dir_all(&temp_dir).map_err(io_error(&temp_dir))?;
    adapters.save(&temp_dir.join(ADAPTER_DIR), AdapterFormat::Mlx, base_model)?;
    optimizer.save(&temp_dir.join(OPTIMIZER_FILE))?;
    write_synced(&temp_dir.join(CONFIG_FILE), config_toml.as_bytes())?;
    let state_json = serde_json::to_string_pretty(state).unwrap_or_default();
    // The state file goes last: a directory with it is complete.
    write_synced(&temp_dir.join(STATE_FILE), state_json.as_bytes())?;
    sync_tree(&temp_dir)?;
    if final_dir.exists() {
        // Re-saving the same step (e.g. a stop right after a periodic save).
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
            std::fs::remove_dir_all(old).map_err(io_error(old))?;
        }
    }
    Ok(final_dir)
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
