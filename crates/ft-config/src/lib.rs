//! Settings for mlx-ft: their schema, defaults, layering and validation.
//!
//! This crate owns everything a user can configure for a fine-tuning run:
//!
//! * the **schema**: [`Config`] and its nine sections ([`ModelConfig`],
//!   [`LoraConfig`], [`DataConfig`], [`TrainingConfig`], [`OptimizerConfig`],
//!   [`SchedulerConfig`], [`CheckpointConfig`], [`LoggingConfig`], [`MemoryConfig`]), whose
//!   field doc comments are the user documentation;
//! * the **defaults** ([`Config::default`]);
//! * the **layering** of settings with [`ConfigLoader`]: built-in defaults <
//!   the `extends` chain of a config file < the config file < `FT_SECTION__KEY`
//!   environment variables < `--set section.key=value` overrides, with the
//!   provenance of every effective value ([`LoadedConfig`], [`Source`]);
//! * **validation** that reports every problem at once, each with its key path,
//!   the allowed values and where the offending value came from
//!   ([`ValidationErrors`]);
//! * the generated configuration reference ([`reference_markdown`]);
//! * what the configured seed drives everywhere: the one seeded generator
//!   ([`rng`]: data order, dropout, validation splits, sampling), so every
//!   crate draws the same way;
//! * test support every crate's tests share ([`testing`]: what a test does
//!   when a prerequisite is missing).
//!
//! It must not know about MLX, tensors, tokenizers, datasets or any file other
//! than config files: paths in the configuration (model, data, checkpoints)
//! are only carried, never opened. It depends on no other workspace crate.
//!
//! ```
//! use ft_config::ConfigLoader;
//!
//! let loaded = ConfigLoader::new()
//!     .toml_str("example", "[training]\nbatch_size = 2\n")
//!     .env_from([("FT_LORA__RANK", "4")])
//!     .overrides(["optimizer.learning_rate=3e-4"])
//!     .load()?;
//! assert_eq!(loaded.config.training.batch_size, 2);
//! assert_eq!(loaded.config.lora.rank, 4);
//! assert_eq!(loaded.config.optimizer.learning_rate, 3e-4);
//! println!("{}", loaded.render_show());
//! # Ok::<(), ft_config::Error>(())
//! ```

#![forbid(unsafe_code)]

#[macro_use]
mod schema;
mod config;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
mod loader;
#[cfg(test)]
mod proptests;
mod reference;
pub mod rng;
mod show;
pub mod testing;
mod validate;
mod values;

use std::path::PathBuf;

pub use config::{
    CheckpointConfig, Config, DataConfig, LoggingConfig, LoraConfig, MemoryConfig, ModelConfig,
    OptimizerConfig, QuantSpec, SchedulerConfig, TrainingConfig, TrainingLength, DEFAULT_MODEL,
};
pub use loader::{ConfigLoader, LoadedConfig, Source, DEFAULT_ENV_PREFIX};
pub use reference::reference_markdown;
pub use validate::{ValidationError, ValidationErrorKind, ValidationErrors};
pub use values::{
    ChatTemplate, DataFormat, Dtype, LogLevel, LoraLayers, LoraTarget, NonFinitePolicy,
    OptimizerName, OverLengthPolicy, Quantization, SchedulerKind, TargetModules,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A config file is not valid TOML or YAML, or its `extends` is malformed.
    #[error("cannot parse config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column where known.
        message: String,
    },
    /// A config file's name ends in neither `.toml`, `.yaml` nor `.yml`.
    #[error(
        "unsupported config file {}: the name must end in .toml, .yaml or .yml",
        path.display()
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// A chain of `extends` comes back to a file already in the chain.
    #[error("`extends` cycle: {}", display_chain(chain))]
    ExtendsCycle {
        /// The files in the order they extend each other; the last one
        /// repeats an earlier one.
        chain: Vec<PathBuf>,
    },
    /// The settings are invalid; every problem found is listed.
    #[error("invalid configuration ({} problem{}):\n{}",
        .0.len(), if .0.len() == 1 { "" } else { "s" }, indent(&.0.to_string()))]
    Invalid(#[from] ValidationErrors),
    /// The configuration cannot be written as TOML.
    #[error("cannot write the configuration as TOML: {0}")]
    Serialize(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn display_chain(chain: &[PathBuf]) -> String {
    chain
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
