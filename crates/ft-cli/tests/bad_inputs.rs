//! The bad-inputs corpus (tests/fixtures/bad-inputs/manifest.toml): every
//! broken, truncated or mismatched file given to the `ft` commands that read
//! it must end with the expected exit code and a message naming what is wrong
//! and where, never a panic, an internal error or a signal from native code.
//! Every case runs; the failures are reported together.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ft_command, root};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Longest a single case may run before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    input: String,
    args: Vec<String>,
    #[serde(default = "user_error")]
    exit: i32,
    #[serde(default)]
    stderr: Vec<String>,
    #[serde(default)]
    stdout: Vec<String>,
    #[serde(default)]
    needs_default_model: bool,
}

fn user_error() -> i32 {
    1
}

fn corpus_dir() -> PathBuf {
    root().join("crates/ft-cli/tests/fixtures/bad-inputs")
}

fn default_gguf() -> PathBuf {
    ft_config::testing::models_dir().join(ft_config::testing::DEFAULT_MODEL_FILE)
}

/// Inputs made at test time, each once per run.
struct Inputs {
    dir: PathBuf,
    tiny: Option<PathBuf>,
    tiny_adapter: Option<PathBuf>,
    made: HashMap<String, PathBuf>,
}

impl Inputs {
    fn tiny(&mut self) -> PathBuf {
        if self.tiny.is_none() {
            let dir = self.dir.join("tiny-model");
            write_tiny_model(&dir, 64, 1);
            self.tiny = Some(dir);
        }
        self.tiny.clone().unwrap()
    }

    fn tiny_adapter(&mut self) -> PathBuf {
        if self.tiny_adapter.is_none() {
            let model = self.tiny();
            let dir = self.dir.join("tiny-adapter");
            write_adapter(&model, &dir);
            self.tiny_adapter = Some(dir);
        }
        self.tiny_adapter.clone().unwrap()
    }

    /// The path `{input}` stands for.
    fn get(&mut self, spec: &str) -> PathBuf {
        if let Some(path) = self.made.get(spec) {
            return path.clone();
        }
        let (kind, what) = spec.split_once(':').expect("input is KIND:WHAT");
        let target = self.dir.join(format!("input-{}", self.made.len()));
        let path = match kind {
            "file" => corpus_dir().join(what),
            "tiny-model" => {
                copy_dir(&self.tiny(), &target);
                mutate_model(&target, what);
                target
            }
            "tiny-adapter" => {
                if what == "for-a-32-hidden-model" {
                    let other = self.dir.join("tiny-model-32");
                    write_tiny_model(&other, 32, 1);
                    write_adapter(&other, &target);
                } else {
                    copy_dir(&self.tiny_adapter(), &target);
                    mutate_adapter(&target, what);
                }
                target
            }
            "gguf" => {
                std::fs::create_dir_all(&target).unwrap();
                let file = target.join("model.gguf");
                let tiny = self.tiny();
                make_gguf(&file, what, &tiny);
                file
            }
            "data" => {
                std::fs::create_dir_all(&target).unwrap();
                make_data(&target, what)
            }
            other => panic!("unknown input kind {other}"),
        };
        self.made.insert(spec.to_string(), path.clone());
        path
    }
}

/// The tiny Llama the corpus breaks: random weights, 2 layers, `hidden`
/// wide, the 259-token byte-level tokenizer of tiny-tokenizer/.
fn write_tiny_model(dir: &Path, hidden: usize, shards: usize) {
    let mut config = ft_model::tiny::tiny_mistral_config();
    config.architectures = vec!["LlamaForCausalLM".into()];
    config.model_type = Some("llama".into());
    config.vocab_size = 320;
    config.hidden_size = hidden;
    config.intermediate_size = 2 * hidden;
    config.num_attention_heads = hidden / 8;
    config.num_key_value_heads = Some(2);
    config.head_dim = Some(8);
    config.tie_word_embeddings = true;
    config.bos_token_id = None;
    config.eos_token_id = Some(ft_model::config::EosIds::One(258));
    config.max_position_embeddings = Some(512);
    let weights = ft_model::tiny::random_weights(&config, 3).unwrap();
    ft_model::tiny::write_hf_dir(dir, &config, &weights, shards).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            corpus_dir().join("tiny-tokenizer").join(file),
            dir.join(file),
        )
        .unwrap();
    }
}

