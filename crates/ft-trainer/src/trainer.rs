//! The training loop: a run built from a validated configuration.

use crate::checkpoint::{self, TrainerState};
use crate::data_options::{batch_options, data_options};
use crate::error::io_error;
use crate::loss::{loss_sum, BatchArrays};
use crate::metrics::{Callbacks, Control, EvalMetrics, MetricsFile, MetricsRecord, StepMetrics};
use crate::parallel::{shard_rows, Workers};
use crate::{Result, TrainError};
use ft_config::rng::mix_seed;
use ft_config::{
    Config, NonFinitePolicy, OptimizerName, Quantization, SchedulerKind, TrainingLength,
};
use ft_data::{BatchOptions, Dataset, TextTokenizer};
use ft_lora::{LoraAdapters, LoraLayout, LoraSpec};
use ft_model::distributed::Group;
use ft_model::{LinearAdapter, LoadOptions, Model, ModelSource};
use ft_optim::{
    clip_by_global_norm, AdamW, GradAccumulator, Optimizer, Schedule, ScheduleShape, Sgd,
};
use mlx_rs::{Array, Dtype};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    config: Config,
    config_toml: String,
    model: Model,
    tokenizer: TextTokenizer,
    train_set: Dataset,
    valid_set: Option<Dataset>,
    adapters: LoraAdapters,
    optimizer: Optimizer,
    schedule: Schedule,
    state: TrainerState,
    run_dir: PathBuf,
    resumed: bool,
    last_checkpoint: Option<PathBuf>,
    /// Streams for evaluation passes (training steps use one stream).
    eval_workers: Workers,
    /// The data-parallel group (one process unless [`Trainer::distribute`]d).
    group: Group,
    /// MLX's peak memory when the run was assembled.
    load_peak_memory_bytes: u64,
}

/// The final adapter of a run directory.
pub fn final_adapter_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("adapter")
}

/// How the configured base model is loaded: dense in `model.dtype`, or
/// quantized on load for QLoRA. A checkpoint already quantized in MLX's
/// layout (mlx-community's 4-bit models, `ft convert --quantize`) is trained
/// as stored, as mlx-lm does; a GGUF file's quantized tensors (a storage
/// format) are widened to `model.dtype` unless `model.quantization` is set.
pub fn load_options(config: &ft_config::ModelConfig) -> LoadOptions {
    let dtype = match config.dtype {
        ft_config::Dtype::Float32 => Dtype::Float32,
        ft_config::Dtype::Float16 => Dtype::Float16,
        ft_config::Dtype::Bfloat16 => Dtype::Bfloat16,
    };
    match &config.quantization {
        Quantization::None => LoadOptions {
            dtype: Some(dtype),
            dequantize: matches!(
                ModelSource::resolve_without_weights(&config.path),
                Ok(ModelSource::Gguf(_))
            ),
            quantize: None,
        },
        Quantization::Affine(spec) => LoadOptions {
            dtype: Some(dtype),
            dequantize: false,
            quantize: Some((spec.group_size as i32, i32::from(spec.bits))),
        },
    }
}

/// The tokenizer that belongs to a model: its `tokenizer.json` directory or
/// its GGUF metadata.
pub fn model_tokenizer(model: &str) -> Result<TextTokenizer> {
    // A Hub id needs only its tokenizer files here, not the weights.
    let source = ModelSource::resolve_without_weights(model)?;
    Ok(TextTokenizer::from_path(source.path())?)
}

impl Trainer {
    /// Builds a run: validates the configuration, loads the model, the
    /// tokenizer and the data, creates (or, with `checkpoint.resume`,
    /// restores) adapters and optimizer.
    pub fn new(config: Config) -> Result<Self> {
        config
            .validate()
            .map_err(|errors| TrainError::Config(errors.to_string()))?;
        // Cheap checks first: the checkpoint to resume from, then the data,
        // before the (possibly large) model is loaded.
        if let Some(resume) = &config.checkpoint.resume {
            checkpoint::resolve(resume)?;
        }
        let tokenizer = model_tokenizer(&config.model.path)?;
        let (train_set, valid_set) = load_datasets(&config, &tokenizer)?;
        if config.memory.check_fits {
            // From the shapes alone: a run that cannot fit stops before loading.
            let args = crate::memory::model_args(&config.model.path)?;
            let (length, targets) = crate::memory::dataset_extent(&config, &train_set);
            let as_loaded = crate::memory::as_loaded(&config);
            crate::memory::check_fits(&as_loaded, &args, length, targets)?;
        }
        let model = ft_model::load_model(&config.model.path, &load_options(&config.model))?;
        Self::from_parts(config, model, tokenizer, train_set, valid_set)
    }

