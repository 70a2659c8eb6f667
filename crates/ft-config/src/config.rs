//! The schema: [`Config`] and its sections, with their defaults.
//!
//! The doc comment of every field below is its user documentation: it is
//! rendered into the configuration reference by [`crate::reference_markdown`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::schema::{Kind, Range};
use crate::values::{
    ChatTemplate, DataFormat, Dtype, LogLevel, LoraLayers, NonFinitePolicy, OptimizerName,
    OverLengthPolicy, Quantization, SchedulerKind, TargetModules,
};
use crate::{Error, Result, ValidationErrors};

/// Upper bound of integer settings stored as `u32`.
const U32_MAX: i64 = u32::MAX as i64;

/// A count of at least one.
const POSITIVE: Kind = Kind::Int {
    min: 1,
    max: U32_MAX,
};

/// A count where 0 has a meaning of its own (documented per field).
const COUNT: Kind = Kind::Int {
    min: 0,
    max: U32_MAX,
};

/// The built-in model used when none is configured.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// Every setting of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base model: where it is and how its weights are held.
    pub model: ModelConfig,
    /// LoRA adapters: shape and placement.
    pub lora: LoraConfig,
    /// Training data and how it becomes token sequences.
    pub data: DataConfig,
    /// The training loop.
    pub training: TrainingConfig,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    pub scheduler: SchedulerConfig,
    /// Where checkpoints go and which to resume from.
    pub checkpoint: CheckpointConfig,
    /// Console and file logging.
    pub logging: LoggingConfig,
    /// MLX's memory limits and buffer cache.
    pub memory: MemoryConfig,
}

impl Config {
    /// Checks every rule of the schema (types, ranges and rules that involve
    /// several settings) and reports all violations at once.
    ///
    /// [`crate::ConfigLoader::load`] already does this; use it for
    /// configurations built or changed in code.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        crate::validate::validate_config(self)
    }

    /// The configuration as a TOML document, e.g. to save the effective
    /// settings into a run directory. Loading it back with
    /// [`Config::from_toml_str`] gives an equal `Config`.
    ///
    /// Fails only for settings TOML cannot hold (a seed above `i64::MAX`,
    /// a path that is not UTF-8), which validation rejects anyway.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|error| Error::Serialize(error.to_string()))
    }

    /// Reads a configuration from TOML text layered over the defaults, as
    /// [`crate::ConfigLoader`] would read a file (an `extends` is resolved
    /// relative to the current directory), and validates it.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        crate::ConfigLoader::new()
            .toml_str("<string>", text)
            .load()
            .map(|loaded| loaded.config)
    }
}

section! {
    /// Base model: where it is and how its weights are held.
    pub struct ModelConfig at "model" {
        /// The base model: a directory with `config.json`, tokenizer and
        /// safetensors weights, a `.gguf` file, a Hugging Face Hub id
        /// (`org/name` or `org/name@revision`, fetched into the Hugging Face
        /// cache; see docs/hub.md), or the short name of a built-in model.
        /// Relative paths are relative to the current directory.
        path: String = DEFAULT_MODEL.to_owned(); Kind::Text;
        /// Numeric type the frozen base weights are held and computed in.
        dtype: Dtype = Dtype::default(); Kind::Choice(Dtype::NAMES);
        /// Quantize the frozen base weights (QLoRA): `"none"`, or a table
        /// `{ bits, group_size }` (see `model.quantization.*`).
        quantization: Quantization = Quantization::None; Kind::Quantization;
    }
}

section! {
    /// Quantization of the frozen base weights, when `model.quantization` is
    /// a table.
    pub struct QuantSpec at "model.quantization" {
        /// Bits per quantized weight.
        bits: u8 = 4; Kind::IntOneOf(&[4, 8]);
        /// Number of consecutive weights that share one scale and bias.
        group_size: u32 = 64; Kind::IntOneOf(&[32, 64, 128]);
    }
}