/// A rank-2 LoRA adapter on q/v of both layers of the model in `model_dir`.
fn write_adapter(model_dir: &Path, dir: &Path) {
    let model = ft_model::load_model(model_dir.to_str().unwrap(), &Default::default()).unwrap();
    let spec = ft_lora::LoraSpec {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![ft_model::Projection::Q, ft_model::Projection::V],
        layers: vec![0, 1],
        dora: false,
    };
    let adapters = ft_lora::LoraAdapters::init(&model, spec, 5).unwrap();
    adapters
        .save(
            dir,
            ft_lora::AdapterFormat::Mlx,
            model_dir.to_str().unwrap(),
        )
        .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A safetensors file as its JSON header and data section.
fn read_safetensors(path: &Path) -> (Value, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    (header, bytes[8 + length..].to_vec())
}

fn write_safetensors(path: &Path, header: &Value, data: &[u8]) {
    let header = header.to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Damages a safetensors file the way `what` says; false when `what` is
/// not a safetensors damage.
fn damage_safetensors(path: &Path, what: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    match what {
        "safetensors-truncate-half" => std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap(),
        "safetensors-truncate-100" => std::fs::write(path, &bytes[..100]).unwrap(),
        "safetensors-empty" => std::fs::write(path, b"").unwrap(),
        "safetensors-random-bytes" => {
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            let noise: Vec<u8> = (0..4096)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            std::fs::write(path, noise).unwrap();
        }
        "safetensors-header-not-json" => {
            let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let mut broken = bytes.clone();
            // Cut the JSON header short by overwriting its tail with spaces.
            for byte in &mut broken[8 + length / 2..8 + length] {
                *byte = b' ';
            }
            std::fs::write(path, broken).unwrap();
        }
        _ => return false,
    }
    true
}

fn mutate_model(dir: &Path, what: &str) {
    let weights = dir.join("model.safetensors");
    if damage_safetensors(&weights, what) {
        return;
    }
    let edit_config = |edit: &dyn Fn(&mut Value)| {
        let path = dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    };
    let edit_tokenizer_config = |edit: &dyn Fn(&mut Value)| {
        let path = dir.join("tokenizer_config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(path, config.to_string()).unwrap();
    };
    let edit_header = |edit: &dyn Fn(&mut Value, &mut Vec<u8>)| {
        let (mut header, mut data) = read_safetensors(&weights);
        edit(&mut header, &mut data);
        write_safetensors(&weights, &header, &data);
    };
    let truncate = |path: &Path, keep: usize| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..keep.min(bytes.len())]).unwrap();
    };
    match what {
        "safetensors-dtype-F99" => edit_header(&|header, _| {
            header["model.embed_tokens.weight"]["dtype"] = json!("F99");
        }),
        "safetensors-shape-too-big" => edit_header(&|header, _| {
            header["model.embed_tokens.weight"]["shape"] = json!([320, 6400]);
        }),
        "safetensors-negative-shape" => edit_header(&|header, _| {
            header["model.embed_tokens.weight"]["shape"] = json!([-320, 64]);
        }),
        "safetensors-drop-tensor" => edit_header(&|header, _| {
            header
                .as_object_mut()
                .unwrap()
                .remove("model.layers.1.mlp.up_proj.weight");
        }),
        "index-not-json" | "index-missing-shard" => {
            std::fs::remove_file(&weights).unwrap();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "safetensors") {
                    std::fs::remove_file(path).unwrap();
                }
            }
            // The same model in two shards with an index.
            let config: Value =
                serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
            let config: ft_model::config::HfConfig = serde_json::from_value(config).unwrap();
            let tensors = ft_model::tiny::random_weights(&config, 3).unwrap();
            ft_model::tiny::write_hf_dir(dir, &config, &tensors, 2).unwrap();
            if what == "index-not-json" {
                truncate(&dir.join("model.safetensors.index.json"), 40);
            } else {
                std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
            }
        }
        "config-hidden-size-string" => edit_config(&|c| c["hidden_size"] = json!("64")),
        "config-hidden-size-48" => edit_config(&|c| {
            c["hidden_size"] = json!(48);
            c["num_attention_heads"] = json!(6);
        }),
        "config-truncated" => truncate(&dir.join("config.json"), 100),
        "config-missing" => std::fs::remove_file(dir.join("config.json")).unwrap(),
        "config-negative-layers" => edit_config(&|c| c["num_hidden_layers"] = json!(-3)),
        "config-zero-heads" => edit_config(&|c| c["num_attention_heads"] = json!(0)),
        "config-architecture-gpt2" => {
            edit_config(&|c| c["architectures"] = json!(["GPT2LMHeadModel"]))
        }
        "tokenizer-truncated" => truncate(&dir.join("tokenizer.json"), 1000),
        "tokenizer-empty" => truncate(&dir.join("tokenizer.json"), 0),
        "tokenizer-model-type-nope" => {
            let path = dir.join("tokenizer.json");
            let mut tokenizer: Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            tokenizer["model"]["type"] = json!("Nope");
            std::fs::write(path, tokenizer.to_string()).unwrap();
        }
        "tokenizer-missing" => std::fs::remove_file(dir.join("tokenizer.json")).unwrap(),
        "tokenizer-config-truncated" => truncate(&dir.join("tokenizer_config.json"), 60),
        "tokenizer-config-template-number" => {
            edit_tokenizer_config(&|c| c["chat_template"] = json!(5))
        }
        "tokenizer-config-template-syntax-error" => edit_tokenizer_config(&|c| {
            c["chat_template"] = json!("{% for m in messages %}{{ m.content }");
        }),
        "tokenizer-config-template-runaway" => edit_tokenizer_config(&|c| {
            c["chat_template"] = json!(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            );
        }),
        "tokenizer-config-template-deep" => edit_tokenizer_config(&|c| {
            // 100,000 unary minuses: minijinja's parser recursion overflowed the stack.
            c["chat_template"] = json!(format!("{{{{ {}1 }}}}", "-".repeat(100_000)));
        }),
        other => panic!("unknown tiny-model mutation {other}"),
    }
}