    /// Builds a run on a model and tokenizer already in memory (the
    /// configuration's `model` section is then only recorded, not loaded).
    pub fn with_model(config: Config, model: Model, tokenizer: TextTokenizer) -> Result<Self> {
        config
            .validate()
            .map_err(|errors| TrainError::Config(errors.to_string()))?;
        let (train_set, valid_set) = load_datasets(&config, &tokenizer)?;
        Self::from_parts(config, model, tokenizer, train_set, valid_set)
    }

    fn from_parts(
        config: Config,
        mut model: Model,
        tokenizer: TextTokenizer,
        train_set: Dataset,
        valid_set: Option<Dataset>,
    ) -> Result<Self> {
        apply_memory_settings(&config.memory)?;
        choose_matmul_path(config.training.grad_checkpointing);
        model.set_gradient_checkpointing(config.training.grad_checkpointing);
        let config_toml = config
            .to_toml_string()
            .map_err(|error| TrainError::Config(error.to_string()))?;
        let spec = LoraSpec::from_config(&config.lora, model.args.num_layers);
        let mut adapters = LoraAdapters::init(&model, spec, config.training.seed)?;
        let mut optimizer = build_optimizer(&config);
        let mut state = TrainerState::default();
        let mut resumed = false;
        let mut last_checkpoint = None;
        if let Some(resume) = &config.checkpoint.resume {
            let dir = checkpoint::resolve(resume)?;
            let loaded = checkpoint::load(&dir, &model.args, &mut optimizer)?;
            if loaded.adapters.layout.spec != adapters.layout.spec {
                return Err(TrainError::Checkpoint {
                    path: dir,
                    message: "its adapter settings differ from the configuration's [lora] section"
                        .into(),
                });
            }
            adapters = loaded.adapters;
            state = loaded.state;
            resumed = true;
            last_checkpoint = Some(dir);
        }
        let run_dir = config.checkpoint.output_dir.clone();
        let batching = batch_options(&config.training, &config.data, tokenizer.special().pad_id());
        let schedule = build_schedule(&config, &train_set, batching)?;
        let eval_workers = Workers::auto(config.training.batch_size as usize);
        Ok(Trainer {
            schedule,
            config,
            config_toml,
            model,
            tokenizer,
            train_set,
            valid_set,
            adapters,
            optimizer,
            state,
            run_dir,
            resumed,
            last_checkpoint,
            eval_workers,
            group: Group::single(),
            load_peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
        })
    }

    fn batch_options(&self) -> BatchOptions {
        batch_options(
            &self.config.training,
            &self.config.data,
            self.tokenizer.special().pad_id(),
        )
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
        let batch_size = self.config.training.batch_size as usize;
        if batch_size < ranks {
            return Err(TrainError::Config(format!(
                "training.batch_size = {batch_size} is smaller than the {ranks} ranks: every rank \
                 needs at least one row of each batch"
            )));
        }
        let mine = [
            self.state.step as f32,
            self.state.cursor.epoch as f32,
            self.state.cursor.position as f32,
            self.train_set.examples.len() as f32,
            self.adapters.params.len() as f32,
            batch_size as f32,
        ];
        let summed = group.all_sum(&Array::from_slice(&mine, &[mine.len() as i32]))?;
        summed.eval()?;
        let expected: Vec<f32> = mine.iter().map(|v| v * ranks as f32).collect();
        if summed.as_slice::<f32>() != expected.as_slice() {
            return Err(TrainError::Distributed(format!(
                "rank {} of {ranks}: the ranks disagree on the starting point (this rank: step {}, \
                 {} training examples, batch size {batch_size}); start every rank with the same \
                 configuration, data and --resume checkpoint",
                group.rank(),
                self.state.step,
                self.train_set.examples.len()
            )));
        }
        self.group = group;
        Ok(())
    }

