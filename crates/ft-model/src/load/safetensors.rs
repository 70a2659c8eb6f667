//! A safetensors file checked in Rust before MLX reads it: MLX reports a
//! damaged file with its C++ source location, or (for a shape that does not
//! match its data) reads what it finds. Here every tensor's dtype, shape
//! and byte range are checked against the file, a problem naming the tensor
//! and the numbers involved; the `safetensors` crate (the format's
//! reference implementation) then validates the layout as a whole.

use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The tensors a safetensors header declares: name to (dtype, shape).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Each tensor's dtype (`F32`, `BF16`, ...) and shape, by name.
    pub tensors: BTreeMap<String, (String, Vec<usize>)>,
}

/// The header size limit of the safetensors format (and of MLX's reader).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes per element of each dtype MLX reads.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" => 1,
        "F16" | "BF16" | "U16" | "I16" => 2,
        "F32" | "U32" | "I32" => 4,
        "I64" | "U64" | "C64" => 8,
        _ => return None,
    })
}

const SUPPORTED_DTYPES: &str = "F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, C64";

/// Checks that the safetensors file at `path` is complete and consistent:
/// header length and JSON, and for each tensor a dtype MLX reads, a shape,
/// and `data_offsets` that match the shape and lie inside the file. Returns
/// the tensors the header declares.
pub fn check_safetensors(path: &Path) -> Result<SafetensorsHeader> {
    let bad = |message: String| Error::Weights {
        path: path.to_path_buf(),
        message,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < 8 {
        return Err(bad(format!(
            "truncated: {len} bytes, but a safetensors file starts with an 8-byte header length \
             (an incomplete download or copy?)"
        )));
    }
    let mut prefix = [0_u8; 8];
    file.read_exact(&mut prefix).map_err(io)?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len == 0 || header_len >= MAX_HEADER_BYTES {
        return Err(bad(format!(
            "not a safetensors file: its first 8 bytes give a header length of {header_len}, \
             expected 1 to {MAX_HEADER_BYTES}"
        )));
    }
    if 8 + header_len > len {
        return Err(bad(format!(
            "truncated: the header is {header_len} bytes long, but only {} bytes follow it \
             (an incomplete download or copy?)",
            len - 8
        )));
    }
    let mut header = vec![0_u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let data_len = len - 8 - header_len;
    let parsed: Value = serde_json::from_slice(&header)
        .map_err(|error| bad(format!("the header is not valid JSON: {error}")))?;
    locate_defect(&parsed, data_len).map_err(bad)?;
    // Every tensor is whole, of a dtype MLX reads and inside the file. The
    // format's own validation may still refuse the layout (gaps or overlaps
    // between tensors, out of order): MLX reads such a file, and the loader
    // then names any tensor that is missing.
    if let Err(refusal) = serde_json::from_slice::<::safetensors::tensor::Metadata>(&header) {
        tracing::warn!(
            path = %path.display(),
            "{refusal}: the tensors do not tile the data section as the safetensors format \
             requires; reading them anyway"
        );
    }
    Ok(header_from_json(&parsed))
}

/// The tensors of a header [`locate_defect`] found no fault in.
fn header_from_json(header: &Value) -> SafetensorsHeader {
    let tensors = header
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(name, entry)| {
            let dtype = entry["dtype"].as_str().unwrap_or_default().to_string();
            let shape = entry["shape"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|dim| dim.as_u64().map(|d| d as usize))
                .collect();
            (name.clone(), (dtype, shape))
        })
        .collect();
    SafetensorsHeader { tensors }
}

/// The first defect of the header, located: a tensor's dtype, shape or
/// byte range, or the metadata; `Ok` when there is none.
fn locate_defect(header: &Value, data_len: u64) -> std::result::Result<(), String> {
    let Value::Object(entries) = header else {
        return Err(format!(
            "the header is not a JSON object of tensors: got {}",
            json_kind(header)
        ));
    };
    for (name, entry) in entries {
        if name == "__metadata__" {
            // `null` is allowed (MLX writes it when there is no metadata).
            let all_strings = entry.is_null()
                || entry
                    .as_object()
                    .is_some_and(|map| map.values().all(Value::is_string));
            if !all_strings {
                return Err(
                    "`__metadata__`: expected an object of string values or null".to_string(),
                );
            }
            continue;
        }
        let tensor = |message: String| format!("tensor `{name}`: {message}");
        let dtype = entry.get("dtype").and_then(Value::as_str).ok_or_else(|| {
            tensor(format!(
                "`dtype`: expected a string, got {}",
                field(entry, "dtype")
            ))
        })?;
        let size = dtype_size(dtype).ok_or_else(|| {
            tensor(format!(
                "dtype `{dtype}` is not supported (supported: {SUPPORTED_DTYPES})"
            ))
        })?;
        let shape = entry
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| {
                dims.iter()
                    .map(|dim| dim.as_u64().filter(|&dim| dim <= i32::MAX as u64))
                    .collect::<Option<Vec<u64>>>()
            })
            .ok_or_else(|| {
                tensor(format!(
                    "`shape`: expected a list of integers from 0 to {}, got {}",
                    i32::MAX,
                    field(entry, "shape")
                ))
            })?;
        let offsets = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|pair| match pair.as_slice() {
                [begin, end] => Some((begin.as_u64()?, end.as_u64()?)),
                _ => None,
            })
            .filter(|(begin, end)| begin <= end)
            .ok_or_else(|| {
                tensor(format!(
                    "`data_offsets`: expected [begin, end] with begin <= end, got {}",
                    field(entry, "data_offsets")
                ))
            })?;
        let needed = shape
            .iter()
            .try_fold(size, |bytes, &dim| bytes.checked_mul(dim))
            .ok_or_else(|| tensor(format!("shape {shape:?} overflows")))?;
        let (begin, end) = offsets;
        if end - begin != needed {
            return Err(tensor(format!(
                "shape {shape:?} of {dtype} needs {needed} bytes, but data_offsets [{begin}, {end}] \
                 hold {}",
                end - begin
            )));
        }
        if end > data_len {
            return Err(format!(
                "truncated: tensor `{name}` has data_offsets [{begin}, {end}], but the data \
                 section holds only {data_len} bytes (an incomplete download or copy?)"
            ));
        }
    }
    Ok(())
}

