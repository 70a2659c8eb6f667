//! The one GGUF reader: the header, every metadata entry and, for a
//! layout, every tensor description, each checked against the input's
//! length before it is read or allocated. Errors name the byte offset and
//! what was being read there.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::{check_dim_count, GgmlType, GgufTensorInfo};
use crate::value::{min_size, type_id, type_name, GgufValue};
use crate::{DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_STRING_LEN, READ_VERSIONS};

/// The smallest metadata entry: key length (8), an empty key, type (4), a
/// one-byte value.
const MIN_KV_BYTES: u64 = 13;
/// The smallest tensor description: name length (8), dimension count (4),
/// one dimension (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;

/// The metadata of a GGUF file: version, tensor count and the key/value
/// pairs (the tensor table after them is not read).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufMetadata {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// Number of tensors the file declares.
    pub tensor_count: u64,
    /// All key/value pairs, sorted by key.
    pub kv: BTreeMap<String, GgufValue>,
    /// Byte offset of each key's entry.
    offsets: BTreeMap<String, u64>,
}

/// The checked layout of a GGUF file: its metadata, its tensor table, and
/// where the data section starts. Every tensor's data lies inside the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufLayout {
    /// The header and the key/value pairs.
    pub metadata: GgufMetadata,
    /// Data alignment: `general.alignment`, 32 when absent.
    pub alignment: u64,
    /// Byte offset of the data section.
    pub data_start: u64,
    /// Length of the file (`u64::MAX` when read from an input of unknown length).
    pub file_len: u64,
    /// Every tensor, in file order.
    pub tensors: Vec<GgufTensorInfo>,
}

impl GgufMetadata {
    /// Reads the header and metadata of the GGUF file at `path`.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (reader, len) = open(path)?;
        Self::read(reader, len).map_err(|error| error.in_file(path))
    }

    /// Reads the header and metadata from `reader`, positioned at the start
    /// of a GGUF file. `len` is the input's length when known: counts and
    /// lengths are checked against it before anything is allocated. Pass
    /// `u64::MAX` when unknown.
    pub fn read(reader: impl Read, len: u64) -> Result<Self> {
        read_metadata(&mut Cursor::new(reader, len))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.get(key)
    }

    /// Byte offset of the entry of `key` in the file, if present.
    pub fn offset_of(&self, key: &str) -> Option<u64> {
        self.offsets.get(key).copied()
    }

    /// The string value of `key`; an error names the key when it is absent
    /// or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| Error::wrong_type(key, "string", value))
    }

    /// The value of `key` as a `u32`, if present; an error when it is not
    /// a non-negative integer that fits.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.kv
            .get(key)
            .map(|value| {
                value
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| Error::wrong_type(key, "u32", value))
            })
            .transpose()
    }

    /// The bool value of `key`, if present.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.kv
            .get(key)
            .map(|value| {
                value
                    .as_bool()
                    .ok_or_else(|| Error::wrong_type(key, "bool", value))
            })
            .transpose()
    }

    /// The list of strings stored at `key`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let expected = "array of strings";
        let value = self.require(key)?;
        let items = value
            .as_array()
            .ok_or_else(|| Error::wrong_type(key, expected, value))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| Error::wrong_type(key, expected, item))
            })
            .collect()
    }

    /// The numeric list stored at `key` as `f64`s, if present.
    pub fn get_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get_array(key, "numeric array", GgufValue::as_f64)
    }

    /// The integer list stored at `key` as `i64`s, if present.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.get_array(key, "integer array", GgufValue::as_i64)
    }

    fn get_array<T>(
        &self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&GgufValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(value) = self.kv.get(key) else {
            return Ok(None);
        };
        let items = value
            .as_array()
            .ok_or_else(|| Error::wrong_type(key, expected, value))?;
        items
            .iter()
            .map(|item| convert(item).ok_or_else(|| Error::wrong_type(key, expected, item)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.kv.get(key).ok_or_else(|| Error::MissingKey {
            key: key.to_string(),
        })
    }
}

impl GgufLayout {
    /// Reads and checks the layout of the GGUF file at `path`: header,
    /// every metadata entry, every tensor description, and that every
    /// tensor's data lies inside the file.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (reader, len) = open(path)?;
        Self::read(reader, len).map_err(|error| error.in_file(path))
    }

    /// [`GgufLayout::read_file`] from a reader positioned at the start of a
    /// GGUF file of `len` bytes.
    pub fn read(reader: impl Read, len: u64) -> Result<Self> {
        let mut at = Cursor::new(reader, len);
        let metadata = read_metadata(&mut at)?;
        read_tensor_table(&mut at, metadata)
    }

    /// The tensor named `name`, if the file holds one.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|tensor| tensor.name == name)
    }
}

