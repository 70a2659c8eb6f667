//! Writing a GGUF file (version 3) one tensor at a time: the header,
//! metadata and tensor table need only names, dimensions and types, so
//! they are written first, and each tensor's data follows when the caller
//! has it. A caller that computes its tensors lazily never holds more than
//! one of them.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tensor::GgufTensorSpec;
use crate::value::{type_id, GgufValue};
use crate::{DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_STRING_LEN, WRITE_VERSION};

/// A GGUF file being written: the header is out, tensor data follows in
/// the order the tensors were given.
///
/// ```
/// use std::collections::BTreeMap;
/// use ft_gguf::{GgmlType, GgufLayout, GgufTensorSpec, GgufValue, GgufWriter};
///
/// let metadata = BTreeMap::from([("general.name".to_string(), GgufValue::string("tiny"))]);
/// let tensors = [GgufTensorSpec::row_major("w", &[2], GgmlType::F32)];
/// let mut writer = GgufWriter::new(Vec::new(), &metadata, &tensors)?;
/// writer.write_tensor(&[0_u8; 8])?;
/// let bytes = writer.finish()?;
/// let layout = GgufLayout::read(bytes.as_slice(), bytes.len() as u64)?;
/// assert_eq!(layout.metadata.get_str("general.name")?, "tiny");
/// assert_eq!(layout.tensors[0].size, 8);
/// # Ok::<(), ft_gguf::Error>(())
/// ```
pub struct GgufWriter<W: Write> {
    out: W,
    path: Option<PathBuf>,
    /// Name and data size of every tensor, in order.
    tensors: Vec<(String, u64)>,
    /// How many tensors' data is written.
    written: usize,
}

impl GgufWriter<BufWriter<File>> {
    /// Checks `metadata` and `tensors`, then creates `path` and writes the
    /// header (nothing is created when the check fails).
    pub fn create(
        path: &Path,
        metadata: &BTreeMap<String, GgufValue>,
        tensors: &[GgufTensorSpec],
    ) -> Result<Self> {
        let in_file = |error: Error| error.in_file(path);
        let header = Header::new(metadata, tensors).map_err(in_file)?;
        let file = File::create(path).map_err(|source| in_file(io(source)))?;
        let mut writer = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            path: Some(path.to_path_buf()),
            tensors: Vec::new(),
            written: 0,
        };
        writer.start(header)?;
        Ok(writer)
    }

    /// [`GgufWriter::finish`], then the file is synced to disk.
    pub fn finish_file(self) -> Result<()> {
        let path = self.path.clone();
        let in_file = |error: Error| match &path {
            Some(path) => error.in_file(path),
            None => error,
        };
        let out = self.finish()?;
        let file = out
            .into_inner()
            .map_err(|error| in_file(io(error.into_error())))?;
        file.sync_all().map_err(|source| in_file(io(source)))
    }
}

impl<W: Write> GgufWriter<W> {
    /// Checks `metadata` and `tensors` and writes the header to `out`.
    pub fn new(
        out: W,
        metadata: &BTreeMap<String, GgufValue>,
        tensors: &[GgufTensorSpec],
    ) -> Result<Self> {
        let header = Header::new(metadata, tensors)?;
        let mut writer = Self {
            out,
            path: None,
            tensors: Vec::new(),
            written: 0,
        };
        writer.start(header)?;
        Ok(writer)
    }

    fn start(&mut self, header: Header) -> Result<()> {
        self.tensors = header.tensors;
        self.out
            .write_all(&header.bytes)
            .map_err(|source| self.located(io(source)))
    }

    /// Writes the data of the next tensor: exactly the bytes its type and
    /// dimensions take, little-endian.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let Some((name, size)) = self.tensors.get(self.written) else {
            let message = format!("all {} tensors are written already", self.tensors.len());
            return Err(self.write_error(message));
        };
        if data.len() as u64 != *size {
            let message = format!(
                "tensor `{name}`: {} bytes of data given; its type and dimensions take {size}",
                data.len()
            );
            return Err(self.write_error(message));
        }
        let pad = padding(*size) as usize;
        let written = self
            .out
            .write_all(data)
            .and_then(|()| self.out.write_all(&[0; DEFAULT_ALIGNMENT as usize][..pad]));
        if let Err(error) = written {
            let message = format!("writing tensor `{name}`: {error}");
            return Err(self.write_error(message));
        }
        self.written += 1;
        Ok(())
    }

    /// Checks that every tensor's data is written, flushes, and returns the
    /// output.
    pub fn finish(mut self) -> Result<W> {
        if let Some((name, _)) = self.tensors.get(self.written) {
            let message = format!(
                "{} of {} tensors written; tensor `{name}` and any after it are missing",
                self.written,
                self.tensors.len()
            );
            return Err(self.write_error(message));
        }
        match self.out.flush() {
            Ok(()) => Ok(self.out),
            Err(source) => Err(self.located(io(source))),
        }
    }

    fn write_error(&self, message: String) -> Error {
        self.located(Error::Write {
            path: None,
            message,
        })
    }

    fn located(&self, error: Error) -> Error {
        match &self.path {
            Some(path) => error.in_file(path),
            None => error,
        }
    }
}

