//! ft-trainer