    /// This process's rank and the number of ranks (0 and 1 unless distributed).
    pub fn rank(&self) -> (usize, usize) {
        (self.group.rank(), self.group.size())
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
                    self.state.step + 1,
                    match &self.last_checkpoint {
                        Some(dir) => format!("Resume from {}", dir.display()),
                        None => "No checkpoint was written yet".into(),
                    }
                ))
            }
            _ => error,
        }
    }

    /// Only rank 0 writes the run directory.
    fn writes_files(&self) -> bool {
        self.group.rank() == 0
    }

    /// What the run will do.
    pub fn info(&self) -> RunInfo {
        let base_parameters = self.model.parameters();
        RunInfo {
            model: self.config.model.path.clone(),
            model_layers: self.model.args.num_layers,
            base_parameters,
            trainable_parameters: self.adapters.layout.trainable_parameters(),
            adapter_bytes: self.adapters.size_bytes(),
            train_examples: self.train_set.examples.len(),
            valid_examples: self.valid_set.as_ref().map_or(0, |d| d.examples.len()),
            total_steps: self.schedule.total_steps,
            start_step: self.state.step,
            run_dir: self.run_dir.clone(),
            load_peak_memory_bytes: self.load_peak_memory_bytes,
        }
    }

    /// The model (frozen base weights).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer of the model.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The adapters as trained so far.
    pub fn adapters(&self) -> &LoraAdapters {
        &self.adapters
    }

    /// The training set.
    pub fn train_set(&self) -> &Dataset {
        &self.train_set
    }

    /// The validation set, if any.
    pub fn valid_set(&self) -> Option<&Dataset> {
        self.valid_set.as_ref()
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Run progress.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Evaluates the current adapters on the validation set (`None`
    /// without one), limited to `training.eval_batches` batches.
    pub fn evaluate_validation(&self) -> Result<Option<(f64, u64)>> {
        let Some(valid) = &self.valid_set else {
            return Ok(None);
        };
        let limit = self.config.training.eval_batches.map(|n| n as usize);
        let (loss_sum, tokens, _) = evaluate_shard(
            &self.model,
            &self.adapters.view(),
            valid,
            self.config.training.batch_size as usize,
            self.tokenizer.special().pad_id(),
            limit,
            &self.eval_workers,
            (self.group.rank(), self.group.size()),
        )?;
        let (loss_sum, tokens) = if self.group.size() > 1 {
            let summed = self
                .group
                .all_sum(&Array::from_slice(&[loss_sum as f32, tokens as f32], &[2]))?;
            summed.eval()?;
            let values = summed.as_slice::<f32>();
            (f64::from(values[0]), values[1] as u64)
        } else {
            (loss_sum, tokens)
        };
        Ok(Some((mean_loss(loss_sum, tokens)?, tokens)))
    }

    /// Runs the loop to the end (or until early stopping or a callback's
    /// [`Control::Stop`]); writes checkpoints, metrics and the final adapter.
    pub fn train(&mut self, callbacks: &mut dyn Callbacks) -> Result<TrainSummary> {
        // Steps report their own peak, not the loading's (quantize on load
        // holds a shard in both forms for a moment).
        mlx_rs::memory::reset_peak_memory()?;
        let mut metrics = if self.writes_files() {
            std::fs::create_dir_all(&self.run_dir).map_err(io_error(&self.run_dir))?;
            let config_path = self.run_dir.join("config.toml");
            std::fs::write(&config_path, &self.config_toml).map_err(io_error(&config_path))?;
            let metrics_path = self.run_dir.join(&self.config.logging.metrics_file);
            Some(MetricsFile::open(
                &metrics_path,
                self.resumed.then_some(self.state.step),
            )?)
        } else {
            None
        };
        let training = self.config.training.clone();
        let batch_options = self.batch_options();
        let train_set = std::mem::replace(
            &mut self.train_set,
            Dataset {
                examples: Vec::new(),
                report: Default::default(),
                stats: ft_data::DataStats::new(&[], &Default::default()),
            },
        );
        let outcome = self.run_loop(
            &train_set,
            batch_options,
            &training,
            &mut metrics,
            callbacks,
        );
        self.train_set = train_set;
        let (stop, final_loss, last_eval) = outcome
            .map_err(|error| self.explain_out_of_memory(error))
            .map_err(|error| self.explain_lost_rank(error))?;
        if self.last_checkpoint_step() != Some(self.state.step) {
            self.save_checkpoint(callbacks)?;
        }
        let adapter_dir = final_adapter_dir(&self.run_dir);
        if self.writes_files() {
            checkpoint::save_adapter(&self.adapters, &adapter_dir, &self.config.model.path)?;
        }
        Ok(TrainSummary {
            steps: self.state.step,
            final_loss,
            best_val_loss: self.state.best_val_loss,
            last_eval,
            stop,
            seconds: self.state.seconds,
            trained_tokens: self.state.trained_tokens,
            peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
            skipped_steps: self.state.skipped_steps,
            adapter_dir,
            last_checkpoint: self.last_checkpoint.clone(),
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
            step: self.state.step + 1,
            message,
            last_checkpoint: self.last_checkpoint.clone(),
        }
    }

    fn last_checkpoint_step(&self) -> Option<u64> {
        let dir = self.last_checkpoint.as_ref()?;
        let name = dir.file_name()?.to_str()?;
        name.strip_prefix("step-")?.parse().ok()
    }

    #[allow(clippy::type_complexity)]
    fn run_loop(
        &mut self,
        train_set: &Dataset,
        batch_options: BatchOptions,
        training: &ft_config::TrainingConfig,
        metrics: &mut Option<MetricsFile>,
        callbacks: &mut dyn Callbacks,
    ) -> Result<(StopCause, Option<f64>, Option<EvalMetrics>)> {
        // One stream: with the backward pass, splitting measured slower.
        let train_workers = Workers::single();
        let mut batcher = train_set.batcher(batch_options)?;
        if self.state.step == 0 && !self.resumed {
            self.state.cursor = batcher.start();
        }
        let total = self.schedule.total_steps;
        let accumulation = training.grad_accumulation.max(1);
        let smoothing = training.label_smoothing as f32;
        let dropout = self.adapters.layout.spec.dropout > 0.0;
        let (rank, ranks) = (self.group.rank(), self.group.size());
        let mut final_loss = None;
        let mut last_eval = None;
        while self.state.step < total {
            let started = Instant::now();
            let step = self.state.step;
            let lr = self.schedule.at(step);
            let mut accumulator = GradAccumulator::new();
            let mut loss_total = Array::from_f32(0.0);
            let (mut target_tokens, mut real_tokens) = (0u64, 0u64);
            for micro in 0..accumulation {
                let batch = batcher
                    .next_batch(&mut self.state.cursor)?
                    .ok_or_else(|| TrainError::Config("the training set yields no batch".into()))?;
                target_tokens += batch.target_tokens as u64;
                real_tokens += batch.real_tokens() as u64;
                let batch = if ranks > 1 {
                    shard_rows(&batch, rank, ranks)
                } else {
                    batch
                };
                if batch.target_tokens == 0 {
                    continue;
                }
                let parts = train_workers.split(&batch);
                // Each rank draws its own dropout masks (rank 0's are the
                // single-process run's).
                let seed = dropout.then(|| {
                    let seed = dropout_seed(training.seed, step, micro);
                    if rank == 0 {
                        seed
                    } else {
                        mix_seed(seed, rank as u64)
                    }
                });
                let (loss, grads) = loss_and_grads(
                    &self.model,
                    &self.adapters.layout,
                    &self.adapters.params,
                    &parts,
                    &train_workers,
                    seed,
                    smoothing,
                )?;
                loss_total = loss_total.add(&loss)?;
                accumulator.add(grads)?;
            }
            if target_tokens == 0 {
                tracing::warn!(
                    step = step + 1,
                    "no loss targets in this step's batches; skipped"
                );
                self.state.step += 1;
                self.state.skipped_steps += 1;
                continue;
            }
            let inverse = 1.0 / target_tokens as f32;
            let mut grads = if ranks > 1 {
                // One exchange per step: every gradient and the loss sum,
                // flattened together (a rank whose rows had no targets adds zeros).
                let mut sums = if accumulator.micro_batches() == 0 {
                    self.adapters
                        .params
                        .iter()
                        .map(mlx_rs::ops::zeros_like)
                        .collect::<std::result::Result<Vec<_>, _>>()?
                } else {
                    accumulator.take_scaled(1.0)?
                };
                sums.push(loss_total.reshape(&[1])?);
                let mut reduced = self.group.all_sum_flat(&sums)?;
                loss_total = reduced
                    .pop()
                    .ok_or_else(|| TrainError::Distributed("empty reduction".into()))?
                    .reshape(&[])?;
                let factor = Array::from_f32(inverse);
                reduced
                    .iter()
                    .map(|sum| sum.multiply(&factor))
                    .collect::<std::result::Result<Vec<_>, _>>()?
            } else {
                accumulator.take_scaled(inverse)?
            };
            let grad_norm = clip_by_global_norm(&mut grads, training.max_grad_norm)?;
            let mean_loss = loss_total.multiply(Array::from_f32(inverse))?;
            let previous = (self.adapters.params.clone(), self.optimizer.clone());
            self.optimizer
                .update(&mut self.adapters.params, &grads, lr)?;
            let mut outputs = vec![&mean_loss, &grad_norm];
            outputs.extend(self.adapters.params.iter());
            outputs.extend(self.optimizer.state_arrays());
            mlx_rs::transforms::eval(outputs)?;
            let loss = scalar(&mean_loss)?;
            let norm = scalar(&grad_norm)?;
            let nonfinite = if !loss.is_finite() {
                Some(("loss", loss))
            } else if !norm.is_finite() {
                Some(("gradient norm", norm))
            } else {
                None
            };
            let skipped = nonfinite.is_some();
            if let Some((what, value)) = nonfinite {
                (self.adapters.params, self.optimizer) = previous;
                match training.on_nonfinite {
                    NonFinitePolicy::Skip => {
                        tracing::warn!(
                            step = step + 1,
                            what,
                            value,
                            "non-finite value: update skipped"
                        );
                        self.state.skipped_steps += 1;
                    }
                    NonFinitePolicy::Stop => {
                        return Err(TrainError::NonFinite {
                            step: step + 1,
                            what,
                            value,
                            last_checkpoint: self.last_checkpoint.clone(),
                        });
                    }
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            self.state.step += 1;
            let clear_every = u64::from(self.config.memory.clear_cache_every);
            if clear_every > 0 && self.state.step.is_multiple_of(clear_every) {
                mlx_rs::memory::clear_cache()?;
            }
            self.state.seconds += seconds;
            self.state.trained_tokens += real_tokens;
            if !skipped {
                final_loss = Some(loss);
            }
            let step_metrics = StepMetrics {
                step: self.state.step,
                total_steps: total,
                loss,
                lr,
                grad_norm: norm,
                target_tokens,
                real_tokens,
                tokens_per_second: real_tokens as f64 / seconds.max(1e-9),
                peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
                active_memory_bytes: mlx_rs::memory::active_memory().unwrap_or(0) as u64,
                elapsed_seconds: self.state.seconds,
                epoch: self.state.cursor.epoch,
                skipped,
            };
            if let Some(metrics) = metrics.as_mut() {
                metrics.append(&MetricsRecord::Train(step_metrics.clone()))?;
            }
            let mut control = callbacks.on_step(&step_metrics);
            let at_end = self.state.step == total;
            let eval_due = training.eval_every > 0
                && self
                    .state
                    .step
                    .is_multiple_of(u64::from(training.eval_every));
            let mut early_stop = false;
            if (eval_due || at_end) && self.valid_set.is_some() {
                if let Some(eval) = self.run_eval(training)? {
                    if let Some(metrics) = metrics.as_mut() {
                        metrics.append(&MetricsRecord::Eval(eval.clone()))?;
                    }
                    if callbacks.on_eval(&eval) == Control::Stop {
                        control = Control::Stop;
                    }
                    early_stop = training
                        .early_stopping_patience
                        .is_some_and(|patience| self.state.evals_without_improvement >= patience);
                    last_eval = Some(eval);
                }
            }
            let save_due = training.save_every > 0
                && self
                    .state
                    .step
                    .is_multiple_of(u64::from(training.save_every));
            if save_due && !at_end {
                self.save_checkpoint(callbacks)?;
            }
            if early_stop {
                return Ok((StopCause::EarlyStopping, final_loss, last_eval));
            }
            if ranks > 1 {
                // A stop asked for on any rank (Ctrl-C) stops them all at this step.
                let wanted = Array::from_f32(f32::from(u8::from(control == Control::Stop)));
                let anyone = self.group.all_sum(&wanted)?;
                if scalar(&anyone)? > 0.0 {
                    control = Control::Stop;
                }
            }
            if control == Control::Stop {
                return Ok((StopCause::Interrupted, final_loss, last_eval));
            }
        }
        Ok((StopCause::Completed, final_loss, last_eval))
    }

    fn run_eval(&mut self, training: &ft_config::TrainingConfig) -> Result<Option<EvalMetrics>> {
        let Some((loss, target_tokens)) = self.evaluate_validation()? else {
            return Ok(None);
        };
        let improved = match self.state.best_val_loss {
            None => true,
            Some(best) => loss < best - training.early_stopping_min_delta,
        };
        if improved {
            self.state.best_val_loss = Some(loss);
            self.state.evals_without_improvement = 0;
            if self.writes_files() {
                checkpoint::save_adapter(
                    &self.adapters,
                    &self.run_dir.join("best-adapter"),
                    &self.config.model.path,
                )?;
            }
        } else {
            self.state.evals_without_improvement += 1;
        }
        Ok(Some(EvalMetrics {
            step: self.state.step,
            loss,
            perplexity: loss.exp(),
            target_tokens,
            improved,
        }))
    }

    fn save_checkpoint(&mut self, callbacks: &mut dyn Callbacks) -> Result<()> {
        if !self.writes_files() {
            self.last_checkpoint = Some(checkpoint::step_dir(&self.run_dir, self.state.step));
            return Ok(());
        }
        let dir = checkpoint::save(
            &self.run_dir,
            &self.state,
            &self.adapters,
            &self.optimizer,
            &self.config_toml,
            &self.config.model.path,
            self.config.checkpoint.keep_last as usize,
        )?;
        callbacks.on_checkpoint(&dir);
        self.last_checkpoint = Some(dir);
        Ok(())
    }
}

/// Loss sum of one micro-batch and its gradients with respect to the
/// adapter arrays `params` (laid out by `layout`); nothing else is
/// differentiated, so no gradient is computed for frozen weights.
pub fn loss_and_grads(
    model: &Model,
    layout: &LoraLayout,
    params: &[Array],
    parts: &[BatchArrays],
    workers: &Workers,
    dropout_seed: Option<u64>,
    label_smoothing: f32,
) -> Result<(Array, Vec<Array>)> {
    let objective = |params: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
        let view = layout.view(params, dropout_seed);
        parallel_loss_sum(model, &view, parts, workers, label_smoothing)
            .map(|loss| vec![loss])
            .map_err(|error| mlx_rs::error::Exception::custom(error.to_string()))
    };
    let argnums: Vec<i32> = (0..params.len() as i32).collect();
    let (values, grads) =
        mlx_rs::transforms::value_and_grad_with_argnums(objective, &argnums[..])(params)?;
    let loss = values
        .into_iter()
        .next()
        .ok_or_else(|| TrainError::Config("the objective returned no value".into()))?;
    Ok((loss, grads))
}

/// The loss sum of a batch split into `parts`, each computed on its
/// worker's stream.
pub fn parallel_loss_sum(
    model: &Model,
    adapter: &dyn LinearAdapter,
    parts: &[BatchArrays],
    workers: &Workers,
    label_smoothing: f32,
) -> Result<Array> {
    let mut total: Option<Array> = None;
    for (index, part) in parts.iter().enumerate() {
        if part.target_tokens == 0 {
            continue;
        }
        let loss = workers.on(index, || loss_sum(model, adapter, part, label_smoothing))?;
        total = Some(match total {
            None => loss,
            Some(sum) => sum.add(&loss)?,
        });
    }
    Ok(total.unwrap_or_else(|| Array::from_f32(0.0)))
}

/// Loss of a model (with adapters) on a dataset.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy per target token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub target_tokens: u64,
    /// Batches evaluated.
    pub batches: usize,
}

/// Mean cross-entropy of `adapter` on `dataset` in length-sorted batches
/// of `batch_size` rows, over at most `max_batches` batches.
pub fn evaluate(
    model: &Model,
    adapter: &dyn LinearAdapter,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    max_batches: Option<usize>,
) -> Result<EvalResult> {
    let workers = Workers::auto(batch_size);
    evaluate_with(
        model,
        adapter,
        dataset,
        batch_size,
        pad_id,
        max_batches,
        &workers,
    )
}

/// [`evaluate`] with the given workers.
pub fn evaluate_with(
    model: &Model,
    adapter: &dyn LinearAdapter,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    max_batches: Option<usize>,
    workers: &Workers,
) -> Result<EvalResult> {
    let (total, tokens, batches) = evaluate_shard(
        model,
        adapter,
        dataset,
        batch_size,
        pad_id,
        max_batches,
        workers,
        (0, 1),
    )?;
    let loss = mean_loss(total, tokens)?;
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        target_tokens: tokens,
        batches,
    })
}

