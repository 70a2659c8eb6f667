//! Gradient checkpointing through MLX's own `checkpoint` transform: a
//! function whose intermediate arrays are not kept for the backward pass
//! but recomputed from its inputs when the gradient needs them. mlx-rs has
//! no safe wrapper for it, so this builds an MLX closure over mlx-sys.
//!
//! The function may be called again during the backward pass, after the
//! call that built the graph has returned, so it owns everything it uses
//! (`'static`); MLX frees it with the graph.

use crate::{Error, Result};
use mlx_rs::Array;
use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A function of arrays to arrays, as MLX transforms see it.
pub type ArrayFn = Box<dyn Fn(&[Array]) -> Result<Vec<Array>>>;

thread_local! {
    /// Why the last call of a checkpointed function failed (MLX only sees a status).
    static LAST_FAILURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

unsafe extern "C" fn trampoline(
    out: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| -> std::result::Result<(), String> {
        // SAFETY: `payload` is the `ArrayFn` boxed by `call`, alive until `drop_payload`.
        let function = unsafe { &*(payload as *const ArrayFn) };
        // SAFETY: reading a vector MLX hands us; each element is a new reference we own.
        let arrays = unsafe { vector_values(input) }.map_err(|e| e.to_string())?;
        let outputs = function(&arrays).map_err(|e| e.to_string())?;
        let pointers: Vec<mlx_sys::mlx_array> = outputs.iter().map(Array::as_ptr).collect();
        // SAFETY: `out` is a valid vector owned by MLX; set copies the references.
        unsafe {
            let fresh = mlx_sys::mlx_vector_array_new_data(pointers.as_ptr(), pointers.len());
            mlx_sys::mlx_vector_array_set(out, fresh);
            mlx_sys::mlx_vector_array_free(fresh);
        }
        Ok(())
    }));
    let failure = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(message)) => message,
        Err(_) => "a checkpointed function panicked".to_string(),
    };
    LAST_FAILURE.with(|last| *last.borrow_mut() = Some(failure));
    1
}

unsafe extern "C" fn drop_payload(payload: *mut c_void) {
    // SAFETY: created by Box::into_raw in `call`; MLX calls this once.
    drop(unsafe { Box::from_raw(payload as *mut ArrayFn) });
}

/// The arrays of an MLX vector (each a new reference).
unsafe fn vector_values(vector: mlx_sys::mlx_vector_array) -> Result<Vec<Array>> {
    // SAFETY: the caller passes a valid vector.
    let size = unsafe { mlx_sys::mlx_vector_array_size(vector) };
    (0..size)
        .map(|index| {
            // SAFETY: index < size; the new reference goes into an owning Array.
            unsafe {
                let mut raw = mlx_sys::mlx_array_new();
                if mlx_sys::mlx_vector_array_get(&mut raw, vector, index) != 0 {
                    mlx_sys::mlx_array_free(raw);
                    return Err(Error::InvalidRequest(
                        "could not read a checkpointed function's array".into(),
                    ));
                }
                Ok(Array::from_ptr(raw))
            }
        })
        .collect()
}

/// Calls `function` on `inputs` through MLX's `checkpoint`: the outputs are
/// the same, but in a gradient computation the function's intermediates are
/// recomputed instead of kept. Gradients flow to `inputs` only: arrays the
/// function captures are constants.
pub fn call(function: ArrayFn, inputs: &[Array]) -> Result<Vec<Array>> {
    // Make sure mlx-rs's error handler (which records instead of exiting) is installed.
    mlx_rs::ops::zeros::<f32>(&[1])?;
    let payload = Box::into_raw(Box::new(function)) as *mut c_void;
    // SAFETY: FFI with valid handles; every handle created here is freed
    // here; MLX owns the payload from now on and frees it with `drop_payload`.
    unsafe {
        let closure =
            mlx_sys::mlx_closure_new_func_payload(Some(trampoline), payload, Some(drop_payload));
        let mut checkpointed = mlx_sys::mlx_closure_new();
        if mlx_sys::mlx_checkpoint(&mut checkpointed, closure) != 0 {
            mlx_sys::mlx_closure_free(checkpointed);
            mlx_sys::mlx_closure_free(closure);
            return Err(Error::InvalidRequest(
                "MLX could not checkpoint a function".into(),
            ));
        }
        let pointers: Vec<mlx_sys::mlx_array> = inputs.iter().map(Array::as_ptr).collect();
        let input = mlx_sys::mlx_vector_array_new_data(pointers.as_ptr(), pointers.len());
        let mut output = mlx_sys::mlx_vector_array_new();
        let status = mlx_sys::mlx_closure_apply(&mut output, checkpointed, input);
        mlx_sys::mlx_vector_array_free(input);
        mlx_sys::mlx_closure_free(checkpointed);
        mlx_sys::mlx_closure_free(closure);
        let result = if status == 0 {
            vector_values(output)
        } else {
            let why = LAST_FAILURE
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| "MLX failed to apply a checkpointed function".into());
            Err(Error::InvalidRequest(why))
        };
        mlx_sys::mlx_vector_array_free(output);
        result
    }
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
