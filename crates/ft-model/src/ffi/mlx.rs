//! MLX through mlx-c where mlx-rs has no safe wrapper: the runtime's
//! version and devices, `depends`, and the distributed group.

use crate::runtime::DeviceInfoValue;
use mlx_rs::Array;
use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};

/// The arrays of an MLX vector, each a new reference owned by an `Array`.
///
/// # Safety
/// `vector` must be a valid, live `mlx_vector_array`.
pub(super) unsafe fn vector_values(vector: mlx_sys::mlx_vector_array) -> Option<Vec<Array>> {
    // SAFETY: the caller passes a valid vector.
    let size = unsafe { mlx_sys::mlx_vector_array_size(vector) };
    (0..size)
        .map(|index| {
            // SAFETY: index < size; the new reference goes into an owning Array.
            unsafe {
                let mut raw = mlx_sys::mlx_array_new();
                if mlx_sys::mlx_vector_array_get(&mut raw, vector, index) != 0 {
                    mlx_sys::mlx_array_free(raw);
                    return None;
                }
                Some(Array::from_ptr(raw))
            }
        })
        .collect()
}

/// A new MLX vector holding references to `arrays`; the caller frees it
/// with `mlx_vector_array_free`.
pub(super) fn new_vector(arrays: &[&Array]) -> mlx_sys::mlx_vector_array {
    let pointers: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: the vector copies the (reference-counted) handles.
    unsafe { mlx_sys::mlx_vector_array_new_data(pointers.as_ptr(), pointers.len()) }
}

/// The MLX version libmlx reports, e.g. `0.32.2`.
pub fn version() -> String {
    // SAFETY: mlx_version writes an owned mlx_string that we read and free.
    unsafe {
        let mut version = mlx_sys::mlx_string_new();
        mlx_sys::mlx_version(&mut version);
        let data = mlx_sys::mlx_string_data(version);
        let text = if data.is_null() {
            String::from("unknown")
        } else {
            CStr::from_ptr(data).to_string_lossy().into_owned()
        };
        mlx_sys::mlx_string_free(version);
        text
    }
}

/// Whether MLX has a GPU backend here (Metal on a Mac, CUDA when built for it).
pub fn gpu_available() -> bool {
    // SAFETY: plain FFI; the device handle is freed before returning.
    unsafe {
        let device = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_GPU, 0);
        let mut available = false;
        let status = mlx_sys::mlx_device_is_available(&mut available, device);
        mlx_sys::mlx_device_free(device);
        status == 0 && available
    }
}

/// MLX's `device_info` of gpu:0, or the name of the call that failed.
pub fn gpu_device_info() -> Result<BTreeMap<String, DeviceInfoValue>, &'static str> {
    let mut values = BTreeMap::new();
    // SAFETY: FFI over handles created and freed here; strings copied before free.
    unsafe {
        let device = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_GPU, 0);
        let mut info = mlx_sys::mlx_device_info_new();
        let mut keys = mlx_sys::mlx_vector_string_new();
        let release = |info, keys, device| {
            mlx_sys::mlx_vector_string_free(keys);
            mlx_sys::mlx_device_info_free(info);
            mlx_sys::mlx_device_free(device);
        };
        if mlx_sys::mlx_device_info_get(&mut info, device) != 0
            || mlx_sys::mlx_device_info_get_keys(&mut keys, info) != 0
        {
            release(info, keys, device);
            return Err("mlx_device_info_get");
        }
        for index in 0..mlx_sys::mlx_vector_string_size(keys) {
            let mut raw: *mut c_char = std::ptr::null_mut();
            if mlx_sys::mlx_vector_string_get(&mut raw, keys, index) != 0 || raw.is_null() {
                continue;
            }
            let key = CStr::from_ptr(raw).to_string_lossy().into_owned();
            let mut is_string = false;
            if mlx_sys::mlx_device_info_is_string(&mut is_string, info, raw) != 0 {
                continue;
            }
            if is_string {
                let mut text: *const c_char = std::ptr::null();
                if mlx_sys::mlx_device_info_get_string(&mut text, info, raw) == 0 && !text.is_null()
                {
                    let value = CStr::from_ptr(text).to_string_lossy().into_owned();
                    values.insert(key, DeviceInfoValue::Text(value));
                }
            } else {
                let mut size: usize = 0;
                if mlx_sys::mlx_device_info_get_size(&mut size, info, raw) == 0 {
                    values.insert(key, DeviceInfoValue::Size(size as u64));
                }
            }
        }
        release(info, keys, device);
    }
    Ok(values)
}