/// Mean loss per target token of an evaluation.
fn mean_loss(loss_sum: f64, tokens: u64) -> Result<f64> {
    if tokens == 0 {
        return Err(TrainError::Config(
            "the evaluation data has no loss targets".into(),
        ));
    }
    Ok(loss_sum / tokens as f64)
}

/// Loss sum, target tokens and batches of rank `shard.0` of `shard.1`'s
/// share of the evaluation batches (every `shard.1`-th batch).
#[allow(clippy::too_many_arguments)]
fn evaluate_shard(
    model: &Model,
    adapter: &dyn LinearAdapter,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    max_batches: Option<usize>,
    workers: &Workers,
    (rank, ranks): (usize, usize),
) -> Result<(f64, u64, usize)> {
    let batcher = dataset.batcher(BatchOptions {
        batch_size: batch_size.max(1),
        shuffle: false,
        bucket_window: usize::MAX,
        pad_id,
        ..BatchOptions::default()
    })?;
    let _threads = workers.activate();
    let mut total = 0.0f64;
    let mut tokens = 0u64;
    let mut batches = 0usize;
    for batch in batcher
        .epoch_batches(0)
        .iter()
        .take(max_batches.unwrap_or(usize::MAX))
        .skip(rank)
        .step_by(ranks.max(1))
    {
        if batch.target_tokens == 0 {
            continue;
        }
        let parts = workers.split(batch);
        let loss = parallel_loss_sum(model, adapter, &parts, workers, 0.0)?;
        total += scalar(&loss)?;
        tokens += batch.target_tokens as u64;
        batches += 1;
    }
    Ok((total, tokens, batches))
}

