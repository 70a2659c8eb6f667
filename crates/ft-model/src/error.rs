//! The error type of ft-model.

use std::path::PathBuf;

/// Everything that can go wrong in ft-model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An MLX operation failed.
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// Reading or writing a tensor file failed.
    #[error("MLX I/O on {path}: {message}")]
    MlxIo {
        /// The file involved.
        path: PathBuf,
        /// What MLX reported.
        message: String,
    },
    /// A GGUF file is malformed (located: the byte offset and what was
    /// read there), or could not be read or written.
    #[error(transparent)]
    Gguf(#[from] ft_gguf::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// config.json (or GGUF metadata) is missing a field or has a wrong one.
    #[error("{path}: {message}")]
    Config {
        /// The file involved.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The checkpoint's tensors do not match the architecture.
    #[error("{path}: {message}")]
    Weights {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// Which tensors are missing, unexpected or misshapen.
        message: String,
    },
    /// The model cannot be written in the requested form (e.g. quantized
    /// weights to GGUF, an unsupported dtype).
    #[error("{path}: {message}")]
    Export {
        /// The file being written.
        path: PathBuf,
        /// What stands in the way and what to do.
        message: String,
    },
    /// A model name or path that is neither a directory, a GGUF file, a
    /// Hugging Face Hub id nor a built-in name.
    #[error("model `{0}` not found: expected a model directory (config.json + *.safetensors), a .gguf file, a Hugging Face Hub id (org/name[@revision]) or a built-in name ({1})")]
    ModelNotFound(String, String),
    /// The Hub refused access (HTTP 401/403): a gated or private repository
    /// and no token, or a token without access.
    #[error("{id}: the Hugging Face Hub refused access to {url} (HTTP {status}): the repository is gated or private. {advice}")]
    HubAccess {
        /// The model as given (`org/name[@revision]`).
        id: String,
        /// The URL that was refused.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What to do: log in, set HF_TOKEN, accept the license.
        advice: String,
    },
    /// The Hub has no repository of that name (or hides a private one).
    #[error("model `{id}` not found: no local directory or file of that name, and the Hugging Face Hub ({endpoint}) has no model repository `{repo}` (if it is private, run `huggingface-cli login` or set HF_TOKEN)")]
    HubRepoNotFound {
        /// The model as given.
        id: String,
        /// The repository id.
        repo: String,
        /// The Hub server asked.
        endpoint: String,
    },
    /// The repository exists but the revision (branch, tag or commit) does not.
    #[error("{id}: the Hugging Face Hub repository `{repo}` has no revision `{revision}` (a branch, tag or full commit hash)")]
    HubRevisionNotFound {
        /// The model as given.
        id: String,
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
    },
    /// A file that loading needs is not in the repository.
    #[error("{id}: {url} does not exist: {message}")]
    HubFileNotFound {
        /// The model as given.
        id: String,
        /// The file's URL.
        url: String,
        /// Which file and why it is needed.
        message: String,
    },
    /// The Hub could not be reached (connection refused, DNS, proxy, timeout).
    #[error("{id}: cannot reach the Hugging Face Hub at {endpoint}: {message}. Check the network (or HF_ENDPOINT); if the model is already in the cache ({cache}), set HF_HUB_OFFLINE=1 to use it without any request")]
    HubNetwork {
        /// The model as given.
        id: String,
        /// The Hub server asked.
        endpoint: String,
        /// The cache directory.
        cache: PathBuf,
        /// What the connection reported.
        message: String,
    },
    /// HF_HUB_OFFLINE is set and the cache lacks the model (or part of it).
    #[error("{id}: HF_HUB_OFFLINE is set and the model is not (completely) in the Hugging Face cache {cache}: {missing}. Download it once with the network on (unset HF_HUB_OFFLINE), or give a local directory")]
    HubOfflineNotCached {
        /// The model as given.
        id: String,
        /// The cache directory.
        cache: PathBuf,
        /// What is missing.
        missing: String,
    },
    /// The disk holding the cache is full (or would be by the download).
    #[error("{path}: not enough disk space to download {id}: {message}. Free some space, or point HF_HUB_CACHE (or HF_HOME) at a larger disk")]
    HubDiskFull {
        /// The model as given.
        id: String,
        /// The directory being written.
        path: PathBuf,
        /// How much is needed and available, or the system's report.
        message: String,
    },
    /// A download failed part-way, was damaged, or the server's answer was
    /// not understood.
    #[error("{id}: downloading {url} failed: {message}")]
    HubDownload {
        /// The model as given.
        id: String,
        /// The file's URL.
        url: String,
        /// What happened and what to do.
        message: String,
    },
    /// A generation or forward request that cannot be served.
    #[error("{0}")]
    InvalidRequest(String),
    /// Joining or using a distributed group failed.
    #[error("distributed: {0}")]
    Distributed(String),
    /// A runtime self-check produced a wrong number.
    #[error("{check}: expected {expected}, got {got}")]
    CheckFailed {
        /// Which check.
        check: &'static str,
        /// What was expected.
        expected: String,
        /// What came out.
        got: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
