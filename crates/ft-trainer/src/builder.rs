//! Assembles a run from a configuration: loads the data and the model,
//! builds the optimizer and the learning-rate schedule, and restores a
//! checkpoint to resume from.

use crate::checkpoint::{self, TrainerState};
use crate::data_options::{batch_options, data_options};
use crate::parallel::Workers;
use crate::run::{Datasets, Progress, RunSetup};
use crate::{Result, TrainError};
use ft_config::rng::mix_seed;
use ft_config::{Config, OptimizerName, Quantization, SchedulerKind, TrainingLength};
use ft_data::{BatchOptions, Dataset, TextTokenizer};
use ft_lora::{LoraAdapters, LoraSpec};
use ft_model::distributed::Group;
use ft_model::{LoadOptions, Model, ModelSource};
use ft_optim::{AdamW, Optimizer, Schedule, ScheduleShape, Sgd};
use mlx_rs::Dtype;

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

pub(crate) fn validate(config: &Config) -> Result<()> {
    config
        .validate()
        .map_err(|errors| TrainError::Config(errors.to_string()))
}

/// The model, tokenizer and data a configuration names.
pub(crate) fn load(config: &Config) -> Result<(Model, TextTokenizer, Datasets)> {
    // Cheap checks first: the checkpoint to resume from, then the data,
    // before the (possibly large) model is loaded.
    if let Some(resume) = &config.checkpoint.resume {
        checkpoint::resolve(resume)?;
    }
    let tokenizer = model_tokenizer(&config.model.path)?;
    let data = load_data(config, &tokenizer)?;
    if config.memory.check_fits {
        // From the shapes alone: a run that cannot fit stops before loading.
        let args = crate::memory::model_args(&config.model.path)?;
        let (length, targets) = crate::memory::dataset_extent(config, &data.train);
        let as_loaded = crate::memory::as_loaded(config);
        crate::memory::check_fits(&as_loaded, &args, length, targets)?;
    }
    let model = ft_model::load_model(&config.model.path, &load_options(&config.model))?;
    Ok((model, tokenizer, data))
}

pub(crate) fn load_data(config: &Config, tokenizer: &TextTokenizer) -> Result<Datasets> {
    let (train, valid) = load_datasets(config, tokenizer)?;
    Ok(Datasets { train, valid })
}

/// A run on a loaded model and data: MLX settings applied, adapters and
/// optimizer created or restored, the schedule laid out.
pub(crate) fn assemble(
    config: Config,
    mut model: Model,
    tokenizer: TextTokenizer,
    data: Datasets,
) -> Result<(RunSetup, Progress)> {
    apply_memory_settings(&config.memory)?;
    choose_matmul_path(config.training.grad_checkpointing);
    model.set_gradient_checkpointing(config.training.grad_checkpointing);
    let config_toml = config
        .to_toml_string()
        .map_err(|error| TrainError::Config(error.to_string()))?;
    let spec = LoraSpec::from_config(&config.lora, model.args.num_layers);
    let adapters = LoraAdapters::init(&model, spec, config.training.seed)?;
    let progress = start_or_resume(&config, &model, adapters, build_optimizer(&config))?;
    let run_dir = config.checkpoint.output_dir.clone();
    let batching = batch_options(&config.training, &config.data, tokenizer.special().pad_id());
    let schedule = build_schedule(&config, &data.train, batching)?;
    let eval_workers = Workers::auto(config.training.batch_size as usize);
    let setup = RunSetup {
        config,
        config_toml,
        model,
        tokenizer,
        data,
        schedule,
        run_dir,
        eval_workers,
        group: Group::single(),
        // Read last, so that restoring a checkpoint counts as loading.
        load_peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
    };
    Ok((setup, progress))
}

/// Fresh progress with `adapters` and `optimizer`, or, with
/// `checkpoint.resume`, the adapters, optimizer state and counters of that
/// checkpoint.
fn start_or_resume(
    config: &Config,
    model: &Model,
    adapters: LoraAdapters,
    mut optimizer: Optimizer,
) -> Result<Progress> {
    let Some(resume) = &config.checkpoint.resume else {
        return Ok(Progress {
            adapters,
            optimizer,
            state: TrainerState::default(),
            resumed: false,
            last_checkpoint: None,
        });
    };
    let dir = checkpoint::resolve(resume)?;
    let loaded = checkpoint::load(&dir, &model.args, &mut optimizer)?;
    if loaded.adapters.layout.spec != adapters.layout.spec {
        return Err(TrainError::Checkpoint {
            path: dir,
            message: "its adapter settings differ from the configuration's [lora] section".into(),
        });
    }
    Ok(Progress {
        adapters: loaded.adapters,
        optimizer,
        state: loaded.state,
        resumed: true,
        last_checkpoint: Some(dir),
    })
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
