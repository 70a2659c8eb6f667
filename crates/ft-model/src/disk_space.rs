//! Free space on a file system and sizes for people: shared by the Hub
//! downloader here and by the trainer's checkpoint writes (ft-trainer's
//! `disk` re-exports them).

use std::path::Path;

/// Bytes free to an unprivileged writer on the filesystem holding `path`
/// (its nearest existing ancestor when `path` does not exist yet); `None`
/// when the filesystem cannot say.
pub fn available_bytes(path: &Path) -> Option<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = probe.parent()?;
    }
    statvfs_available(probe)
}

#[cfg(unix)]
fn statvfs_available(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
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

#[cfg(not(unix))]
fn statvfs_available(_path: &Path) -> Option<u64> {
    None
}

/// `1.23 MB` style sizes (decimal units, as `df -H` prints them).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}