/// Float32 expansion of quantized/bf16 weights (the CPU backend's fast
/// path) keeps each expanded copy only while its product runs, and with
/// gradient checkpointing while its layer is recomputed. Without
/// checkpointing the backward pass would keep every layer's copy, so
/// training then uses MLX's kernels.
fn choose_matmul_path(grad_checkpointing: bool) {
    use ft_model::layers::{matmul_path, set_matmul_path, MatmulPath};
    if matmul_path() == MatmulPath::ExpandToFloat32 && !grad_checkpointing {
        set_matmul_path(MatmulPath::Native);
    }
    tracing::info!(path = matmul_path().describe(), "matrix products");
}

/// Applies the `[memory]` settings to MLX and logs what is in force.
pub fn apply_memory_settings(memory: &ft_config::MemoryConfig) -> Result<()> {
    let bytes = |gb: f64| (gb * 1e9) as u64;
    // Unset: wire up to the GPU's recommended working set, as mlx-lm does.
    let wired_limit = match memory.wired_limit_gb {
        None => ft_model::runtime::recommended_working_set(),
        Some(0.0) => None,
        Some(gb) => Some(bytes(gb)),
    };
    let settings = ft_model::runtime::MemorySettings {
        limit: memory.limit_gb.map(bytes),
        wired_limit,
        cache_limit: memory.cache_limit_gb.map(bytes),
    };
    let applied = ft_model::runtime::apply_memory_settings(&settings)?;
    tracing::info!(
        memory_limit = %crate::disk::human_bytes(applied.limit),
        wired_limit = %applied.wired_limit.map_or_else(|| "not set".to_string(), crate::disk::human_bytes),
        cache_limit = %applied.cache_limit.map_or_else(|| "MLX default".to_string(), crate::disk::human_bytes),
        clear_cache_every = memory.clear_cache_every,
        "MLX memory settings"
    );
    Ok(())
}