fn mutate_adapter(dir: &Path, what: &str) {
    let weights = dir.join("adapters.safetensors");
    if damage_safetensors(&weights, what) {
        return;
    }
    let config_path = dir.join("adapter_config.json");
    let edit_config = |edit: &dyn Fn(&mut Value)| {
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&config_path, config.to_string()).unwrap();
    };
    match what {
        "intact" => {}
        "safetensors-extra-tensor" => {
            let (mut header, mut data) = read_safetensors(&weights);
            let start = data.len();
            data.extend(std::iter::repeat_n(0_u8, 64 * 2 * 4));
            header["model.layers.0.self_attn.k_proj.lora_a"] =
                json!({"dtype": "F32", "shape": [64, 2], "data_offsets": [start, data.len()]});
            write_safetensors(&weights, &header, &data);
        }
        "config-truncated" => {
            let text = std::fs::read(&config_path).unwrap();
            std::fs::write(&config_path, &text[..text.len() / 2]).unwrap();
        }
        "config-rank-string" => edit_config(&|c| c["lora_parameters"]["rank"] = json!("2")),
        "config-rank-negative" => edit_config(&|c| c["lora_parameters"]["rank"] = json!(-2)),
        "config-rank-fractional" => edit_config(&|c| c["lora_parameters"]["rank"] = json!(2.5)),
        "config-rank-4" => edit_config(&|c| c["lora_parameters"]["rank"] = json!(4)),
        "config-missing" => std::fs::remove_file(&config_path).unwrap(),
        "config-array" => std::fs::write(&config_path, "[1, 2, 3]\n").unwrap(),
        "config-layer-99" => edit_config(&|c| c["ft"]["layers"] = json!([0, 99])),
        "config-key-w_proj" => edit_config(&|c| {
            c["lora_parameters"]["keys"] = json!(["self_attn.q_proj", "self_attn.w_proj"]);
        }),
        other => panic!("unknown tiny-adapter mutation {other}"),
    }
}

/// Where the first tensor description of a GGUF file starts, walking the
/// metadata (an independent reader: the one under test is ft-model's).
fn gguf_tensor_infos_start(bytes: &[u8]) -> usize {
    fn skip_value(bytes: &[u8], at: &mut usize, kind: u32) {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        match kind {
            0 | 1 | 7 => *at += 1,
            2 | 3 => *at += 2,
            4..=6 => *at += 4,
            10..=12 => *at += 8,
            8 => *at += 8 + u64_at(*at) as usize,
            9 => {
                let element = u32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap());
                let count = u64_at(*at + 4);
                *at += 12;
                for _ in 0..count {
                    skip_value(bytes, at, element);
                }
            }
            other => panic!("GGUF value type {other}"),
        }
    }
    let kv_count = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let mut at = 24;
    for _ in 0..kv_count {
        let key_length = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 8 + key_length;
        let kind = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        at += 4;
        skip_value(bytes, &mut at, kind);
    }
    at
}

