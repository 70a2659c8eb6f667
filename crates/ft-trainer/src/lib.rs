//! # ft-trainer
//!
//! The training engine: builds a run from a validated configuration (model,
//! adapters, data, optimizer), runs the loop with evaluation, checkpoints,
//! early stopping and metrics, and exposes callbacks for library users.
//!
//! It is the only library crate that sees all the others; it must not know
//! about the terminal (progress bars, exit codes, argument parsing): that is
//! `ft-cli`'s job.

pub mod data_options;