/// A float32 scalar read back to the host.
fn scalar(array: &Array) -> Result<f64> {
    array.eval()?;
    Ok(array
        .as_slice::<f32>()
        .first()
        .map_or(f64::NAN, |&value| f64::from(value)))
}

/// The training set and the validation set (a file, or a split of the
/// training file) of a configuration, validated and encoded.
pub fn load_datasets(
    config: &Config,
    tokenizer: &TextTokenizer,
) -> Result<(Dataset, Option<Dataset>)> {
    let options = data_options(&config.data);
    let train_path = config.data.train.clone().ok_or_else(|| {
        TrainError::Config("data.train is not set: give a JSONL training file".into())
    })?;
    let mut train_set = Dataset::load(&[&train_path], tokenizer, &options)?;
    let valid_set = match (&config.data.valid, config.data.valid_split) {
        (Some(path), _) => Some(Dataset::load(&[path], tokenizer, &options)?),
        (None, split) if split > 0.0 => {
            // A split needs one example on each side; with fewer, say so
            // rather than report an empty training set after the split.
            let count = train_set.examples.len();
            if count < 2 {
                return Err(TrainError::Config(format!(
                    "{}: data.valid_split = {split} needs at least 2 examples (one to train on, \
                     one to hold out), but the file has {count} usable: add examples, give a \
                     separate data.valid file, or set data.valid_split = 0",
                    train_path.display()
                )));
            }
            Some(split_off(&mut train_set, split, config.training.seed))
        }
        _ => None,
    };
    if train_set.examples.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no training example is left after validation and filtering",
            train_path.display()
        )));
    }
    Ok((train_set, valid_set))
}