fn field(entry: &Value, key: &str) -> String {
    entry
        .get(key)
        .map_or_else(|| "nothing".to_string(), Value::to_string)
}

/// What kind of JSON value `value` is, for messages ("a number", "an array").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.safetensors");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0_u8, data));
        std::fs::write(&path, bytes).expect("write");
        (dir, path)
    }

    const GOOD: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#;

    #[test]
    fn a_consistent_file_passes() {
        let (_dir, path) = file(GOOD, 24);
        let header = check_safetensors(&path).expect("valid");
        assert_eq!(header.tensors.len(), 1);
    }

    #[test]
    fn null_metadata_as_mlx_writes_it_is_accepted() {
        let header = GOOD.replace(r#"{"format":"pt"}"#, "null");
        let (_dir, path) = file(&header, 24);
        let tensors = check_safetensors(&path).expect("valid").tensors;
        assert_eq!(tensors["a"], ("F32".to_string(), vec![2, 3]));
    }

    #[test]
    fn a_gap_between_tensors_is_read_as_mlx_reads_it() {
        let (_dir, path) = file(&GOOD.replace("[0,24]", "[8,32]"), 32);
        let tensors = check_safetensors(&path).expect("readable").tensors;
        assert_eq!(tensors["a"], ("F32".to_string(), vec![2, 3]));
    }

    #[test]
    fn each_defect_is_named() {
        let cases = [
            (GOOD.to_string(), 23, "truncated: tensor `a`"),
            (GOOD.replace("F32", "F99"), 24, "dtype `F99`"),
            (GOOD.replace("[2,3]", "[2,-3]"), 24, "`shape`"),
            (GOOD.replace("[2,3]", "[2,4]"), 24, "needs 32 bytes"),
            (GOOD.replace("[0,24]", "[24,0]"), 24, "`data_offsets`"),
            ("[1,2]".to_string(), 0, "not a JSON object"),
            (GOOD[..40].to_string(), 0, "not valid JSON"),
        ];
        for (header, data, needle) in cases {
            let (_dir, path) = file(&header, data);
            let error = check_safetensors(&path).expect_err(needle).to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }

    /// A file as MLX and PyTorch write them: metadata and tensors of
    /// several dtypes.
    fn sample() -> Vec<u8> {
        let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"h":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[32,40]},"i":{"dtype":"I8","shape":[3],"data_offsets":[40,43]},"m":{"dtype":"BOOL","shape":[1],"data_offsets":[43,44]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend((0..44_u8).map(|i| i % 7));
        bytes
    }

    /// Any edit of a valid file is refused with the tensor or the defect
    /// named, or loads through MLX without crashing.
    #[test]
    fn fuzz_safetensors_header() {
        use ft_config::fuzz::{fuzz, mutated};
        use proptest::test_runner::TestCaseError;
        let dictionary: Vec<Vec<u8>> = [
            "\"",
            ",",
            ":",
            "[",
            "]",
            "{",
            "}",
            "-1",
            "0",
            "4294967296",
            "1e3",
            "null",
            "\"F32\"",
            "\"F64\"",
            "\"C64\"",
            "\"shape\"",
            "\"dtype\"",
            "\"data_offsets\"",
            "\"__metadata__\"",
            "[2147483647,2147483647]",
            "\u{0}",
            "é",
        ]
        .iter()
        .map(|token| token.as_bytes().to_vec())
        .chain([u64::MAX, 1 << 40, 0, 8].map(|n| n.to_le_bytes().to_vec()))
        .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fuzz.safetensors");
        fuzz(
            "safetensors_header",
            64,
            mutated(vec![sample()], dictionary, 4),
            |bytes| {
                std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match check_safetensors(&path) {
                    Ok(_) => {
                        if let Ok(arrays) = mlx_rs::Array::load_safetensors(&path) {
                            for array in arrays.values() {
                                let _ = array.eval();
                            }
                        }
                    }
                    Err(error) => {
                        let message = error.to_string();
                        proptest::prop_assert!(
                            message.contains("truncated")
                                || message.contains("not a safetensors file")
                                || message.contains("header")
                                || message.contains("tensor `")
                                || message.contains("__metadata__"),
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
    fn every_prefix_is_refused() {
        let (_dir, path) = file(GOOD, 24);
        let bytes = std::fs::read(&path).expect("read");
        for keep in 0..bytes.len() {
            std::fs::write(&path, &bytes[..keep]).expect("write");
            let error = check_safetensors(&path).expect_err("short").to_string();
            assert!(
                error.contains("truncated") || error.contains("header length"),
                "{keep}: {error}"
            );
        }
    }
}