fn io(source: std::io::Error) -> Error {
    Error::Io { path: None, source }
}

/// Zero bytes after `position` up to the next multiple of the alignment.
fn padding(position: u64) -> u64 {
    (DEFAULT_ALIGNMENT - position % DEFAULT_ALIGNMENT) % DEFAULT_ALIGNMENT
}

/// The bytes before the data section, and each tensor's name and size.
struct Header {
    bytes: Vec<u8>,
    tensors: Vec<(String, u64)>,
}

impl Header {
    fn new(metadata: &BTreeMap<String, GgufValue>, tensors: &[GgufTensorSpec]) -> Result<Self> {
        let refuse = |message: String| Error::Write {
            path: None,
            message,
        };
        let mut bytes = Vec::new();
        bytes.extend(MAGIC);
        bytes.extend(WRITE_VERSION.to_le_bytes());
        bytes.extend((tensors.len() as u64).to_le_bytes());
        bytes.extend((metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            check_value(value, 0).map_err(|why| refuse(format!("metadata `{key}`: {why}")))?;
            if key == "general.alignment" && *value != GgufValue::U32(DEFAULT_ALIGNMENT as u32) {
                return Err(refuse(format!(
                    "metadata `{key}` is {value:?}: the writer aligns data to \
                     {DEFAULT_ALIGNMENT} bytes"
                )));
            }
            put_string(&mut bytes, key);
            bytes.extend(value.value_type().to_le_bytes());
            put_value(&mut bytes, value);
        }
        let mut names = HashSet::new();
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut offset = 0_u64;
        for tensor in tensors {
            let name = &tensor.name;
            let size = tensor
                .ggml_type
                .data_size(&tensor.dims)
                .map_err(|why| refuse(format!("tensor `{name}`: {why}")))?;
            if !names.insert(name.as_str()) {
                return Err(refuse(format!("tensor `{name}` is given twice")));
            }
            put_string(&mut bytes, name);
            bytes.extend((tensor.dims.len() as u32).to_le_bytes());
            for dim in &tensor.dims {
                bytes.extend(dim.to_le_bytes());
            }
            bytes.extend(tensor.ggml_type.id().to_le_bytes());
            bytes.extend(offset.to_le_bytes());
            offset = offset
                .checked_add(size + padding(size))
                .ok_or_else(|| refuse(format!("tensor `{name}`: the data section overflows")))?;
            sizes.push((name.clone(), size));
        }
        bytes.resize(bytes.len() + padding(bytes.len() as u64) as usize, 0);
        Ok(Self {
            bytes,
            tensors: sizes,
        })
    }
}

/// Why the reader would refuse `value` at nesting `depth`, if it would.
fn check_value(value: &GgufValue, depth: usize) -> std::result::Result<(), String> {
    match value {
        GgufValue::String(text) if text.len() as u64 > MAX_STRING_LEN => Err(format!(
            "a string of {} bytes is longer than the {MAX_STRING_LEN} a reader takes",
            text.len()
        )),
        GgufValue::Array(items) => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(format!("lists nested deeper than {MAX_ARRAY_DEPTH}"));
            }
            if let Some(first) = items.first() {
                let kind = first.value_type();
                if items.iter().any(|item| item.value_type() != kind) {
                    return Err("a list must hold values of one type".into());
                }
            }
            items
                .iter()
                .try_for_each(|item| check_value(item, depth + 1))
        }
        _ => Ok(()),
    }
}

pub(crate) fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text.as_bytes());
}

