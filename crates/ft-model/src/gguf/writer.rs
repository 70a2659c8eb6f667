//! Writing a GGUF file (version 3) in Rust, one tensor at a time: the
//! header, metadata and tensor descriptions need only shapes, so each
//! tensor is computed (MLX is lazy), written and dropped before the next
//! one. A 7B model fused into float16 never exists whole in memory; MLX's
//! own writer (`mlx_save_gguf`) takes every tensor at once.

use crate::{Error, Result};
use mlx_rs::{Array, Dtype};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Data alignment (llama.cpp's default `general.alignment`).
const ALIGNMENT: u64 = 32;
const GGUF_VERSION: u32 = 3;

/// One GGUF metadata value, typed as the file stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufMetadataValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float32`
    F32(f32),
    /// `float64`
    F64(f64),
    /// `bool`
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// A list of values of one type (a vocabulary, token scores).
    Array(Vec<GgufMetadataValue>),
}

impl GgufMetadataValue {
    /// A string value.
    pub fn string(value: impl Into<String>) -> Self {
        Self::String(value.into())
    }

    /// The GGUF type id.
    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// The element type of a list (`None`: empty, or of mixed types).
    fn element_type(items: &[Self]) -> Option<u32> {
        let first = items.first()?.type_id();
        items
            .iter()
            .all(|item| item.type_id() == first)
            .then_some(first)
    }

    fn write_payload(&self, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        match self {
            Self::U8(v) => out.push(*v),
            Self::I8(v) => out.extend(v.to_le_bytes()),
            Self::U16(v) => out.extend(v.to_le_bytes()),
            Self::I16(v) => out.extend(v.to_le_bytes()),
            Self::U32(v) => out.extend(v.to_le_bytes()),
            Self::I32(v) => out.extend(v.to_le_bytes()),
            Self::U64(v) => out.extend(v.to_le_bytes()),
            Self::I64(v) => out.extend(v.to_le_bytes()),
            Self::F32(v) => out.extend(v.to_le_bytes()),
            Self::F64(v) => out.extend(v.to_le_bytes()),
            Self::Bool(v) => out.push(u8::from(*v)),
            Self::String(text) => write_string(out, text),
            Self::Array(items) => {
                // An empty list takes any element type; llama.cpp reads u8.
                let element = match items.is_empty() {
                    true => 0,
                    false => {
                        Self::element_type(items).ok_or("a list must hold values of one type")?
                    }
                };
                if items.iter().any(|item| matches!(item, Self::Array(_))) {
                    return Err("lists of lists are not written".into());
                }
                out.extend(element.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    item.write_payload(out)?;
                }
            }
        }
        Ok(())
    }
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text.as_bytes());
}

fn padding(position: u64) -> u64 {
    (ALIGNMENT - position % ALIGNMENT) % ALIGNMENT
}

/// GGML type id and bytes per element of a tensor written in `dtype`.
fn ggml_type(dtype: Dtype) -> Option<(u32, u64)> {
    match dtype {
        Dtype::Float32 => Some((0, 4)),
        Dtype::Float16 => Some((1, 2)),
        _ => None,
    }
}