/// `inputs` as arrays that MLX computes only after `dependency`
/// (`mlx::core::depends`); `None` when MLX refuses.
pub fn depends(inputs: &[&Array], dependency: &Array) -> Option<Vec<Array>> {
    let input_vector = new_vector(inputs);
    let dependency_vector = new_vector(&[dependency]);
    // SAFETY: the vectors hold valid handles and are freed once; the results
    // are owned by new Arrays.
    unsafe {
        let mut result = mlx_sys::mlx_vector_array_new();
        let status = mlx_sys::mlx_depends(&mut result, input_vector, dependency_vector);
        mlx_sys::mlx_vector_array_free(input_vector);
        mlx_sys::mlx_vector_array_free(dependency_vector);
        let arrays = if status == 0 {
            vector_values(result)
        } else {
            None
        };
        mlx_sys::mlx_vector_array_free(result);
        arrays
    }
}

/// An MLX distributed group handle, freed on drop.
pub struct DistributedGroup(mlx_sys::mlx_distributed_group);

impl Drop for DistributedGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from mlx_distributed_init and is freed once.
        unsafe {
            mlx_sys::mlx_distributed_group_free(self.0);
        }
    }
}

impl DistributedGroup {
    /// Whether this MLX build ships the distributed backend `name`.
    pub fn backend_available(name: &str) -> bool {
        let Ok(name) = CString::new(name) else {
            return false;
        };
        // SAFETY: a plain query with a valid NUL-terminated string.
        unsafe { mlx_sys::mlx_distributed_is_available(name.as_ptr()) }
    }

    /// Joins the group of backend `name` as the environment describes it
    /// (strict: an error instead of a group of one); `None` when MLX fails.
    pub fn init(name: &str) -> Option<Self> {
        let name = CString::new(name).ok()?;
        // SAFETY: FFI with a valid out-pointer and string; status checked.
        unsafe {
            let mut raw = mlx_sys::mlx_distributed_group_new();
            if mlx_sys::mlx_distributed_init(&mut raw, true, name.as_ptr()) != 0 {
                mlx_sys::mlx_distributed_group_free(raw);
                return None;
            }
            Some(Self(raw))
        }
    }

    /// This process's rank and the group's size.
    pub fn rank_and_size(&self) -> (i32, i32) {
        // SAFETY: queries on a valid group handle.
        unsafe {
            (
                mlx_sys::mlx_distributed_group_rank(self.0),
                mlx_sys::mlx_distributed_group_size(self.0),
            )
        }
    }

    /// The element-wise sum of `x` over the group on the CPU stream (lazy);
    /// `None` when MLX refuses.
    pub fn all_sum(&self, x: &Array) -> Option<Array> {
        // SAFETY: FFI with valid handles; the result is owned by the Array.
        unsafe {
            let stream = mlx_sys::mlx_default_cpu_stream_new();
            let mut result = mlx_sys::mlx_array_new();
            let status = mlx_sys::mlx_distributed_all_sum(&mut result, x.as_ptr(), self.0, stream);
            mlx_sys::mlx_stream_free(stream);
            if status != 0 {
                mlx_sys::mlx_array_free(result);
                return None;
            }
            Some(Array::from_ptr(result))
        }
    }
}
