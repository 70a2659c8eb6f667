//! The two halves of a run: what stays fixed once it is assembled
//! ([`RunSetup`]) and what training changes ([`Progress`]).
//!
//! They are separate structs so that the loop can borrow the data (a
//! batcher holds on to the training set for the whole run) while it
//! updates the adapters, the optimizer and the counters.

use crate::checkpoint::{self, TrainerState};
use crate::data_options::batch_options;
use crate::metrics::Callbacks;
use crate::parallel::Workers;
use crate::Result;
use ft_config::Config;
use ft_data::{BatchOptions, Dataset, TextTokenizer};
use ft_lora::LoraAdapters;
use ft_model::distributed::Group;
use ft_model::Model;
use ft_optim::{Optimizer, Schedule};
use std::path::PathBuf;

/// The training set and the optional validation set of a run.
pub(crate) struct Datasets {
    pub(crate) train: Dataset,
    pub(crate) valid: Option<Dataset>,
}

/// What a run reads but never changes while it trains.
pub(crate) struct RunSetup {
    pub(crate) config: Config,
    /// The configuration as written into the run directory and checkpoints.
    pub(crate) config_toml: String,
    pub(crate) model: Model,
    pub(crate) tokenizer: TextTokenizer,
    pub(crate) data: Datasets,
    pub(crate) schedule: Schedule,
    pub(crate) run_dir: PathBuf,
    /// Streams for evaluation passes (training steps use one stream).
    pub(crate) eval_workers: Workers,
    /// The data-parallel group (one process unless the run is distributed).
    pub(crate) group: Group,
    /// MLX's peak memory when the run was assembled.
    pub(crate) load_peak_memory_bytes: u64,
}

impl RunSetup {
    pub(crate) fn batch_options(&self) -> BatchOptions {
        batch_options(
            &self.config.training,
            &self.config.data,
            self.tokenizer.special().pad_id(),
        )
    }

    /// Only rank 0 writes the run directory.
    pub(crate) fn writes_files(&self) -> bool {
        self.group.rank() == 0
    }
}

/// What training changes: the adapters, the optimizer and the progress
/// that a checkpoint records.
pub(crate) struct Progress {
    pub(crate) adapters: LoraAdapters,
    pub(crate) optimizer: Optimizer,
    pub(crate) state: TrainerState,
    /// Restored from a checkpoint rather than started fresh.
    pub(crate) resumed: bool,
    pub(crate) last_checkpoint: Option<PathBuf>,
}

impl Progress {
    /// Writes a checkpoint of the current step (rank 0 only; the other
    /// ranks remember where rank 0 wrote it, for their error messages).
    pub(crate) fn save_checkpoint(
        &mut self,
        setup: &RunSetup,
        callbacks: &mut dyn Callbacks,
    ) -> Result<()> {
        if !setup.writes_files() {
            self.last_checkpoint = Some(checkpoint::step_dir(&setup.run_dir, self.state.step));
            return Ok(());
        }
        let dir = checkpoint::save(
            &setup.run_dir,
            &self.state,
            &self.adapters,
            &self.optimizer,
            &setup.config_toml,
            &setup.config.model.path,
            setup.config.checkpoint.keep_last as usize,
        )?;
        callbacks.on_checkpoint(&dir);
        self.last_checkpoint = Some(dir);
        Ok(())
    }

    pub(crate) fn last_checkpoint_step(&self) -> Option<u64> {
        let dir = self.last_checkpoint.as_ref()?;
        let name = dir.file_name()?.to_str()?;
        name.strip_prefix("step-")?.parse().ok()
    }
}
