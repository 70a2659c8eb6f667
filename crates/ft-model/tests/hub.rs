//! Models by Hub id against a tiny Hub on 127.0.0.1: the Hugging Face
//! cache layout, no request once cached, offline use, resumed downloads,
//! gated and missing repositories, and a cache pre-filled the way Python's
//! huggingface_hub writes it. No test reaches the real Hub.

use ft_model::hub::{HubClient, HubId, HubOptions};
use ft_model::{Error, LoadOptions, ModelSource};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

// ---------------------------------------------------------------- the server

/// A repository the test Hub serves.
#[derive(Clone, Default)]
struct ServedRepo {
    commit: String,
    /// Required `Authorization: Bearer <token>` (a gated repository).
    token: Option<String>,
    files: BTreeMap<String, Vec<u8>>,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Logged {
    method: String,
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, ServedRepo>,
    /// File name -> bytes to send before dropping the connection (once).
    truncate: Mutex<BTreeMap<String, usize>>,
    /// Files whose next full body arrives with one byte changed (once).
    corrupt: Mutex<BTreeSet<String>>,
    log: Mutex<Vec<Logged>>,
    endpoint: String,
}

/// A Hub on 127.0.0.1 in the real Hub's URL and header layout: `GET`/`HEAD`
/// `/{repo}/resolve/{revision}/{file}` with `x-repo-commit`, quoted `etag`,
/// `x-linked-etag`/`x-linked-size` and a redirect to `/cdn/<sha256>` for
/// `.safetensors` files (LFS), `Range` (206), 401 for a gated repository
/// without its token, 404 with `x-error-code`. It stops when dropped, and by
/// itself after two minutes.
struct TestHub {
    endpoint: String,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A git-like object id for regular files (40 hex digits).
fn git_etag(bytes: &[u8]) -> String {
    sha256_hex(bytes)[..40].to_string()
}

impl TestHub {
    fn start(repos: BTreeMap<String, ServedRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(State {
            repos,
            endpoint: endpoint.clone(),
            ..State::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_state, thread_stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !thread_stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let state = thread_state.clone();
                        std::thread::spawn(move || serve(stream, &state));
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Self {
            endpoint,
            state,
            stop,
        }
    }

    fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().expect("log").clone()
    }

    fn clear(&self) {
        self.state.log.lock().expect("log").clear();
    }

    fn truncate_once(&self, file: &str, bytes: usize) {
        self.state
            .truncate
            .lock()
            .expect("truncate")
            .insert(file.to_string(), bytes);
    }
}

impl TestHub {
    fn corrupt_once(&self, file: &str) {
        self.state
            .corrupt
            .lock()
            .expect("corrupt")
            .insert(file.to_string());
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut stream: TcpStream, state: &State) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    let request = Logged {
        method: method.clone(),
        path: path.clone(),
        range: headers.get("range").cloned(),
        auth: headers.get("authorization").cloned(),
    };
    state.log.lock().expect("log").push(request.clone());
    let head_only = method == "HEAD";
    let reply = route(state, &request);
    let _ = send(&mut stream, state, &request, reply, head_only);
}

/// Status, headers, body, and the file name for fault injection.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    file: Option<String>,
}

fn error_reply(status: u16, code: &str, message: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            ("x-error-code".into(), code.into()),
            ("x-error-message".into(), message.into()),
        ],
        body: message.as_bytes().to_vec(),
        file: None,
    }
}

