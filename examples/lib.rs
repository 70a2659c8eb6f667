//! Examples of mlx-ft as a library; run them with `cargo run -p ft-examples --example NAME`.
