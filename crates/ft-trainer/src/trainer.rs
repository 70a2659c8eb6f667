//! A fine-tuning run: the [`Trainer`] and its public entry points. How a
//! run is assembled, stepped and evaluated lives in the sibling modules.

use crate::builder;
use crate::checkpoint::{self, TrainerState};
use crate::metrics::{Callbacks, EvalMetrics};
use crate::run::{Progress, RunSetup};
use crate::train_loop::{open_run_dir, TrainLoop};
use crate::{Result, TrainError};
use ft_config::Config;
use ft_data::{Dataset, TextTokenizer};
use ft_lora::LoraAdapters;
use ft_model::distributed::Group;
use ft_model::Model;
use ft_optim::Schedule;
use mlx_rs::Array;
use std::path::{Path, PathBuf};

pub use crate::builder::{apply_memory_settings, load_datasets, load_options, model_tokenizer};
pub use crate::evaluate::{evaluate, evaluate_with, EvalResult};
pub use crate::step::{loss_and_grads, parallel_loss_sum};

/// What a run is about to do, for the summary a person sees at the start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunInfo {
    /// The base model as configured.
    pub model: String,
    /// Decoder layers of the model.
    pub model_layers: usize,
    /// Parameters of the base model (frozen).
    pub base_parameters: u64,
    /// Trainable adapter parameters.
    pub trainable_parameters: u64,
    /// Bytes of the adapter as saved.
    pub adapter_bytes: u64,
    /// Training examples.
    pub train_examples: usize,
    /// Validation examples.
    pub valid_examples: usize,
    /// Optimizer steps in the run.
    pub total_steps: u64,
    /// Step the run starts from (non-zero when resumed).
    pub start_step: u64,
    /// The run directory.
    pub run_dir: PathBuf,
    /// MLX's peak memory while the run was assembled (loading, quantizing
    /// on load); the steps' peaks in `metrics.jsonl` start after it.
    pub load_peak_memory_bytes: u64,
}

/// How a run ended.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainSummary {
    /// Optimizer steps completed.
    pub steps: u64,
    /// Training loss of the last step.
    pub final_loss: Option<f64>,
    /// Best validation loss seen.
    pub best_val_loss: Option<f64>,
    /// The last validation evaluation.
    pub last_eval: Option<EvalMetrics>,
    /// Why it ended.
    pub stop: StopCause,
    /// Seconds of training (this process and earlier ones of a resumed run).
    pub seconds: f64,
    /// Non-padding tokens trained on.
    pub trained_tokens: u64,
    /// Peak MLX memory, bytes.
    pub peak_memory_bytes: u64,
    /// Updates skipped for non-finite values.
    pub skipped_steps: u64,
    /// The final adapter directory (mlx-lm format).
    pub adapter_dir: PathBuf,
    /// The newest checkpoint.
    pub last_checkpoint: Option<PathBuf>,
}

/// Why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// All steps done.
    Completed,
    /// Validation loss stopped improving.
    EarlyStopping,
    /// A callback asked to stop (Ctrl-C).
    Interrupted,
}
/// A fine-tuning run: the model, its adapters, the data and the optimizer.
pub struct Trainer {
    setup: RunSetup,
    progress: Progress,
}

/// The final adapter of a run directory.
pub fn final_adapter_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("adapter")
}

impl Trainer {
    /// Builds a run: validates the configuration, loads the model, the
    /// tokenizer and the data, creates (or, with `checkpoint.resume`,
    /// restores) adapters and optimizer.
    pub fn new(config: Config) -> Result<Self> {
        builder::validate(&config)?;
        let (model, tokenizer, data) = builder::load(&config)?;
        let (setup, progress) = builder::assemble(config, model, tokenizer, data)?;
        Ok(Trainer { setup, progress })
    }

    /// Builds a run on a model and tokenizer already in memory (the
    /// configuration's `model` section is then only recorded, not loaded).
    pub fn with_model(config: Config, model: Model, tokenizer: TextTokenizer) -> Result<Self> {
        builder::validate(&config)?;
        let data = builder::load_data(&config, &tokenizer)?;
        let (setup, progress) = builder::assemble(config, model, tokenizer, data)?;
        Ok(Trainer { setup, progress })
    }

    /// Makes this process one rank of a data-parallel run over `group`:
    /// each rank trains its share of every global batch
    /// ([`shard_range`](crate::parallel::shard_range)), gradients and loss
    /// sums are added across ranks once per step, evaluation is split
    /// between the ranks, and only rank 0 writes files. Every rank must be
    /// built from the same configuration and data (and, when resuming, the
    /// same checkpoint); this is checked here, with one exchange.
    pub fn distribute(&mut self, group: Group) -> Result<()> {
        let ranks = group.size();
        let batch_size = self.setup.config.training.batch_size as usize;
        if batch_size < ranks {
            return Err(TrainError::Config(format!(
                "training.batch_size = {batch_size} is smaller than the {ranks} ranks: every rank \
                 needs at least one row of each batch"
            )));
        }
        let state = &self.progress.state;
        let train_examples = self.setup.data.train.examples.len();
        let mine = [
            state.step as f32,
            state.cursor.epoch as f32,
            state.cursor.position as f32,
            train_examples as f32,
            self.progress.adapters.params.len() as f32,
            batch_size as f32,
        ];
        let summed = group.all_sum(&Array::from_slice(&mine, &[mine.len() as i32]))?;
        summed.eval()?;
        let expected: Vec<f32> = mine.iter().map(|v| v * ranks as f32).collect();
        if summed.as_slice::<f32>() != expected.as_slice() {
            return Err(TrainError::Distributed(format!(
                "rank {} of {ranks}: the ranks disagree on the starting point (this rank: step {}, \
                 {train_examples} training examples, batch size {batch_size}); start every rank \
                 with the same configuration, data and --resume checkpoint",
                group.rank(),
                state.step,
            )));
        }
        self.setup.group = group;
        Ok(())
    }

