//! Examples of mlx-ft as a library; run them with
//! `cargo run --release -p ft-examples --example NAME` from the repository root:
//!
//! * `fine_tune`: a LoRA run on the built-in model and the demo data, with
//!   callbacks printing the loss.
