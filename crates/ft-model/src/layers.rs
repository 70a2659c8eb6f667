//! Linear and embedding layers whose weights are dense or MLX-quantized
//! (affine, `weight`/`scales`/`biases`).

use crate::Result;
use mlx_rs::{ops, Array, Dtype};
use std::sync::atomic::{AtomicU8, Ordering};

/// How products with quantized or half-precision weights are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatmulPath {
    /// MLX's own kernels (`quantized_matmul`, the bf16/f16 GEMM): the fast
    /// ones on Metal and CUDA.
    Native,
    /// The weight expanded to float32 right before the product, which then
    /// goes to the BLAS. On MLX's CPU backend the quantized and bf16 kernels
    /// are single-threaded and 10-30x slower than OpenBLAS on float32. The
    /// float32 copy lives only while its product runs (with gradient
    /// checkpointing, also while its layer is recomputed for the backward).
    ExpandToFloat32,
}

impl MatmulPath {
    /// Its name in logs and `ft doctor`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Native => "MLX kernels (quantized/bf16 weights multiplied as stored)",
            Self::ExpandToFloat32 => {
                "float32 expansion (quantized/bf16 weights widened per product, BLAS GEMM)"
            }
        }
    }
}

/// `inputs` as MLX arrays that are computed only after `dependency`.
fn depends(inputs: &[&Array], dependency: &Array) -> Result<Vec<Array>> {
    crate::ffi::mlx::depends(inputs, dependency)
        .ok_or_else(|| crate::Error::InvalidRequest("mlx_depends failed".into()))
}

/// The fewest rows of `x` for which [`MatmulPath::ExpandToFloat32`] widens
/// the weight: below it, widening costs more than the product saves.
pub const MIN_EXPANDED_ROWS: i32 = 16;

/// 0: not decided yet; 1: native; 2: expand.
static MATMUL_PATH: AtomicU8 = AtomicU8::new(0);

/// The path this process uses: set by [`set_matmul_path`], else from
/// `FT_MATMUL_PATH` (`native`, `fp32`), else float32 expansion when MLX's
/// default device is the CPU and MLX's kernels everywhere else.
pub fn matmul_path() -> MatmulPath {
    match MATMUL_PATH.load(Ordering::Relaxed) {
        1 => return MatmulPath::Native,
        2 => return MatmulPath::ExpandToFloat32,
        _ => {}
    }
    let chosen = match std::env::var("FT_MATMUL_PATH").as_deref() {
        Ok("native") => MatmulPath::Native,
        Ok("fp32") => MatmulPath::ExpandToFloat32,
        _ => {
            let on_cpu = mlx_rs::Device::try_default()
                .and_then(|device| device.get_type())
                .is_ok_and(|kind| matches!(kind, mlx_rs::DeviceType::Cpu));
            if on_cpu {
                MatmulPath::ExpandToFloat32
            } else {
                MatmulPath::Native
            }
        }
    };
    set_matmul_path(chosen);
    chosen
}

