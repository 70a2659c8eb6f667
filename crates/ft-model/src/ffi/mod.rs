//! Every `unsafe` block of the workspace: calls into mlx-c where mlx-rs has
//! no safe wrapper, and into the C library. Each function here is safe to
//! call; the invariants it relies on are written next to its `unsafe`
//! blocks, and an `unsafe fn` says in `# Safety` what its caller must
//! uphold. The rest of ft-model denies `unsafe_code`, and every other crate
//! forbids it; `tests/tests/tidy_unsafe.rs` holds both.

pub mod checkpoint;
pub mod mlx;
pub mod os;
