//! Linear and embedding layers whose weights are dense or MLX-quantized
//! (affine, `weight`/`scales`/`biases`).

use crate::Result;
use mlx_rs::{ops, Array, Dtype};

/// A weight matrix `(out, in)`, dense or quantized along `in`.
#[derive(Clone, Debug)]
pub enum Weight {
    /// A plain matrix.
    Dense(Array),
    /// MLX affine quantization: packed `u32` values plus per-group scale and bias.
    Quantized {
        /// Packed values, shape `(out, in * bits / 32)`.
        weight: Array,
        /// Per-group scales, shape `(out, in / group_size)`.
        scales: Array,
        /// Per-group biases, shape `(out, in / group_size)`.
        biases: Array,
        /// Columns per group.
        group_size: i32,
        /// Bits per value (4 or 8).
        bits: i32,
    },
}

impl Weight {
    /// Builds a quantized weight, inferring bits and group size from the
    /// shapes (`in_features` is known from the architecture).
    pub fn quantized_from_parts(
        weight: Array,
        scales: Array,
        biases: Array,
        in_features: i32,
    ) -> std::result::Result<Self, String> {
        let packed = *weight.shape().last().unwrap_or(&0);
        let groups = *scales.shape().last().unwrap_or(&0);
        if packed <= 0 || groups <= 0 || in_features % groups != 0 {
            return Err(format!(
                "quantized shapes {:?} / {:?} do not fit {in_features} input features",
                weight.shape(),
                scales.shape()
            ));
        }
        let bits = packed * 32 / in_features;
        if packed * 32 != bits * in_features || ![2, 3, 4, 5, 6, 8].contains(&bits) {
            return Err(format!(
                "packed width {packed} does not give a whole number of bits for {in_features} features"
            ));
        }
        Ok(Self::Quantized {
            weight,
            scales,
            biases,
            group_size: in_features / groups,
            bits,
        })
    }

    /// Quantizes a dense weight (no-op for an already quantized one).
    pub fn quantize(&self, group_size: i32, bits: i32) -> Result<Self> {
        match self {
            Self::Dense(weight) => {
                let (weight, scales, biases) = ops::quantize(weight, group_size, bits)?;
                Ok(Self::Quantized {
                    weight,
                    scales,
                    biases,
                    group_size,
                    bits,
                })
            }
            quantized => Ok(quantized.clone()),
        }
    }

    /// The weight as a dense `(out, in)` matrix of `dtype`.
    pub fn dense(&self, dtype: Dtype) -> Result<Array> {
        Ok(match self {
            Self::Dense(weight) => weight.as_dtype(dtype)?,
            Self::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => ops::dequantize(weight, scales, biases, *group_size, *bits)?.as_dtype(dtype)?,
        })
    }

    /// `x @ W^T`.
    pub fn apply(&self, x: &Array) -> Result<Array> {
        Ok(match self {
            Self::Dense(weight) => x.matmul(weight.t())?,
            Self::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => ops::quantized_matmul(x, weight, scales, biases, true, *group_size, *bits)?,
        })
    }

    /// Rows `ids` of the matrix, dequantized (an embedding lookup).
    pub fn rows(&self, ids: &Array) -> Result<Array> {
        Ok(match self {
            Self::Dense(weight) => weight.take_axis(ids, 0)?,
            Self::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => ops::dequantize(
                weight.take_axis(ids, 0)?,
                scales.take_axis(ids, 0)?,
                &biases.take_axis(ids, 0)?,
                *group_size,
                *bits,
            )?,
        })
    }

    /// Output features (rows).
    pub fn out_features(&self) -> i32 {
        match self {
            Self::Dense(weight) | Self::Quantized { weight, .. } => weight.shape()[0],
        }
    }

    /// Number of values the matrix holds (`out * in`; a quantized weight
    /// counts its unpacked values).
    pub fn parameters(&self) -> u64 {
        let rows = self.out_features() as u64;
        let columns = match self {
            Self::Dense(weight) => weight.shape()[1] as u64,
            Self::Quantized { weight, bits, .. } => weight.shape()[1] as u64 * 32 / *bits as u64,
        };
        rows * columns
    }

    /// The arrays that make up this weight, with their key suffixes.
    pub fn named_parts(&self) -> Vec<(&'static str, &Array)> {
        match self {
            Self::Dense(weight) => vec![("weight", weight)],
            Self::Quantized {
                weight,
                scales,
                biases,
                ..
            } => vec![("weight", weight), ("scales", scales), ("biases", biases)],
        }
    }

    /// Whether this weight is quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quantized { .. })
    }

    /// Casts a dense weight (quantized ones keep their scales' dtype).
    pub fn with_dtype(&self, dtype: Dtype) -> Result<Self> {
        Ok(match self {
            Self::Dense(weight) => Self::Dense(weight.as_dtype(dtype)?),
            Self::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => Self::Quantized {
                weight: weight.clone(),
                scales: scales.as_dtype(dtype)?,
                biases: biases.as_dtype(dtype)?,
                group_size: *group_size,
                bits: *bits,
            },
        })
    }
}

/// A linear layer without bias (the Llama family has none).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)` weight.
    pub weight: Weight,
}

impl Linear {
    /// `x @ W^T`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        self.weight.apply(x)
    }
}