/// Chooses the path for the rest of the process (the trainer picks
/// [`MatmulPath::Native`] for training without gradient checkpointing,
/// where every layer's float32 copy would be kept for the backward pass).
pub fn set_matmul_path(path: MatmulPath) {
    let code = match path {
        MatmulPath::Native => 1,
        MatmulPath::ExpandToFloat32 => 2,
    };
    MATMUL_PATH.store(code, Ordering::Relaxed);
}

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
            } => {
                // Scales in the target dtype: MLX then dequantizes straight
                // into it. Dequantizing in the scales' bf16 and widening
                // after costs a second copy and rounds every value to bf16
                // (measured on a 4-layer Mistral-width QLoRA step: 0.78 GB
                // lower peak and 30% faster this way).
                ops::dequantize(
                    weight,
                    scales.as_dtype(dtype)?,
                    &biases.as_dtype(dtype)?,
                    *group_size,
                    *bits,
                )?
            }
        })
    }

    /// Whether [`MatmulPath::ExpandToFloat32`] changes this weight's product.
    fn expands(&self) -> bool {
        match self {
            Self::Dense(weight) => weight.dtype() != Dtype::Float32,
            Self::Quantized { .. } => true,
        }
    }

    /// `x @ W^T`, by the process's [`matmul_path`]. Products of fewer than
    /// [`MIN_EXPANDED_ROWS`] rows (token-by-token generation) keep MLX's
    /// kernels: widening the weight would cost more than the product.
    pub fn apply(&self, x: &Array) -> Result<Array> {
        let rows: i32 = x.shape().iter().rev().skip(1).product();
        if rows >= MIN_EXPANDED_ROWS
            && self.expands()
            && matmul_path() == MatmulPath::ExpandToFloat32
        {
            // Widen only once `x` exists: otherwise MLX may schedule every
            // layer's widening (which depends on constants alone) early and
            // hold many float32 copies at once.
            let wide = self.after(x)?.dense(Dtype::Float32)?;
            let product = x.as_dtype(Dtype::Float32)?.matmul(wide.t())?;
            // The dtype MLX's own product would have given.
            let out_dtype = match self {
                Self::Dense(weight) if weight.dtype() != x.dtype() => Dtype::Float32,
                _ => x.dtype(),
            };
            return Ok(if out_dtype == Dtype::Float32 {
                product
            } else {
                product.as_dtype(out_dtype)?
            });
        }
        self.apply_native(x)
    }

    /// The same weight, whose arrays MLX computes only after `dependency`
    /// (`mlx::core::depends`; gradients pass through unchanged).
    fn after(&self, dependency: &Array) -> Result<Self> {
        let parts: Vec<&Array> = self.named_parts().into_iter().map(|(_, a)| a).collect();
        let mut ordered = depends(&parts, dependency)?.into_iter();
        let mut next = || {
            ordered.next().ok_or_else(|| {
                crate::Error::InvalidRequest("mlx_depends returned fewer arrays".into())
            })
        };
        Ok(match self {
            Self::Dense(_) => Self::Dense(next()?),
            Self::Quantized {
                group_size, bits, ..
            } => Self::Quantized {
                weight: next()?,
                scales: next()?,
                biases: next()?,
                group_size: *group_size,
                bits: *bits,
            },
        })
    }

    /// `x @ W^T` with MLX's kernels for the stored form.
    pub fn apply_native(&self, x: &Array) -> Result<Array> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    fn max_relative_diff(a: &Array, b: &Array) -> f32 {
        let a = a.as_dtype(Dtype::Float32).expect("cast");
        let b = b.as_dtype(Dtype::Float32).expect("cast");
        let scale = a
            .abs()
            .expect("abs")
            .max(None)
            .expect("max")
            .item_exact::<f32>();
        let diff = a
            .subtract(&b)
            .expect("sub")
            .abs()
            .expect("abs")
            .max(None)
            .expect("max")
            .item_exact::<f32>();
        diff / scale.max(1e-12)
    }

    fn inputs(dtype: Dtype) -> (Array, Array) {
        let key = random::key(5).expect("key");
        let (kw, kx) = random::split(&key, 2).expect("split");
        let w = random::normal::<f32>(&[64, 128][..], None, None, &kw).expect("w");
        let x = random::normal::<f32>(&[2, 12, 128][..], None, None, &kx).expect("x");
        (w.as_dtype(dtype).expect("w"), x.as_dtype(dtype).expect("x"))
    }

    #[test]
    fn float32_expansion_matches_mlx_kernels_for_quantized_and_bf16_weights() {
        set_matmul_path(MatmulPath::ExpandToFloat32);
        for dtype in [Dtype::Float32, Dtype::Bfloat16] {
            let (w, x) = inputs(dtype);
            for weight in [
                Weight::Dense(w.clone()),
                Weight::Dense(w.clone()).quantize(32, 4).expect("q4"),
                Weight::Dense(w.clone()).quantize(64, 8).expect("q8"),
            ] {
                let native = weight.apply_native(&x).expect("native");
                let widened = weight.apply(&x).expect("expanded");
                assert_eq!(widened.dtype(), native.dtype(), "{dtype:?}");
                assert_eq!(widened.shape(), native.shape());
                // Against the exact product of the stored values in float32:
                // the expansion is at least as close as MLX's own kernel
                // (whose bf16 quantized product rounds along the way).
                let exact = x
                    .as_dtype(Dtype::Float32)
                    .expect("x")
                    .matmul(weight.dense(Dtype::Float32).expect("dense").t())
                    .expect("exact");
                let (ours, mlx) = (
                    max_relative_diff(&exact, &widened),
                    max_relative_diff(&exact, &native),
                );
                let tolerance = if dtype == Dtype::Float32 { 1e-5 } else { 8e-3 };
                assert!(
                    ours < tolerance && ours <= mlx + 1e-6,
                    "{dtype:?} quantized {}: expansion {ours}, MLX kernel {mlx}",
                    weight.is_quantized()
                );
            }
        }
    }

    #[test]
    fn float32_expansion_gives_the_same_input_gradient() {
        set_matmul_path(MatmulPath::ExpandToFloat32);
        let (w, x) = inputs(Dtype::Float32);
        let weight = Weight::Dense(w).quantize(32, 4).expect("q4");
        let gradient = |expand: bool| {
            let weight = weight.clone();
            let loss = move |inputs: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
                let y = if expand {
                    weight.apply(&inputs[0])
                } else {
                    weight.apply_native(&inputs[0])
                }
                .map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
                Ok(vec![y.square()?.sum(None)?])
            };
            let (_, grads) =
                mlx_rs::transforms::value_and_grad(loss)(std::slice::from_ref(&x)).expect("grad");
            grads[0].clone()
        };
        let diff = max_relative_diff(&gradient(false), &gradient(true));
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn short_products_keep_mlx_kernels() {
        set_matmul_path(MatmulPath::ExpandToFloat32);
        let (w, _) = inputs(Dtype::Float32);
        let weight = Weight::Dense(w).quantize(32, 4).expect("q4");
        let one_token = random::normal::<f32>(&[1, 1, 128][..], None, None, None).expect("x");
        let expected = weight.apply_native(&one_token).expect("native");
        let got = weight.apply(&one_token).expect("apply");
        assert_eq!(max_relative_diff(&expected, &got), 0.0);
    }

    #[test]
    fn the_path_can_be_chosen() {
        set_matmul_path(MatmulPath::Native);
        assert_eq!(matmul_path(), MatmulPath::Native);
        set_matmul_path(MatmulPath::ExpandToFloat32);
        assert_eq!(matmul_path(), MatmulPath::ExpandToFloat32);
        assert!(MatmulPath::ExpandToFloat32.describe().contains("BLAS"));
    }
}