fn open(path: &Path) -> Result<(BufReader<File>, u64)> {
    let io = |source| Error::Io {
        path: Some(path.to_path_buf()),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    Ok((BufReader::with_capacity(1 << 16, file), len))
}

/// Describes what is being read, for an error message (built only then).
type What<'a> = &'a dyn Fn() -> String;

/// A reader that knows where it is and how much of the input is left.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Cursor<R> {
    fn new(inner: R, len: u64) -> Self {
        Self { inner, pos: 0, len }
    }

    fn error(&self, offset: u64, message: String) -> Error {
        Error::Format {
            path: None,
            offset,
            message,
        }
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn truncated(&self, bytes: u64, what: What) -> Error {
        let end = match self.len {
            u64::MAX => "the input ends before them".to_string(),
            len => format!("the file ends at byte {len}"),
        };
        self.error(
            self.pos,
            format!(
                "{} needs {bytes} bytes, but {end}: it is truncated (an incomplete download \
                 or copy?) or corrupt",
                what()
            ),
        )
    }

    /// Fails unless `bytes` more bytes exist.
    fn need(&self, bytes: u64, what: What) -> Result<()> {
        match self.left() < bytes {
            true => Err(self.truncated(bytes, what)),
            false => Ok(()),
        }
    }

    fn fill(&mut self, buffer: &mut [u8], what: What) -> Result<()> {
        let bytes = buffer.len() as u64;
        self.need(bytes, what)?;
        match self.inner.read_exact(buffer) {
            Ok(()) => {
                self.pos += bytes;
                Ok(())
            }
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => {
                Err(self.truncated(bytes, what))
            }
            Err(source) => Err(Error::Io { path: None, source }),
        }
    }

    fn bytes<const N: usize>(&mut self, what: What) -> Result<[u8; N]> {
        let mut buffer = [0_u8; N];
        self.fill(&mut buffer, what)?;
        Ok(buffer)
    }

    fn u32(&mut self, what: What) -> Result<u32> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What) -> Result<u64> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed UTF-8 string.
    fn string(&mut self, what: What) -> Result<String> {
        let length_at = self.pos;
        let length = self.u64(&|| format!("the length of {}", what()))?;
        self.need(length, what)?;
        if length > MAX_STRING_LEN {
            return Err(self.error(
                length_at,
                format!(
                    "{}: string length {length} is implausible (more than {MAX_STRING_LEN} bytes)",
                    what()
                ),
            ));
        }
        let start = self.pos;
        let mut buffer = vec![0_u8; length as usize];
        self.fill(&mut buffer, what)?;
        String::from_utf8(buffer).map_err(|error| {
            self.error(
                start + error.utf8_error().valid_up_to() as u64,
                format!("{} is not valid UTF-8", what()),
            )
        })
    }

    /// A value of type `kind`, whose type id was read at `type_at`.
    fn value(&mut self, kind: u32, what: What, depth: usize, type_at: u64) -> Result<GgufValue> {
        Ok(match kind {
            type_id::U8 => GgufValue::U8(self.bytes::<1>(what)?[0]),
            type_id::I8 => GgufValue::I8(i8::from_le_bytes(self.bytes(what)?)),
            type_id::U16 => GgufValue::U16(u16::from_le_bytes(self.bytes(what)?)),
            type_id::I16 => GgufValue::I16(i16::from_le_bytes(self.bytes(what)?)),
            type_id::U32 => GgufValue::U32(u32::from_le_bytes(self.bytes(what)?)),
            type_id::I32 => GgufValue::I32(i32::from_le_bytes(self.bytes(what)?)),
            type_id::F32 => GgufValue::F32(f32::from_le_bytes(self.bytes(what)?)),
            type_id::U64 => GgufValue::U64(u64::from_le_bytes(self.bytes(what)?)),
            type_id::I64 => GgufValue::I64(i64::from_le_bytes(self.bytes(what)?)),
            type_id::F64 => GgufValue::F64(f64::from_le_bytes(self.bytes(what)?)),
            type_id::BOOL => {
                let at = self.pos;
                match self.bytes::<1>(what)?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    byte => {
                        return Err(
                            self.error(at, format!("{}: bool byte {byte} is not 0 or 1", what()))
                        )
                    }
                }
            }
            type_id::STRING => GgufValue::String(self.string(what)?),
            type_id::ARRAY => GgufValue::Array(self.array(what, depth)?),
            other => {
                return Err(self.error(
                    type_at,
                    format!("{}: unknown value type {other} (expected 0 to 12)", what()),
                ))
            }
        })
    }

    /// A list: element type, length, then the elements.
    fn array(&mut self, what: What, depth: usize) -> Result<Vec<GgufValue>> {
        let at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.error(
                at,
                format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what()),
            ));
        }
        let element = self.u32(&|| format!("{} (the array's element type)", what()))?;
        if type_name(element).is_none() {
            return Err(self.error(
                at,
                format!(
                    "{}: unknown array element type {element} (expected 0 to 12)",
                    what()
                ),
            ));
        }
        let count_at = self.pos;
        let count = self.u64(&|| format!("{} (the array's length)", what()))?;
        let (min, left) = (min_size(element), self.left());
        if count.saturating_mul(min) > left {
            return Err(self.error(
                count_at,
                format!(
                    "{} (the array's length): {count} values of at least {min} bytes cannot \
                     fit in the remaining {left} bytes: the file is truncated or corrupt",
                    what()
                ),
            ));
        }
        let mut items = Vec::with_capacity(count.min(1 << 20) as usize);
        for index in 0..count {
            let item = || format!("{}[{index}]", what());
            items.push(self.value(element, &item, depth + 1, at)?);
        }
        Ok(items)
    }
}

