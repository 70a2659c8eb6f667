//! Models by Hugging Face Hub id: `org/name` or `org/name@revision`,
//! resolved into the standard Hugging Face cache (`HF_HUB_CACHE`, by default
//! `$HF_HOME/hub`, by default `~/.cache/huggingface/hub`) in the layout that
//! Python's `huggingface_hub` writes:
//!
//! ```text
//! models--org--name/
//!   blobs/<etag>                       file contents (etag: sha256 for LFS files)
//!   refs/main                          the commit hash `main` pointed at
//!   snapshots/<commit>/config.json  -> ../../blobs/<etag>
//! ```
//!
//! so a model that mlx-lm or transformers already downloaded is used in
//! place. A snapshot that holds everything loading needs (config.json,
//! tokenizer.json and the weights) is used with no request at all, also
//! for a branch such as `main`: the branch is looked up again only when
//! files are missing (or with [`HubOptions::refresh`]). Only what loading
//! needs is fetched: config.json, the safetensors shards that
//! `model.safetensors.index.json` names (or `model.safetensors`),
//! tokenizer.json and, when the repository has them, tokenizer_config.json,
//! generation_config.json and chat_template.jinja; never
//! `consolidated.safetensors` or anything else.
//!
//! Downloads go through the `hf-hub` crate (its blocking client over ureq
//! and rustls): resumable `.part` files, one progress bar per file (quiet
//! when stderr is not a terminal), retries. Sizes, and the sha256 of LFS
//! files, are checked against what the server announced.
//!
//! Environment: `HF_ENDPOINT` (the server), `HF_HOME`, `HF_HUB_CACHE`,
//! `HF_TOKEN` (else the token file `huggingface-cli login` writes:
//! `$HF_TOKEN_PATH`, by default `$HF_HOME/token`), `HF_HUB_OFFLINE=1`
//! (the cache only, no request).

use crate::disk_space::{available_bytes, human_bytes};
use crate::{Error, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files that loading needs besides the weights: (name, required).
const SMALL_FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("model.safetensors.index.json", false),
    ("tokenizer.json", true),
    ("tokenizer_config.json", false),
    ("generation_config.json", false),
    ("chat_template.jinja", false),
];

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";

/// A Hub model id with an optional revision: `org/name` or `org/name@rev`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit hash; `None` means `main`.
    pub revision: Option<String>,
}

