//! Tensors as the GGUF tensor table describes them: GGML types and their
//! block sizes, the description the reader returns and the one the writer
//! takes.

use std::fmt;

/// A GGML tensor type: its id in the file, its name, and how its data is
/// laid out (weights per block, bytes per block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType {
    id: u32,
    name: &'static str,
    block_weights: u64,
    block_bytes: u64,
}

const fn ggml(id: u32, name: &'static str, block_weights: u64, block_bytes: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block_weights,
        block_bytes,
    }
}

/// Every GGML type ggml defines today (ids 4, 5, 31-33 and 36-38 were
/// removed from ggml and are unknown here). Sizes from ggml's `type_traits`.
const TYPES: [GgmlType; 32] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    ggml(6, "Q5_0", 32, 22),
    ggml(7, "Q5_1", 32, 24),
    GgmlType::Q8_0,
    ggml(9, "Q8_1", 32, 36),
    ggml(10, "Q2_K", 256, 84),
    ggml(11, "Q3_K", 256, 110),
    GgmlType::Q4_K,
    ggml(13, "Q5_K", 256, 176),
    GgmlType::Q6_K,
    ggml(15, "Q8_K", 256, 292),
    ggml(16, "IQ2_XXS", 256, 66),
    ggml(17, "IQ2_XS", 256, 74),
    ggml(18, "IQ3_XXS", 256, 98),
    ggml(19, "IQ1_S", 256, 50),
    ggml(20, "IQ4_NL", 32, 18),
    ggml(21, "IQ3_S", 256, 110),
    ggml(22, "IQ2_S", 256, 82),
    ggml(23, "IQ4_XS", 256, 136),
    ggml(24, "I8", 1, 1),
    ggml(25, "I16", 1, 2),
    ggml(26, "I32", 1, 4),
    ggml(27, "I64", 1, 8),
    ggml(28, "F64", 1, 8),
    ggml(29, "IQ1_M", 256, 56),
    GgmlType::BF16,
    ggml(34, "TQ1_0", 256, 54),
    ggml(35, "TQ2_0", 256, 66),
    ggml(39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// 32-bit floats.
    pub const F32: Self = ggml(0, "F32", 1, 4);
    /// 16-bit floats.
    pub const F16: Self = ggml(1, "F16", 1, 2);
    /// 4-bit blocks of 32 with a float16 scale.
    pub const Q4_0: Self = ggml(2, "Q4_0", 32, 18);
    /// 4-bit blocks of 32 with a float16 scale and minimum.
    pub const Q4_1: Self = ggml(3, "Q4_1", 32, 20);
    /// 8-bit blocks of 32 with a float16 scale.
    pub const Q8_0: Self = ggml(8, "Q8_0", 32, 34);
    /// 4-bit k-quant super-blocks of 256.
    pub const Q4_K: Self = ggml(12, "Q4_K", 256, 144);
    /// 6-bit k-quant super-blocks of 256.
    pub const Q6_K: Self = ggml(14, "Q6_K", 256, 210);
    /// bfloat16.
    pub const BF16: Self = ggml(30, "BF16", 1, 2);

    /// The type with id `id`, `None` for an id ggml does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().copied().find(|t| t.id == id)
    }

    /// Its id in the file.
    pub fn id(self) -> u32 {
        self.id
    }

    /// ggml's name of it: `F32`, `Q4_0`, ...
    pub fn name(self) -> &'static str {
        self.name
    }

    /// Weights per block (1 for plain element types).
    pub fn block_weights(self) -> u64 {
        self.block_weights
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.block_bytes
    }

    /// Bytes of data a tensor of `dims` (GGUF order, innermost first) takes,
    /// or why such a tensor cannot exist: no dimensions or more than
    /// [`MAX_DIMS`](crate::MAX_DIMS), a zero dimension, an innermost
    /// dimension that is not a whole number of blocks, or a size that
    /// overflows.
    pub fn data_size(self, dims: &[u64]) -> Result<u64, String> {
        check_dim_count(dims.len() as u64)?;
        if let Some(axis) = dims.iter().position(|&dim| dim == 0) {
            return Err(format!("dimension {axis} is 0; expected at least 1"));
        }
        if !dims[0].is_multiple_of(self.block_weights) {
            return Err(format!(
                "its first dimension {} is not a multiple of the {} block of {} weights",
                dims[0], self.name, self.block_weights
            ));
        }
        dims.iter()
            .try_fold(1_u64, |product, &dim| product.checked_mul(dim))
            .and_then(|weights| (weights / self.block_weights).checked_mul(self.block_bytes))
            .filter(|&bytes| bytes <= i64::MAX as u64)
            .ok_or_else(|| format!("dimensions {dims:?} overflow"))
    }
}

/// Why a tensor cannot have `count` dimensions, if it cannot.
pub(crate) fn check_dim_count(count: u64) -> Result<(), String> {
    if count == 0 || count > u64::from(crate::MAX_DIMS) {
        return Err(format!(
            "{count} dimensions; GGUF allows 1 to {}",
            crate::MAX_DIMS
        ));
    }
    Ok(())
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// One tensor as a GGUF file's tensor table describes it (checked: its
/// data lies inside the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Its GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order (innermost first).
    pub dims: Vec<u64>,
    /// Its type.
    pub ggml_type: GgmlType,
    /// Start of its data, relative to the data section.
    pub offset: u64,
    /// Byte offset of its description in the file.
    pub info_offset: u64,
    /// Bytes of data it occupies.
    pub size: u64,
}

/// A tensor to write: the writer needs its name, dimensions and type for
/// the header before any data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorSpec {
    /// Its GGUF name.
    pub name: String,
    /// Dimensions in GGUF order (innermost first: the reverse of a
    /// row-major shape).
    pub dims: Vec<u64>,
    /// Its type.
    pub ggml_type: GgmlType,
}

impl GgufTensorSpec {
    /// A tensor of a row-major `shape` (outermost first, as MLX and NumPy
    /// give it).
    pub fn row_major(name: impl Into<String>, shape: &[u64], ggml_type: GgmlType) -> Self {
        Self {
            name: name.into(),
            dims: shape.iter().rev().copied().collect(),
            ggml_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_table_is_consistent() {
        let mut ids: Vec<u32> = TYPES.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), TYPES.len(), "duplicate ids");
        for t in TYPES {
            assert_eq!(GgmlType::from_id(t.id), Some(t));
            assert!(t.block_weights >= 1 && t.block_bytes >= 1, "{t}");
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 40, 99] {
            assert_eq!(GgmlType::from_id(removed), None, "{removed}");
        }
    }

    #[test]
    fn data_sizes_follow_the_blocks() {
        assert_eq!(GgmlType::F32.data_size(&[4, 2]), Ok(32));
        assert_eq!(GgmlType::Q8_0.data_size(&[64, 3]), Ok(2 * 3 * 34));
        assert_eq!(GgmlType::Q6_K.data_size(&[256]), Ok(210));
        for dims in [&[][..], &[1, 1, 1, 1, 1], &[0, 2], &[u64::MAX, 2]] {
            assert!(GgmlType::F32.data_size(dims).is_err(), "{dims:?}");
        }
        let error = GgmlType::Q4_0
            .data_size(&[48])
            .expect_err("not whole blocks");
        assert!(error.contains("Q4_0 block of 32"), "{error}");
        let spec = GgufTensorSpec::row_major("w", &[3, 2], GgmlType::F16);
        assert_eq!(spec.dims, vec![2, 3]);
    }
}
