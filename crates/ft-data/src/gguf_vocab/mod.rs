//! llama.cpp's tokenizer in GGUF metadata, both ways: [`read`] builds a
//! [`TextTokenizer`](crate::TextTokenizer) from a file's `tokenizer.ggml.*`
//! keys ([`TextTokenizer::from_gguf`](crate::TextTokenizer::from_gguf)),
//! [`write`] turns a model's tokenizer into those keys
//! ([`tokenizer_gguf_metadata`], for `ft fuse --format gguf`).
//!
//! The GGUF container (reading and writing files, the value type) is
//! `ft-gguf`'s; this module knows what the tokenizer keys mean.

pub mod read;
pub mod write;

pub use write::tokenizer_gguf_metadata;

use crate::tokenizer::TokenKind;

impl TokenKind {
    /// From a GGUF token type number (unknown numbers count as normal).
    pub fn from_gguf(value: i64) -> Self {
        match value {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

/// GGUF's `tokenizer.ggml.token_type` number of `kind` (the inverse of
/// [`TokenKind::from_gguf`]).
fn gguf_token_type(kind: TokenKind) -> i32 {
    match kind {
        TokenKind::Normal => 1,
        TokenKind::Unknown => 2,
        TokenKind::Control => 3,
        TokenKind::UserDefined => 4,
        TokenKind::Unused => 5,
        TokenKind::Byte => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_types_map_both_ways() {
        use TokenKind::*;
        for kind in [Normal, Unknown, Control, UserDefined, Unused, Byte] {
            assert_eq!(TokenKind::from_gguf(gguf_token_type(kind).into()), kind);
        }
        assert_eq!(TokenKind::from_gguf(99), Normal);
    }
}