pub(crate) fn put_value(out: &mut Vec<u8>, value: &GgufValue) {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend(v.to_le_bytes()),
        GgufValue::U16(v) => out.extend(v.to_le_bytes()),
        GgufValue::I16(v) => out.extend(v.to_le_bytes()),
        GgufValue::U32(v) => out.extend(v.to_le_bytes()),
        GgufValue::I32(v) => out.extend(v.to_le_bytes()),
        GgufValue::U64(v) => out.extend(v.to_le_bytes()),
        GgufValue::I64(v) => out.extend(v.to_le_bytes()),
        GgufValue::F32(v) => out.extend(v.to_le_bytes()),
        GgufValue::F64(v) => out.extend(v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(text) => put_string(out, text),
        GgufValue::Array(items) => {
            // An empty list takes any element type; llama.cpp's writer uses u8.
            let element = items.first().map_or(type_id::U8, GgufValue::value_type);
            out.extend(element.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GgmlType, GgufLayout};

    fn header(metadata: &[(&str, GgufValue)], tensors: &[GgufTensorSpec]) -> Result<Vec<u8>> {
        let metadata = metadata
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect();
        Header::new(&metadata, tensors).map(|header| header.bytes)
    }

    #[test]
    fn metadata_values_are_encoded_as_gguf_types() {
        let mut out = Vec::new();
        put_value(
            &mut out,
            &GgufValue::Array(vec![GgufValue::string("a"), GgufValue::string("bc")]),
        );
        let expected: Vec<u8> = [8_u32.to_le_bytes().to_vec(), 2_u64.to_le_bytes().to_vec()]
            .concat()
            .into_iter()
            .chain(1_u64.to_le_bytes())
            .chain(*b"a")
            .chain(2_u64.to_le_bytes())
            .chain(*b"bc")
            .collect();
        assert_eq!(out, expected);
        let bytes = header(&[], &[]).expect("empty");
        assert_eq!(bytes.len(), 32, "24 header bytes, padded");
        assert_eq!(&bytes[..8], b"GGUF\x03\0\0\0");
    }

    #[test]
    fn what_a_reader_would_refuse_is_not_written() {
        let mixed = GgufValue::Array(vec![GgufValue::U32(1), GgufValue::F32(1.0)]);
        let error = header(&[("t.scores", mixed)], &[]).expect_err("mixed");
        assert_eq!(
            error.to_string(),
            "metadata `t.scores`: a list must hold values of one type"
        );
        let mut deep = GgufValue::U8(0);
        for _ in 0..=crate::MAX_ARRAY_DEPTH {
            deep = GgufValue::Array(vec![deep]);
        }
        let error = header(&[("t.deep", deep)], &[]).expect_err("deep");
        assert!(error.to_string().contains("nested deeper"), "{error}");
        let error = header(&[("general.alignment", GgufValue::U32(64))], &[]).expect_err("64");
        assert!(error.to_string().contains("aligns data to 32"), "{error}");
        let q4 = GgufTensorSpec::row_major("q", &[2, 48], GgmlType::Q4_0);
        let error = header(&[], &[q4]).expect_err("blocks");
        assert!(error.to_string().contains("tensor `q`"), "{error}");
        let w = GgufTensorSpec::row_major("w", &[2], GgmlType::F32);
        let error = header(&[], &[w.clone(), w]).expect_err("twice");
        assert!(error.to_string().contains("given twice"), "{error}");
    }

    #[test]
    fn tensor_data_must_match_the_table() {
        let tensors = [
            GgufTensorSpec::row_major("a", &[3], GgmlType::F32),
            GgufTensorSpec::row_major("b", &[2, 32], GgmlType::Q8_0),
        ];
        let metadata = BTreeMap::new();
        let mut writer = GgufWriter::new(Vec::new(), &metadata, &tensors).expect("header");
        let error = writer.write_tensor(&[0; 8]).expect_err("short");
        assert!(error.to_string().contains("tensor `a`: 8 bytes"), "{error}");
        writer.write_tensor(&[1; 12]).expect("a");
        let error = GgufWriter::new(Vec::new(), &metadata, &tensors)
            .expect("header")
            .finish()
            .expect_err("nothing written");
        assert!(error.to_string().contains("tensor `a`"), "{error}");
        writer.write_tensor(&[2; 68]).expect("b");
        let error = writer.write_tensor(&[0; 4]).expect_err("one too many");
        assert!(error.to_string().contains("all 2 tensors"), "{error}");
        let bytes = writer.finish().expect("finish");
        let layout = GgufLayout::read(bytes.as_slice(), bytes.len() as u64).expect("reads");
        let b = layout.tensor("b").expect("b");
        assert_eq!(
            (b.dims.as_slice(), b.offset, b.size),
            (&[32, 2][..], 32, 68)
        );
        let start = (layout.data_start + b.offset) as usize;
        assert!(bytes[start..start + 68].iter().all(|&byte| byte == 2));
        assert_eq!(bytes.len() as u64, layout.data_start + 32 + 96);
    }

    #[test]
    fn a_file_is_written_named_in_errors_and_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.gguf");
        let tensors = [GgufTensorSpec::row_major("a", &[2], GgmlType::F16)];
        let metadata = BTreeMap::from([("k".to_string(), GgufValue::string("ü"))]);
        let mut writer = GgufWriter::create(&path, &metadata, &tensors).expect("create");
        let error = writer.write_tensor(&[0; 3]).expect_err("short");
        assert!(
            error.to_string().starts_with(&path.display().to_string()),
            "{error}"
        );
        writer.write_tensor(&[0; 4]).expect("a");
        writer.finish_file().expect("sync");
        let layout = GgufLayout::read_file(&path).expect("reads");
        assert_eq!(layout.metadata.get_str("k").expect("k"), "ü");
        let refused = dir.path().join("never.gguf");
        let mixed = BTreeMap::from([(
            "k".to_string(),
            GgufValue::Array(vec![GgufValue::U8(1), GgufValue::Bool(true)]),
        )]);
        let error = GgufWriter::create(&refused, &mixed, &[])
            .err()
            .expect("mixed");
        assert_eq!(error.path(), Some(refused.as_path()));
        assert!(!refused.exists(), "nothing is created for a refused header");
    }
}
