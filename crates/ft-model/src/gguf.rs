//! GGUF files through MLX's own loader (`mlx_rs::io::GgufFile`, over
//! `mlx_load_gguf`): tensors come back as MLX arrays (Q4_0/Q4_1/Q8_0 as
//! MLX affine-quantized triples). The file's structure and metadata are
//! read in Rust by `ft-gguf` first ([`layout::read_layout`]): MLX's reader
//! trusts every count and offset in the file, and metadata numbers read
//! there never go through MLX arithmetic (Metal has no float64). Only the
//! tensors come from MLX.

mod layout;

use layout::check_writable;
pub use layout::{read_layout, MLX_GGML_TYPES};

use crate::{Error, Result};
use ft_gguf::{GgufLayout, GgufMetadata, GgufValue};
use mlx_rs::io::GgufError;
use mlx_rs::Array;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An opened GGUF file: its checked layout and metadata, and MLX's handle
/// on its tensors.
pub struct GgufFile {
    file: mlx_rs::io::GgufFile,
    path: PathBuf,
    layout: GgufLayout,
}

impl GgufFile {
    /// Opens `path`; a file that is not GGUF, is truncated or holds what
    /// MLX's reader cannot take is an error naming it and the offset.
    pub fn open(path: &Path) -> Result<Self> {
        // gguflib trusts every length and offset in the file: check them first.
        let layout = read_layout(path)?;
        check_writable(path)?;
        // mlx-rs's wrapper calls the same `mlx_load_gguf` on the CPU stream
        // (none is scoped here) and checks dtypes only when saving: every
        // type `MLX_GGML_TYPES` admits loads as it did through our own FFI.
        // It installs mlx-rs's error handler and frees the handle itself.
        let file = mlx_rs::io::GgufFile::load(path).map_err(|error| Error::MlxIo {
            path: path.to_path_buf(),
            message: match error {
                GgufError::UnsupportedExtension => "MLX's GGUF loader opens only files whose \
                    name ends in `.gguf`: rename the file, or link it under such a name"
                    .into(),
                GgufError::InvalidPathUtf8 => {
                    "MLX's GGUF loader needs a path that is valid UTF-8".into()
                }
                other => format!("MLX could not read this GGUF file: {other}"),
            },
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            layout,
        })
    }

    /// All tensors, by GGUF name (quantized ones as `name.weight`/`.scales`/`.biases`
    /// or `name`/`name.scales`/... as MLX returns them).
    pub fn tensors(&self) -> Result<HashMap<String, Array>> {
        self.file.arrays().map_err(|error| Error::MlxIo {
            path: self.path.clone(),
            message: format!("MLX could not read the tensors: {error}"),
        })
    }

    /// The file's metadata, read and checked in Rust when it was opened.
    pub fn metadata(&self) -> &GgufMetadata {
        &self.layout.metadata
    }

    /// A string metadata value, if present (and a string).
    pub fn metadata_string(&self, key: &str) -> Option<&str> {
        self.metadata().get(key).and_then(GgufValue::as_str)
    }

    /// A scalar numeric (or boolean, as 0 or 1) metadata value. A key
    /// holding a string or a list is an error that says so.
    pub fn metadata_number(&self, key: &str) -> Result<Option<f64>> {
        metadata_number(self.metadata(), key).map_err(|message| Error::Config {
            path: self.path.clone(),
            message,
        })
    }

    /// The layout checked when the file was opened (tensor table and metadata).
    pub fn layout(&self) -> &GgufLayout {
        &self.layout
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The number stored at `key` (a boolean as 0 or 1), if present; a string
/// or a list there is an error naming the key.
pub(crate) fn metadata_number(
    metadata: &GgufMetadata,
    key: &str,
) -> std::result::Result<Option<f64>, String> {
    let Some(value) = metadata.get(key) else {
        return Ok(None);
    };
    match value {
        GgufValue::Bool(flag) => Some(f64::from(u8::from(*flag))),
        other => other.as_f64(),
    }
    .map(Some)
    .ok_or_else(|| {
        format!(
            "metadata `{key}`: expected a number, got a {}",
            value.type_name()
        )
    })
}

/// llama.cpp's name of each decoder-block tensor (`blk.N.<name>.weight`)
/// next to the Hugging Face module it holds; the reader and the writer
/// share it so the two directions cannot drift apart.
pub(crate) const BLOCK_TENSOR_NAMES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// llama.cpp stores Q/K rows per head as `[d/2, 2]` (interleaved RoPE);
/// Hugging Face as `[2, d/2]`. Rows move, so this also works on quantized
/// weights, scales and biases.
pub(crate) fn llama_cpp_rows_to_hf(array: &Array, heads: usize) -> Result<Array> {
    regroup_head_rows(array, heads, true)
}

/// The inverse of [`llama_cpp_rows_to_hf`]: Hugging Face Q/K rows in the
/// order llama.cpp's `llama` architecture expects.
pub(crate) fn hf_rows_to_llama_cpp(array: &Array, heads: usize) -> Result<Array> {
    regroup_head_rows(array, heads, false)
}

/// Views each head's rows as `[d/2, 2]` (`from_llama_cpp`) or `[2, d/2]`
/// and swaps the two axes.
fn regroup_head_rows(array: &Array, heads: usize, from_llama_cpp: bool) -> Result<Array> {
    let shape = array.shape().to_vec();
    let rows = shape.first().copied().unwrap_or(0);
    let heads = i32::try_from(heads).unwrap_or(0);
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(Error::InvalidRequest(format!(
            "{rows} rows cannot be split into {heads} RoPE heads of even width"
        )));
    }
    let half = rows / heads / 2;
    let mut split = if from_llama_cpp {
        vec![heads, half, 2]
    } else {
        vec![heads, 2, half]
    };
    split.extend_from_slice(&shape[1..]);
    Ok(array.reshape(&split)?.swap_axes(1, 2)?.reshape(&shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_comes_from_the_rust_reader_and_tensors_from_mlx() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = crate::tiny::tiny_model(3, &crate::LoadOptions::default()).expect("tiny model");
        let path = root.path().join("tiny.gguf");
        crate::export_gguf::save_gguf(&model, &path, &Default::default()).expect("save");
        let file = GgufFile::open(&path).expect("open");
        assert_eq!(file.metadata_string("general.architecture"), Some("llama"));
        assert_eq!(file.metadata_string("llama.block_count"), None);
        assert_eq!(
            file.metadata_number("llama.block_count").expect("read"),
            Some(2.0)
        );
        assert_eq!(file.metadata_number("no.such.key").expect("read"), None);
        let error = file
            .metadata_number("general.architecture")
            .expect_err("a string");
        assert!(
            error
                .to_string()
                .contains("expected a number, got a string"),
            "{error}"
        );
        assert_eq!(
            file.layout().tensors.len(),
            file.metadata().tensor_count as usize
        );
        let tensors = file.tensors().expect("tensors");
        assert_eq!(tensors.len(), file.layout().tensors.len());
        assert!(tensors.contains_key("token_embd.weight"));

        // MLX's loader takes only `.gguf` names: said before it is asked.
        let renamed = root.path().join("tiny.bin");
        std::fs::copy(&path, &renamed).expect("copy");
        let error = GgufFile::open(&renamed).err().expect("refused");
        assert!(
            matches!(error, Error::MlxIo { .. }) && error.to_string().contains("`.gguf`"),
            "{error}"
        );
    }
}
