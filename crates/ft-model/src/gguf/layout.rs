//! The structure of a GGUF file, checked in Rust before MLX's reader sees
//! it. MLX reads GGUF through gguflib, which maps the file and trusts every
//! count, length, type and offset in it: a truncated or corrupt file makes
//! it read past the mapping (a segfault) or index its type table out of
//! bounds. Here every one of them is checked against the file's length, and
//! a problem is reported with its byte offset and what was being read.

use crate::{Error, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// GGUF versions MLX's reader understands (64-bit counts and lengths).
const VERSIONS: std::ops::RangeInclusive<u32> = 2..=3;
/// gguflib ignores `general.alignment` (it looks for a misspelt key) and
/// always aligns the data section to 32 bytes.
const ALIGNMENT: u64 = 32;
/// ggml's limit on tensor dimensions.
const MAX_DIMS: u32 = 4;
/// The smallest metadata entry: key length (8), an empty key, type (4), a one-byte value.
const MIN_KV_BYTES: u64 = 13;
/// The smallest tensor description: name length (8), dimension count (4),
/// one dimension (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;

/// One tensor as a GGUF file describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Its GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order (innermost first).
    pub dims: Vec<u64>,
    /// The GGML type id.
    pub ggml_type: u32,
    /// Start of its data, relative to the data section.
    pub offset: u64,
    /// Byte offset of its description in the file.
    pub info_offset: u64,
    /// Bytes of data it occupies.
    pub size: u64,
}

/// The checked layout of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufLayout {
    /// Format version.
    pub version: u32,
    /// Number of metadata entries.
    pub kv_count: u64,
    /// Byte offset of the data section.
    pub data_start: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Every tensor, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Scalar metadata values (numbers and booleans), by key. Read here, in
    /// Rust, so that no metadata number goes through MLX arithmetic (a cast
    /// to float64 on the GPU stream fails on Metal).
    pub scalars: std::collections::BTreeMap<String, GgufScalar>,
}

/// One scalar GGUF metadata value, as stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GgufScalar {
    /// Types 0-5 and 10-11: every integer type, widened.
    Integer(i128),
    /// Types 6 and 12: float32 and float64, widened.
    Float(f64),
    /// Type 7.
    Bool(bool),
}

impl GgufScalar {
    /// The value as a number (a boolean is 0 or 1).
    pub fn as_f64(self) -> f64 {
        match self {
            Self::Integer(value) => value as f64,
            Self::Float(value) => value,
            Self::Bool(value) => f64::from(u8::from(value)),
        }
    }

    fn decode(kind: u32, bytes: &[u8]) -> Option<Self> {
        let fixed = |n: usize| bytes.get(..n);
        Some(match kind {
            0 => Self::Integer(i128::from(*fixed(1)?.first()?)),
            1 => Self::Integer(i128::from(i8::from_le_bytes(fixed(1)?.try_into().ok()?))),
            2 => Self::Integer(i128::from(u16::from_le_bytes(fixed(2)?.try_into().ok()?))),
            3 => Self::Integer(i128::from(i16::from_le_bytes(fixed(2)?.try_into().ok()?))),
            4 => Self::Integer(i128::from(u32::from_le_bytes(fixed(4)?.try_into().ok()?))),
            5 => Self::Integer(i128::from(i32::from_le_bytes(fixed(4)?.try_into().ok()?))),
            6 => Self::Float(f64::from(f32::from_le_bytes(fixed(4)?.try_into().ok()?))),
            7 => Self::Bool(*fixed(1)?.first()? != 0),
            10 => Self::Integer(i128::from(u64::from_le_bytes(fixed(8)?.try_into().ok()?))),
            11 => Self::Integer(i128::from(i64::from_le_bytes(fixed(8)?.try_into().ok()?))),
            12 => Self::Float(f64::from_le_bytes(fixed(8)?.try_into().ok()?)),
            _ => return None,
        })
    }
}

/// GGML tensor types MLX can load: name, weights per block, bytes per block.
fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        8 => ("Q8_0", 32, 34),
        12 => ("Q4_K", 256, 144),
        14 => ("Q6_K", 256, 210),
        _ => return None,
    })
}

const SUPPORTED_TYPES: &str = "F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K";