/// Overwrites the u32 value of the metadata entry `key` in place.
fn put_metadata_u32(bytes: &mut [u8], key: &str, value: u32) {
    let mut pattern = (key.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(key.as_bytes());
    pattern.extend_from_slice(&4_u32.to_le_bytes());
    let at = bytes
        .windows(pattern.len())
        .position(|window| window == pattern.as_slice())
        .unwrap_or_else(|| panic!("no u32 metadata {key}"))
        + pattern.len();
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn make_gguf(file: &Path, what: &str, tiny: &Path) {
    if what == "empty" {
        std::fs::write(file, b"").unwrap();
        return;
    }
    if what == "safetensors-renamed" {
        std::fs::copy(tiny.join("model.safetensors"), file).unwrap();
        return;
    }
    let mut bytes = std::fs::read(default_gguf()).unwrap();
    let put = |bytes: &mut Vec<u8>, at: usize, value: &[u8]| {
        bytes[at..at + value.len()].copy_from_slice(value);
    };
    if let Some(keep) = what.strip_prefix("truncate-") {
        bytes.truncate(keep.parse().unwrap());
    } else {
        let first = gguf_tensor_infos_start(&bytes);
        let name_length = u64::from_le_bytes(bytes[first..first + 8].try_into().unwrap()) as usize;
        let ndims_at = first + 8 + name_length;
        let ndims = u32::from_le_bytes(bytes[ndims_at..ndims_at + 4].try_into().unwrap()) as usize;
        let type_at = ndims_at + 4 + 8 * ndims;
        match what {
            "version-9" => put(&mut bytes, 4, &9_u32.to_le_bytes()),
            "kv-count-huge" => put(&mut bytes, 16, &(u64::MAX / 3).to_le_bytes()),
            "tensor-count-huge" => put(&mut bytes, 8, &(1_u64 << 40).to_le_bytes()),
            "first-key-length-huge" => put(&mut bytes, 24, &(1_u64 << 50).to_le_bytes()),
            "first-tensor-type-99" => put(&mut bytes, type_at, &99_u32.to_le_bytes()),
            "first-tensor-ndims-9" => put(&mut bytes, ndims_at, &9_u32.to_le_bytes()),
            "first-tensor-offset-huge" => {
                put(&mut bytes, type_at + 4, &(1_u64 << 40).to_le_bytes())
            }
            "head-count-7-kv-1" => {
                put_metadata_u32(&mut bytes, "llama.attention.head_count", 7);
                put_metadata_u32(&mut bytes, "llama.attention.head_count_kv", 1);
            }
            other => panic!("unknown gguf mutation {other}"),
        }
    }
    std::fs::write(file, bytes).unwrap();
}

fn make_data(dir: &Path, what: &str) -> PathBuf {
    match what {
        "one-line-200mb" => {
            // 200 MB in one JSON line, written in pieces: never held twice.
            let path = dir.join("line-200mb.jsonl");
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            file.write_all(br#"{"prompt": "Summarize.", "completion": ""#)
                .unwrap();
            let chunk = "lorem ipsum ".repeat(10_000);
            for _ in 0..200_000_000_usize.div_ceil(chunk.len()) {
                file.write_all(chunk.as_bytes()).unwrap();
            }
            file.write_all(b"\"}\n").unwrap();
            file.flush().unwrap();
            path
        }
        other => panic!("unknown data generator {other}"),
    }
}

/// What one run of `ft` did.
struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    seconds: f64,
}

fn run_ft(args: &[String], dir: &Path) -> Outcome {
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let started = Instant::now();
    let mut child = ft_command(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start ft");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > CASE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap()).into_owned();
    let stdout = String::from_utf8_lossy(&std::fs::read(&stdout_path).unwrap()).into_owned();
    let seconds = started.elapsed().as_secs_f64();
    match status {
        None => Outcome {
            code: None,
            signal: None,
            stdout,
            stderr: format!("(timed out after {CASE_TIMEOUT:?})\n{stderr}"),
            seconds,
        },
        Some(status) => {
            use std::os::unix::process::ExitStatusExt;
            Outcome {
                code: status.code(),
                signal: status.signal(),
                stdout,
                stderr,
                seconds,
            }
        }
    }
}

/// Everything wrong with one case's outcome (empty: it passed).
fn problems(case: &Case, outcome: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    match (outcome.code, outcome.signal) {
        (_, Some(signal)) => problems.push(format!(
            "killed by signal {signal} (native crash or abort), expected exit {}",
            case.exit
        )),
        (None, None) => problems.push("did not finish".into()),
        (Some(code), _) if code != case.exit => {
            let meaning = match code {
                101 => " (a panic)",
                2 => " (reported as an internal error)",
                _ => "",
            };
            problems.push(format!("exit code {code}{meaning}, expected {}", case.exit));
        }
        _ => {}
    }
    if outcome.stderr.contains("panicked") {
        problems.push("stderr reports a panic".into());
    }
    for fragment in &case.stderr {
        if !outcome.stderr.contains(fragment.as_str()) {
            problems.push(format!("stderr lacks {fragment:?}"));
        }
    }
    for fragment in &case.stdout {
        if !outcome.stdout.contains(fragment.as_str()) {
            problems.push(format!("stdout lacks {fragment:?}"));
        }
    }
    problems
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let kept = &all[all.len().saturating_sub(lines)..];
    kept.iter()
        .map(|line| {
            let short: String = line.chars().take(400).collect();
            format!("      | {short}\n")
        })
        .collect()
}

#[test]
fn every_bad_input_gives_a_located_error_and_exit_code_1() {
    let manifest: Manifest = toml::from_str(
        &std::fs::read_to_string(corpus_dir().join("manifest.toml")).expect("manifest"),
    )
    .expect("manifest.toml parses");
    let mut names = std::collections::HashSet::new();
    for case in &manifest.case {
        assert!(names.insert(&case.name), "duplicate case {}", case.name);
    }
    let temp = tempfile::tempdir().unwrap();
    let mut inputs = Inputs {
        dir: temp.path().to_path_buf(),
        tiny: None,
        tiny_adapter: None,
        made: HashMap::new(),
    };
    // BAD_INPUTS_ONLY=fragment runs the cases whose name contains it (by hand).
    let only = std::env::var("BAD_INPUTS_ONLY").unwrap_or_default();
    // Cases that need the default model: without it a failure under CI, else
    // those cases are skipped and the skip recorded.
    let has_default_model = manifest
        .case
        .iter()
        .any(|case| case.needs_default_model && case.name.contains(&only))
        && ft_config::testing::default_model().is_some();
    let started = Instant::now();
    let mut failures = String::new();
    let (mut passed, mut skipped) = (0, 0);
    for case in &manifest.case {
        if !case.name.contains(&only) {
            skipped += 1;
            continue;
        }
        if case.needs_default_model && !has_default_model {
            println!("skip {}: the default model is absent", case.name);
            skipped += 1;
            continue;
        }
        let input = inputs.get(&case.input);
        let tiny = inputs.tiny();
        let tiny_adapter = inputs.tiny_adapter();
        let out = temp.path().join(format!("out-{}", case.name));
        let args: Vec<String> = case
            .args
            .iter()
            .map(|arg| {
                arg.replace("{input}", input.to_str().unwrap())
                    .replace("{tiny_adapter}", tiny_adapter.to_str().unwrap())
                    .replace("{tiny}", tiny.to_str().unwrap())
                    .replace("{corpus}", corpus_dir().to_str().unwrap())
                    .replace("{out}", out.to_str().unwrap())
            })
            .collect();
        let outcome = run_ft(&args, temp.path());
        let found = problems(case, &outcome);
        println!(
            "{:<5} {:<50} exit {:?}{} in {:.2}s",
            if found.is_empty() { "ok" } else { "FAIL" },
            case.name,
            outcome.code,
            outcome
                .signal
                .map(|s| format!(" signal {s}"))
                .unwrap_or_default(),
            outcome.seconds
        );
        if found.is_empty() {
            passed += 1;
        } else {
            let _ = writeln!(
                failures,
                "\n  {}: ft {}\n    - {}\n    stdout:\n{}    stderr:\n{}",
                case.name,
                args.join(" "),
                found.join("\n    - "),
                tail(&outcome.stdout, 4),
                tail(&outcome.stderr, 6)
            );
        }
    }
    let total = manifest.case.len();
    println!(
        "{passed} of {total} cases passed, {skipped} skipped, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} bad-input cases failed:{failures}",
        total - passed - skipped
    );
}
