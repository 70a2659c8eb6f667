//! A small, strict reader for the *metadata* section of a GGUF file.
//!
//! It reads the header and the key/value pairs (arrays included) and stops
//! before the tensor descriptions: ft-data needs the tokenizer and the chat
//! template, never the weights. Every error says at which byte offset what
//! was expected, so a truncated or corrupt file is easy to diagnose.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{DataError, Result};

/// The four magic bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// Nested arrays deeper than this are refused (real files use depth 1).
const MAX_ARRAY_DEPTH: usize = 4;
/// A single string longer than this is taken as corruption, not data.
const MAX_STRING_LEN: u64 = 256 * 1024 * 1024;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GgufValue {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f32`
    F32(f32),
    /// `f64`
    F64(f64),
    /// `bool`
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// A homogeneous array.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            // Integers convert through `as_u64`/`I*` so scores stored as ints still work.
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            ref other => other.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// The metadata of a GGUF file: version, tensor count and the key/value pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufMetadata {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// Number of tensors the file declares (their descriptions are not read).
    pub tensor_count: u64,
    /// All key/value pairs, sorted by key.
    pub kv: BTreeMap<String, GgufValue>,
}

impl GgufMetadata {
    /// Reads the metadata of the GGUF file at `path`.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        Self::read(BufReader::new(file), len).map_err(|e| match e {
            DataError::Gguf {
                offset, message, ..
            } => DataError::Gguf {
                path: Some(path.to_path_buf()),
                offset,
                message,
            },
            other => other,
        })
    }

    /// Reads GGUF metadata from a reader positioned at the file start.
    ///
    /// `len` is the total input length when known (it bounds array and string
    /// sizes so a corrupt count fails fast instead of allocating); pass
    /// `u64::MAX` when unknown.
    pub fn read(reader: impl Read, len: u64) -> Result<Self> {
        let mut r = Cursor {
            inner: reader,
            offset: 0,
            len,
        };
        let magic = r.bytes::<4>("magic \"GGUF\"")?;
        if &magic != MAGIC {
            return Err(r.error_at(0, format!("expected magic \"GGUF\", got {magic:02x?}")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.error_at(
                4,
                format!("unsupported GGUF version {version} (expected 2 or 3)"),
            ));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata key/value count")?;
        // Each pair needs at least a key length, a type and a 1-byte value.
        r.check_count(kv_count, 13, "metadata key/value count")?;
        let mut kv = BTreeMap::new();
        for index in 0..kv_count {
            let key_offset = r.offset;
            let key = r.string(&format!("key of pair {index}"))?;
            let value_type = r.u32(&format!("value type of {key:?}"))?;
            let value = r.value(value_type, &key, 0)?;
            if kv.insert(key.clone(), value).is_some() {
                return Err(r.error_at(key_offset, format!("duplicate key {key:?}")));
            }
        }
        Ok(GgufMetadata {
            version,
            tensor_count,
            kv,
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.get(key)
    }

    /// The string value of `key`; an error names the key when it is missing
    /// or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(key, "string", value))
    }

    /// The unsigned integer value of `key`, if present and integral.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.kv.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| wrong_type(key, "u32", value)),
        }
    }

    /// The bool value of `key`, if present.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.kv.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_bool()
                .map(Some)
                .ok_or_else(|| wrong_type(key, "bool", value)),
        }
    }

    /// The array of strings stored at `key`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let value = self.require(key)?;
        let items = value
            .as_array()
            .ok_or_else(|| wrong_type(key, "array of strings", value))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| wrong_type(key, "array of strings", item))
            })
            .collect()
    }

    /// The numeric array stored at `key` as `f64`s, if present.
    pub fn get_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(value) = self.kv.get(key) else {
            return Ok(None);
        };
        let items = value
            .as_array()
            .ok_or_else(|| wrong_type(key, "numeric array", value))?;
        items
            .iter()
            .map(|item| {
                item.as_f64()
                    .ok_or_else(|| wrong_type(key, "numeric array", item))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The integer array stored at `key`, if present.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(value) = self.kv.get(key) else {
            return Ok(None);
        };
        let items = value
            .as_array()
            .ok_or_else(|| wrong_type(key, "integer array", value))?;
        items
            .iter()
            .map(|item| {
                let v = match *item {
                    GgufValue::I8(v) => Some(i64::from(v)),
                    GgufValue::I16(v) => Some(i64::from(v)),
                    GgufValue::I32(v) => Some(i64::from(v)),
                    GgufValue::I64(v) => Some(v),
                    ref other => other.as_u64().and_then(|v| i64::try_from(v).ok()),
                };
                v.ok_or_else(|| wrong_type(key, "integer array", item))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.kv.get(key).ok_or_else(|| DataError::Tokenizer {
            message: format!("GGUF metadata has no key {key:?}"),
        })
    }
}

fn wrong_type(key: &str, expected: &str, got: &GgufValue) -> DataError {
    DataError::Tokenizer {
        message: format!(
            "GGUF metadata key {key:?}: expected {expected}, got {}",
            got.type_name()
        ),
    }
}

/// A reader that tracks its byte offset for error messages.
struct Cursor<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: Read> Cursor<R> {
    fn error_at(&self, offset: u64, message: String) -> DataError {
        DataError::Gguf {
            path: None,
            offset,
            message,
        }
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| {
            self.error_at(
                self.offset,
                format!("reading {what} ({N} bytes): {e} (file truncated?)"),
            )
        })?;
        self.offset += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// Fails when `count` items of at least `min_size` bytes cannot fit in
    /// the rest of the input.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        let remaining = self.len.saturating_sub(self.offset);
        if count.saturating_mul(min_size) > remaining {
            return Err(self.error_at(
                self.offset.saturating_sub(8),
                format!("{what} {count} cannot fit in the remaining {remaining} bytes"),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.offset;
        let len = self.u64(&format!("length of {what}"))?;
        if len > MAX_STRING_LEN || len > self.len.saturating_sub(self.offset) {
            return Err(self.error_at(start, format!("{what}: string length {len} is implausible")));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|e| {
            self.error_at(self.offset, format!("reading {what} ({len} bytes): {e}"))
        })?;
        self.offset += len;
        String::from_utf8(buf).map_err(|e| {
            self.error_at(
                start + 8 + e.utf8_error().valid_up_to() as u64,
                format!("{what} is not valid UTF-8"),
            )
        })
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let v = match value_type {
            0 => GgufValue::U8(self.bytes::<1>(key)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.bytes::<1>(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.bytes::<2>(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.bytes::<2>(key)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.bytes::<4>(key)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.bytes::<4>(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.bytes::<4>(key)?)),
            7 => {
                let at = self.offset;
                match self.bytes::<1>(key)?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => {
                        return Err(
                            self.error_at(at, format!("{key:?}: bool byte {b} is not 0 or 1"))
                        )
                    }
                }
            }
            8 => GgufValue::String(self.string(&format!("value of {key:?}"))?),
            9 => {
                let at = self.offset;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.error_at(
                        at,
                        format!("{key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let item_type = self.u32(&format!("array item type of {key:?}"))?;
                let count = self.u64(&format!("array length of {key:?}"))?;
                self.check_count(
                    count,
                    min_value_size(item_type),
                    &format!("{key:?}: array length"),
                )?;
                let mut items = Vec::with_capacity(count.min(1 << 20) as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.bytes::<8>(key)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.bytes::<8>(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.bytes::<8>(key)?)),
            other => {
                return Err(self.error_at(
                    self.offset.saturating_sub(4),
                    format!("{key:?}: unknown value type {other} (expected 0..=12)"),
                ))
            }
        };
        Ok(v)
    }
}

/// The fewest bytes one value of `value_type` can take.
fn min_value_size(value_type: u32) -> u64 {
    match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// Helpers to write GGUF metadata, used by tests to build small files.
#[doc(hidden)]
pub mod write {
    use super::GgufValue;

    /// Encodes a GGUF v3 header with `kv` and no tensors.
    pub fn gguf_bytes(kv: &[(&str, GgufValue)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(super::MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (key, value) in kv {
            put_str(&mut out, key);
            out.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut out, value);
        }
        out
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_id(value: &GgufValue) -> u32 {
        match value {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, value: &GgufValue) {
        match value {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(u8::from(*v)),
            GgufValue::String(s) => put_str(out, s),
            GgufValue::Array(items) => {
                let item_type = items.first().map(type_id).unwrap_or(0);
                out.extend_from_slice(&item_type.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    put_value(out, item);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::write::gguf_bytes;
    use super::*;

    fn read(bytes: &[u8]) -> Result<GgufMetadata> {
        GgufMetadata::read(bytes, bytes.len() as u64)
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
                GgufValue::Array(vec![
                    GgufValue::String("x".into()),
                    GgufValue::String("y".into()),
                ]),
            ),
            (
                "a.nested",
                GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::I64(1)])]),
            ),
        ];
        let meta = read(&gguf_bytes(&kv)).unwrap();
        assert_eq!(meta.version, 3);
        assert_eq!(meta.kv.len(), kv.len());
        for (k, v) in kv {
            assert_eq!(meta.get(k), Some(&v), "{k}");
        }
        assert_eq!(meta.get_str_array("a.arr").unwrap(), vec!["x", "y"]);
        assert_eq!(meta.get_u32("a.u8").unwrap(), Some(7));
        assert!(meta.get_u32("a.i32").is_err());
    }

    #[test]
    fn errors_name_the_offset() {
        let err = read(b"GGUX\x03\0\0\0").unwrap_err().to_string();
        assert!(err.contains("offset 0") && err.contains("magic"), "{err}");

        let bytes = gguf_bytes(&[("k", GgufValue::String("value".into()))]);
        let err = read(&bytes[..bytes.len() - 2]).unwrap_err().to_string();
        assert!(
            err.contains("implausible") || err.contains("truncated"),
            "{err}"
        );

        // A huge array count fails before allocating.
        let mut bytes = gguf_bytes(&[("k", GgufValue::Array(vec![GgufValue::U32(1)]))]);
        let count_at = bytes.len() - 4 - 8;
        bytes[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = read(&bytes).unwrap_err().to_string();
        assert!(err.contains("cannot fit"), "{err}");

        // Unknown value type.
        let mut bytes = gguf_bytes(&[("k", GgufValue::U32(1))]);
        let type_at = bytes.len() - 8;
        bytes[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
        let err = read(&bytes).unwrap_err().to_string();
        assert!(err.contains("unknown value type 99"), "{err}");
    }

    #[test]
    fn rejects_duplicate_keys_and_bad_bools() {
        let bytes = gguf_bytes(&[("k", GgufValue::U8(1)), ("k", GgufValue::U8(2))]);
        assert!(read(&bytes)
            .unwrap_err()
            .to_string()
            .contains("duplicate key"));
        let mut bytes = gguf_bytes(&[("k", GgufValue::Bool(true))]);
        let last = bytes.len() - 1;
        bytes[last] = 5;
        assert!(read(&bytes)
            .unwrap_err()
            .to_string()
            .contains("bool byte 5"));
    }

    #[test]
    fn reads_the_default_model_when_present() {
        if !crate::test_support::default_model_present() {
            return;
        }
        let path = crate::test_support::default_model_path();
        let meta = GgufMetadata::read_file(&path).unwrap();
        assert_eq!(meta.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(
            meta.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            49152
        );
        assert!(meta
            .get_str("tokenizer.chat_template")
            .unwrap()
            .contains("<|im_start|>"));
    }
}
