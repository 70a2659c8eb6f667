//! The operating system: memory size, free disk space, and symbols of the
//! libraries loaded into the process (which BLAS MLX calls, and its thread
//! count).

use std::ffi::{c_char, CStr, CString};
use std::path::Path;

/// Physical memory of the machine in bytes (`sysconf`, Linux and macOS).
pub fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page_size > 0).then(|| pages as u64 * page_size as u64)
}

/// CPU time of this process so far, all threads, user and system (`getrusage`).
pub fn process_cpu_time() -> std::time::Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes the whole struct it is given when it returns 0.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return std::time::Duration::ZERO;
    }
    // SAFETY: initialized by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        std::time::Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Bytes available to an unprivileged user on the file system holding
/// `path` (`statvfs`); `None` when it cannot be asked.
#[cfg(unix)]
pub fn statvfs_available(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stats` is a valid out-pointer
    // that statvfs fully initializes when it returns 0.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if status != 0 {
        return None;
    }
    // SAFETY: initialized by the successful call above.
    let stats = unsafe { stats.assume_init() };
    // The field types differ between platforms (u32 on macOS, u64 on Linux).
    #[allow(clippy::unnecessary_cast)]
    let bytes = (stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64);
    Some(bytes)
}

/// Not asked on platforms without `statvfs`.
#[cfg(not(unix))]
pub fn statvfs_available(_path: &Path) -> Option<u64> {
    None
}

/// The address of a symbol in any library loaded into the process.
fn symbol_address(symbol: &str) -> Option<*mut libc::c_void> {
    let name = CString::new(symbol).ok()?;
    // SAFETY: dlsym with RTLD_DEFAULT searches the global scope; no unload.
    let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!address.is_null()).then_some(address)
}

/// The address of the first of `symbols` that a loaded library defines.
fn first_symbol(symbols: &[&str]) -> Option<*mut libc::c_void> {
    symbols.iter().find_map(|symbol| symbol_address(symbol))
}

/// The file of the loaded library that defines `symbol` (canonical path).
pub fn library_defining(symbol: &str) -> Option<String> {
    let address = symbol_address(symbol)?;
    // SAFETY: dladdr fills `info` for an address inside a loaded object.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(address, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let path = CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned();
        Some(std::fs::canonicalize(&path).map_or(path, |p| p.display().to_string()))
    }
}

/// Calls the first of `symbols` that is loaded, a `const char *f(void)`
/// returning a static string (OpenBLAS's `*_get_config`, `*_get_corename`).
pub fn call_string_getter(symbols: &[&str]) -> Option<String> {
    let address = first_symbol(symbols)?;
    // SAFETY: the callers name only getters of that signature that return a
    // static NUL-terminated string.
    unsafe {
        let getter: extern "C" fn() -> *const c_char = std::mem::transmute(address);
        let text = getter();
        (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().trim().to_string())
    }
}

/// Calls the first of `symbols` that is loaded, an `int f(void)`
/// (OpenBLAS's `*_get_num_threads`).
pub fn call_int_getter(symbols: &[&str]) -> Option<i32> {
    let address = first_symbol(symbols)?;
    // SAFETY: the callers name only getters that take no arguments and return an int.
    let getter: extern "C" fn() -> libc::c_int = unsafe { std::mem::transmute(address) };
    Some(getter())
}

/// Calls the first of `symbols` that is loaded, a `void f(int)` (OpenBLAS's
/// `*_set_num_threads`); `false` when none is.
pub fn call_int_setter(symbols: &[&str], value: i32) -> bool {
    let Some(address) = first_symbol(symbols) else {
        return false;
    };
    // SAFETY: the callers name only setters that take one int and return nothing.
    let setter: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(address) };
    setter(value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu_time();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(process_cpu_time() > before);
    }

    #[test]
    fn memory_and_disk_are_reported() {
        assert!(physical_memory().is_some_and(|bytes| bytes > 1 << 28));
        assert!(statvfs_available(Path::new(".")).is_some());
        assert_eq!(statvfs_available(Path::new("/no/such/dir/anywhere")), None);
    }

    #[test]
    fn symbols_are_found_in_loaded_libraries() {
        // libc is always loaded; a made-up name never is.
        assert!(library_defining("malloc").is_some());
        assert_eq!(library_defining("ft_no_such_symbol_anywhere"), None);
        assert_eq!(call_int_getter(&["ft_no_such_symbol_anywhere"]), None);
        assert!(!call_int_setter(&["ft_no_such_symbol_anywhere"], 1));
    }
}