    /// This process's rank and the number of ranks (0 and 1 unless distributed).
    pub fn rank(&self) -> (usize, usize) {
        (self.setup.group.rank(), self.setup.group.size())
    }

    /// What the run will do.
    pub fn info(&self) -> RunInfo {
        let (setup, progress) = (&self.setup, &self.progress);
        RunInfo {
            model: setup.config.model.path.clone(),
            model_layers: setup.model.args.num_layers,
            base_parameters: setup.model.parameters(),
            trainable_parameters: progress.adapters.layout.trainable_parameters(),
            adapter_bytes: progress.adapters.size_bytes(),
            train_examples: setup.data.train.examples.len(),
            valid_examples: setup.data.valid.as_ref().map_or(0, |d| d.examples.len()),
            total_steps: setup.schedule.total_steps,
            start_step: progress.state.step,
            run_dir: setup.run_dir.clone(),
            load_peak_memory_bytes: setup.load_peak_memory_bytes,
        }
    }

    /// The model (frozen base weights).
    pub fn model(&self) -> &Model {
        &self.setup.model
    }

    /// The tokenizer of the model.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.setup.tokenizer
    }

    /// The adapters as trained so far.
    pub fn adapters(&self) -> &LoraAdapters {
        &self.progress.adapters
    }

    /// The training set.
    pub fn train_set(&self) -> &Dataset {
        &self.setup.data.train
    }

    /// The validation set, if any.
    pub fn valid_set(&self) -> Option<&Dataset> {
        self.setup.data.valid.as_ref()
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.setup.config
    }

    /// Run progress.
    pub fn state(&self) -> &TrainerState {
        &self.progress.state
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.setup.schedule
    }

    /// Evaluates the current adapters on the validation set (`None`
    /// without one), limited to `training.eval_batches` batches.
    pub fn evaluate_validation(&self) -> Result<Option<(f64, u64)>> {
        crate::evaluate::validation_loss(&self.setup, &self.progress.adapters)
    }

    /// Runs the loop to the end (or until early stopping or a callback's
    /// [`Control::Stop`](crate::Control::Stop)); writes checkpoints, metrics
    /// and the final adapter.
    pub fn train(&mut self, callbacks: &mut dyn Callbacks) -> Result<TrainSummary> {
        // Steps report their own peak, not the loading's (quantize on load
        // holds a shard in both forms for a moment).
        mlx_rs::memory::reset_peak_memory()?;
        let metrics = open_run_dir(&self.setup, &self.progress)?;
        let end = TrainLoop::new(&self.setup, &mut self.progress, metrics, callbacks)
            .and_then(TrainLoop::run)
            .map_err(|error| self.explain_out_of_memory(error))
            .map_err(|error| self.explain_lost_rank(error))?;
        if self.progress.last_checkpoint_step() != Some(self.progress.state.step) {
            self.progress.save_checkpoint(&self.setup, callbacks)?;
        }
        let adapter_dir = final_adapter_dir(&self.setup.run_dir);
        if self.setup.writes_files() {
            checkpoint::save_adapter(
                &self.progress.adapters,
                &adapter_dir,
                &self.setup.config.model.path,
            )?;
        }
        let state = &self.progress.state;
        Ok(TrainSummary {
            steps: state.step,
            final_loss: end.final_loss,
            best_val_loss: state.best_val_loss,
            last_eval: end.last_eval,
            stop: end.stop,
            seconds: state.seconds,
            trained_tokens: state.trained_tokens,
            peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
            skipped_steps: state.skipped_steps,
            adapter_dir,
            last_checkpoint: self.progress.last_checkpoint.clone(),
        })
    }

    /// An MLX allocation failure becomes [`TrainError::OutOfMemory`], naming
    /// the step and the checkpoint a resume starts from.
    fn explain_out_of_memory(&self, error: TrainError) -> TrainError {
        let message = match &error {
            TrainError::Mlx(exception) => exception.what().to_string(),
            TrainError::Model(ft_model::Error::Mlx(exception)) => exception.what().to_string(),
            TrainError::Optim(ft_optim::OptimError::Mlx(exception)) => exception.what().to_string(),
            _ => return error,
        };
        if !crate::error::is_out_of_memory_message(&message) {
            return error;
        }
        TrainError::OutOfMemory {
            step: self.progress.state.step + 1,
            message,
            last_checkpoint: self.progress.last_checkpoint.clone(),
        }
    }

    /// An MLX error from the ring backend, reworded to say which ranks this
    /// one talks to (a lost rank is one of them) and where the run can resume.
    fn explain_lost_rank(&self, error: TrainError) -> TrainError {
        let (rank, ranks) = self.rank();
        match &error {
            TrainError::Mlx(exception) if ranks > 1 && exception.what().contains("[ring]") => {
                let left = (rank + ranks - 1) % ranks;
                let right = (rank + 1) % ranks;
                let lost = if left == right {
                    format!("rank {left}")
                } else {
                    format!("rank {left} or rank {right}")
                };
                let what = exception.what();
                let what = what.split(" at /").next().unwrap_or(what);
                TrainError::Distributed(format!(
                    "rank {rank} of {ranks} lost the connection to {lost} during step {} ({what}); \
                     the ranks stopped. {}",
                    self.progress.state.step + 1,
                    match &self.progress.last_checkpoint {
                        Some(dir) => format!("Resume from {}", dir.display()),
                        None => "No checkpoint was written yet".into(),
                    }
                ))
            }
            _ => error,
        }
    }
}