fn build_optimizer(config: &Config) -> Optimizer {
    let settings = &config.optimizer;
    match settings.name {
        OptimizerName::AdamW => Optimizer::adamw(AdamW {
            beta1: settings.betas[0],
            beta2: settings.betas[1],
            eps: settings.eps,
            weight_decay: settings.weight_decay,
        }),
        OptimizerName::Sgd => Optimizer::sgd(Sgd {
            momentum: settings.momentum,
            weight_decay: settings.weight_decay,
        }),
    }
}

/// The learning-rate schedule of a run: `training.steps`, or enough steps
/// for `training.epochs` passes over `train_set` batched with `batching`.
fn build_schedule(
    config: &Config,
    train_set: &Dataset,
    batching: BatchOptions,
) -> Result<Schedule> {
    let total_steps = match config.training.length() {
        TrainingLength::Steps(steps) => u64::from(steps),
        TrainingLength::Epochs(epochs) => {
            let per_epoch = train_set.batcher(batching)?.batches_in_epoch(0) as u64;
            let accumulation = u64::from(config.training.grad_accumulation);
            (u64::from(epochs) * per_epoch)
                .div_ceil(accumulation)
                .max(1)
        }
    };
    let scheduler = &config.scheduler;
    Ok(Schedule {
        shape: match scheduler.kind {
            SchedulerKind::Cosine => ScheduleShape::Cosine,
            SchedulerKind::Linear => ScheduleShape::Linear,
            SchedulerKind::Constant => ScheduleShape::Constant,
        },
        peak: config.optimizer.learning_rate,
        min_lr: scheduler.min_lr,
        warmup_steps: scheduler.warmup_steps_for(total_steps),
        total_steps,
    })
}

