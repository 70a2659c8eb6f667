//! The cache on disk: blobs, snapshot links, checks of downloaded files
//! against what the server announced, and what a snapshot still lacks.

use super::*;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a `HEAD` of a file's resolve URL announced.
#[derive(Clone, Debug)]
pub(super) struct FileMeta {
    pub(super) commit: String,
    pub(super) etag: String,
    pub(super) size: u64,
    /// The etag is the sha256 of the contents (LFS files).
    pub(super) sha256: bool,
}

/// `scheme://host[:port]` of `url`.
pub(super) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

/// Strips a weak-validator prefix and the quotes, as huggingface_hub does.
pub(super) fn normalize_etag(etag: &str) -> String {
    let etag = etag.trim();
    etag.strip_prefix("W/")
        .unwrap_or(etag)
        .trim_matches('"')
        .to_string()
}

/// A relative path without `..`, absolute or empty components.
pub(super) fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

pub(super) fn blob_matches(blob: &Path, size: u64) -> bool {
    std::fs::metadata(blob).is_ok_and(|meta| meta.is_file() && meta.len() == size)
}

/// `snapshots/<commit>/<file>` -> `../../blobs/<etag>` (relative, as
/// huggingface_hub links them).
pub(super) fn link_blob(blob: &Path, pointer: &Path, file: &str) -> std::io::Result<()> {
    if let Some(parent) = pointer.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let depth = file.split('/').count() + 1;
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    if let Some(name) = blob.file_name() {
        target.push(name);
    }
    #[cfg(unix)]
    {
        // A dangling link from an interrupted run would block the new one.
        if std::fs::symlink_metadata(pointer).is_ok() {
            std::fs::remove_file(pointer)?;
        }
        std::os::unix::fs::symlink(&target, pointer)
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        std::fs::copy(blob, pointer).map(|_| ())
    }
}

/// Checks a downloaded file against the announced size and sha256.
pub(super) fn verify(path: &Path, meta: &FileMeta) -> std::result::Result<(), String> {
    let length = std::fs::metadata(path)
        .map_err(|error| format!("{}: {error}", path.display()))?
        .len();
    if length != meta.size {
        return Err(format!(
            "{} has {length} bytes, the server announced {}",
            path.display(),
            meta.size
        ));
    }
    if meta.sha256 {
        let mut file =
            std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = file
                .read(&mut buffer)
                .map_err(|error| format!("{}: {error}", path.display()))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        if !digest.eq_ignore_ascii_case(&meta.etag) {
            return Err(format!(
                "{} has sha256 {digest}, the server announced {}",
                path.display(),
                meta.etag
            ));
        }
    }
    Ok(())
}

/// What a snapshot directory lacks for loading: config.json, tokenizer.json,
/// and the weights (the shards the index names, or model.safetensors).
pub(super) fn missing_files(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|file| !dir.join(file).is_file())
        .map(str::to_string)
        .collect();
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        match shard_names(&index) {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file())),
            Err(_) => missing.push(format!("a readable {INDEX_FILE}")),
        }
    } else if !dir.join(SINGLE_WEIGHTS).is_file() {
        missing.push(format!("{SINGLE_WEIGHTS} (or {INDEX_FILE})"));
    }
    missing
}

/// The shard files `model.safetensors.index.json` names, sorted.
pub(super) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let config_error = |message: String| Error::Config {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| config_error(format!("not valid JSON: {error}")))?;
    let map = value["weight_map"].as_object().ok_or_else(|| {
        config_error("field `weight_map`: expected an object of tensor name -> shard file".into())
    })?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    if let Some(bad) = shards.iter().find(|shard| !safe_relative(shard)) {
        return Err(config_error(format!(
            "field `weight_map`: `{bad}` is not a file name inside the repository"
        )));
    }
    Ok(shards.into_iter().map(str::to_string).collect())
}

pub(super) fn is_disk_full(error: &std::io::Error) -> bool {
    if error.kind() == std::io::ErrorKind::StorageFull {
        return true;
    }
    #[cfg(unix)]
    if matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
        return true;
    }
    false
}
