//! Fusing: folding adapters into the base weights.

use crate::adapter::{merged_weight, row_norms, LoraAdapters};
use crate::Result;
use ft_model::{Model, Weight};
use mlx_rs::Array;

/// The model with every adapter merged into its projection:
/// `W + s·(AB)^T` (DoRA: rescaled to the learned row norms). Quantized
/// projections are dequantized; with `keep_quantized` they are quantized
/// again with their original group size and bits, otherwise they stay dense
/// in the model's compute dtype.
pub fn fuse(model: &Model, adapters: &LoraAdapters, keep_quantized: bool) -> Result<Model> {
    let mut fused = model.clone();
    let layout = &adapters.layout;
    let scale = Array::from_f32(layout.spec.scale() as f32);
    let dtype = model.compute_dtype();
    for slot in &layout.slots {
        let (a, b) = (
            &adapters.params[slot.first],
            &adapters.params[slot.first + 1],
        );
        let linear = fused.layers[slot.layer].projection_mut(slot.projection);
        let mut merged = merged_weight(&linear.weight, a, b, &scale)?;
        if layout.spec.dora {
            let magnitude = &adapters.params[slot.first + 2];
            let factor = magnitude.divide(&row_norms(&merged)?)?;
            merged = merged.multiply(&factor.reshape(&[-1, 1])?)?;
        }
        let merged = merged.as_dtype(dtype)?;
        linear.weight = match (&linear.weight, keep_quantized) {
            (
                Weight::Quantized {
                    group_size, bits, ..
                },
                true,
            ) => Weight::Dense(merged).quantize(*group_size, *bits)?,
            _ => Weight::Dense(merged),
        };
    }
    Ok(fused)
}