/// Keeps the validation split's shuffle apart from other seeded streams.
const VALID_SPLIT_SALT: u64 = 0x5eed;

/// Moves a seeded random `fraction` of the training examples into a
/// validation set.
fn split_off(train: &mut Dataset, fraction: f64, seed: u64) -> Dataset {
    let count = train.examples.len();
    let held_out = ((count as f64) * fraction)
        .round()
        .clamp(1.0, (count.max(2) - 1) as f64) as usize;
    let mut keyed: Vec<(u64, usize)> = (0..count)
        .map(|i| (mix_seed(mix_seed(seed, VALID_SPLIT_SALT), i as u64), i))
        .collect();
    keyed.sort_unstable();
    let mut chosen: Vec<usize> = keyed.iter().take(held_out).map(|&(_, i)| i).collect();
    chosen.sort_unstable();
    let mut valid_examples = Vec::with_capacity(held_out);
    for &index in chosen.iter().rev() {
        valid_examples.push(train.examples.remove(index));
    }
    valid_examples.reverse();
    let counts = train.report.counts.clone();
    train.stats = ft_data::DataStats::new(&train.examples, &counts);
    Dataset {
        stats: ft_data::DataStats::new(&valid_examples, &counts),
        examples: valid_examples,
        report: Default::default(),
    }
}

/// A seed for the dropout masks of one micro-batch: a pure function of the
/// run seed and the position in the run, so a resumed run draws the same masks.
fn dropout_seed(seed: u64, step: u64, micro: u32) -> u64 {
    mix_seed(mix_seed(seed, step), u64::from(micro))
}