impl HubId {
    /// Parses `org/name[@revision]` with the characters the Hub allows
    /// (letters, digits, `-`, `_`, `.`; no `--` or `..`; at most 96
    /// characters); `None` when `spec` is not of that form.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision)),
            None => (spec, None),
        };
        let (owner, name) = repo.split_once('/')?;
        if !valid_name_part(owner)
            || !valid_name_part(name)
            || repo.len() > 96
            || name.ends_with(".git")
        {
            return None;
        }
        if let Some(revision) = revision {
            if !valid_revision(revision) {
                return None;
            }
        }
        Some(Self {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// The revision asked for, `main` when none was given.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The cache folder name: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(revision) => write!(f, "{}@{revision}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

fn valid_name_part(part: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    !part.is_empty()
        && part.chars().all(|c| word(c) || c == '-' || c == '.')
        && part.starts_with(word)
        && part.ends_with(word)
        && !part.contains("--")
        && !part.contains("..")
}

fn valid_revision(revision: &str) -> bool {
    !revision.is_empty()
        && revision.len() <= 255
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !revision.starts_with(['/', '.'])
        && !revision.ends_with('/')
        && !revision.contains("..")
        && !revision.contains("//")
}

/// Whether `revision` is a full commit hash (40 hexadecimal digits).
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The Hub id that [`crate::ModelSource::resolve`] looks up for
/// `name_or_path`, or `None` when it is to be taken as a local path: it
/// exists, starts with `.`, `/` or `~`, has more than one `/`, ends in a
/// file extension of a model file, or its first component is an existing
/// local directory (`models/x` with a `models/` folder here).
pub fn model_id(name_or_path: &str) -> Option<HubId> {
    if name_or_path.starts_with(['.', '/', '~']) || name_or_path.contains('\\') {
        return None;
    }
    if Path::new(name_or_path).exists() {
        return None;
    }
    let id = HubId::parse(name_or_path)?;
    let lower = id.repo.to_ascii_lowercase();
    if [".gguf", ".safetensors", ".json", ".bin"]
        .iter()
        .any(|ext| lower.ends_with(ext))
    {
        return None;
    }
    let owner = id.repo.split('/').next().unwrap_or_default();
    if Path::new(owner).is_dir() {
        return None;
    }
    Some(id)
}

/// A model resolved to a snapshot directory of the Hugging Face cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    /// `org/name`.
    pub id: String,
    /// The revision asked for (`None`: `main`, or unknown when the model was
    /// recognised from its snapshot path).
    pub revision: Option<String>,
    /// The commit the snapshot belongs to.
    pub commit: String,
    /// `.../models--org--name/snapshots/<commit>`.
    pub dir: PathBuf,
}

impl HubModel {
    /// `org/name`, or `org/name@revision` when a revision was given: what
    /// adapters record as their base model.
    pub fn spec(&self) -> String {
        match &self.revision {
            Some(revision) => format!("{}@{revision}", self.id),
            None => self.id.clone(),
        }
    }

    /// Recognises a snapshot directory of the Hugging Face cache
    /// (`.../models--org--name/snapshots/<commit>`, as given or after
    /// following symbolic links); the revision is then unknown.
    pub fn from_snapshot_dir(dir: &Path) -> Option<Self> {
        let parse = |dir: &Path| -> Option<Self> {
            let commit = dir.file_name()?.to_str()?;
            let snapshots = dir.parent()?;
            if snapshots.file_name()? != "snapshots" {
                return None;
            }
            let folder = snapshots.parent()?.file_name()?.to_str()?;
            let rest = folder.strip_prefix("models--")?;
            let (owner, name) = rest.split_once("--")?;
            let id = HubId::parse(&format!("{owner}/{name}"))?;
            Some(Self {
                id: id.repo,
                revision: None,
                commit: commit.to_string(),
                dir: dir.to_path_buf(),
            })
        };
        parse(dir).or_else(|| parse(&std::fs::canonicalize(dir).ok()?))
    }
}

/// Where and how to reach the Hub.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The server, e.g. `https://huggingface.co` (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The cache root holding `models--org--name` folders (`HF_HUB_CACHE`).
    pub cache_dir: PathBuf,
    /// The access token for gated and private repositories.
    pub token: Option<String>,
    /// Where the token came from (`HF_TOKEN` or the token file), for messages.
    pub token_source: Option<String>,
    /// Use the cache only, never a request (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Look the revision up on the Hub even when the cached snapshot is
    /// complete (a branch that may have moved).
    pub refresh: bool,
    /// Show a progress bar per file (only ever on a terminal).
    pub progress: bool,
    /// How many times an interrupted download is resumed before giving up.
    pub retries: usize,
}

impl HubOptions {
    /// The options the `huggingface_hub` environment variables describe:
    /// `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_TOKEN_PATH`,
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let home = hf_home();
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(|dir| expand_home(&dir))
            .unwrap_or_else(|| home.join("hub"));
        let (token, token_source) = match var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
        {
            Some(token) => (Some(token.trim().to_string()), Some("HF_TOKEN".to_string())),
            None => {
                let path = var("HF_TOKEN_PATH")
                    .map(|path| expand_home(&path))
                    .unwrap_or_else(|| home.join("token"));
                let token = std::fs::read_to_string(&path)
                    .ok()
                    .map(|text| text.trim().to_string())
                    .filter(|token| !token.is_empty());
                let source = token.as_ref().map(|_| path.display().to_string());
                (token, source)
            }
        };
        Self {
            endpoint: var("HF_ENDPOINT")
                .map(|endpoint| endpoint.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token,
            token_source,
            offline: var("HF_HUB_OFFLINE").is_some_and(|value| truthy(&value)),
            refresh: false,
            progress: true,
            retries: 3,
        }
    }
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    if let Some(home) = var("HF_HOME") {
        return expand_home(&home);
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return expand_home(&cache).join("huggingface");
    }
    user_home().join(".cache").join("huggingface")
}

