//! Gradient checkpointing through MLX's own `checkpoint` transform: a
//! function whose intermediate arrays are not kept for the backward pass
//! but recomputed from its inputs when the gradient needs them. mlx-rs has
//! no safe wrapper for it, so `ffi::checkpoint` builds an MLX closure over mlx-sys.
//!
//! The function may be called again during the backward pass, after the
//! call that built the graph has returned, so it owns everything it uses
//! (`'static`); MLX frees it with the graph.

use crate::{Error, Result};
use mlx_rs::Array;

/// A function of arrays to arrays, as MLX transforms see it.
pub type ArrayFn = Box<dyn Fn(&[Array]) -> Result<Vec<Array>>>;

/// Calls `function` on `inputs` through MLX's `checkpoint`: the outputs are
/// the same, but in a gradient computation the function's intermediates are
/// recomputed instead of kept. Gradients flow to `inputs` only: arrays the
/// function captures are constants.
pub fn call(function: ArrayFn, inputs: &[Array]) -> Result<Vec<Array>> {
    // Make sure mlx-rs's error handler (which records instead of exiting) is installed.
    mlx_rs::ops::zeros::<f32>(&[1])?;
    let closure: crate::ffi::checkpoint::ClosureFn =
        Box::new(move |arrays| function(arrays).map_err(|error| error.to_string()));
    crate::ffi::checkpoint::apply(closure, inputs).map_err(Error::InvalidRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient of a checkpointed function equals the plain one.
    #[test]
    fn gradients_through_a_checkpoint_are_unchanged() -> Result<()> {
        let weight = Array::from_slice(&[0.5f32, -1.0, 2.0, 0.25], &[2, 2]);
        let x = Array::from_slice(&[1.0f32, 2.0, -3.0, 0.5], &[2, 2]);
        let body = move |inputs: &[Array]| -> Result<Vec<Array>> {
            let h = inputs[0].matmul(&weight)?;
            let h = mlx_rs::ops::tanh(&h)?.multiply(&inputs[1])?;
            Ok(vec![h.sum(None)?])
        };
        let plain = body.clone();
        let grads = |checkpointed: bool| -> Result<Vec<Array>> {
            let body = body.clone();
            let plain = plain.clone();
            let objective = move |args: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
                let result = if checkpointed {
                    call(Box::new(body.clone()), args)
                } else {
                    plain(args)
                };
                result.map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))
            };
            let scale = Array::from_slice(&[2.0f32, 3.0, 4.0, 5.0], &[2, 2]);
            let (_, grads) =
                mlx_rs::transforms::value_and_grad_with_argnums(objective, &[0, 1][..])(&[
                    x.clone(),
                    scale,
                ])?;
            Ok(grads)
        };
        let (expected, got) = (grads(false)?, grads(true)?);
        for (e, g) in expected.iter().zip(&got) {
            let diff = e.subtract(g)?.abs()?.max(None)?;
            assert!(diff.as_slice::<f32>()[0] < 1e-6, "{e:?} vs {g:?}");
        }
        Ok(())
    }
}
