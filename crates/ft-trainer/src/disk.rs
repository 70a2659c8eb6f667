//! Disk space: free-space checks before the run directory grows, and the
//! typed [`TrainError::DiskFull`] that both a failed check and an
//! out-of-space write (ENOSPC, EDQUOT) become.

use crate::TrainError;
use std::path::{Path, PathBuf};

/// Bytes that writing files of `payload` bytes can take on disk beyond the
/// payload: safetensors headers, small JSON/TOML files and block rounding.
pub(crate) const OVERHEAD_BYTES: u64 = 64 * 1024;

pub use ft_model::disk_space::{available_bytes, human_bytes};

/// Fails with [`TrainError::DiskFull`] naming `target` when the filesystem
/// of `disk` has fewer than `needed` bytes free (an unknown amount passes).
pub(crate) fn ensure_space(disk: &Path, target: &Path, needed: u64) -> Result<(), TrainError> {
    match available_bytes(disk) {
        Some(available) if available < needed => Err(TrainError::DiskFull {
            path: target.to_path_buf(),
            needed: Some(needed),
            available: Some(available),
        }),
        _ => Ok(()),
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(crate) fn is_out_of_space(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }
    #[cfg(not(unix))]
    {
        error.kind() == std::io::ErrorKind::StorageFull
    }
}

/// The error for a write of `needed` bytes to `path` that failed with
/// `error`: [`TrainError::DiskFull`] when the disk is out of space (an
/// ENOSPC/EDQUOT I/O error, or a failure, e.g. inside MLX, while fewer than
/// `needed` bytes are free), else `error` itself. Call it before removing
/// what the failed write left, so the free space is still as the write saw it.
pub(crate) fn classify_write_failure(
    error: TrainError,
    path: &Path,
    needed: u64,
    available: Option<u64>,
) -> TrainError {
    let out_of_space = match &error {
        TrainError::DiskFull { .. } => return error,
        TrainError::Io { source, .. } => is_out_of_space(source),
        TrainError::Lora(ft_lora::LoraError::Io { source, .. }) => is_out_of_space(source),
        _ => false,
    };
    if out_of_space || available.is_some_and(|free| free < needed) {
        TrainError::DiskFull {
            path: path.to_path_buf(),
            needed: Some(needed),
            available,
        }
    } else {
        error
    }
}

/// The message of [`TrainError::DiskFull`].
pub(crate) fn disk_full_message(
    path: &Path,
    needed: Option<u64>,
    available: Option<u64>,
) -> String {
    let need = match needed {
        Some(bytes) => format!("needs about {} ({bytes} bytes)", human_bytes(bytes)),
        None => "needs more space than is left".into(),
    };
    let free = match available {
        Some(bytes) => format!("{} ({bytes} bytes) free", human_bytes(bytes)),
        None => "free space unknown".into(),
    };
    format!(
        "not enough disk space for {}: it {need}, the disk has {free}. The checkpoints written \
         before are intact; free some space (or set checkpoint.output_dir to a larger disk) and \
         resume",
        path.display()
    )
}

/// A path for [`TrainError::DiskFull`] built from an owned or borrowed path.
pub(crate) fn disk_full(path: impl Into<PathBuf>, needed: Option<u64>) -> TrainError {
    let path = path.into();
    let available = available_bytes(&path);
    TrainError::DiskFull {
        path,
        needed,
        available,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_directory_has_a_known_amount_of_free_space() {
        let dir = std::env::temp_dir();
        assert!(available_bytes(&dir).is_some());
        // A path that does not exist yet is measured on its nearest ancestor.
        assert_eq!(
            available_bytes(&dir.join("no/such/dir")).map(|b| b > 0),
            available_bytes(&dir).map(|b| b > 0)
        );
    }

    #[test]
    fn a_check_for_more_than_the_disk_holds_names_the_path_and_the_bytes() {
        let dir = std::env::temp_dir();
        let target = dir.join("step-000001");
        let error = ensure_space(&dir, &target, u64::MAX).expect_err("too much");
        let text = error.to_string();
        assert!(text.contains("not enough disk space"), "{text}");
        assert!(text.contains(&target.display().to_string()), "{text}");
        assert!(text.contains(&format!("({} bytes)", u64::MAX)), "{text}");
        ensure_space(&dir, &target, 1).expect("one byte fits");
    }

    #[test]
    fn failed_writes_become_disk_full_only_when_space_ran_out() {
        let path = Path::new("/run/checkpoints/step-000003");
        let enospc = || TrainError::Io {
            path: path.join("trainer_state.json"),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let mlx = || TrainError::Config("[write] Unable to write 4096 bytes to file.".into());
        // ENOSPC is disk full whatever the free space says.
        assert!(matches!(
            classify_write_failure(enospc(), path, 10, Some(1 << 30)),
            TrainError::DiskFull { .. }
        ));
        // An opaque failure with less free space than needed is disk full...
        let error = classify_write_failure(mlx(), path, 5000, Some(0));
        assert!(matches!(
            error,
            TrainError::DiskFull {
                needed: Some(5000),
                available: Some(0),
                ..
            }
        ));
        // ...with room to spare, it stays what it was.
        assert!(matches!(
            classify_write_failure(mlx(), path, 5000, Some(1 << 30)),
            TrainError::Config(_)
        ));
    }

    #[test]
    fn sizes_read_like_df() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_234_567), "1.23 MB");
    }
}
