//! Which GGUF files MLX's reader can take, checked in Rust before it sees
//! one. MLX reads GGUF through gguflib, which maps the file and trusts
//! every count, length, type and offset in it: a truncated or corrupt file
//! makes it read past the mapping (a segfault) or index its type table out
//! of bounds. `ft-gguf` reads the whole structure and checks each of them
//! against the file's length (errors name the byte offset); on top of
//! that, this module refuses what is valid GGUF but not for gguflib:
//! nested lists, another alignment than 32, tensor types MLX does not
//! convert, dimensions beyond MLX's 32-bit shapes.

use crate::{Error, Result};
use ft_gguf::{GgmlType, GgufLayout, GgufValue};
use std::path::Path;

/// gguflib ignores `general.alignment` (it looks for a misspelt key) and
/// always aligns the data section to 32 bytes.
const MLX_ALIGNMENT: u64 = 32;

/// GGML tensor types MLX's GGUF loader converts.
pub const MLX_GGML_TYPES: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Reads and checks the layout of the GGUF file at `path`: header, every
/// metadata entry, every tensor description, that every tensor's data lies
/// inside the file, and that MLX's reader can take all of it.
pub fn read_layout(path: &Path) -> Result<GgufLayout> {
    let layout = GgufLayout::read_file(path)?;
    check_for_mlx(path, &layout)?;
    Ok(layout)
}

/// What valid GGUF MLX's reader cannot take, located like `ft-gguf`'s errors.
fn check_for_mlx(path: &Path, layout: &GgufLayout) -> Result<()> {
    let refuse = |offset: Option<u64>, message: String| Error::Weights {
        path: path.to_path_buf(),
        message: format!("at offset {}: {message}", offset.unwrap_or(0)),
    };
    let metadata = &layout.metadata;
    if layout.alignment != MLX_ALIGNMENT {
        return Err(refuse(
            metadata.offset_of("general.alignment"),
            format!(
                "general.alignment is {}: MLX's reader only handles the default alignment of \
                 {MLX_ALIGNMENT} bytes",
                layout.alignment
            ),
        ));
    }
    for (key, value) in &metadata.kv {
        let items = value.as_array().unwrap_or_default();
        if items.iter().any(|item| matches!(item, GgufValue::Array(_))) {
            return Err(refuse(
                metadata.offset_of(key),
                format!("metadata `{key}` (nested arrays are not supported by MLX's reader)"),
            ));
        }
    }
    for tensor in &layout.tensors {
        let name = &tensor.name;
        let offset = Some(tensor.info_offset);
        if !MLX_GGML_TYPES.contains(&tensor.ggml_type) {
            let supported: Vec<&str> = MLX_GGML_TYPES.iter().map(|t| t.name()).collect();
            return Err(refuse(
                offset,
                format!(
                    "tensor `{name}` has GGML type {} ({}), which MLX cannot load \
                     (supported: {})",
                    tensor.ggml_type.id(),
                    tensor.ggml_type,
                    supported.join(", ")
                ),
            ));
        }
        if let Some((axis, dim)) =
            (tensor.dims.iter().enumerate()).find(|(_, &dim)| dim > i32::MAX as u64)
        {
            return Err(refuse(
                offset,
                format!(
                    "tensor `{name}`: dimension {axis} is {dim}; MLX's shapes take 1 to {}",
                    i32::MAX
                ),
            ));
        }
    }
    Ok(())
}

/// gguflib opens the file read-write (and maps it shared): a read-only file
/// would fail there with no reason given, so say it here.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
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
    use std::path::PathBuf;

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

    /// Valid GGUF that gguflib would misread is refused, located.
    #[test]
    fn what_mlx_cannot_take_is_refused_with_an_offset() {
        let sample = sample_gguf();
        let layout = GgufLayout::read(sample.as_slice(), sample.len() as u64).expect("valid");
        let info = |name: &str| layout.tensor(name).expect("tensor").info_offset as usize;
        let refused = |bytes: &[u8], expected: &str| {
            let (_dir, path) = write(bytes);
            let error = read_layout(&path).expect_err(expected).to_string();
            assert!(
                error.contains("at offset") && error.contains(expected),
                "{error}"
            );
        };

        // IQ4_NL (type 20, blocks of 32 in 18 bytes, like Q4_0) is GGUF,
        // but not a type MLX converts.
        let mut bytes = sample.clone();
        let type_at = info("c.weight") + 8 + "c.weight".len() + 4 + 8;
        bytes[type_at..type_at + 4].copy_from_slice(&20_u32.to_le_bytes());
        refused(&bytes, "GGML type 20 (IQ4_NL), which MLX cannot load");

        // A dimension past i32::MAX (no file: its data would take 8 GiB).
        let wide = ft_gguf::GgufTensorInfo {
            dims: vec![1 << 31, 1],
            ..layout.tensors[0].clone()
        };
        let error = check_for_mlx(
            Path::new("m.gguf"),
            &GgufLayout {
                tensors: vec![wide],
                ..layout.clone()
            },
        )
        .expect_err("too wide")
        .to_string();
        assert!(
            error.contains("MLX's shapes take 1 to 2147483647"),
            "{error}"
        );

        // A list of lists in the metadata.
        let bytes = gguf(&[
            b"GGUF",
            &3_u32.to_le_bytes(),
            &0_u64.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &string("k"),
            &9_u32.to_le_bytes(),
            &9_u32.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &0_u32.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &[7],
        ]);
        refused(
            &bytes,
            "metadata `k` (nested arrays are not supported by MLX's reader)",
        );

        // Another alignment than gguflib's 32.
        let mut bytes = gguf(&[
            b"GGUF",
            &3_u32.to_le_bytes(),
            &0_u64.to_le_bytes(),
            &1_u64.to_le_bytes(),
            &string("general.alignment"),
            &4_u32.to_le_bytes(),
            &64_u32.to_le_bytes(),
        ]);
        bytes.resize(64, 0);
        refused(&bytes, "general.alignment is 64");
    }
}