section! {
    /// LoRA adapters: shape and placement.
    pub struct LoraConfig at "lora" {
        /// Rank of the low-rank update `B·A`.
        rank: u32 = 8; POSITIVE;
        /// Scaling numerator: the update is multiplied by `alpha / rank`.
        alpha: f64 = 16.0; Kind::Float(Range::above(0.0));
        /// Dropout probability applied to the adapter input during training.
        dropout: f64 = 0.0; Kind::Float(Range::half_open(0.0, 1.0));
        /// Linear layers of each adapted block that get an adapter: a list of
        /// module names, or `"all-linear"` for all of them.
        target_modules: TargetModules = TargetModules::default(); Kind::Modules;
        /// Number of transformer blocks to adapt, counted from the last one;
        /// `-1` or `"all"` adapts every block.
        num_layers: LoraLayers = LoraLayers::default(); Kind::Layers;
        /// Use DoRA (weight-decomposed LoRA) instead of plain LoRA.
        use_dora: bool = false; Kind::Bool;
    }
}

impl LoraConfig {
    /// The factor the low-rank update is multiplied by: `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / f64::from(self.rank.max(1))
    }
}

section! {
    /// Training data and how it becomes token sequences.
    pub struct DataConfig at "data" {
        /// Training set: a JSONL file.
        train: Option<PathBuf> = None; Kind::Optional(&Kind::Path);
        /// Validation set: a JSONL file. Mutually exclusive with a non-zero
        /// `data.valid_split`.
        valid: Option<PathBuf> = None; Kind::Optional(&Kind::Path);
        /// Test set, used by `ft eval`: a JSONL file.
        test: Option<PathBuf> = None; Kind::Optional(&Kind::Path);
        /// Record layout of the data files; `auto` detects it from the first
        /// record.
        format: DataFormat = DataFormat::default(); Kind::Choice(DataFormat::NAMES);
        /// Longest token sequence fed to the model.
        max_seq_len: u32 = 2048; Kind::Int { min: 2, max: U32_MAX };
        /// What to do with a sample longer than `data.max_seq_len`.
        over_length: OverLengthPolicy = OverLengthPolicy::default();
            Kind::Choice(OverLengthPolicy::NAMES);
        /// Pack several short samples into one sequence of up to
        /// `data.max_seq_len` tokens.
        packing: bool = false; Kind::Bool;
        /// Compute the loss on completions only, not on prompt tokens.
        mask_prompt: bool = true; Kind::Bool;
        /// Fraction of the training set held out for validation when
        /// `data.valid` is not given; 0 holds out nothing.
        valid_split: f64 = 0.0; Kind::Float(Range::half_open(0.0, 1.0));
        /// Chat template for `chat` records; `auto` uses the model's own.
        template: ChatTemplate = ChatTemplate::default(); Kind::Choice(ChatTemplate::NAMES);
    }
}

/// How long training runs, once `training.steps` and `training.epochs` are
/// resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainingLength {
    /// A fixed number of optimizer steps.
    Steps(u32),
    /// A number of passes over the training set.
    Epochs(u32),
}

/// Optimizer steps when neither `training.steps` nor `training.epochs` is set.
const DEFAULT_STEPS: u32 = 100;

section! {
    /// The training loop.
    pub struct TrainingConfig at "training" {
        /// Number of optimizer steps. Mutually exclusive with
        /// `training.epochs`; a layer that sets one replaces the other set by a
        /// lower layer.
        steps: Option<u32> = Some(DEFAULT_STEPS); Kind::Optional(&POSITIVE);
        /// Number of passes over the training set, instead of `training.steps`.
        epochs: Option<u32> = None; Kind::Optional(&POSITIVE);
        /// Sequences per micro-batch.
        batch_size: u32 = 4; POSITIVE;
        /// Micro-batches whose gradients are summed before each optimizer step.
        grad_accumulation: u32 = 1; POSITIVE;
        /// Clip the global gradient norm to this value; 0 disables clipping.
        max_grad_norm: f64 = 1.0; Kind::Float(Range::at_least(0.0));
        /// Label smoothing of the cross-entropy loss.
        label_smoothing: f64 = 0.0; Kind::Float(Range::half_open(0.0, 1.0));
        /// Seed for adapter initialization, dropout and data shuffling.
        seed: u64 = 0; Kind::Int { min: 0, max: i64::MAX };
        /// Recompute activations in the backward pass to save memory.
        grad_checkpointing: bool = false; Kind::Bool;
        /// Evaluate on the validation set every this many steps; 0 disables.
        eval_every: u32 = 50; COUNT;
        /// Validation batches per evaluation; unset evaluates the whole set.
        eval_batches: Option<u32> = None; Kind::Optional(&POSITIVE);
        /// Save a checkpoint every this many steps; 0 saves only at the end.
        save_every: u32 = 100; COUNT;
        /// Stop after this many evaluations without improvement; unset never
        /// stops early.
        early_stopping_patience: Option<u32> = None; Kind::Optional(&POSITIVE);
        /// Smallest drop of the validation loss that counts as improvement.
        early_stopping_min_delta: f64 = 0.0; Kind::Float(Range::at_least(0.0));
        /// What to do when the loss or the gradients are NaN or infinite.
        on_nonfinite: NonFinitePolicy = NonFinitePolicy::default();
            Kind::Choice(NonFinitePolicy::NAMES);
    }
}

