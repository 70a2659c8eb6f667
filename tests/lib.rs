//! Cross-crate tests live in `tests/*.rs`.

#![forbid(unsafe_code)]
