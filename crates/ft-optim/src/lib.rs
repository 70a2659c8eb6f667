//! # ft-optim
//!
//! Owns optimisation arithmetic: AdamW and SGD updates, learning-rate
//! schedules as pure functions of the step, global-norm gradient clipping and
//! gradient accumulation, with exactly restorable optimizer state.
//!
//! It must not know about models, adapters, data or configuration files: it
//! works on named parameter and gradient arrays only.
