//! MLX's `checkpoint` transform over an MLX closure that calls back into
//! Rust. The closure may run again during the backward pass, after the call
//! that built the graph has returned, so MLX owns the boxed function and
//! frees it with the graph.

use super::mlx::{new_vector, vector_values};
use mlx_rs::Array;
use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A function of arrays to arrays that reports failure as a message.
pub type ClosureFn = Box<dyn Fn(&[Array]) -> Result<Vec<Array>, String>>;

thread_local! {
    /// Why the last call of a checkpointed function failed (MLX only sees a status).
    static LAST_FAILURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Called by MLX with the closure's inputs.
///
/// # Safety
/// `payload` must be the `ClosureFn` boxed by [`apply`] and not yet
/// dropped; `input` a valid vector and `out` a valid vector pointer.
unsafe extern "C" fn trampoline(
    out: *mut mlx_sys::mlx_vector_array,
    input: mlx_sys::mlx_vector_array,
    payload: *mut c_void,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        // SAFETY: `payload` is the `ClosureFn` boxed by `apply`, alive until `drop_payload`.
        let function = unsafe { &*(payload as *const ClosureFn) };
        // SAFETY: MLX hands us a valid vector.
        let arrays = unsafe { vector_values(input) }
            .ok_or("could not read a checkpointed function's array")?;
        let outputs = function(&arrays)?;
        let fresh = new_vector(&outputs.iter().collect::<Vec<_>>());
        // SAFETY: `out` is a valid vector owned by MLX; set copies the references.
        unsafe {
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

/// Frees the boxed function when MLX drops the closure.
///
/// # Safety
/// `payload` must come from `Box::into_raw` in [`apply`]; MLX calls this once.
unsafe extern "C" fn drop_payload(payload: *mut c_void) {
    // SAFETY: see the function's contract.
    drop(unsafe { Box::from_raw(payload as *mut ClosureFn) });
}

/// Applies `mlx::core::checkpoint(function)` to `inputs`.
pub fn apply(function: ClosureFn, inputs: &[Array]) -> Result<Vec<Array>, String> {
    let payload = Box::into_raw(Box::new(function)) as *mut c_void;
    let input = new_vector(&inputs.iter().collect::<Vec<_>>());
    // SAFETY: FFI with valid handles; every handle created here is freed
    // here; MLX owns the payload from now on and frees it with `drop_payload`.
    unsafe {
        let closure =
            mlx_sys::mlx_closure_new_func_payload(Some(trampoline), payload, Some(drop_payload));
        let mut checkpointed = mlx_sys::mlx_closure_new();
        if mlx_sys::mlx_checkpoint(&mut checkpointed, closure) != 0 {
            mlx_sys::mlx_vector_array_free(input);
            mlx_sys::mlx_closure_free(checkpointed);
            mlx_sys::mlx_closure_free(closure);
            return Err("MLX could not checkpoint a function".into());
        }
        let mut output = mlx_sys::mlx_vector_array_new();
        let status = mlx_sys::mlx_closure_apply(&mut output, checkpointed, input);
        mlx_sys::mlx_vector_array_free(input);
        mlx_sys::mlx_closure_free(checkpointed);
        mlx_sys::mlx_closure_free(closure);
        let result = if status == 0 {
            vector_values(output).ok_or_else(|| "could not read a checkpointed result".into())
        } else {
            Err(LAST_FAILURE
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| "MLX failed to apply a checkpointed function".into()))
        };
        mlx_sys::mlx_vector_array_free(output);
        result
    }
}
