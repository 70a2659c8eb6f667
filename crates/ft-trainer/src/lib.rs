//! # ft-trainer
//!
//! The training engine: builds a run from a validated configuration (model,
//! adapters, data, optimizer), runs the loop with evaluation, checkpoints,
//! early stopping and metrics, and exposes callbacks for library users.
//!
//! It is the only library crate that sees all the others; it must not know
//! about the terminal (progress bars, exit codes, argument parsing): that is
//! `ft-cli`'s job.
//!
//! ```no_run
//! use ft_trainer::{Trainer, NoCallbacks};
//! let config = ft_config::ConfigLoader::new().file("configs/quickstart.toml").load()?.config;
//! let mut trainer = Trainer::new(config)?;
//! let summary = trainer.train(&mut NoCallbacks)?;
//! println!("adapter in {}", summary.adapter_dir.display());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod builder;
pub mod checkpoint;
pub mod data_options;
pub mod disk;
mod early_stop;
pub mod error;
mod evaluate;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod parallel;
mod run;
mod step;
mod train_loop;
pub mod trainer;

pub use checkpoint::TrainerState;
pub use error::{Result, TrainError};
pub use metrics::{Callbacks, Control, EvalMetrics, MetricsRecord, NoCallbacks, StepMetrics};
pub use trainer::{
    evaluate, evaluate_with, load_datasets, load_options, loss_and_grads, model_tokenizer,
    parallel_loss_sum, EvalResult, RunInfo, StopCause, TrainSummary, Trainer,
};