impl TrainingConfig {
    /// How long training runs: `steps` if set, else `epochs`, else 100 steps.
    pub fn length(&self) -> TrainingLength {
        match (self.steps, self.epochs) {
            (Some(steps), _) => TrainingLength::Steps(steps),
            (None, Some(epochs)) => TrainingLength::Epochs(epochs),
            (None, None) => TrainingLength::Steps(DEFAULT_STEPS),
        }
    }

    /// Sequences per optimizer step: `batch_size * grad_accumulation`.
    pub fn effective_batch_size(&self) -> u64 {
        u64::from(self.batch_size) * u64::from(self.grad_accumulation)
    }
}

section! {
    /// The optimizer.
    pub struct OptimizerConfig at "optimizer" {
        /// Optimization algorithm.
        name: OptimizerName = OptimizerName::default(); Kind::Choice(OptimizerName::NAMES);
        /// Peak learning rate (reached after warmup).
        learning_rate: f64 = 1e-4; Kind::Float(Range::above(0.0));
        /// AdamW decay rates of the first and second moment estimates.
        betas: [f64; 2] = [0.9, 0.999]; Kind::FloatPair(Range::half_open(0.0, 1.0));
        /// AdamW term added to the denominator for numerical stability.
        eps: f64 = 1e-8; Kind::Float(Range::above(0.0));
        /// Decoupled weight decay (AdamW) or L2 penalty (SGD).
        weight_decay: f64 = 0.0; Kind::Float(Range::at_least(0.0));
        /// SGD momentum; 0 is plain SGD. Ignored by AdamW.
        momentum: f64 = 0.0; Kind::Float(Range::half_open(0.0, 1.0));
    }
}

section! {
    /// The learning-rate schedule.
    pub struct SchedulerConfig at "scheduler" {
        /// Shape of the schedule after warmup.
        kind: SchedulerKind = SchedulerKind::default(); Kind::Choice(SchedulerKind::NAMES);
        /// Steps of linear warmup from 0 to the learning rate. Mutually
        /// exclusive with `scheduler.warmup_ratio`.
        warmup_steps: Option<u32> = None; Kind::Optional(&COUNT);
        /// Warmup as a fraction of the total steps, instead of
        /// `scheduler.warmup_steps`.
        warmup_ratio: Option<f64> = None; Kind::Optional(&Kind::Float(Range::half_open(0.0, 1.0)));
        /// Learning rate at the end of a decaying schedule.
        min_lr: f64 = 0.0; Kind::Float(Range::at_least(0.0));
    }
}

impl SchedulerConfig {
    /// Warmup steps for a run of `total_steps` optimizer steps.
    pub fn warmup_steps_for(&self, total_steps: u64) -> u64 {
        match (self.warmup_steps, self.warmup_ratio) {
            (Some(steps), _) => u64::from(steps).min(total_steps),
            // Truncation is intended: a ratio of a step count, rounded down.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            (None, Some(ratio)) => ((total_steps as f64) * ratio.clamp(0.0, 1.0)) as u64,
            (None, None) => 0,
        }
    }
}

section! {
    /// Where checkpoints go and which to resume from.
    pub struct CheckpointConfig at "checkpoint" {
        /// Run directory for adapters, checkpoints, logs and the saved
        /// effective configuration.
        output_dir: PathBuf = PathBuf::from("runs/default"); Kind::Path;
        /// Number of most recent checkpoints to keep; 0 keeps all.
        keep_last: u32 = 3; COUNT;
        /// Checkpoint directory to resume training from.
        resume: Option<PathBuf> = None; Kind::Optional(&Kind::Path);
    }
}