fn user_home() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => user_home().join(rest),
        None if path == "~" => user_home(),
        None => PathBuf::from(path),
    }
}

/// Resolves `id` with the options of the environment ([`HubOptions::from_env`]).
pub fn resolve(id: &HubId) -> Result<HubModel> {
    HubClient::from_env().resolve(id)
}

/// The snapshot directory of `id` with its configuration and tokenizer
/// files but not necessarily its weights (memory estimates, tokenizing data
/// before a run), with the options of the environment.
pub fn resolve_without_weights(id: &HubId) -> Result<PathBuf> {
    HubClient::from_env().resolve_without_weights(id)
}

/// Resolves Hub ids into snapshot directories of the cache, downloading
/// what is missing.
#[derive(Clone, Debug)]
pub struct HubClient {
    options: HubOptions,
}

/// What a `HEAD` of a file's resolve URL announced.
#[derive(Clone, Debug)]
struct FileMeta {
    commit: String,
    etag: String,
    size: u64,
    /// The etag is the sha256 of the contents (LFS files).
    sha256: bool,
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
    fn api_error(&self, id: &HubId, url: &str, error: ApiError) -> Error {
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

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

/// Strips a weak-validator prefix and the quotes, as huggingface_hub does.
fn normalize_etag(etag: &str) -> String {
    let etag = etag.trim();
    etag.strip_prefix("W/")
        .unwrap_or(etag)
        .trim_matches('"')
        .to_string()
}

/// A relative path without `..`, absolute or empty components.
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn blob_matches(blob: &Path, size: u64) -> bool {
    std::fs::metadata(blob).is_ok_and(|meta| meta.is_file() && meta.len() == size)
}

/// `snapshots/<commit>/<file>` -> `../../blobs/<etag>` (relative, as
/// huggingface_hub links them).
fn link_blob(blob: &Path, pointer: &Path, file: &str) -> std::io::Result<()> {
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
fn verify(path: &Path, meta: &FileMeta) -> std::result::Result<(), String> {
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
fn missing_files(dir: &Path) -> Vec<String> {
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
fn shard_names(index: &Path) -> Result<Vec<String>> {
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

fn is_disk_full(error: &std::io::Error) -> bool {
    if error.kind() == std::io::ErrorKind::StorageFull {
        return true;
    }
    #[cfg(unix)]
    if matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
        return true;
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse() {
        let id = HubId::parse("mistralai/Mistral-7B-Instruct-v0.3").expect("an id");
        assert_eq!(id.repo, "mistralai/Mistral-7B-Instruct-v0.3");
        assert_eq!(id.revision, None);
        assert_eq!(id.revision_or_main(), "main");
        assert_eq!(
            id.folder_name(),
            "models--mistralai--Mistral-7B-Instruct-v0.3"
        );
        let id =
            HubId::parse("mlx-community/Mistral-7B-Instruct-v0.3-4bit@refs/pr/1").expect("an id");
        assert_eq!(id.revision.as_deref(), Some("refs/pr/1"));
        assert_eq!(
            id.to_string(),
            "mlx-community/Mistral-7B-Instruct-v0.3-4bit@refs/pr/1"
        );
        for bad in [
            "gpt2",
            "a/b/c",
            "/abs/x",
            "org/",
            "/name",
            "org/na me",
            "org/-name",
            "org/name-",
            "org/na--me",
            "org/na..me",
            "org/name.git",
            "org/name@",
            "org/name@../x",
            "org/name@/x",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths_are_not_hub_ids() {
        assert!(model_id("./foo").is_none());
        assert!(model_id("../foo/bar").is_none());
        assert!(model_id("/tmp/does-not-exist").is_none());
        assert!(model_id("runs/x/y").is_none());
        assert!(model_id("models/model.gguf").is_none());
        assert!(model_id("~/models").is_none());
        // `src/` exists next to this crate's manifest (the test's directory).
        assert!(model_id("src/x").is_none());
        assert_eq!(
            model_id("org/name@v1").map(|id| id.to_string()).as_deref(),
            Some("org/name@v1")
        );
    }

    #[test]
    fn snapshot_dirs_are_recognised() {
        let dir = Path::new("/c/hub/models--org--tiny/snapshots")
            .join("0123456789abcdef0123456789abcdef01234567");
        let model = HubModel::from_snapshot_dir(&dir).expect("a snapshot");
        assert_eq!(model.id, "org/tiny");
        assert_eq!(model.commit, "0123456789abcdef0123456789abcdef01234567");
        assert!(HubModel::from_snapshot_dir(Path::new("/c/models/tiny")).is_none());
    }

    #[test]
    fn etags_and_urls() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(
            origin("http://127.0.0.1:8/org/x/resolve"),
            "http://127.0.0.1:8"
        );
        assert!(safe_relative("model-00001-of-00002.safetensors"));
        assert!(safe_relative("sub/model.safetensors"));
        assert!(!safe_relative("../x"));
        assert!(!safe_relative("/x"));
        assert!(!safe_relative("a//b"));
    }

    #[test]
    fn disk_full_is_recognised() {
        #[cfg(unix)]
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(
            libc::ENOSPC
        )));
        assert!(!is_disk_full(&std::io::Error::from(
            std::io::ErrorKind::UnexpectedEof
        )));
        let client = HubClient::new(HubOptions {
            endpoint: "http://127.0.0.1:9".into(),
            cache_dir: PathBuf::from("/cache"),
            token: None,
            token_source: None,
            offline: false,
            refresh: false,
            progress: false,
            retries: 0,
        });
        let id = HubId::parse("org/x").expect("an id");
        let error = client.api_error(
            &id,
            "http://127.0.0.1:9/org/x/resolve/main/model.safetensors",
            ApiError::IoError(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        );
        assert!(matches!(error, Error::HubDiskFull { .. }), "{error}");
        assert!(error.to_string().contains("HF_HUB_CACHE"), "{error}");
    }

    #[test]
    fn same_model_compares_canonical_paths_and_hub_ids() {
        use crate::load::same_model;
        // The tests run in the crate's directory.
        let absolute = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        assert!(same_model("src", absolute));
        assert!(same_model("./src/", &format!("{absolute}/../src")));
        assert!(!same_model("src", "tests"));
        assert!(!same_model("src", "no-such-model"));
        assert!(same_model("Org/Name", "org/name@main"));
        assert!(same_model("org/name@v1", "org/name@v1"));
        assert!(!same_model("org/name@v1", "org/name@v2"));
        assert!(!same_model("org/a", "org/b"));

        // A snapshot directory of the cache is its repository; a link to a
        // directory is that directory.
        let cache = tempfile::tempdir().expect("tempdir");
        let snapshot = cache
            .path()
            .join("models--org--name/snapshots")
            .join("0123456789abcdef0123456789abcdef01234567");
        std::fs::create_dir_all(&snapshot).expect("snapshot");
        let snapshot = snapshot.to_str().expect("utf-8");
        assert!(same_model(snapshot, "org/name"));
        assert!(!same_model(snapshot, "org/other"));
        #[cfg(unix)]
        {
            let link = cache.path().join("link");
            std::os::unix::fs::symlink(absolute, &link).expect("symlink");
            assert!(same_model(link.to_str().expect("utf-8"), "src"));
        }
    }

    #[test]
    fn truthy_values() {
        for value in ["1", "ON", "yes", "True"] {
            assert!(truthy(value));
        }
        for value in ["0", "off", "", "no"] {
            assert!(!truthy(value));
        }
    }
}
