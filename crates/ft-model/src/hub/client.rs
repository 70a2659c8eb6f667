//! The client: resolving a Hub id into a complete snapshot of the cache,
//! downloading what is missing, with a progress bar per file.

use super::files::*;
use super::*;
use crate::disk_space::{available_bytes, human_bytes};
use crate::{Error, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Resolves Hub ids into snapshot directories of the cache, downloading
/// what is missing.
#[derive(Clone, Debug)]
pub struct HubClient {
    options: HubOptions,
}

/// One resolution in progress: the repository, its commit, where things go.
struct Job<'a> {
    id: &'a HubId,
    repo_dir: PathBuf,
    commit: String,
    snapshot: PathBuf,
    api: ApiRepo,
}

impl HubClient {
    /// A client with explicit options (tests, embedding programs).
    pub fn new(options: HubOptions) -> Self {
        Self { options }
    }

    /// A client configured by the environment ([`HubOptions::from_env`]).
    pub fn from_env() -> Self {
        Self::new(HubOptions::from_env())
    }

    /// The options in use.
    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.options.cache_dir.join(id.folder_name())
    }

    /// The commit the cache knows for `id`'s revision: the revision itself
    /// when it is a commit hash with a snapshot, else `refs/<revision>`.
    fn cached_commit(&self, id: &HubId) -> Option<String> {
        let repo_dir = self.repo_dir(id);
        let revision = id.revision_or_main();
        if is_commit_hash(revision) && repo_dir.join("snapshots").join(revision).is_dir() {
            return Some(revision.to_string());
        }
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
        let commit = commit.trim();
        (!commit.is_empty() && !commit.contains(['/', '\\']) && commit != "..")
            .then(|| commit.to_string())
    }

    /// The model from the cache alone (no request): `Some` when the snapshot
    /// of `id`'s revision holds everything loading needs.
    pub fn cached(&self, id: &HubId) -> Option<HubModel> {
        let commit = self.cached_commit(id)?;
        let dir = self.repo_dir(id).join("snapshots").join(&commit);
        missing_files(&dir).is_empty().then(|| HubModel {
            id: id.repo.clone(),
            revision: id.revision.clone(),
            commit,
            dir,
        })
    }

    /// The snapshot directory of `id`: from the cache when complete (no
    /// request, unless [`HubOptions::refresh`]), else downloaded (never with
    /// [`HubOptions::offline`]).
    pub fn resolve(&self, id: &HubId) -> Result<HubModel> {
        if !self.options.refresh || self.options.offline {
            if let Some(model) = self.cached(id) {
                tracing::debug!(model = %id, dir = %model.dir.display(), "from the Hugging Face cache");
                return Ok(model);
            }
        }
        if self.options.offline {
            let missing = match self.cached_commit(id) {
                None => format!(
                    "no snapshot of revision `{}` under {}",
                    id.revision_or_main(),
                    self.repo_dir(id).display()
                ),
                Some(commit) => {
                    let dir = self.repo_dir(id).join("snapshots").join(commit);
                    format!("{} lacks {}", dir.display(), missing_files(&dir).join(", "))
                }
            };
            return Err(Error::HubOfflineNotCached {
                id: id.to_string(),
                cache: self.options.cache_dir.clone(),
                missing,
            });
        }
        self.download(id, true)
    }

    /// [`Self::resolve`] without the weights: the snapshot directory once it
    /// holds `config.json` and `tokenizer.json` (a complete snapshot, or the
    /// small files downloaded alone).
    pub fn resolve_without_weights(&self, id: &HubId) -> Result<PathBuf> {
        if let Some(model) = self.cached(id) {
            return Ok(model.dir);
        }
        if let Some(commit) = self.cached_commit(id) {
            let dir = self.repo_dir(id).join("snapshots").join(commit);
            if dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file() {
                return Ok(dir);
            }
        }
        if self.options.offline {
            return self.resolve(id).map(|model| model.dir);
        }
        self.download(id, false).map(|model| model.dir)
    }

    fn url(&self, id: &HubId, revision: &str, file: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{file}",
            self.options.endpoint,
            id.repo,
            revision.replace('/', "%2F")
        )
    }

    fn download(&self, id: &HubId, weights: bool) -> Result<HubModel> {
        let revision = id.revision_or_main();
        let config = self.head(id, revision, "config.json")?.ok_or_else(|| {
            self.file_not_found(id, revision, "config.json", "every model needs it")
        })?;
        let commit = config.commit.clone();
        if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(self.protocol_error(
                id,
                &self.url(id, revision, "config.json"),
                format!("the commit `{commit}` in the x-repo-commit header is not a commit hash"),
            ));
        }
        let repo_dir = self.repo_dir(id);
        let stray_ref = repo_dir.join("refs").join(&commit);
        let stray_ref_existed = stray_ref.exists();
        let api = ApiBuilder::from_cache(Cache::new(self.options.cache_dir.clone()))
            .with_endpoint(self.options.endpoint.clone())
            .with_token(self.options.token.clone())
            .with_progress(false)
            .with_retries(self.options.retries)
            .with_user_agent("ft", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|error| self.api_error(id, &self.url(id, revision, "config.json"), error))?;
        let job = Job {
            id,
            snapshot: repo_dir.join("snapshots").join(&commit),
            repo_dir,
            api: api.repo(Repo::with_revision(
                id.repo.clone(),
                RepoType::Model,
                revision.to_string(),
            )),
            commit,
        };

        // The small files first: config, index, tokenizer.
        self.ensure(&job, "config.json", &config)?;
        for (file, required) in SMALL_FILES.iter().skip(1) {
            if job.snapshot.join(file).is_file() {
                continue;
            }
            match self.head(id, &job.commit, file)? {
                Some(meta) => self.ensure(&job, file, &meta)?,
                None if *required => {
                    return Err(self.file_not_found(
                        id,
                        &job.commit,
                        file,
                        "ft reads the tokenizer from tokenizer.json (a fast tokenizer)",
                    ))
                }
                None => {}
            }
        }

        if !weights {
            self.write_ref(&job, revision, &stray_ref, stray_ref_existed)?;
            return Ok(HubModel {
                id: id.repo.clone(),
                revision: id.revision.clone(),
                commit: job.commit,
                dir: job.snapshot,
            });
        }

        // Then the weights: every shard the index names, or model.safetensors.
        let index = job.snapshot.join(INDEX_FILE);
        let shards = if index.is_file() {
            shard_names(&index)?
        } else {
            vec![SINGLE_WEIGHTS.to_string()]
        };
        let mut planned = Vec::new();
        let mut needed = 0u64;
        for shard in shards {
            if job.snapshot.join(&shard).is_file() {
                continue;
            }
            let meta = self.head(id, &job.commit, &shard)?.ok_or_else(|| {
                let why = if shard == SINGLE_WEIGHTS {
                    "the repository has neither model.safetensors.index.json nor \
                     model.safetensors (ft loads safetensors weights in the Hugging Face layout)"
                } else {
                    "model.safetensors.index.json names this shard"
                };
                self.file_not_found(id, &job.commit, &shard, why)
            })?;
            if !blob_matches(&job.repo_dir.join("blobs").join(&meta.etag), meta.size) {
                needed = needed.saturating_add(meta.size);
            }
            planned.push((shard, meta));
        }
        let blobs = job.repo_dir.join("blobs");
        if let Some(available) = available_bytes(&blobs) {
            // A little headroom for the small files and the file system.
            if needed > 0 && available < needed.saturating_add(64 << 20) {
                return Err(Error::HubDiskFull {
                    id: id.to_string(),
                    path: blobs,
                    message: format!(
                        "the weights need {}, {} are free",
                        human_bytes(needed),
                        human_bytes(available)
                    ),
                });
            }
        }
        for (shard, meta) in &planned {
            self.ensure(&job, shard, meta)?;
        }

        self.write_ref(&job, revision, &stray_ref, stray_ref_existed)?;

        let missing = missing_files(&job.snapshot);
        if !missing.is_empty() {
            return Err(self.protocol_error(
                id,
                &self.url(id, &job.commit, "config.json"),
                format!(
                    "after the download {} still lacks {}",
                    job.snapshot.display(),
                    missing.join(", ")
                ),
            ));
        }
        Ok(HubModel {
            id: id.repo.clone(),
            revision: id.revision.clone(),
            commit: job.commit,
            dir: job.snapshot,
        })
    }

    /// The revision's ref, as huggingface_hub writes it (none for a commit).
    fn write_ref(
        &self,
        job: &Job<'_>,
        revision: &str,
        stray_ref: &Path,
        stray_ref_existed: bool,
    ) -> Result<()> {
        if is_commit_hash(revision) {
            if !stray_ref_existed && revision == job.commit {
                let _ = std::fs::remove_file(stray_ref);
            }
            return Ok(());
        }
        let reference = job.repo_dir.join("refs").join(revision);
        if let Some(parent) = reference.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.io_error(job.id, parent, e))?;
        }
        std::fs::write(&reference, &job.commit).map_err(|e| self.io_error(job.id, &reference, e))
    }

    /// Puts `file` into the snapshot: present already, linked to a blob that
    /// is already there, or downloaded and checked.
    fn ensure(&self, job: &Job<'_>, file: &str, meta: &FileMeta) -> Result<()> {
        let pointer = job.snapshot.join(file);
        if pointer.is_file() {
            return Ok(());
        }
        let url = self.url(job.id, &job.commit, file);
        if !safe_relative(file) || !safe_relative(&meta.etag) {
            return Err(self.protocol_error(
                job.id,
                &url,
                format!("refusing the file name `{file}` / etag `{}`", meta.etag),
            ));
        }
        let blob = job.repo_dir.join("blobs").join(&meta.etag);
        if blob_matches(&blob, meta.size) {
            return link_blob(&blob, &pointer, file)
                .map_err(|e| self.io_error(job.id, &pointer, e));
        }
        // A dangling link (its blob deleted) would make hf-hub's link fail.
        if std::fs::symlink_metadata(&pointer).is_ok() {
            std::fs::remove_file(&pointer).map_err(|e| self.io_error(job.id, &pointer, e))?;
        }
        tracing::info!(
            file,
            bytes = meta.size,
            "downloading from the Hugging Face Hub"
        );
        let progress = FileProgress::new(self.options.progress);
        let downloaded = job
            .api
            .download_with_progress(file, progress)
            .map_err(|error| self.api_error(job.id, &url, error))?;
        if downloaded != pointer {
            return Err(Error::HubDownload {
                id: job.id.to_string(),
                url,
                message: format!(
                    "revision `{}` moved to another commit during the download ({} instead of {}); run again",
                    job.id.revision_or_main(),
                    downloaded.display(),
                    pointer.display()
                ),
            });
        }
        if let Err(message) = verify(&pointer, meta) {
            // Remove the damaged blob so that the next run downloads it again.
            if let Ok(target) = std::fs::canonicalize(&pointer) {
                let _ = std::fs::remove_file(target);
            }
            let _ = std::fs::remove_file(&pointer);
            return Err(Error::HubDownload {
                id: job.id.to_string(),
                url,
                message: format!("{message}; the damaged file was removed, run again"),
            });
        }
        Ok(())
    }

    /// `HEAD` of a file's resolve URL (relative redirects followed, as
    /// huggingface_hub does): its commit, etag and size; `None` when the
    /// repository and revision exist but the file does not.
    fn head(&self, id: &HubId, revision: &str, file: &str) -> Result<Option<FileMeta>> {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .try_proxy_from_env(true)
            .timeout_connect(Duration::from_secs(20))
            .timeout_read(Duration::from_secs(60))
            .build();
        let mut url = self.url(id, revision, file);
        let mut response = None;
        for _ in 0..8 {
            // `identity`: the size must be the file's, not a compressed one's.
            let mut request = agent
                .head(&url)
                .set(
                    "User-Agent",
                    &format!("ft/{}; hf-hub/0.4", env!("CARGO_PKG_VERSION")),
                )
                .set("Accept-Encoding", "identity");
            if let Some(token) = &self.options.token {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            let answer = match request.call() {
                Ok(answer) => answer,
                Err(ureq::Error::Status(404, answer))
                    if answer.header("x-error-code") == Some("EntryNotFound") =>
                {
                    return Ok(None);
                }
                Err(error) => return Err(self.request_error(id, &url, error)),
            };
            let relative = (300..400).contains(&answer.status())
                && answer
                    .header("location")
                    .is_some_and(|location| location.starts_with('/'));
            if relative {
                let location = answer.header("location").unwrap_or_default().to_string();
                url = format!("{}{location}", origin(&url));
                continue;
            }
            response = Some(answer);
            break;
        }
        let Some(response) = response else {
            return Err(self.protocol_error(id, &url, "too many redirects".into()));
        };
        let header = |name: &str| response.header(name).map(str::to_string);
        let commit = header("x-repo-commit").ok_or_else(|| {
            self.protocol_error(
                id,
                &url,
                "the answer has no x-repo-commit header: is HF_ENDPOINT a Hugging Face Hub?".into(),
            )
        })?;
        let linked = header("x-linked-etag");
        let etag = linked
            .clone()
            .or_else(|| header("etag"))
            .map(|etag| normalize_etag(&etag))
            .filter(|etag| !etag.is_empty())
            .ok_or_else(|| self.protocol_error(id, &url, "the answer has no etag".into()))?;
        let size = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|size| size.trim().parse::<u64>().ok())
            .ok_or_else(|| self.protocol_error(id, &url, "the answer has no file size".into()))?;
        let sha256 =
            linked.is_some() && etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit());
        Ok(Some(FileMeta {
            commit,
            etag,
            size,
            sha256,
        }))
    }

    fn file_not_found(&self, id: &HubId, revision: &str, file: &str, why: &str) -> Error {
        Error::HubFileNotFound {
            id: id.to_string(),
            url: self.url(id, revision, file),
            message: format!("{file} is not in the repository ({why})"),
        }
    }

    fn protocol_error(&self, id: &HubId, url: &str, message: String) -> Error {
        Error::HubDownload {
            id: id.to_string(),
            url: url.to_string(),
            message,
        }
    }

    fn io_error(&self, id: &HubId, path: &Path, error: std::io::Error) -> Error {
        if is_disk_full(&error) {
            return Error::HubDiskFull {
                id: id.to_string(),
                path: path.to_path_buf(),
                message: error.to_string(),
            };
        }
        Error::Io {
            path: path.to_path_buf(),
            source: error,
        }
    }

    /// The typed error for a failed request to `url`.
    fn request_error(&self, id: &HubId, url: &str, error: ureq::Error) -> Error {
        match error {
            ureq::Error::Status(status, response) => {
                let code = response
                    .header("x-error-code")
                    .unwrap_or_default()
                    .to_string();
                let server_message = response
                    .header("x-error-message")
                    .map(|message| format!(" ({message})"))
                    .unwrap_or_default();
                match (code.as_str(), status) {
                    ("RepoNotFound", _) => Error::HubRepoNotFound {
                        id: id.to_string(),
                        repo: id.repo.clone(),
                        endpoint: self.options.endpoint.clone(),
                    },
                    ("RevisionNotFound", _) => Error::HubRevisionNotFound {
                        id: id.to_string(),
                        repo: id.repo.clone(),
                        revision: id.revision_or_main().to_string(),
                    },
                    ("EntryNotFound", _) | (_, 404) => Error::HubFileNotFound {
                        id: id.to_string(),
                        url: url.to_string(),
                        message: format!("the server answered HTTP {status}{server_message}"),
                    },
                    ("GatedRepo", _) | (_, 401 | 403) => Error::HubAccess {
                        id: id.to_string(),
                        url: url.to_string(),
                        status,
                        advice: self.access_advice(id),
                    },
                    _ => Error::HubDownload {
                        id: id.to_string(),
                        url: url.to_string(),
                        message: format!("the server answered HTTP {status}{server_message}"),
                    },
                }
            }
            ureq::Error::Transport(transport) => {
                let message = transport.to_string();
                match transport.kind() {
                    ureq::ErrorKind::Dns
                    | ureq::ErrorKind::ConnectionFailed
                    | ureq::ErrorKind::ProxyConnect
                    | ureq::ErrorKind::Io => Error::HubNetwork {
                        id: id.to_string(),
                        endpoint: self.options.endpoint.clone(),
                        cache: self.options.cache_dir.clone(),
                        message,
                    },
                    _ => Error::HubDownload {
                        id: id.to_string(),
                        url: url.to_string(),
                        message,
                    },
                }
            }
        }
    }

    fn access_advice(&self, id: &HubId) -> String {
        let page = format!("{}/{}", self.options.endpoint, id.repo);
        match &self.options.token_source {
            None => format!(
                "No token was sent: accept the model's license on {page} while logged in, then run \
                 `huggingface-cli login` (or set HF_TOKEN=hf_...) and try again"
            ),
            Some(source) => format!(
                "The token from {source} does not grant access: accept the model's license on \
                 {page} with that account (gated models may need approval), or use a token with \
                 read access"
            ),
        }
    }

    /// The typed error for a failed hf-hub download of `url`.
    pub(super) fn api_error(&self, id: &HubId, url: &str, error: ApiError) -> Error {
        match error {
            ApiError::RequestError(error) => self.request_error(id, url, *error),
            ApiError::TooManyRetries(inner) => self.api_error(id, url, *inner),
            ApiError::IoError(error) if is_disk_full(&error) => Error::HubDiskFull {
                id: id.to_string(),
                path: self.options.cache_dir.clone(),
                message: error.to_string(),
            },
            ApiError::IoError(error) => Error::HubDownload {
                id: id.to_string(),
                url: url.to_string(),
                message: format!(
                    "{error}: the download was interrupted; run again to resume it (the part \
                     already downloaded is kept in the cache's blobs/ as a .part file)"
                ),
            },
            ApiError::LockAcquisition(path) => Error::HubDownload {
                id: id.to_string(),
                url: url.to_string(),
                message: format!(
                    "another process is downloading this file (lock {}); wait for it, or remove \
                     the lock if no download is running",
                    path.display()
                ),
            },
            ApiError::InvalidResume => Error::HubDownload {
                id: id.to_string(),
                url: url.to_string(),
                message: "the partial download in the cache is larger than the file; delete the \
                          .part file under the cache's blobs/ and run again"
                    .into(),
            },
            other => Error::HubDownload {
                id: id.to_string(),
                url: url.to_string(),
                message: other.to_string(),
            },
        }
    }
}

/// One progress bar per file on stderr, hidden when stderr is not a
/// terminal (or progress is off).
struct FileProgress {
    bar: ProgressBar,
}

impl FileProgress {
    fn new(enabled: bool) -> Self {
        let bar = if enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }
}

impl hf_hub::api::Progress for FileProgress {
    fn init(&mut self, size: usize, filename: &str) {
        // hf-hub calls init again on a resumed attempt, then reports the
        // bytes already there.
        self.bar.set_length(size as u64);
        self.bar.set_position(0);
        self.bar.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        self.bar.inc(size as u64);
    }

    fn finish(&mut self) {
        self.bar.finish();
    }
}