section! {
    /// Console and file logging.
    pub struct LoggingConfig at "logging" {
        /// Verbosity of the console log.
        level: LogLevel = LogLevel::default(); Kind::Choice(LogLevel::NAMES);
        /// Also write the log as JSON lines to this file.
        json_file: Option<PathBuf> = None; Kind::Optional(&Kind::Path);
        /// Metrics file (JSON lines), relative to `checkpoint.output_dir`.
        metrics_file: PathBuf = PathBuf::from("metrics.jsonl"); Kind::Path;
        /// Draw loss and learning-rate plots into the run directory.
        plots: bool = true; Kind::Bool;
    }
}

section! {
    /// MLX's memory limits and buffer cache. Applied when training starts and
    /// logged; `ft doctor` shows the machine's figures.
    pub struct MemoryConfig at "memory" {
        /// Ceiling on the memory MLX allocates, in GB; beyond it MLX waits
        /// for buffers to be freed and then fails. Unset keeps MLX's default
        /// (1.5x the GPU's recommended working set on Metal, the machine's
        /// memory elsewhere).
        limit_gb: Option<f64> = None; Kind::Optional(&Kind::Float(Range::above(0.0)));
        /// Memory MLX keeps wired (resident, never paged out) on Metal, in GB.
        /// Unset wires up to the GPU's recommended working set, as mlx-lm does
        /// (macOS 15 and later); 0 leaves the system's default. Ignored off Metal.
        wired_limit_gb: Option<f64> = None; Kind::Optional(&Kind::Float(Range::at_least(0.0)));
        /// Largest buffer cache MLX keeps for reuse, in GB; 0 disables the
        /// cache. Unset keeps MLX's default (the memory limit).
        cache_limit_gb: Option<f64> = None; Kind::Optional(&Kind::Float(Range::at_least(0.0)));
        /// Empty MLX's buffer cache every this many steps; 0 never does.
        clear_cache_every: u32 = 0; COUNT;
        /// Refuse to start when `ft estimate-memory`'s prediction for this
        /// configuration exceeds the machine's memory, and say what would fit.
        check_fits: bool = true; Kind::Bool;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let config = Config::default();
        assert_eq!(config.model.path, "smollm2-135m-instruct");
        assert_eq!(config.model.dtype, Dtype::Float32);
        assert_eq!(config.model.quantization, Quantization::None);
        assert_eq!(config.lora.rank, 8);
        assert_eq!(config.lora.scale(), 2.0);
        assert_eq!(config.lora.num_layers, LoraLayers::Last(16));
        assert_eq!(config.data.max_seq_len, 2048);
        assert!(config.data.mask_prompt);
        assert_eq!(config.training.length(), TrainingLength::Steps(100));
        assert_eq!(config.training.batch_size, 4);
        assert_eq!(config.optimizer.betas, [0.9, 0.999]);
        assert_eq!(config.checkpoint.keep_last, 3);
        assert_eq!(config.logging.metrics_file, PathBuf::from("metrics.jsonl"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn toml_round_trip_gives_the_same_config() {
        let mut config = Config::default();
        config.model.quantization = Quantization::Affine(QuantSpec {
            bits: 8,
            group_size: 128,
        });
        config.lora.target_modules = TargetModules::AllLinear;
        config.lora.num_layers = LoraLayers::All;
        config.training.steps = None;
        config.training.epochs = Some(3);
        config.scheduler.warmup_ratio = Some(0.05);
        config.data.train = Some(PathBuf::from("data/train.jsonl"));
        config.optimizer.eps = 1e-12;
        let text = config.to_toml_string().expect("serializes");
        let back = Config::from_toml_str(&text).expect("loads");
        assert_eq!(back, config, "{text}");

        let default_text = Config::default().to_toml_string().expect("serializes");
        assert_eq!(
            Config::from_toml_str(&default_text).expect("loads"),
            Config::default()
        );
    }

    #[test]
    fn length_and_warmup_helpers() {
        let mut training = TrainingConfig {
            steps: None,
            epochs: Some(2),
            ..TrainingConfig::default()
        };
        assert_eq!(training.length(), TrainingLength::Epochs(2));
        training.epochs = None;
        assert_eq!(training.length(), TrainingLength::Steps(100));
        training.grad_accumulation = 4;
        assert_eq!(training.effective_batch_size(), 16);

        let mut scheduler = SchedulerConfig::default();
        assert_eq!(scheduler.warmup_steps_for(100), 0);
        scheduler.warmup_ratio = Some(0.1);
        assert_eq!(scheduler.warmup_steps_for(1000), 100);
        scheduler.warmup_steps = Some(500);
        assert_eq!(scheduler.warmup_steps_for(100), 100);
    }
}