fn route(state: &State, request: &Logged) -> Reply {
    if let Some(sha) = request.path.strip_prefix("/cdn/") {
        for repo in state.repos.values() {
            for (name, bytes) in &repo.files {
                if sha256_hex(bytes) == sha {
                    return Reply {
                        status: 200,
                        headers: vec![("etag".into(), format!("\"{sha}\""))],
                        body: bytes.clone(),
                        file: Some(name.clone()),
                    };
                }
            }
        }
        return error_reply(404, "EntryNotFound", "no such blob");
    }
    let parts: Vec<&str> = request
        .path
        .trim_start_matches('/')
        .splitn(5, '/')
        .collect();
    let [owner, name, "resolve", revision, file] = parts[..] else {
        return error_reply(404, "RepoNotFound", "not a resolve URL");
    };
    let repo_id = format!("{owner}/{name}");
    let Some(repo) = state.repos.get(&repo_id) else {
        return error_reply(404, "RepoNotFound", "Repository not found");
    };
    if let Some(token) = &repo.token {
        if request.auth.as_deref() != Some(&format!("Bearer {token}")) {
            return error_reply(
                401,
                "GatedRepo",
                &format!("Access to model {repo_id} is restricted. You must be authenticated."),
            );
        }
    }
    let revision = revision.replace("%2F", "/");
    if revision != "main" && revision != repo.commit {
        return error_reply(404, "RevisionNotFound", "Invalid rev id");
    }
    let Some(bytes) = repo.files.get(file) else {
        return error_reply(404, "EntryNotFound", "Entry not found");
    };
    let mut headers = vec![("x-repo-commit".to_string(), repo.commit.clone())];
    if is_lfs(file) {
        let sha = sha256_hex(bytes);
        headers.push(("etag".into(), format!("\"{sha}\"")));
        headers.push(("x-linked-etag".into(), format!("\"{sha}\"")));
        headers.push(("x-linked-size".into(), bytes.len().to_string()));
        headers.push(("location".into(), format!("{}/cdn/{sha}", state.endpoint)));
        Reply {
            status: 302,
            headers,
            body: Vec::new(),
            file: None,
        }
    } else {
        headers.push(("etag".into(), format!("\"{}\"", git_etag(bytes))));
        Reply {
            status: 200,
            headers,
            body: bytes.clone(),
            file: Some(file.to_string()),
        }
    }
}

fn send(
    stream: &mut TcpStream,
    state: &State,
    request: &Logged,
    mut reply: Reply,
    head_only: bool,
) -> std::io::Result<()> {
    let total = reply.body.len();
    let mut range_note = None;
    if reply.status == 200 {
        if let Some(range) = request
            .range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
        {
            let (start, end) = range.split_once('-').unwrap_or((range, ""));
            let start: usize = start.parse().unwrap_or(0);
            let end: usize = end.parse().map_or(total.saturating_sub(1), |end: usize| {
                end.min(total.saturating_sub(1))
            });
            if start >= total {
                reply.status = 416;
                reply
                    .headers
                    .push(("content-range".into(), format!("bytes */{total}")));
                reply.body.clear();
            } else {
                reply.status = 206;
                reply.headers.push((
                    "content-range".into(),
                    format!("bytes {start}-{end}/{total}"),
                ));
                reply.body = reply.body[start..=end].to_vec();
                range_note = Some(start);
            }
        }
    }
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
    out.push_str("connection: close\r\n\r\n");
    stream.write_all(out.as_bytes())?;
    if head_only {
        return stream.flush();
    }
    // Fault injection: a full-body GET of this file stops part-way, once.
    let whole_body = range_note == Some(0) && reply.body.len() == total && total > 1;
    if let (Some(file), true) = (&reply.file, whole_body || range_note.is_none()) {
        if state.corrupt.lock().expect("corrupt").remove(file) {
            if let Some(first) = reply.body.first_mut() {
                *first ^= 0xff;
            }
        }
    }
    let cut = match (&reply.file, whole_body || range_note.is_none()) {
        (Some(file), true) => state.truncate.lock().expect("truncate").remove(file),
        _ => None,
    };
    match cut {
        Some(bytes) => {
            stream.write_all(&reply.body[..bytes.min(reply.body.len())])?;
            stream.flush()?;
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        None => {
            stream.write_all(&reply.body)?;
            stream.flush()
        }
    }
}

// ------------------------------------------------------------------ fixtures

/// A tiny Llama-architecture checkpoint (small vocabulary) as file bytes:
/// config.json and safetensors in `shards` files, plus tokenizer files.
fn tiny_files(shards: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ft_model::tiny::tiny_mistral_config();
    config.vocab_size = 256;
    config.max_position_embeddings = Some(256);
    let weights = ft_model::tiny::random_weights(&config, seed).expect("weights");
    ft_model::tiny::write_hf_dir(dir.path(), &config, &weights, shards).expect("written");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path()).expect("read dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        files.insert(name, std::fs::read(entry.path()).expect("read"));
    }
    files.insert(
        "tokenizer.json".into(),
        br#"{"version":"1.0","model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#
            .to_vec(),
    );
    files.insert(
        "tokenizer_config.json".into(),
        br#"{"bos_token":"<s>","eos_token":"</s>"}"#.to_vec(),
    );
    files
}