/// A reader that knows where it is and how much of the file is left.
struct Cursor {
    reader: BufReader<File>,
    pos: u64,
    len: u64,
    path: PathBuf,
}

impl Cursor {
    fn error(&self, at: u64, message: String) -> Error {
        Error::Weights {
            path: self.path.clone(),
            message: format!("at offset {at}: {message}"),
        }
    }

    /// Fails unless `bytes` more bytes exist; `what` names what needs them.
    fn need(&self, bytes: u64, what: &dyn Fn() -> String) -> Result<()> {
        if self.len.saturating_sub(self.pos) < bytes {
            return Err(self.error(
                self.pos,
                format!(
                    "{} needs {bytes} bytes, but the file ends at byte {}: it is truncated \
                     (an incomplete download or copy?) or corrupt",
                    what(),
                    self.len
                ),
            ));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut buffer = [0_u8; N];
        self.reader
            .read_exact(&mut buffer)
            .map_err(|source| self.io(source))?;
        self.pos += N as u64;
        Ok(buffer)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn skip(&mut self, bytes: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.need(bytes, what)?;
        let step = i64::try_from(bytes).map_err(|_| self.error(self.pos, what()))?;
        self.reader
            .seek_relative(step)
            .map_err(|source| self.io(source))?;
        self.pos += bytes;
        Ok(())
    }

    /// A length-prefixed string; `keep` false skips its bytes.
    fn string(&mut self, keep: bool, what: &dyn Fn() -> String) -> Result<String> {
        let length = self.u64(&|| format!("the length of {}", what()))?;
        if !keep {
            self.skip(length, what)?;
            return Ok(String::new());
        }
        self.need(length, what)?;
        let mut buffer = vec![0_u8; length as usize];
        self.reader
            .read_exact(&mut buffer)
            .map_err(|source| self.io(source))?;
        self.pos += length;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Bytes of one fixed-size metadata value type, `None` for strings and arrays.
fn value_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Reads and checks the layout of the GGUF file at `path`: header, every
/// metadata entry, every tensor description, and that every tensor's data
/// lies inside the file.
pub fn read_layout(path: &Path) -> Result<GgufLayout> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut at = Cursor {
        reader: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        len,
        path: path.to_path_buf(),
    };
    let mut magic = [0_u8; 4];
    let read = at.reader.read(&mut magic).map_err(|source| at.io(source))?;
    if read < 4 || &magic != b"GGUF" {
        return Err(Error::MlxIo {
            path: path.to_path_buf(),
            message: format!(
                "not a GGUF file: expected the magic bytes `GGUF`, got {:?}{}",
                String::from_utf8_lossy(&magic[..read]),
                if len == 0 { " (the file is empty)" } else { "" }
            ),
        });
    }
    at.pos = 4;
    let version = at.u32(&|| "the format version".into())?;
    if !VERSIONS.contains(&version) {
        return Err(Error::MlxIo {
            path: path.to_path_buf(),
            message: format!("unsupported GGUF version {version} (supported: 2, 3)"),
        });
    }
    let tensor_count = at.u64(&|| "the tensor count".into())?;
    let kv_count = at.u64(&|| "the metadata key/value count".into())?;
    let left = len.saturating_sub(at.pos);
    if kv_count.saturating_mul(MIN_KV_BYTES) > left {
        return Err(at.error(
            16,
            format!(
                "metadata key/value count {kv_count} cannot fit in the remaining {left} bytes: \
                 the file is truncated or corrupt"
            ),
        ));
    }
    if tensor_count.saturating_mul(MIN_TENSOR_INFO_BYTES) > left {
        return Err(at.error(
            8,
            format!(
                "tensor count {tensor_count} cannot fit in the remaining {left} bytes: \
                 the file is truncated or corrupt"
            ),
        ));
    }

    let mut scalars = std::collections::BTreeMap::new();
    for index in 0..kv_count {
        let key_at = at.pos;
        let key = at.string(true, &|| format!("the name of metadata entry {index}"))?;
        let described = |what: &str| format!("metadata `{key}` ({what})");
        let kind = at.u32(&|| described("its value type"))?;
        match kind {
            8 => {
                at.string(false, &|| described("a string"))?;
            }
            9 => {
                let element = at.u32(&|| described("the array's element type"))?;
                let count = at.u64(&|| described("the array's length"))?;
                match (element, value_size(element)) {
                    (8, _) => {
                        for item in 0..count {
                            at.string(false, &|| described(&format!("array element {item}")))?;
                        }
                    }
                    (_, Some(size)) => {
                        let bytes = count.checked_mul(size).ok_or_else(|| {
                            at.error(key_at, described(&format!("array length {count}")))
                        })?;
                        at.skip(bytes, &|| described(&format!("an array of {count} values")))?;
                    }
                    (9, None) => {
                        return Err(at.error(
                            key_at,
                            described("nested arrays are not supported by MLX's reader"),
                        ))
                    }
                    (other, None) => {
                        return Err(at.error(
                            key_at,
                            described(&format!("unknown array element type {other}")),
                        ))
                    }
                }
            }
            other => match value_size(other) {
                Some(size) => {
                    if key == "general.alignment" && other == 4 {
                        let alignment = u32::from_le_bytes(at.bytes(&|| described("a u32"))?);
                        if u64::from(alignment) != ALIGNMENT {
                            return Err(at.error(
                                key_at,
                                format!(
                                    "general.alignment is {alignment}: MLX's reader only \
                                     handles the default alignment of {ALIGNMENT} bytes"
                                ),
                            ));
                        }
                    } else {
                        at.need(size, &|| described("its value"))?;
                        let mut value = [0_u8; 8];
                        let slot = &mut value[..size as usize];
                        at.reader.read_exact(slot).map_err(|source| at.io(source))?;
                        at.pos += size;
                        if let Some(scalar) = GgufScalar::decode(other, slot) {
                            scalars.insert(key.clone(), scalar);
                        }
                    }
                }
                None => {
                    return Err(at.error(
                        key_at,
                        described(&format!("value type {other} is unknown (expected 0 to 12)")),
                    ))
                }
            },
        }
    }

    let mut tensors = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
    for index in 0..tensor_count {
        let info_offset = at.pos;
        let name = at.string(true, &|| format!("the name of tensor {index}"))?;
        let described = |what: &str| format!("tensor `{name}` ({what})");
        let ndims = at.u32(&|| described("its dimension count"))?;
        if ndims == 0 || ndims > MAX_DIMS {
            return Err(at.error(
                info_offset,
                format!("tensor `{name}` has {ndims} dimensions; GGUF allows 1 to {MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(ndims as usize);
        for axis in 0..ndims {
            let dim = at.u64(&|| described(&format!("dimension {axis}")))?;
            if dim == 0 || dim > i32::MAX as u64 {
                return Err(at.error(
                    info_offset,
                    format!(
                        "tensor `{name}`: dimension {axis} is {dim}; expected 1 to {}",
                        i32::MAX
                    ),
                ));
            }
            dims.push(dim);
        }
        let type_id = at.u32(&|| described("its type"))?;
        let offset = at.u64(&|| described("its data offset"))?;
        let Some((type_name, block, block_bytes)) = ggml_type(type_id) else {
            return Err(at.error(
                info_offset,
                format!(
                    "tensor `{name}` has GGML type {type_id}, which MLX cannot load \
                     (supported: {SUPPORTED_TYPES})"
                ),
            ));
        };
        if dims[0] % block != 0 {
            return Err(at.error(
                info_offset,
                format!(
                    "tensor `{name}`: its first dimension {} is not a multiple of the \
                     {type_name} block of {block} weights",
                    dims[0]
                ),
            ));
        }
        let weights = dims
            .iter()
            .try_fold(1_u64, |product, &dim| product.checked_mul(dim));
        let size = weights
            .and_then(|weights| (weights / block).checked_mul(block_bytes))
            .ok_or_else(|| {
                at.error(
                    info_offset,
                    format!("tensor `{name}`: dimensions {dims:?} overflow"),
                )
            })?;
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type: type_id,
            offset,
            info_offset,
            size,
        });
    }

    let data_start = at.pos.div_ceil(ALIGNMENT) * ALIGNMENT;
    for tensor in &tensors {
        let end = data_start
            .checked_add(tensor.offset)
            .and_then(|start| start.checked_add(tensor.size));
        if end.is_none_or(|end| end > len) {
            let (type_name, _, _) = ggml_type(tensor.ggml_type).unwrap_or(("?", 1, 1));
            return Err(Error::Weights {
                path: path.to_path_buf(),
                message: format!(
                    "truncated: tensor `{}` ({type_name} {:?}) needs bytes {}..{} of the \
                     file, which has {len} bytes (an incomplete download or copy?)",
                    tensor.name,
                    tensor.dims,
                    data_start.saturating_add(tensor.offset),
                    end.map_or_else(|| "(overflow)".to_string(), |end| end.to_string()),
                ),
            });
        }
    }
    Ok(GgufLayout {
        version,
        kv_count,
        data_start,
        file_len: len,
        tensors,
        scalars,
    })
}

/// gguflib opens the file read-write (and maps it shared): a read-only file
/// would fail there with no reason given, so say it here.
pub fn check_writable(path: &Path) -> Result<()> {
    match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            Err(Error::MlxIo {
                path: path.to_path_buf(),
                message: format!(
                    "MLX's GGUF reader opens the file for writing, which failed ({error}): make \
                     it writable (chmod u+w), or convert it once with `ft convert --model {} \
                     --out DIR` and use DIR",
                    path.display()
                ),
            })
        }
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).expect("write");
        (dir, path)
    }

    fn string(text: &str) -> Vec<u8> {
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        bytes
    }

    /// A file with one metadata string and one F32 tensor of `dims`.
    fn one_tensor(dims: &[u64], data_bytes: usize) -> Vec<u8> {
        let mut info = string("w");
        info.extend((dims.len() as u32).to_le_bytes());
        for dim in dims {
            info.extend(dim.to_le_bytes());
        }
        info.extend(0_u32.to_le_bytes());
        info.extend(0_u64.to_le_bytes());
        let mut bytes = gguf(&[
            b"GGUF",
            &3_u32.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &string("general.name"),
            &8_u32.to_le_bytes(),
            &string("tiny"),
            &info,
        ]);
        bytes.resize(bytes.len().div_ceil(32) * 32, 0);
        bytes.extend(std::iter::repeat_n(0_u8, data_bytes));
        bytes
    }

    #[test]
    fn a_consistent_file_is_read() {
        let (_dir, path) = write(&one_tensor(&[4, 2], 32));
        let layout = read_layout(&path).expect("valid");
        assert_eq!(layout.tensors.len(), 1);
        assert_eq!(layout.tensors[0].size, 32);
        assert_eq!(layout.data_start % 32, 0);
    }

    #[test]
    fn short_tensor_data_is_reported_as_truncated() {
        let (_dir, path) = write(&one_tensor(&[4, 2], 31));
        let error = read_layout(&path).expect_err("short").to_string();
        assert!(error.contains("truncated: tensor `w`"), "{error}");
    }

    #[test]
    fn every_prefix_of_a_file_is_refused_with_an_offset() {
        let bytes = one_tensor(&[4, 2], 32);
        for keep in 0..bytes.len() - 32 {
            let (_dir, path) = write(&bytes[..keep]);
            let error = read_layout(&path).expect_err("truncated").to_string();
            assert!(
                error.contains("not a GGUF file")
                    || error.contains("at offset")
                    || error.contains("truncated"),
                "{keep}: {error}"
            );
        }
    }

    /// A small GGUF as llama.cpp lays it out: metadata of every common kind
    /// and three tensors (F32, Q8_0, Q4_0) with their data.
    fn sample_gguf() -> Vec<u8> {
        let mut kv = Vec::new();
        let mut entry = |key: &str, kind: u32, value: &[u8]| {
            kv.extend(string(key));
            kv.extend(kind.to_le_bytes());
            kv.extend_from_slice(value);
        };
        entry("general.architecture", 8, &string("llama"));
        entry("llama.block_count", 4, &1_u32.to_le_bytes());
        entry("llama.rope.freq_base", 6, &10000_f32.to_le_bytes());
        entry("tokenizer.ggml.add_bos_token", 7, &[1]);
        let mut tokens = 8_u32.to_le_bytes().to_vec();
        tokens.extend(3_u64.to_le_bytes());
        for token in ["<s>", "a", "é"] {
            tokens.extend(string(token));
        }
        entry("tokenizer.ggml.tokens", 9, &tokens);
        let mut types = 5_u32.to_le_bytes().to_vec();
        types.extend(3_u64.to_le_bytes());
        for kind in [3_i32, 1, 1] {
            types.extend(kind.to_le_bytes());
        }
        entry("tokenizer.ggml.token_type", 9, &types);
        let tensors: [(&str, &[u64], u32, u64, usize); 3] = [
            ("a.weight", &[8, 2], 0, 0, 64),
            ("b.weight", &[32, 2], 8, 64, 68),
            ("c.weight", &[32], 2, 160, 18),
        ];
        let mut infos = Vec::new();
        for (name, dims, kind, offset, _) in tensors {
            infos.extend(string(name));
            infos.extend((dims.len() as u32).to_le_bytes());
            for dim in dims {
                infos.extend(dim.to_le_bytes());
            }
            infos.extend(kind.to_le_bytes());
            infos.extend(offset.to_le_bytes());
        }
        let mut bytes = gguf(&[
            b"GGUF",
            &3_u32.to_le_bytes(),
            &3_u64.to_le_bytes(),
            &6_u64.to_le_bytes(),
            &kv,
            &infos,
        ]);
        bytes.resize(bytes.len().div_ceil(32) * 32, 0);
        let data_start = bytes.len();
        for (index, (_, _, _, offset, size)) in tensors.into_iter().enumerate() {
            bytes.resize(data_start + offset as usize, 0);
            // Small finite values (f16 scales of 1.0 where a format has them).
            let fill: Vec<u8> = (0..size)
                .map(|i| if i % 2 == 1 && index > 0 { 0x3c } else { 0 })
                .collect();
            bytes.extend(fill);
        }
        bytes
    }

    #[test]
    fn the_sample_loads_through_mlx() {
        let (_dir, path) = write(&sample_gguf());
        let layout = read_layout(&path).expect("valid");
        assert_eq!(layout.tensors.len(), 3);
        let file = crate::gguf::GgufFile::open(&path).expect("opens");
        let tensors = file.tensors().expect("tensors");
        assert!(tensors.contains_key("a.weight"), "{:?}", tensors.keys());
    }

    /// Any edit of a valid file is refused with an offset, or is consistent
    /// enough that MLX's reader loads it without crashing (a crash kills the
    /// test process: `cargo xtask fuzz` reports it).
    #[test]
    fn fuzz_gguf_layout() {
        use ft_config::fuzz::{fuzz, mutated};
        use proptest::test_runner::TestCaseError;
        let mut dictionary: Vec<Vec<u8>> = [0_u64, 1, 2, 3, 4, 9, 12, 31, 32, 99, 1 << 31, 1 << 40]
            .iter()
            .map(|n| n.to_le_bytes().to_vec())
            .collect();
        dictionary.extend([0_u32, 1, 5, 8, 9, 13, 16, u32::MAX].map(|n| n.to_le_bytes().to_vec()));
        dictionary.extend([b"GGUF".to_vec(), vec![0xff; 8], vec![0; 8]]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fuzz.gguf");
        fuzz(
            "gguf_layout",
            64,
            mutated(vec![sample_gguf()], dictionary, 4),
            |bytes| {
                std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match read_layout(&path) {
                    Ok(layout) => {
                        for tensor in &layout.tensors {
                            let end = layout.data_start + tensor.offset + tensor.size;
                            proptest::prop_assert!(end <= layout.file_len);
                        }
                        // Typed errors are fine; a crash is not.
                        if let Ok(file) = crate::gguf::GgufFile::open(&path) {
                            if let Ok(tensors) = file.tensors() {
                                for array in tensors.values() {
                                    let _ = array.eval();
                                }
                            }
                        }
                    }
                    Err(error) => {
                        let message = error.to_string();
                        proptest::prop_assert!(
                            message.contains("at offset")
                                || message.contains("truncated")
                                || message.contains("not a GGUF file")
                                || message.contains("GGUF version"),
                            "unlocated: {}",
                            message
                        );
                    }
                }
                Ok(())
            },
        );
    }

    #[test]
    fn impossible_dimensions_are_refused() {
        for dims in [&[0_u64, 2][..], &[4, 1 << 40], &[1, 1, 1, 1, 1]] {
            let (_dir, path) = write(&one_tensor(dims, 32));
            let error = read_layout(&path).expect_err("refused").to_string();
            assert!(error.contains("tensor `w`"), "{dims:?}: {error}");
        }
    }
}
