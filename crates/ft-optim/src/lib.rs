//! # ft-optim
//!
//! Owns optimisation arithmetic: AdamW and SGD updates, learning-rate
//! schedules as pure functions of the step, global-norm gradient clipping and
//! gradient accumulation, with exactly restorable optimizer state.
//!
//! It must not know about models, adapters, data or configuration files: it
//! works on parameter and gradient arrays only, in a fixed order the caller
//! owns.

#![forbid(unsafe_code)]

pub mod accumulate;
pub mod clip;
pub mod error;
pub mod optimizer;
pub mod schedule;

pub use accumulate::GradAccumulator;
pub use clip::{clip_by_global_norm, global_norm};
pub use error::{OptimError, Result};
pub use optimizer::{AdamW, Optimizer, OptimizerState, Sgd};
pub use schedule::{Schedule, ScheduleShape};
