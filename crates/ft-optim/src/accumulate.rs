//! Gradient accumulation: sums of per-micro-batch gradients.

use crate::{OptimError, Result};
use mlx_rs::Array;

/// Sums gradients of several micro-batches. With losses that are *sums*
/// over target tokens, dividing the total by the token count of all
/// micro-batches gives exactly the gradient of the large batch.
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: Option<Vec<Array>>,
    micro_batches: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one micro-batch's gradients (same order and shapes each time).
    pub fn add(&mut self, grads: Vec<Array>) -> Result<()> {
        self.sums = Some(match self.sums.take() {
            None => grads,
            Some(sums) => {
                if sums.len() != grads.len() {
                    return Err(OptimError::Mismatch(format!(
                        "micro-batch has {} gradients, earlier ones had {}",
                        grads.len(),
                        sums.len()
                    )));
                }
                sums.iter()
                    .zip(&grads)
                    .map(|(sum, grad)| sum.add(grad))
                    .collect::<std::result::Result<_, _>>()?
            }
        });
        self.micro_batches += 1;
        Ok(())
    }

    /// Micro-batches added since the last [`take_scaled`](Self::take_scaled).
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The accumulated gradients multiplied by `factor` (e.g. one over the
    /// number of target tokens); resets the accumulator.
    pub fn take_scaled(&mut self, factor: f32) -> Result<Vec<Array>> {
        self.micro_batches = 0;
        let sums = self
            .sums
            .take()
            .ok_or_else(|| OptimError::Mismatch("no gradients were accumulated".into()))?;
        let factor = Array::from_f32(factor);
        Ok(sums
            .iter()
            .map(|sum| sum.multiply(&factor.as_dtype(sum.dtype())?))
            .collect::<std::result::Result<_, _>>()?)
    }
}