/// The tiny model plus what a real repository also holds and ft must not fetch.
fn served_tiny(shards: usize) -> ServedRepo {
    let mut files = tiny_files(shards, 7);
    files.insert(
        "consolidated.safetensors".into(),
        b"mistral-format duplicate weights: never to be fetched".to_vec(),
    );
    files.insert("README.md".into(), b"# tiny".to_vec());
    files.insert("pytorch_model.bin".into(), b"pickled weights".to_vec());
    ServedRepo {
        commit: COMMIT.into(),
        token: None,
        files,
    }
}

fn options(endpoint: &str, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_string(),
        cache_dir: cache.to_path_buf(),
        token: None,
        token_source: None,
        offline: false,
        refresh: false,
        progress: false,
        retries: 0,
    }
}

fn id(spec: &str) -> HubId {
    HubId::parse(spec).expect("a Hub id")
}

/// An endpoint where nothing listens.
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

fn assert_no_unneeded_requests(hub: &TestHub) {
    for request in hub.requests() {
        for never in ["consolidated", "README", "pytorch_model"] {
            assert!(!request.path.contains(never), "requested {request:?}");
        }
    }
}

/// Environment variables are process-global: tests that set them hold this
/// lock and restore the previous values when done.
static ENV_LOCK: Mutex<()> = Mutex::new(());

struct EnvGuard {
    saved: Vec<(String, Option<std::ffi::OsString>)>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl EnvGuard {
    fn new() -> Self {
        Self {
            saved: Vec::new(),
            _lock: ENV_LOCK
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }

    fn set(&mut self, name: &str, value: Option<&str>) {
        if !self.saved.iter().any(|(saved, _)| saved == name) {
            self.saved.push((name.to_string(), std::env::var_os(name)));
        }
        // SAFETY: every test that touches the environment holds ENV_LOCK.
        match value {
            Some(value) => unsafe { std::env::set_var(name, value) },
            None => unsafe { std::env::remove_var(name) },
        }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (name, value) in self.saved.drain(..) {
            // SAFETY: as in `set`.
            match value {
                Some(value) => unsafe { std::env::set_var(&name, value) },
                None => unsafe { std::env::remove_var(&name) },
            }
        }
    }
}

/// Writes a cache exactly as huggingface_hub does: blobs named by etag,
/// snapshot entries as relative symlinks into blobs, refs/main.
fn prefill_cache(cache: &Path, repo: &str, files: &BTreeMap<String, Vec<u8>>, with_ref: bool) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let blobs = repo_dir.join("blobs");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&blobs).expect("blobs");
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    for (name, bytes) in files {
        let etag = if is_lfs(name) {
            sha256_hex(bytes)
        } else {
            git_etag(bytes)
        };
        std::fs::write(blobs.join(&etag), bytes).expect("blob");
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&etag), snapshot.join(name))
            .expect("symlink");
    }
    if with_ref {
        std::fs::create_dir_all(repo_dir.join("refs")).expect("refs");
        std::fs::write(repo_dir.join("refs").join("main"), COMMIT).expect("ref");
    }
}

