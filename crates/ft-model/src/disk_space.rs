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
    crate::ffi::os::statvfs_available(probe)
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
