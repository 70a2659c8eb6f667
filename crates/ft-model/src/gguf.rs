//! GGUF files through MLX's own loader (`mlx_load_gguf`): tensors come back
//! as MLX arrays (Q4_0/Q4_1/Q8_0 as MLX affine-quantized triples), metadata
//! is queried by key.

mod layout;
pub mod writer;

pub use layout::{read_layout, GgufLayout, GgufScalar, GgufTensorInfo};

use crate::{Error, Result};
use mlx_rs::Array;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// An opened GGUF file.
pub struct GgufFile {
    handle: mlx_sys::mlx_io_gguf,
    path: PathBuf,
    layout: GgufLayout,
}

impl Drop for GgufFile {
    fn drop(&mut self) {
        // SAFETY: the handle came from mlx_load_gguf and is freed once.
        unsafe {
            mlx_sys::mlx_io_gguf_free(self.handle);
        }
    }
}

impl GgufFile {
    /// Opens `path`; a file that is not GGUF (or is truncated) is an error naming it.
    pub fn open(path: &Path) -> Result<Self> {
        // gguflib trusts every length and offset in the file: check them first.
        let layout = read_layout(path)?;
        layout::check_writable(path)?;
        // Make sure mlx-rs's error handler (which records instead of exiting) is installed.
        mlx_rs::ops::zeros::<f32>(&[1])?.eval()?;
        let c_path = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| Error::MlxIo {
            path: path.to_path_buf(),
            message: "path contains a NUL byte".into(),
        })?;
        // SAFETY: plain FFI calls with valid pointers; status checked.
        unsafe {
            let mut handle = mlx_sys::mlx_io_gguf_new();
            let stream = mlx_sys::mlx_default_cpu_stream_new();
            let status = mlx_sys::mlx_load_gguf(&mut handle, c_path.as_ptr(), stream);
            mlx_sys::mlx_stream_free(stream);
            if status != 0 {
                mlx_sys::mlx_io_gguf_free(handle);
                return Err(Error::MlxIo {
                    path: path.to_path_buf(),
                    message:
                        "MLX could not read this GGUF file (corrupt or unsupported tensor type)"
                            .into(),
                });
            }
            Ok(Self {
                handle,
                path: path.to_path_buf(),
                layout,
            })
        }
    }

    /// All tensors, by GGUF name (quantized ones as `name.weight`/`.scales`/`.biases`
    /// or `name`/`name.scales`/... as MLX returns them).
    pub fn tensors(&self) -> Result<HashMap<String, Array>> {
        let mut tensors = HashMap::new();
        // SAFETY: FFI over the handle we own; strings copied before free.
        unsafe {
            let mut keys = mlx_sys::mlx_vector_string_new();
            if mlx_sys::mlx_io_gguf_get_keys(&mut keys, self.handle) != 0 {
                mlx_sys::mlx_vector_string_free(keys);
                return Err(self.error("could not list tensors"));
            }
            let count = mlx_sys::mlx_vector_string_size(keys);
            for index in 0..count {
                let mut raw: *mut std::ffi::c_char = std::ptr::null_mut();
                if mlx_sys::mlx_vector_string_get(&mut raw, keys, index) != 0 || raw.is_null() {
                    continue;
                }
                let key = CStr::from_ptr(raw).to_string_lossy().into_owned();
                let c_key = CString::new(key.clone()).unwrap_or_default();
                let mut array = mlx_sys::mlx_array_new();
                if mlx_sys::mlx_io_gguf_get_array(&mut array, self.handle, c_key.as_ptr()) != 0 {
                    mlx_sys::mlx_array_free(array);
                    mlx_sys::mlx_vector_string_free(keys);
                    return Err(self.error(&format!("could not read tensor {key}")));
                }
                tensors.insert(key, Array::from_ptr(array));
            }
            mlx_sys::mlx_vector_string_free(keys);
        }
        Ok(tensors)
    }

    /// A string metadata value, if present.
    pub fn metadata_string(&self, key: &str) -> Option<String> {
        let c_key = CString::new(key).ok()?;
        // SAFETY: FFI over the handle we own; the string is copied before free.
        unsafe {
            let mut present = false;
            let status =
                mlx_sys::mlx_io_gguf_has_metadata_string(&mut present, self.handle, c_key.as_ptr());
            if status != 0 || !present {
                return None;
            }
            let mut value = mlx_sys::mlx_string_new();
            let status =
                mlx_sys::mlx_io_gguf_get_metadata_string(&mut value, self.handle, c_key.as_ptr());
            let data = mlx_sys::mlx_string_data(value);
            let text = (status == 0 && !data.is_null())
                .then(|| CStr::from_ptr(data).to_string_lossy().into_owned());
            mlx_sys::mlx_string_free(value);
            text
        }
    }

    /// A numeric metadata array (or scalar) as MLX reads it, if present.
    /// MLX's own failure to read a present key is an error, not "absent".
    pub fn metadata_array(&self, key: &str) -> Result<Option<Array>> {
        let c_key =
            CString::new(key).map_err(|_| self.error("metadata key contains a NUL byte"))?;
        // SAFETY: FFI over the handle we own.
        unsafe {
            let mut present = false;
            let status =
                mlx_sys::mlx_io_gguf_has_metadata_array(&mut present, self.handle, c_key.as_ptr());
            if !self.metadata_status(status, key)? || !present {
                return Ok(None);
            }
            let mut array = mlx_sys::mlx_array_new();
            let status =
                mlx_sys::mlx_io_gguf_get_metadata_array(&mut array, self.handle, c_key.as_ptr());
            match self.metadata_status(status, key) {
                Ok(true) => Ok(Some(Array::from_ptr(array))),
                other => {
                    mlx_sys::mlx_array_free(array);
                    other.map(|_| None)
                }
            }
        }
    }

    /// What an mlx-c GGUF metadata call's status means: 0 found, 2 no such
    /// key, 3 a value of another type, anything else MLX failed.
    fn metadata_status(&self, status: i32, key: &str) -> Result<bool> {
        match status {
            0 => Ok(true),
            2 => Ok(false),
            3 => Err(self.error(&format!(
                "metadata `{key}` holds another type of value than the one asked for"
            ))),
            _ => Err(self.mlx_failure(&format!("reading metadata `{key}` (status {status})"))),
        }
    }

    /// A scalar numeric (or boolean) metadata value, read from the file in
    /// Rust: no MLX operation runs, so this works whatever the default device.
    /// A key holding a string or an array is an error that says so.
    pub fn metadata_number(&self, key: &str) -> Result<Option<f64>> {
        if let Some(scalar) = self.layout.scalars.get(key) {
            return Ok(Some(scalar.as_f64()));
        }
        let present_otherwise =
            self.metadata_string(key).is_some() || self.metadata_array(key)?.is_some();
        if present_otherwise {
            return Err(Error::Config {
                path: self.path.clone(),
                message: format!("metadata `{key}`: expected a number, got a string or an array"),
            });
        }
        Ok(None)
    }

    /// The layout checked when the file was opened (tensors and scalar metadata).
    pub fn layout(&self) -> &GgufLayout {
        &self.layout
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// MLX's reader failed on something the file does hold.
    fn mlx_failure(&self, doing: &str) -> Error {
        self.error(&format!("MLX failed {doing}"))
    }

    fn error(&self, message: &str) -> Error {
        Error::MlxIo {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }
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
    fn metadata_statuses_are_found_absent_or_errors_never_absent_on_failure() {
        let root = tempfile::tempdir().expect("tempdir");
        let model = crate::tiny::tiny_model(3, &crate::LoadOptions::default()).expect("tiny model");
        let path = root.path().join("tiny.gguf");
        crate::export_gguf::save_gguf(&model, &path, &Default::default()).expect("save");
        let file = GgufFile::open(&path).expect("open");
        assert!(file.metadata_status(0, "k").expect("found"));
        assert!(!file.metadata_status(2, "k").expect("absent"));
        let wrong = file.metadata_status(3, "k").expect_err("wrong type");
        assert!(wrong.to_string().contains("another type"), "{wrong}");
        let failed = file
            .metadata_status(1, "llama.block_count")
            .expect_err("MLX failed");
        let message = failed.to_string();
        assert!(
            message.contains("MLX failed reading metadata `llama.block_count`")
                && message.contains(&path.display().to_string()),
            "{message}"
        );
        // Through MLX: present, absent, and a string asked for as an array.
        assert!(file
            .metadata_array("llama.block_count")
            .expect("read")
            .is_some());
        assert!(file.metadata_array("no.such.key").expect("read").is_none());
        assert!(file
            .metadata_array("general.architecture")
            .expect("read")
            .is_none());
        // Numbers come from the Rust reader, whatever MLX's default device.
        assert_eq!(
            file.metadata_number("llama.block_count").expect("read"),
            Some(2.0)
        );
    }
}