// --------------------------------------------------------------------- tests

#[test]
fn first_run_downloads_into_the_cache_layout_then_no_request() {
    let served = served_tiny(2);
    let hub = TestHub::start(BTreeMap::from([("org/tiny".to_string(), served.clone())]));
    let cache = tempfile::tempdir().expect("tempdir");
    let client = HubClient::new(options(&hub.endpoint, cache.path()));

    let model = client.resolve(&id("org/tiny")).expect("downloads");
    let repo_dir = cache.path().join("models--org--tiny");
    assert_eq!(model.dir, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(model.commit, COMMIT);
    assert_eq!(model.id, "org/tiny");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).expect("ref"),
        COMMIT
    );
    let index: serde_json::Value =
        serde_json::from_slice(&served.files["model.safetensors.index.json"]).expect("index");
    let shards: BTreeSet<String> = index["weight_map"]
        .as_object()
        .expect("map")
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert_eq!(shards.len(), 2);
    let mut expected: Vec<String> = shards.into_iter().collect();
    expected.extend(
        [
            "config.json",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
        .map(String::from),
    );
    for file in &expected {
        let link = model.dir.join(file);
        let target = std::fs::read_link(&link).expect("a symlink");
        let bytes = &served.files[file];
        let etag = if is_lfs(file) {
            sha256_hex(bytes)
        } else {
            git_etag(bytes)
        };
        assert_eq!(target, Path::new("../../blobs").join(&etag), "{file}");
        assert_eq!(&std::fs::read(&link).expect("read"), bytes, "{file}");
    }
    let mut listed: Vec<String> = std::fs::read_dir(&model.dir)
        .expect("snapshot")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "only what loading needs");
    assert_no_unneeded_requests(&hub);
    // generation_config.json and chat_template.jinja were asked for (404: fine).
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.path.ends_with("generation_config.json")));

    // Second run: the complete snapshot is used with no request at all.
    hub.clear();
    let again = client.resolve(&id("org/tiny")).expect("cached");
    assert_eq!(again.dir, model.dir);
    let again = client
        .resolve(&id(&format!("org/tiny@{COMMIT}")))
        .expect("by commit");
    assert_eq!(again.dir, model.dir);
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // Offline, with nothing listening: the cache alone.
    let mut offline = options(&dead_endpoint(), cache.path());
    offline.offline = true;
    let cached = HubClient::new(offline)
        .resolve(&id("org/tiny@main"))
        .expect("offline");
    assert_eq!(cached.dir, model.dir);
    assert_eq!(cached.spec(), "org/tiny@main");

    // The snapshot loads.
    let loaded = ft_model::load_model(model.dir.to_str().expect("utf-8"), &LoadOptions::default())
        .expect("loads");
    assert_eq!(loaded.args.num_layers, 2);
}