/// Reads up to `buffer.len()` bytes, fewer only at the end of the input.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::Io { path: None, source }),
        }
    }
    Ok(filled)
}

/// `bytes` for a message: as text when printable ASCII, else in hex.
fn shown(bytes: &[u8]) -> String {
    match bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        true => format!("{:?}", String::from_utf8_lossy(bytes)),
        false => format!("{bytes:02x?}"),
    }
}

fn read_metadata<R: Read>(at: &mut Cursor<R>) -> Result<GgufMetadata> {
    let mut magic = [0_u8; 4];
    let read = read_up_to(&mut at.inner, &mut magic)?;
    at.pos = read as u64;
    if &magic[..read] != MAGIC {
        return Err(at.error(
            0,
            format!(
                "not a GGUF file: expected the magic bytes `GGUF`, got {}{}",
                shown(&magic[..read]),
                if read == 0 {
                    " (the file is empty)"
                } else {
                    ""
                }
            ),
        ));
    }
    let version = at.u32(&|| "the format version".into())?;
    if !READ_VERSIONS.contains(&version) {
        return Err(at.error(
            4,
            format!("unsupported GGUF version {version} (supported: 2, 3)"),
        ));
    }
    let tensor_count = at.u64(&|| "the tensor count".into())?;
    let kv_count = at.u64(&|| "the metadata key/value count".into())?;
    let left = at.left();
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
    let mut kv = BTreeMap::new();
    let mut offsets = BTreeMap::new();
    for index in 0..kv_count {
        let key_at = at.pos;
        let key = at.string(&|| format!("the name of metadata entry {index}"))?;
        let what = || format!("metadata `{key}`");
        let type_at = at.pos;
        let kind = at.u32(&|| format!("{} (its value type)", what()))?;
        let value = at.value(kind, &what, 0, type_at)?;
        if kv.insert(key.clone(), value).is_some() {
            return Err(at.error(key_at, format!("duplicate key {key:?}")));
        }
        offsets.insert(key, key_at);
    }
    Ok(GgufMetadata {
        version,
        tensor_count,
        kv,
        offsets,
    })
}

