//! Global-norm gradient clipping.

use crate::Result;
use mlx_rs::{ops, Array};

/// The L2 norm of all gradients together, as a scalar array (not evaluated).
pub fn global_norm(grads: &[Array]) -> Result<Array> {
    let mut total = Array::from_f32(0.0);
    for grad in grads {
        let squares = grad.as_dtype(mlx_rs::Dtype::Float32)?.square()?.sum(None)?;
        total = total.add(&squares)?;
    }
    Ok(total.sqrt()?)
}

/// Scales `grads` so that their global norm is at most `max_norm` and
/// returns the norm before clipping. `max_norm <= 0` disables clipping.
/// Everything stays lazy: no evaluation, no host round-trip.
pub fn clip_by_global_norm(grads: &mut [Array], max_norm: f64) -> Result<Array> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let limit = Array::from_f32(max_norm as f32);
        let factor = ops::minimum(
            Array::from_f32(1.0),
            &limit.divide(&norm.add(Array::from_f32(1e-6))?)?,
        )?;
        for grad in grads.iter_mut() {
            *grad = grad.multiply(&factor.as_dtype(grad.dtype())?)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_limit_and_reports_the_norm() {
        let mut grads = vec![
            Array::from_slice(&[3.0f32, 0.0], &[2]),
            Array::from_slice(&[0.0f32, 4.0], &[1, 2]),
        ];
        let norm = clip_by_global_norm(&mut grads, 1.0).expect("clip");
        assert!((norm.item_exact::<f32>() - 5.0).abs() < 1e-6);
        let after = global_norm(&grads).expect("norm").item_exact::<f32>();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
    }

    #[test]
    fn small_gradients_are_left_alone() {
        let mut grads = vec![Array::from_slice(&[0.3f32, 0.4], &[2])];
        clip_by_global_norm(&mut grads, 1.0).expect("clip");
        assert_eq!(grads[0].as_slice::<f32>(), &[0.3, 0.4]);
    }
}