#[test]
fn single_file_weights_and_revision_pinning() {
    let hub = TestHub::start(BTreeMap::from([("org/one".to_string(), served_tiny(1))]));
    let cache = tempfile::tempdir().expect("tempdir");
    let client = HubClient::new(options(&hub.endpoint, cache.path()));
    let model = client
        .resolve(&id(&format!("org/one@{COMMIT}")))
        .expect("downloads");
    assert!(model.dir.join("model.safetensors").is_file());
    assert!(!model.dir.join("model.safetensors.index.json").exists());
    let repo_dir = cache.path().join("models--org--one");
    // A commit revision gets no ref, as with huggingface_hub.
    assert!(!repo_dir.join("refs").join(COMMIT).exists());
    assert_no_unneeded_requests(&hub);
    // Every file after config.json is asked for at the resolved commit.
    let requests = hub.requests();
    assert!(requests
        .iter()
        .filter(|r| r.path.contains("/resolve/"))
        .all(|r| r.path.contains(&format!("/resolve/{COMMIT}/"))));
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let served = served_tiny(1);
    let size = served.files["model.safetensors"].len();
    let hub = TestHub::start(BTreeMap::from([("org/tiny".to_string(), served)]));
    let cache = tempfile::tempdir().expect("tempdir");
    let client = HubClient::new(options(&hub.endpoint, cache.path()));

    // The connection drops half-way: a located error, the part kept.
    let half = size / 2;
    hub.truncate_once("model.safetensors", half);
    let error = client.resolve(&id("org/tiny")).expect_err("interrupted");
    assert!(matches!(error, Error::HubDownload { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("model.safetensors"), "{message}");
    assert!(message.contains("run again to resume"), "{message}");
    let blobs = cache.path().join("models--org--tiny/blobs");
    let part = std::fs::read_dir(&blobs)
        .expect("blobs")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "part"))
        .expect("a .part file");
    assert_eq!(std::fs::metadata(&part).expect("part").len(), half as u64);

    // The next run asks for the rest only.
    hub.clear();
    let model = client.resolve(&id("org/tiny")).expect("resumes");
    let requests = hub.requests();
    let wanted = format!("bytes={half}-");
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.range.as_deref() == Some(wanted.as_str())),
        "{requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.path.starts_with("/cdn/") && r.range.as_deref() == Some("bytes=0-")),
        "downloaded from the start again: {requests:?}"
    );
    assert!(model.dir.join("model.safetensors").is_file());
    assert!(!part.exists());
}

#[test]
fn retries_resume_within_one_run() {
    let served = served_tiny(1);
    let size = served.files["model.safetensors"].len();
    let hub = TestHub::start(BTreeMap::from([("org/tiny".to_string(), served)]));
    let cache = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&hub.endpoint, cache.path());
    opts.retries = 2;
    hub.truncate_once("model.safetensors", size / 3);
    let model = HubClient::new(opts)
        .resolve(&id("org/tiny"))
        .expect("retried");
    assert!(model.dir.join("model.safetensors").is_file());
    let wanted = format!("bytes={}-", size / 3);
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.range.as_deref() == Some(wanted.as_str())));
}

#[test]
fn a_gated_repo_needs_a_token() {
    let mut served = served_tiny(1);
    served.token = Some("hf_secret".into());
    let hub = TestHub::start(BTreeMap::from([("org/gated".to_string(), served)]));
    let cache = tempfile::tempdir().expect("tempdir");

    let error = HubClient::new(options(&hub.endpoint, cache.path()))
        .resolve(&id("org/gated"))
        .expect_err("refused");
    assert!(
        matches!(error, Error::HubAccess { status: 401, .. }),
        "{error}"
    );
    let message = error.to_string();
    for needle in [
        "huggingface-cli login",
        "HF_TOKEN",
        "license",
        "org/gated",
        "resolve/main/config.json",
    ] {
        assert!(message.contains(needle), "`{needle}` in {message}");
    }

    let mut wrong = options(&hub.endpoint, cache.path());
    wrong.token = Some("hf_wrong".into());
    wrong.token_source = Some("HF_TOKEN".into());
    let message = HubClient::new(wrong)
        .resolve(&id("org/gated"))
        .expect_err("refused")
        .to_string();
    assert!(message.contains("does not grant access"), "{message}");

    let mut right = options(&hub.endpoint, cache.path());
    right.token = Some("hf_secret".into());
    right.token_source = Some("HF_TOKEN".into());
    hub.clear();
    let model = HubClient::new(right)
        .resolve(&id("org/gated"))
        .expect("with the token");
    assert!(model.dir.join("model.safetensors").is_file());
    assert!(hub
        .requests()
        .iter()
        .filter(|r| r.path.contains("/resolve/"))
        .all(|r| r.auth.as_deref() == Some("Bearer hf_secret")));
}

