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

use crate::Result;
use std::fmt;
use std::path::{Path, PathBuf};

mod client;
mod files;

pub use client::HubClient;

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

#[cfg(test)]
mod tests {
    use super::files::{is_disk_full, normalize_etag, origin, safe_relative};
    use super::*;
    use crate::Error;
    use hf_hub::api::sync::ApiError;

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