fn read_tensor_table<R: Read>(at: &mut Cursor<R>, metadata: GgufMetadata) -> Result<GgufLayout> {
    const ALIGNMENT_KEY: &str = "general.alignment";
    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(alignment)) if alignment.is_power_of_two() => u64::from(*alignment),
        Some(other) => {
            return Err(at.error(
                metadata.offset_of(ALIGNMENT_KEY).unwrap_or(0),
                format!(
                    "{ALIGNMENT_KEY}: expected a power of two as u32, got {other:?} ({})",
                    other.type_name()
                ),
            ))
        }
    };
    let mut tensors = Vec::with_capacity(metadata.tensor_count.min(1 << 16) as usize);
    let mut names = HashSet::new();
    for index in 0..metadata.tensor_count {
        let info_offset = at.pos;
        let name = at.string(&|| format!("the name of tensor {index}"))?;
        let what = |part: &str| format!("tensor `{name}` ({part})");
        let ndims = at.u32(&|| what("its dimension count"))?;
        check_dim_count(ndims.into())
            .map_err(|why| at.error(info_offset, format!("tensor `{name}` has {why}")))?;
        let mut dims = Vec::with_capacity(ndims as usize);
        for axis in 0..ndims {
            dims.push(at.u64(&|| what(&format!("dimension {axis}")))?);
        }
        let type_id = at.u32(&|| what("its type"))?;
        let offset = at.u64(&|| what("its data offset"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            at.error(
                info_offset,
                format!("tensor `{name}` has GGML type {type_id}, which ggml does not define"),
            )
        })?;
        let size = ggml_type
            .data_size(&dims)
            .map_err(|why| at.error(info_offset, format!("tensor `{name}`: {why}")))?;
        if !offset.is_multiple_of(alignment) {
            return Err(at.error(
                info_offset,
                format!(
                    "tensor `{name}`: its data offset {offset} is not a multiple of the \
                     alignment of {alignment} bytes"
                ),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(at.error(info_offset, format!("duplicate tensor name `{name}`")));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            info_offset,
            size,
        });
    }
    let data_start = at.pos.div_ceil(alignment) * alignment;
    for tensor in &tensors {
        let end = data_start
            .checked_add(tensor.offset)
            .and_then(|start| start.checked_add(tensor.size));
        if end.is_none_or(|end| end > at.len) {
            return Err(at.error(
                tensor.info_offset,
                format!(
                    "truncated: tensor `{}` ({} {:?}) needs bytes {}..{} of the file, which has \
                     {} bytes (an incomplete download or copy?)",
                    tensor.name,
                    tensor.ggml_type,
                    tensor.dims,
                    data_start.saturating_add(tensor.offset),
                    end.map_or_else(|| "(overflow)".to_string(), |end| end.to_string()),
                    at.len,
                ),
            ));
        }
    }
    Ok(GgufLayout {
        metadata,
        alignment,
        data_start,
        file_len: at.len,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GgufTensorSpec, GgufWriter};

    /// A GGUF v3 header with metadata `kv` (duplicates allowed) and no
    /// tensors, unpadded: the input ends where the last value does.
    fn metadata_bytes(kv: &[(&str, GgufValue)]) -> Vec<u8> {
        let mut bytes = [&b"GGUF"[..], &3_u32.to_le_bytes(), &0_u64.to_le_bytes()].concat();
        bytes.extend((kv.len() as u64).to_le_bytes());
        for (key, value) in kv {
            crate::write::put_string(&mut bytes, key);
            bytes.extend(value.value_type().to_le_bytes());
            crate::write::put_value(&mut bytes, value);
        }
        bytes
    }

    fn read(bytes: &[u8]) -> Result<GgufMetadata> {
        GgufMetadata::read(bytes, bytes.len() as u64)
    }

    fn layout(bytes: &[u8]) -> Result<GgufLayout> {
        GgufLayout::read(bytes, bytes.len() as u64)
    }

    fn string(text: &str) -> Vec<u8> {
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        bytes
    }

    /// A file with one metadata string and one F32 tensor `w` of `dims`
    /// followed by `data_bytes` of data, built by hand (it may be invalid).
    fn one_tensor(dims: &[u64], data_bytes: usize) -> Vec<u8> {
        let mut bytes = [
            &b"GGUF"[..],
            &3_u32.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &string("general.name"),
            &8_u32.to_le_bytes(),
            &string("tiny"),
            &string("w"),
            &(dims.len() as u32).to_le_bytes(),
        ]
        .concat();
        for dim in dims {
            bytes.extend(dim.to_le_bytes());
        }
        bytes.extend(0_u32.to_le_bytes());
        bytes.extend(0_u64.to_le_bytes());
        bytes.resize(bytes.len().div_ceil(32) * 32, 0);
        bytes.extend(std::iter::repeat_n(0_u8, data_bytes));
        bytes
    }

    #[test]
    fn round_trips_all_value_types() {
        let kv = vec![
            ("a.u8", GgufValue::U8(7)),
            ("a.i32", GgufValue::I32(-3)),
            ("a.f32", GgufValue::F32(1.5)),
            ("a.bool", GgufValue::Bool(true)),
            ("a.str", GgufValue::String("héllo".into())),
            ("a.u64", GgufValue::U64(1 << 40)),
            (
                "a.arr",
                GgufValue::Array(vec![GgufValue::string("x"), GgufValue::string("y")]),
            ),
            (
                "a.nested",
                GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::I64(1)])]),
            ),
        ];
        let bytes = metadata_bytes(&kv);
        let meta = read(&bytes).expect("reads");
        assert_eq!(meta.version, 3);
        assert_eq!(meta.kv.len(), kv.len());
        for (k, v) in kv {
            assert_eq!(meta.get(k), Some(&v), "{k}");
        }
        assert_eq!(
            meta.get_str_array("a.arr").expect("strings"),
            vec!["x", "y"]
        );
        assert_eq!(meta.get_u32("a.u8").expect("u32"), Some(7));
        assert_eq!(meta.get_u32("no.such").expect("absent"), None);
        let error = meta.get_u32("a.i32").expect_err("negative");
        assert_eq!(
            error.to_string(),
            "GGUF metadata key \"a.i32\": expected u32, got i32"
        );
        let error = meta.get_str("no.such").expect_err("absent");
        assert_eq!(error.to_string(), "GGUF metadata has no key \"no.such\"");
        let error = meta.get_f64_array("a.arr").expect_err("strings");
        assert!(error.to_string().contains("numeric array"), "{error}");
        // Entries are located: the first key comes right after the header.
        assert_eq!(meta.offset_of("a.u8"), Some(24));
    }

    #[test]
    fn errors_name_the_offset() {
        let error = read(b"GGUX\x03\0\0\0").expect_err("magic").to_string();
        assert!(
            error.contains("offset 0") && error.contains("magic") && error.contains("GGUX"),
            "{error}"
        );
        let error = read(b"").expect_err("empty").to_string();
        assert!(error.contains("the file is empty"), "{error}");
        let error = read(b"\x88\x02\0\0").expect_err("binary").to_string();
        assert!(error.contains("[88, 02, 00, 00]"), "{error}");

        let bytes = metadata_bytes(&[("k", GgufValue::string("value"))]);
        let error = read(&bytes[..bytes.len() - 2])
            .expect_err("cut")
            .to_string();
        assert!(
            error.contains("metadata `k` needs 5 bytes") && error.contains("truncated"),
            "{error}"
        );
        // Without a known length the end of the input still reads as truncated.
        let error = GgufMetadata::read(&bytes[..bytes.len() - 2], u64::MAX)
            .expect_err("cut")
            .to_string();
        assert!(error.contains("truncated"), "{error}");

        // A huge array count fails before allocating, at the count.
        let mut bytes = metadata_bytes(&[("k", GgufValue::Array(vec![GgufValue::U32(1)]))]);
        let count_at = bytes.len() - 4 - 8;
        bytes[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let error = read(&bytes).expect_err("huge").to_string();
        assert!(
            error.contains(&format!("offset {count_at}")) && error.contains("cannot fit"),
            "{error}"
        );

        // Unknown value type, at the type.
        let mut bytes = metadata_bytes(&[("k", GgufValue::U32(1))]);
        let type_at = bytes.len() - 8;
        bytes[type_at..type_at + 4].copy_from_slice(&99_u32.to_le_bytes());
        let error = read(&bytes).expect_err("type").to_string();
        assert!(
            error.contains(&format!("offset {type_at}")) && error.contains("unknown value type 99"),
            "{error}"
        );

        // A string that is not UTF-8, at its first bad byte.
        let mut bytes = metadata_bytes(&[("k", GgufValue::string("abc"))]);
        let last = bytes.len() - 1;
        bytes[last] = 0xff;
        let error = read(&bytes).expect_err("utf-8").to_string();
        assert!(
            error.contains(&format!("offset {last}")) && error.contains("not valid UTF-8"),
            "{error}"
        );

        // A key length past the end, at the bytes it would need.
        let mut bytes = metadata_bytes(&[("k", GgufValue::U8(1))]);
        bytes[24..32].copy_from_slice(&(1_u64 << 50).to_le_bytes());
        let error = read(&bytes).expect_err("key length").to_string();
        assert!(
            error.contains("offset 32")
                && error.contains("metadata entry 0")
                && error.contains("truncated"),
            "{error}"
        );

        let mut bytes = metadata_bytes(&[]);
        bytes[4..8].copy_from_slice(&9_u32.to_le_bytes());
        let error = read(&bytes).expect_err("version").to_string();
        assert!(
            error.contains("offset 4") && error.contains("version 9"),
            "{error}"
        );
    }

    #[test]
    fn rejects_duplicate_keys_bad_bools_and_deep_nesting() {
        let bytes = metadata_bytes(&[("k", GgufValue::U8(1)), ("k", GgufValue::U8(2))]);
        let error = read(&bytes).expect_err("duplicate").to_string();
        assert!(error.contains("duplicate key \"k\""), "{error}");

        let mut bytes = metadata_bytes(&[("k", GgufValue::Bool(true))]);
        let last = bytes.len() - 1;
        bytes[last] = 5;
        let error = read(&bytes).expect_err("bool").to_string();
        assert!(error.contains("bool byte 5"), "{error}");

        // Five levels of lists: the writer refuses them, so build them by hand.
        let mut bytes = metadata_bytes(&[]);
        bytes[16..24].copy_from_slice(&1_u64.to_le_bytes());
        bytes.extend(string("k"));
        bytes.extend(9_u32.to_le_bytes());
        for _ in 0..MAX_ARRAY_DEPTH {
            bytes.extend(9_u32.to_le_bytes());
            bytes.extend(1_u64.to_le_bytes());
        }
        bytes.extend([0; 16]);
        let error = read(&bytes).expect_err("deep").to_string();
        assert!(error.contains("nested deeper than 4"), "{error}");
    }

    #[test]
    fn a_consistent_file_is_read() {
        let layout = layout(&one_tensor(&[4, 2], 32)).expect("valid");
        assert_eq!(layout.tensors.len(), 1);
        let w = layout.tensor("w").expect("w");
        assert_eq!((w.size, w.ggml_type, w.offset), (32, GgmlType::F32, 0));
        assert_eq!(layout.data_start % 32, 0);
        assert_eq!(layout.alignment, 32);
        assert_eq!(
            layout.metadata.get_str("general.name").expect("name"),
            "tiny"
        );
    }

    #[test]
    fn short_tensor_data_is_reported_as_truncated() {
        let error = layout(&one_tensor(&[4, 2], 31))
            .expect_err("short")
            .to_string();
        assert!(error.contains("truncated: tensor `w`"), "{error}");
        assert!(error.contains("(F32 [4, 2]) needs bytes"), "{error}");
    }

    #[test]
    fn every_prefix_of_a_file_is_refused_with_an_offset() {
        let bytes = one_tensor(&[4, 2], 32);
        for keep in 0..bytes.len() - 32 {
            let error = layout(&bytes[..keep]).expect_err("truncated");
            assert!(error.offset().is_some(), "{keep}: {error}");
            let message = error.to_string();
            assert!(
                message.contains("not a GGUF file") || message.contains("truncated"),
                "{keep}: {message}"
            );
        }
    }

    #[test]
    fn impossible_tensors_are_refused() {
        for dims in [&[0_u64, 2][..], &[u64::MAX, 2], &[1, 1, 1, 1, 1], &[]] {
            let error = layout(&one_tensor(dims, 32))
                .expect_err("refused")
                .to_string();
            assert!(error.contains("tensor `w`"), "{dims:?}: {error}");
        }
        let mut bytes = one_tensor(&[4, 2], 32);
        let type_at = bytes.iter().rposition(|&b| b == b'w').expect("name") + 1 + 4 + 16;
        bytes[type_at..type_at + 4].copy_from_slice(&99_u32.to_le_bytes());
        let error = layout(&bytes).expect_err("type").to_string();
        assert!(error.contains("GGML type 99"), "{error}");
        let mut bytes = one_tensor(&[4, 2], 64);
        bytes[type_at + 4..type_at + 12].copy_from_slice(&4_u64.to_le_bytes());
        let error = layout(&bytes).expect_err("misaligned").to_string();
        assert!(error.contains("not a multiple of the alignment"), "{error}");
    }

    #[test]
    fn the_alignment_key_moves_the_data_section() {
        let mut kv = BTreeMap::new();
        kv.insert("general.alignment".to_string(), GgufValue::U32(32));
        let tensors = [GgufTensorSpec::row_major("w", &[3], GgmlType::F16)];
        let mut writer = GgufWriter::new(Vec::new(), &kv, &tensors).expect("header");
        writer.write_tensor(&[0; 6]).expect("data");
        let mut bytes = writer.finish().expect("finish");
        let read = layout(&bytes).expect("valid");
        assert_eq!((read.alignment, read.tensors[0].size), (32, 6));
        // 64-byte alignment: the data section moves to the next multiple of 64.
        let value_at = bytes
            .windows(17)
            .position(|w| w == b"general.alignment")
            .expect("key")
            + 17
            + 4;
        bytes[value_at..value_at + 4].copy_from_slice(&64_u32.to_le_bytes());
        bytes.resize(read.data_start.next_multiple_of(64) as usize + 64, 0);
        let moved = layout(&bytes).expect("valid");
        assert_eq!((moved.alignment, moved.data_start % 64), (64, 0));
        bytes[value_at..value_at + 4].copy_from_slice(&48_u32.to_le_bytes());
        let error = layout(&bytes).expect_err("48").to_string();
        assert!(error.contains("power of two"), "{error}");
    }
}