#[test]
fn missing_repo_revision_and_file_are_located() {
    let mut no_tokenizer = served_tiny(1);
    no_tokenizer.files.remove("tokenizer.json");
    let mut lost_shard = served_tiny(2);
    let shard = lost_shard
        .files
        .keys()
        .find(|name| name.starts_with("model-"))
        .cloned()
        .expect("a shard");
    lost_shard.files.remove(&shard);
    let hub = TestHub::start(BTreeMap::from([
        ("org/tiny".to_string(), served_tiny(1)),
        ("org/notok".to_string(), no_tokenizer),
        ("org/lost".to_string(), lost_shard),
    ]));
    let cache = tempfile::tempdir().expect("tempdir");
    let client = HubClient::new(options(&hub.endpoint, cache.path()));

    let error = client.resolve(&id("org/nope")).expect_err("no repo");
    assert!(matches!(error, Error::HubRepoNotFound { .. }), "{error}");
    assert!(error.to_string().contains("org/nope"), "{error}");
    assert!(error.to_string().contains(&hub.endpoint), "{error}");

    let error = client.resolve(&id("org/tiny@v9")).expect_err("no revision");
    assert!(
        matches!(error, Error::HubRevisionNotFound { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("`v9`"), "{error}");

    let error = client.resolve(&id("org/notok")).expect_err("no tokenizer");
    assert!(matches!(error, Error::HubFileNotFound { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "{}/org/notok/resolve/{COMMIT}/tokenizer.json",
            hub.endpoint
        )),
        "{message}"
    );

    let error = client.resolve(&id("org/lost")).expect_err("no shard");
    assert!(matches!(error, Error::HubFileNotFound { .. }), "{error}");
    assert!(error.to_string().contains(&shard), "{error}");
    assert!(error.to_string().contains("index.json names"), "{error}");
}

#[test]
fn no_network_and_offline_without_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let error = HubClient::new(options(&dead_endpoint(), cache.path()))
        .resolve(&id("org/tiny"))
        .expect_err("nothing listens");
    assert!(matches!(error, Error::HubNetwork { .. }), "{error}");
    assert!(error.to_string().contains("HF_HUB_OFFLINE=1"), "{error}");

    let mut offline = options(&dead_endpoint(), cache.path());
    offline.offline = true;
    let error = HubClient::new(offline)
        .resolve(&id("org/tiny"))
        .expect_err("not cached");
    assert!(
        matches!(error, Error::HubOfflineNotCached { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("HF_HUB_OFFLINE"), "{error}");
}

#[test]
fn a_cache_in_huggingface_hub_layout_is_used_without_requests() {
    let files = tiny_files(2, 11);
    let cache = tempfile::tempdir().expect("tempdir");
    prefill_cache(cache.path(), "org/prefilled", &files, true);
    let hub = TestHub::start(BTreeMap::new());

    // Online, branch `main` with a complete snapshot: no request.
    let client = HubClient::new(options(&hub.endpoint, cache.path()));
    let model = client
        .resolve(&id("org/prefilled"))
        .expect("from the cache");
    assert_eq!(
        model.dir,
        cache
            .path()
            .join("models--org--prefilled/snapshots")
            .join(COMMIT)
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // Offline, by branch and by commit.
    let mut offline = options(&dead_endpoint(), cache.path());
    offline.offline = true;
    let offline = HubClient::new(offline);
    assert_eq!(
        offline
            .resolve(&id("org/prefilled@main"))
            .expect("main")
            .dir,
        model.dir
    );
    // A commit needs no ref at all.
    std::fs::remove_file(cache.path().join("models--org--prefilled/refs/main")).expect("rm ref");
    assert_eq!(
        offline
            .resolve(&id(&format!("org/prefilled@{COMMIT}")))
            .expect("commit")
            .dir,
        model.dir
    );
    let error = offline
        .resolve(&id("org/prefilled"))
        .expect_err("no ref now");
    assert!(
        matches!(error, Error::HubOfflineNotCached { .. }),
        "{error}"
    );

    // An incomplete snapshot (a shard missing) is not taken for complete.
    let mut partial = files.clone();
    let shard = partial
        .keys()
        .find(|name| name.starts_with("model-"))
        .cloned()
        .expect("a shard");
    partial.remove(&shard);
    prefill_cache(cache.path(), "org/partial", &partial, true);
    let error = offline.resolve(&id("org/partial")).expect_err("incomplete");
    assert!(error.to_string().contains(&shard), "{error}");
}

#[test]
fn load_model_by_hub_id_through_the_environment() {
    let served = served_tiny(2);
    let hub = TestHub::start(BTreeMap::from([("org/tiny".to_string(), served)]));
    let root = tempfile::tempdir().expect("tempdir");
    let cache = root.path().join("hub");
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    prefill_cache(&cache, "org/prefilled", &tiny_files(1, 3), true);

    let mut env = EnvGuard::new();
    env.set("HF_HOME", home.to_str());
    env.set("HF_HUB_CACHE", cache.to_str());
    env.set("HF_ENDPOINT", Some(&hub.endpoint));
    env.set("HF_TOKEN", None);
    env.set("HUGGING_FACE_HUB_TOKEN", None);
    env.set("HF_TOKEN_PATH", None);
    env.set("HF_HUB_OFFLINE", None);

    // Downloaded on first use, by `load_model` itself.
    let model = ft_model::load_model("org/tiny@main", &LoadOptions::default()).expect("loads");
    assert_eq!(model.args.num_layers, 2);
    assert_no_unneeded_requests(&hub);
    let source = ModelSource::resolve("org/tiny@main").expect("resolves");
    let hub_model = source.hub_id().expect("a Hub snapshot");
    assert_eq!(hub_model.id, "org/tiny");
    assert_eq!(hub_model.commit, COMMIT);

    // The token file `huggingface-cli login` writes, then HF_TOKEN over it.
    std::fs::write(home.join("token"), "hf_from_file\n").expect("token file");
    let options = HubOptions::from_env();
    assert_eq!(options.token.as_deref(), Some("hf_from_file"));
    assert_eq!(options.cache_dir, cache);
    assert_eq!(options.endpoint, hub.endpoint);
    env.set("HF_TOKEN", Some("hf_from_env"));
    assert_eq!(HubOptions::from_env().token.as_deref(), Some("hf_from_env"));

    // HF_HUB_OFFLINE=1, nothing listening: the pre-filled cache loads by id.
    env.set("HF_HUB_OFFLINE", Some("1"));
    env.set("HF_ENDPOINT", Some(&dead_endpoint()));
    hub.clear();
    let model = ft_model::load_model("org/prefilled", &LoadOptions::default()).expect("offline");
    assert_eq!(model.args.num_layers, 2);
    ft_model::load_model("org/tiny", &LoadOptions::default()).expect("offline, downloaded");
    assert!(hub.requests().is_empty());
    let error = ft_model::load_model("org/absent", &LoadOptions::default()).expect_err("absent");
    assert!(
        matches!(error, Error::HubOfflineNotCached { .. }),
        "{error}"
    );

    // Paths stay paths: no Hub lookup, the old error.
    for path in ["./org/tiny", "src/nothing-here", "a/b/c"] {
        let error = ModelSource::resolve(path).expect_err("not found");
        assert!(matches!(error, Error::ModelNotFound(..)), "{path}: {error}");
    }
}

#[test]
fn an_incomplete_cache_is_completed_with_only_the_missing_bytes() {
    let files = tiny_files(2, 5);
    let mut served = ServedRepo {
        commit: COMMIT.into(),
        token: None,
        files: files.clone(),
    };
    served
        .files
        .insert("consolidated.safetensors".into(), b"never".to_vec());
    let hub = TestHub::start(BTreeMap::from([("org/tiny".to_string(), served)]));
    let cache = tempfile::tempdir().expect("tempdir");
    prefill_cache(cache.path(), "org/tiny", &files, true);
    let repo_dir = cache.path().join("models--org--tiny");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    let shards: Vec<&String> = files
        .keys()
        .filter(|name| name.starts_with("model-"))
        .collect();
    // Shard 1: its blob is gone (a dangling link). Shard 2: its link is gone
    // but the blob is there.
    let lost_blob = sha256_hex(&files[shards[0]]);
    std::fs::remove_file(repo_dir.join("blobs").join(&lost_blob)).expect("rm blob");
    std::fs::remove_file(snapshot.join(shards[1])).expect("rm link");

    let client = HubClient::new(options(&hub.endpoint, cache.path()));
    let model = client.resolve(&id("org/tiny")).expect("completed");
    assert_eq!(model.dir, snapshot);
    for shard in &shards {
        assert_eq!(
            &std::fs::read(snapshot.join(shard)).expect("read"),
            &files[*shard]
        );
    }
    let gets: Vec<Logged> = hub
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    // Only the lost blob's bytes travelled (hf-hub probes with bytes=0-0 first).
    assert!(
        gets.iter()
            .all(|r| r.path.contains(shards[0].as_str()) || r.path.contains(&lost_blob)),
        "{gets:?}"
    );
    assert!(gets
        .iter()
        .any(|r| r.path == format!("/cdn/{lost_blob}") && r.range.as_deref() == Some("bytes=0-")));
    assert_no_unneeded_requests(&hub);
    // Complete now: no request the next time.
    hub.clear();
    client.resolve(&id("org/tiny")).expect("cached");
    assert!(hub.requests().is_empty());
}

#[test]
fn a_damaged_download_is_detected_and_removed() {
    let hub = TestHub::start(BTreeMap::from([("org/tiny".to_string(), served_tiny(1))]));
    let cache = tempfile::tempdir().expect("tempdir");
    let client = HubClient::new(options(&hub.endpoint, cache.path()));
    hub.corrupt_once("model.safetensors");
    let error = client.resolve(&id("org/tiny")).expect_err("damaged");
    assert!(matches!(error, Error::HubDownload { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("sha256"), "{message}");
    assert!(message.contains("removed, run again"), "{message}");
    let snapshot = cache
        .path()
        .join("models--org--tiny/snapshots")
        .join(COMMIT);
    assert!(std::fs::symlink_metadata(snapshot.join("model.safetensors")).is_err());
    // The next run downloads it again, intact.
    let model = client.resolve(&id("org/tiny")).expect("intact");
    assert!(model.dir.join("model.safetensors").is_file());
}

#[test]
fn shapes_and_tokenizer_come_without_the_weights() {
    let served = served_tiny(2);
    let hub = TestHub::start(BTreeMap::from([("org/tiny".to_string(), served)]));
    let cache = tempfile::tempdir().expect("tempdir");
    let client = HubClient::new(options(&hub.endpoint, cache.path()));

    let dir = client
        .resolve_without_weights(&id("org/tiny"))
        .expect("small files");
    assert!(dir.join("config.json").is_file());
    assert!(dir.join("tokenizer.json").is_file());
    let weights_requested = hub
        .requests()
        .iter()
        .any(|request| request.path.ends_with(".safetensors") || request.path.starts_with("/cdn/"));
    assert!(!weights_requested, "{:?}", hub.requests());
    assert!(client.cached(&id("org/tiny")).is_none(), "no weights yet");

    // Asked again: from the cache, no request.
    hub.clear();
    assert_eq!(
        client
            .resolve_without_weights(&id("org/tiny"))
            .expect("cached"),
        dir
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // The full resolve adds the weights to the same snapshot.
    let model = client.resolve(&id("org/tiny")).expect("weights");
    assert_eq!(model.dir, dir);
    assert!(client.cached(&id("org/tiny")).is_some());
    assert_no_unneeded_requests(&hub);
}