/// Writes `tensors` (float32 or float16, in the order given; each one is
/// evaluated, written and dropped in turn) and `metadata` to `path` as
/// GGUF version 3.
pub fn write_gguf(
    path: &Path,
    tensors: Vec<(String, Array)>,
    metadata: &BTreeMap<String, GgufMetadataValue>,
) -> Result<()> {
    let fail = |message: String| Error::Export {
        path: path.to_path_buf(),
        message,
    };
    let io = |source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = Vec::new();
    header.extend(b"GGUF");
    header.extend(GGUF_VERSION.to_le_bytes());
    header.extend((tensors.len() as u64).to_le_bytes());
    header.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut header, key);
        header.extend(value.type_id().to_le_bytes());
        value
            .write_payload(&mut header)
            .map_err(|why| fail(format!("metadata `{key}`: {why}")))?;
    }
    let mut offset = 0_u64;
    for (name, array) in &tensors {
        let (type_id, element_bytes) = ggml_type(array.dtype()).ok_or_else(|| {
            fail(format!(
                "tensor {name} is {:?}; GGUF tensors are written as float32 or float16",
                array.dtype()
            ))
        })?;
        write_string(&mut header, name);
        header.extend((array.ndim() as u32).to_le_bytes());
        // GGUF lists dimensions innermost first.
        for &dim in array.shape().iter().rev() {
            header.extend((dim as u64).to_le_bytes());
        }
        header.extend(type_id.to_le_bytes());
        header.extend(offset.to_le_bytes());
        let bytes = array.size() as u64 * element_bytes;
        offset += bytes + padding(bytes);
    }
    header.resize(header.len() + padding(header.len() as u64) as usize, 0);

    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&header).map_err(io)?;
    let mut buffer = Vec::new();
    for (name, array) in tensors {
        array.eval()?;
        buffer.clear();
        match array.dtype() {
            Dtype::Float16 => {
                for value in array.as_slice::<half::f16>() {
                    buffer.extend(value.to_le_bytes());
                }
            }
            _ => {
                for value in array.as_slice::<f32>() {
                    buffer.extend(value.to_le_bytes());
                }
            }
        }
        drop(array);
        let pad = padding(buffer.len() as u64) as usize;
        buffer.resize(buffer.len() + pad, 0);
        out.write_all(&buffer)
            .map_err(|error| fail(format!("writing tensor {name}: {error}")))?;
    }
    out.flush().map_err(io)?;
    out.into_inner()
        .map_err(|error| io(error.into_error()))?
        .sync_all()
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_values_are_encoded_as_gguf_types() {
        let mut out = Vec::new();
        GgufMetadataValue::Array(vec![
            GgufMetadataValue::string("a"),
            GgufMetadataValue::string("bc"),
        ])
        .write_payload(&mut out)
        .expect("list");
        let expected: Vec<u8> = [8_u32.to_le_bytes().to_vec(), 2_u64.to_le_bytes().to_vec()]
            .concat()
            .into_iter()
            .chain(1_u64.to_le_bytes())
            .chain(*b"a")
            .chain(2_u64.to_le_bytes())
            .chain(*b"bc")
            .collect();
        assert_eq!(out, expected);
        let mixed =
            GgufMetadataValue::Array(vec![GgufMetadataValue::U32(1), GgufMetadataValue::F32(1.0)]);
        assert!(mixed.write_payload(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_written_file_reads_back_through_mlx() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.gguf");
        let a = Array::from_slice(&[1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let b = Array::from_slice(&[0.5_f32, -1.0, 7.0], &[3])
            .as_dtype(Dtype::Float16)
            .expect("f16");
        let metadata = BTreeMap::from([
            (
                "general.architecture".to_string(),
                GgufMetadataValue::string("llama"),
            ),
            ("x.count".to_string(), GgufMetadataValue::U32(7)),
        ]);
        write_gguf(
            &path,
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            &metadata,
        )
        .expect("write");
        let file = crate::gguf::GgufFile::open(&path).expect("layout checks and MLX reads it");
        assert_eq!(file.metadata_number("x.count").expect("read"), Some(7.0));
        assert_eq!(
            file.metadata_string("general.architecture").as_deref(),
            Some("llama")
        );
        let arrays = file.tensors().expect("tensors");
        assert_eq!(arrays["a"].shape(), &[2, 3]);
        assert_eq!(arrays["a"].as_slice::<f32>(), a.as_slice::<f32>());
        assert_eq!(arrays["b"].dtype(), Dtype::Float16);
        assert_eq!(
            arrays["b"]
                .as_dtype(Dtype::Float32)
                .expect("f32")
                .as_slice::<f32>(),
            &[0.5, -1.0, 7.0]
        );
    }
}
