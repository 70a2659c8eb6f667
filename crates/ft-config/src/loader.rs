//! Layering: defaults < `extends` chain < config file < environment <
//! `--set`, merged with figment, with the provenance of every value.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml, Yaml};
use figment::value::{Dict, Empty, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::config::Config;
use crate::schema::{self, Kind};
use crate::validate::{
    cross_rules, key_path, Checker, ValidationError, ValidationErrorKind, ValidationErrors,
    EXCLUSIVE_PAIRS,
};
use crate::values::TargetModules;
use crate::{Error, Result};

/// Prefix of the environment variables that set keys: `FT_SECTION__KEY`.
pub const DEFAULT_ENV_PREFIX: &str = "FT_";

/// Where an effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The built-in default.
    Default,
    /// A config file (or text loaded with [`ConfigLoader::toml_str`]).
    File {
        /// The file, as given or as resolved from an `extends`.
        path: PathBuf,
        /// 0 for the file given to the loader, 1 for the file it extends, and
        /// so on.
        depth: usize,
    },
    /// An environment variable.
    Env {
        /// The variable's name, e.g. `FT_TRAINING__BATCH_SIZE`.
        var: String,
    },
    /// A `--set KEY=VALUE` override.
    Set {
        /// The argument as given, e.g. `training.batch_size=8`.
        arg: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, depth: 0 } => write!(f, "file {}", path.display()),
            Source::File { path, depth } => {
                write!(f, "file {} (extends depth {depth})", path.display())
            }
            Source::Env { var } => write!(f, "env {var}"),
            Source::Set { arg } => write!(f, "--set {arg}"),
        }
    }
}

/// A configuration with the origin of each of its values.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConfig {
    /// The effective, validated configuration.
    pub config: Config,
    /// For every set key path (e.g. `training.batch_size`), where its value
    /// came from. Unset optional keys have no entry.
    pub provenance: BTreeMap<String, Source>,
}

impl LoadedConfig {
    /// Where the value of a key path came from; `None` for unset or unknown
    /// keys.
    pub fn source_of(&self, key: &str) -> Option<&Source> {
        self.provenance.get(key)
    }
}

/// A config file to layer, by path or as text.
#[derive(Debug, Clone)]
enum FileInput {
    Path(PathBuf),
    Text { name: String, text: String },
}

/// Builds a [`LoadedConfig`] from layered sources.
///
/// Precedence, lowest to highest, whatever order the builder methods are
/// called in: built-in defaults; the files each config file `extends`
/// (deepest first); the config files, in the order given; environment
/// variables `FT_SECTION__KEY`; `--set section.key=value` overrides, in the
/// order given. Tables merge key by key; any other value (including arrays)
/// replaces the lower one.
///
/// Of two mutually exclusive keys (`training.steps`/`training.epochs`,
/// `scheduler.warmup_steps`/`scheduler.warmup_ratio`,
/// `data.valid`/`data.valid_split`), one set by a higher layer unsets the
/// other; both set in the same layer is an error.
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    files: Vec<FileInput>,
    env_prefix: String,
    env: Vec<(String, String)>,
    overrides: Vec<String>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    /// A loader with only the built-in defaults: no file, no environment, no
    /// overrides.
    pub fn new() -> Self {
        ConfigLoader {
            files: Vec::new(),
            env_prefix: DEFAULT_ENV_PREFIX.to_owned(),
            env: Vec::new(),
            overrides: Vec::new(),
        }
    }

    /// Adds a config file: TOML, or YAML if its name ends in `.yaml`/`.yml`.
    /// A top-level `extends = "base.toml"` layers it over another file,
    /// resolved relative to the extending file.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(FileInput::Path(path.into()));
        self
    }

    /// Adds TOML text as if it were a config file called `name`; an
    /// `extends` in it is resolved relative to the current directory.
    pub fn toml_str(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.files.push(FileInput::Text {
            name: name.into(),
            text: text.into(),
        });
        self
    }

    /// Sets the prefix of the environment variables that set keys
    /// (default [`DEFAULT_ENV_PREFIX`]).
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.env_prefix = prefix.into();
        self
    }

    /// Uses these variables as the environment (replacing any given
    /// before). Only `<prefix>SECTION__KEY` variables are read, e.g.
    /// `FT_TRAINING__BATCH_SIZE=8` or `FT_MODEL__QUANTIZATION__BITS=4`;
    /// variables with the prefix but without `__` (such as `FT_LOG`) are
    /// left alone.
    pub fn env_from<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = vars
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect();
        self
    }

    /// Uses the process environment (variables that are not UTF-8 are
    /// skipped).
    pub fn process_env(self) -> Self {
        let vars = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        self.env_from(vars)
    }

    /// Adds `--set KEY=VALUE` overrides, e.g. `training.batch_size=8`. The
    /// value is read as a TOML literal (`8`, `true`, `"text"`, `[1, 2]`,
    /// `{ bits = 4 }`) and otherwise taken as text; keys that hold text take
    /// it as given (`model.path=models/x`). A list of LoRA modules may also
    /// be written `q_proj,v_proj`.
    pub fn overrides<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.overrides
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Reads, merges and validates every layer.
    ///
    /// File problems (unreadable, unparsable, `extends` cycle) stop loading
    /// at once; every problem with the settings themselves is collected into
    /// one [`Error::Invalid`].
    pub fn load(&self) -> Result<LoadedConfig> {
        let mut errors = ValidationErrors::default();
        let layers = self.layers(&mut errors)?;

        let mut origins: HashMap<String, (usize, Source)> = HashMap::new();
        let mut figment = Figment::new();
        for (id, layer) in layers.iter().enumerate() {
            let provider = LayerProvider { id, layer };
            origins.insert(provider.name(), (layer.tier, layer.source.clone()));
            figment = figment.merge(provider);
        }
        let origin = |value: &Value| {
            let metadata = figment.get_metadata(value.tag())?;
            origins.get(metadata.name.as_ref())
        };
        let source_of = |value: &Value| origin(value).map(|(_, source)| source.clone());

        let mut root = match figment.find_value("") {
            Ok(Value::Dict(_, root)) => root,
            _ => Dict::new(),
        };
        let mut checker = Checker::new(&source_of);
        checker.check_root(&root);
        errors.extend(checker.errors);
        for path in &checker.rejected {
            remove_path(&mut root, path);
        }
        resolve_exclusive(&mut root, |value| origin(value).map(|(tier, _)| *tier));

        let set_sources = leaf_sources(&root, &source_of);
        let config: Config = match Value::from(root).deserialize() {
            Ok(config) => config,
            Err(error) => {
                // The checks above should leave nothing serde rejects; if
                // something slips through, still report it as a located error.
                errors.extend(error.into_iter().map(|error| ValidationError {
                    key: error.path.join("."),
                    kind: ValidationErrorKind::Type,
                    message: format!("{}: {}", error.path.join("."), error.kind),
                    source: None,
                }));
                return Err(errors.into());
            }
        };

        let provenance = effective_provenance(&config, &set_sources);
        errors.extend(cross_rules(&config).into_iter().map(|finding| {
            let source = provenance.get(finding.key).cloned();
            finding.into_error(source)
        }));
        errors.into_result()?;
        Ok(LoadedConfig { config, provenance })
    }

    /// Every layer in precedence order; `--set`/environment syntax problems
    /// go to `errors`, file problems are returned.
    fn layers(&self, errors: &mut ValidationErrors) -> Result<Vec<Layer>> {
        let mut layers = vec![Layer {
            source: Source::Default,
            tier: 0,
            data: defaults(),
        }];
        for input in &self.files {
            for file in read_chain(input)? {
                let tier = layers.len();
                layers.push(Layer {
                    source: Source::File {
                        path: file.path,
                        depth: file.depth,
                    },
                    tier,
                    data: file.data,
                });
            }
        }

        let env_tier = layers.len();
        let mut env: Vec<_> = self.env.iter().collect();
        env.sort();
        for (var, raw) in env {
            let source = Source::Env { var: var.clone() };
            match env_entry(&self.env_prefix, var, raw) {
                None => {}
                Some(Ok(data)) => layers.push(Layer {
                    source,
                    tier: env_tier,
                    data,
                }),
                Some(Err(message)) => errors.push(syntax_error(message, source)),
            }
        }

        let set_tier = env_tier + 1;
        for arg in &self.overrides {
            let source = Source::Set { arg: arg.clone() };
            match set_entry(arg) {
                Ok(data) => layers.push(Layer {
                    source,
                    tier: set_tier,
                    data,
                }),
                Err(message) => errors.push(syntax_error(message, source)),
            }
        }
        Ok(layers)
    }
}

fn syntax_error(message: String, source: Source) -> ValidationError {
    ValidationError {
        key: String::new(),
        kind: ValidationErrorKind::Syntax,
        message,
        source: Some(source),
    }
}

/// One source of settings: its origin, precedence class and values.
struct Layer {
    source: Source,
    /// Precedence class: layers of one tier (the environment, `--set`)
    /// count as one for mutually exclusive keys.
    tier: usize,
    data: Dict,
}

/// A layer as a figment provider. Its metadata name, unique thanks to `id`,
/// maps a merged value's tag back to the layer.
struct LayerProvider<'a> {
    id: usize,
    layer: &'a Layer,
}

impl LayerProvider<'_> {
    fn name(&self) -> String {
        format!("{} (layer {})", self.layer.source, self.id)
    }
}

impl Provider for LayerProvider<'_> {
    fn metadata(&self) -> Metadata {
        let metadata = Metadata::named(self.name());
        match &self.layer.source {
            Source::File { path, .. } => metadata.source(path.as_path()),
            _ => metadata,
        }
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.layer.data.clone()))
    }
}

/// The built-in defaults as a tree, without unset options.
fn defaults() -> Dict {
    match Value::serialize(Config::default()) {
        Ok(Value::Dict(_, mut dict)) => {
            strip_empty(&mut dict);
            dict
        }
        // Cannot happen; the serde defaults then fill in every field anyway.
        _ => Dict::new(),
    }
}

fn strip_empty(dict: &mut Dict) {
    dict.retain(|_, value| !matches!(value, Value::Empty(..)));
    for value in dict.values_mut() {
        if let Value::Dict(_, inner) = value {
            strip_empty(inner);
        }
    }
}

/// A parsed config file of an `extends` chain.
struct ChainFile {
    path: PathBuf,
    depth: usize,
    data: Dict,
}

/// Reads a config file and the files it extends, deepest base first.
fn read_chain(input: &FileInput) -> Result<Vec<ChainFile>> {
    let (mut path, mut data, mut seen) = match input {
        FileInput::Path(path) => {
            let canonical = canonicalize(path)?;
            (path.clone(), read_file(path)?, vec![canonical])
        }
        FileInput::Text { name, text } => {
            let path = PathBuf::from(name);
            let data = parse(&path, text, FileFormat::Toml)?;
            (path, data, Vec::new())
        }
    };
    let is_text = matches!(input, FileInput::Text { .. });
    let mut chain = Vec::new();
    loop {
        let extends = data.remove("extends");
        let base_dir = if is_text && chain.is_empty() {
            PathBuf::new()
        } else {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        chain.push(ChainFile {
            path: path.clone(),
            depth: chain.len(),
            data,
        });
        let target = match extends {
            None => break,
            Some(Value::String(_, target)) => base_dir.join(target),
            Some(other) => {
                return Err(Error::Parse {
                    path,
                    message: format!(
                        "`extends` must be a path (a string), got {}",
                        crate::validate::describe(&other)
                    ),
                })
            }
        };
        let canonical = canonicalize(&target)?;
        if seen.contains(&canonical) {
            let mut cycle: Vec<PathBuf> = chain.iter().map(|file| file.path.clone()).collect();
            cycle.push(target);
            return Err(Error::ExtendsCycle { chain: cycle });
        }
        seen.push(canonical);
        data = read_file(&target)?;
        path = target;
    }
    chain.reverse();
    Ok(chain)
}

fn canonicalize(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Debug, Clone, Copy)]
enum FileFormat {
    Toml,
    Yaml,
}

fn read_file(path: &Path) -> Result<Dict> {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    let format = match extension.as_deref() {
        Some("toml") => FileFormat::Toml,
        Some("yaml" | "yml") => FileFormat::Yaml,
        _ => {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
            })
        }
    };
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, format)
}

fn parse(path: &Path, text: &str, format: FileFormat) -> Result<Dict> {
    let parsed = match format {
        FileFormat::Toml => Toml::from_str::<Dict>(text).map_err(|error| error.to_string()),
        // An empty YAML document is null, not an empty mapping.
        FileFormat::Yaml if text.trim().is_empty() => Ok(Dict::new()),
        FileFormat::Yaml => Yaml::from_str::<Dict>(text).map_err(|error| error.to_string()),
    };
    parsed.map_err(|message| Error::Parse {
        path: path.to_path_buf(),
        message: message.trim_end().to_owned(),
    })
}

/// The tree set by one environment variable: `None` if the variable is not
/// a config variable, `Err` if it is malformed.
fn env_entry(prefix: &str, var: &str, raw: &str) -> Option<Result<Dict, String>> {
    let rest = var.strip_prefix(prefix)?;
    if !rest.contains("__") {
        return None;
    }
    let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if segments.iter().any(String::is_empty) {
        return Some(Err(format!(
            "environment variable {var} does not name a key: expected {prefix}SECTION__KEY, \
             e.g. {prefix}TRAINING__BATCH_SIZE"
        )));
    }
    let value = parse_text_value(&segments.join("."), raw);
    Some(Ok(nest(&segments, value)))
}

/// The tree set by one `--set KEY=VALUE` argument.
fn set_entry(arg: &str) -> Result<Dict, String> {
    let Some((key, raw)) = arg.split_once('=') else {
        return Err("--set needs KEY=VALUE, e.g. training.batch_size=8".to_owned());
    };
    let key = key.trim();
    let segments: Vec<String> = key
        .split('.')
        .map(|segment| segment.trim().to_owned())
        .collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!(
            "--set key \"{key}\" is not a dotted key path like training.batch_size"
        ));
    }
    let value = parse_text_value(&segments.join("."), raw.trim());
    Ok(nest(&segments, value))
}

/// A value given as text (environment, `--set`) for `key`.
fn parse_text_value(key: &str, raw: &str) -> Value {
    let kind = schema::field(key).map(|field| field.kind.set_kind());
    let literal = toml_literal(raw);
    if kind.is_some_and(Kind::is_textual) {
        // Text keys take the text as given, unless it is a quoted string.
        return match literal {
            Some(value @ Value::String(..)) => value,
            _ => Value::from(raw),
        };
    }
    if let Some(value) = literal {
        return value;
    }
    if matches!(kind, Some(Kind::Modules)) && raw != TargetModules::ALL_LINEAR {
        // `q_proj,v_proj` or `[q_proj, v_proj]` without quotes.
        let inner = raw.trim_start_matches('[').trim_end_matches(']');
        let names: Vec<Value> = inner
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(Value::from)
            .collect();
        return Value::from(names);
    }
    Value::from(raw)
}

/// `raw` as a TOML value literal, if it is one.
fn toml_literal(raw: &str) -> Option<Value> {
    // A line break could smuggle in further keys.
    if raw.contains(['\n', '\r']) {
        return None;
    }
    let mut parsed = Toml::from_str::<Dict>(&format!("value = {raw}")).ok()?;
    if parsed.len() != 1 {
        return None;
    }
    parsed.remove("value")
}

/// `{a: {b: value}}` for the path `[a, b]`.
fn nest(segments: &[String], value: Value) -> Dict {
    let mut value = value;
    for segment in segments.iter().skip(1).rev() {
        let mut table = Dict::new();
        table.insert(segment.clone(), value);
        value = Value::from(table);
    }
    let mut root = Dict::new();
    if let Some(first) = segments.first() {
        root.insert(first.clone(), value);
    }
    root
}

fn remove_path(dict: &mut Dict, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            dict.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(Value::Dict(_, inner)) = dict.get_mut(first) {
                remove_path(inner, rest);
            }
        }
    }
}

fn find_mut<'d>(dict: &'d mut Dict, key: &str) -> Option<&'d mut Value> {
    let mut segments = key.split('.');
    let mut value = dict.get_mut(segments.next()?)?;
    for segment in segments {
        let Value::Dict(_, inner) = value else {
            return None;
        };
        value = inner.get_mut(segment)?;
    }
    Some(value)
}

/// Whether a value counts as set for [`EXCLUSIVE_PAIRS`] (zero does not).
fn is_set(value: &Value) -> bool {
    match value {
        Value::Empty(..) => false,
        Value::Num(_, num) => num.to_f64() != Some(0.0),
        _ => true,
    }
}

/// Of two mutually exclusive keys set by different tiers, unsets the one from
/// the lower tier. Same-tier conflicts are left for the cross rules to report.
fn resolve_exclusive(root: &mut Dict, tier_of: impl Fn(&Value) -> Option<usize>) {
    for &(a, b) in EXCLUSIVE_PAIRS {
        let tier = |root: &mut Dict, key: &str| {
            let value = find_mut(root, key)?;
            is_set(value).then(|| tier_of(value)).flatten()
        };
        let (Some(tier_a), Some(tier_b)) = (tier(root, a), tier(root, b)) else {
            continue;
        };
        let loser = match tier_a.cmp(&tier_b) {
            std::cmp::Ordering::Less => a,
            std::cmp::Ordering::Greater => b,
            std::cmp::Ordering::Equal => continue,
        };
        let unset = match schema::field(loser).map(|field| field.kind) {
            Some(Kind::Optional(_)) => Value::from(Empty::None),
            _ => Value::from(0.0),
        };
        if let Some(value) = find_mut(root, loser) {
            *value = unset;
        }
    }
}

/// The source of every set leaf of a merged tree, by key path.
fn leaf_sources(
    root: &Dict,
    source_of: &dyn Fn(&Value) -> Option<Source>,
) -> BTreeMap<String, Source> {
    fn walk(
        path: &mut Vec<String>,
        dict: &Dict,
        source_of: &dyn Fn(&Value) -> Option<Source>,
        out: &mut BTreeMap<String, Source>,
    ) {
        for (name, value) in dict {
            path.push(name.clone());
            match value {
                Value::Dict(_, inner) => walk(path, inner, source_of, out),
                Value::Empty(..) => {}
                leaf => {
                    if let Some(source) = source_of(leaf) {
                        out.insert(key_path(path), source);
                    }
                }
            }
            path.pop();
        }
    }
    let mut out = BTreeMap::new();
    walk(&mut Vec::new(), root, source_of, &mut out);
    out
}

/// Provenance of every set key of the effective configuration; keys no layer
/// set (serde defaults, e.g. a quantization table's omitted `group_size`)
/// are defaults.
fn effective_provenance(
    config: &Config,
    set_sources: &BTreeMap<String, Source>,
) -> BTreeMap<String, Source> {
    let Ok(Value::Dict(_, effective)) = Value::serialize(config) else {
        return set_sources.clone();
    };
    let everything = |_: &Value| Some(Source::Default);
    leaf_sources(&effective, &everything)
        .into_keys()
        .map(|key| {
            let source = set_sources.get(&key).cloned().unwrap_or(Source::Default);
            (key, source)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::{Dtype, LoraLayers, LoraTarget, Quantization};
    use crate::{QuantSpec, TrainingLength};
    use std::fs;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write test file");
        path
    }

    fn invalid(result: Result<LoadedConfig>) -> ValidationErrors {
        match result {
            Err(Error::Invalid(errors)) => errors,
            Err(other) => panic!("expected validation errors, got {other}"),
            Ok(loaded) => panic!("expected validation errors, got {:?}", loaded.config),
        }
    }

    fn messages(errors: &ValidationErrors) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    fn file_source(path: &Path, depth: usize) -> Source {
        Source::File {
            path: path.to_path_buf(),
            depth,
        }
    }

    #[test]
    fn defaults_alone_load_with_default_provenance() {
        let loaded = ConfigLoader::new().load().expect("defaults are valid");
        assert_eq!(loaded.config, Config::default());
        assert_eq!(
            loaded.source_of("training.batch_size"),
            Some(&Source::Default)
        );
        assert_eq!(
            loaded.source_of("model.quantization"),
            Some(&Source::Default)
        );
        assert_eq!(loaded.source_of("training.epochs"), None);
        assert!(loaded
            .provenance
            .values()
            .all(|source| *source == Source::Default));
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = write(
            dir.path(),
            "base.toml",
            "[training]\nbatch_size = 2\nseed = 1\neval_every = 7\nsave_every = 9\n",
        );
        let run = write(
            dir.path(),
            "run.toml",
            "extends = \"base.toml\"\n[training]\nseed = 2\neval_every = 8\nsave_every = 10\n",
        );
        let loaded = ConfigLoader::new()
            .file(&run)
            .env_from([
                ("FT_TRAINING__EVAL_EVERY", "11"),
                ("FT_TRAINING__SAVE_EVERY", "12"),
            ])
            .overrides(["training.save_every=13"])
            .load()
            .expect("valid");
        let training = &loaded.config.training;
        assert_eq!(training.grad_accumulation, 1);
        assert_eq!(training.batch_size, 2);
        assert_eq!(training.seed, 2);
        assert_eq!(training.eval_every, 11);
        assert_eq!(training.save_every, 13);
        assert_eq!(
            loaded.source_of("training.grad_accumulation"),
            Some(&Source::Default)
        );
        assert_eq!(
            loaded.source_of("training.batch_size"),
            Some(&file_source(&base, 1))
        );
        assert_eq!(
            loaded.source_of("training.seed"),
            Some(&file_source(&run, 0))
        );
        assert_eq!(
            loaded.source_of("training.eval_every"),
            Some(&Source::Env {
                var: "FT_TRAINING__EVAL_EVERY".into()
            })
        );
        assert_eq!(
            loaded.source_of("training.save_every"),
            Some(&Source::Set {
                arg: "training.save_every=13".into()
            })
        );
    }

    #[test]
    fn builder_call_order_does_not_change_precedence() {
        let loaded = ConfigLoader::new()
            .overrides(["lora.rank=32"])
            .env_from([("FT_LORA__RANK", "16")])
            .toml_str("run.toml", "[lora]\nrank = 4\n")
            .load()
            .expect("valid");
        assert_eq!(loaded.config.lora.rank, 32);

        // Slices of &str and Vec<String> both work as overrides.
        let args = vec!["lora.rank=2".to_owned()];
        let from_vec = ConfigLoader::new().overrides(&args).load().expect("valid");
        let slice: &[&str] = &["lora.rank=2"];
        let from_slice = ConfigLoader::new().overrides(slice).load().expect("valid");
        assert_eq!(from_vec.config, from_slice.config);
    }

    #[test]
    fn later_files_and_later_overrides_win() {
        let loaded = ConfigLoader::new()
            .toml_str("a.toml", "[lora]\nrank = 4\nalpha = 8.0\n")
            .toml_str("b.toml", "[lora]\nrank = 6\n")
            .overrides(["lora.alpha=1", "lora.alpha=3"])
            .load()
            .expect("valid");
        assert_eq!(loaded.config.lora.rank, 6);
        assert_eq!(loaded.config.lora.alpha, 3.0);
        assert_eq!(
            loaded.source_of("lora.alpha"),
            Some(&Source::Set {
                arg: "lora.alpha=3".into()
            })
        );
    }

    #[test]
    fn tables_merge_and_arrays_replace() {
        let loaded = ConfigLoader::new()
            .toml_str(
                "a.toml",
                "[model.quantization]\nbits = 8\ngroup_size = 32\n[lora]\ntarget_modules = [\"q_proj\", \"k_proj\"]\n",
            )
            .overrides(["model.quantization.group_size=128", "lora.target_modules=o_proj"])
            .load()
            .expect("valid");
        assert_eq!(
            loaded.config.model.quantization,
            Quantization::Affine(QuantSpec {
                bits: 8,
                group_size: 128
            })
        );
        assert_eq!(
            loaded.config.lora.target_modules,
            TargetModules::List(vec![LoraTarget::OProj])
        );
    }

    #[test]
    fn quantization_can_be_switched_off_and_on_by_higher_layers() {
        let off = ConfigLoader::new()
            .toml_str("q.toml", "[model.quantization]\nbits = 4\n")
            .overrides(["model.quantization=none"])
            .load()
            .expect("valid");
        assert_eq!(off.config.model.quantization, Quantization::None);
        assert_eq!(off.source_of("model.quantization.bits"), None);

        let on = ConfigLoader::new()
            .overrides(["model.quantization.bits=8"])
            .load()
            .expect("valid");
        assert_eq!(
            on.config.model.quantization,
            Quantization::Affine(QuantSpec {
                bits: 8,
                group_size: 64
            })
        );
        assert_eq!(
            on.source_of("model.quantization.group_size"),
            Some(&Source::Default)
        );
    }

    #[test]
    fn extends_chain_is_relative_to_the_extending_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let presets = dir.path().join("presets");
        fs::create_dir(&presets).expect("mkdir");
        let root = write(&presets, "root.yaml", "lora:\n  rank: 2\n  alpha: 4\n");
        let middle = write(
            &presets,
            "middle.toml",
            "extends = \"root.yaml\"\n[lora]\nrank = 3\n",
        );
        let leaf = write(
            dir.path(),
            "leaf.yml",
            "extends: presets/middle.toml\nmodel:\n  dtype: bfloat16\n",
        );
        let loaded = ConfigLoader::new().file(&leaf).load().expect("valid");
        assert_eq!(loaded.config.lora.rank, 3);
        assert_eq!(loaded.config.lora.alpha, 4.0);
        assert_eq!(loaded.config.model.dtype, Dtype::Bfloat16);
        assert_eq!(
            loaded.source_of("lora.alpha"),
            Some(&file_source(&presets.join("root.yaml"), 2))
        );
        assert_eq!(
            loaded.source_of("lora.rank"),
            Some(&file_source(&presets.join("middle.toml"), 1))
        );
        assert_eq!(
            loaded.source_of("model.dtype"),
            Some(&file_source(&leaf, 0))
        );
        assert!(root.exists() && middle.exists());
    }

    #[test]
    fn extends_cycles_are_reported_with_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
        write(dir.path(), "b.toml", "extends = \"./a.toml\"\n");
        match ConfigLoader::new().file(&a).load() {
            Err(Error::ExtendsCycle { chain }) => assert_eq!(
                chain,
                [
                    a.clone(),
                    dir.path().join("b.toml"),
                    dir.path().join("./a.toml")
                ]
            ),
            other => panic!("expected a cycle, got {other:?}"),
        }
        let selfish = write(dir.path(), "self.toml", "extends = \"self.toml\"\n");
        let error = ConfigLoader::new()
            .file(&selfish)
            .load()
            .expect_err("cycle");
        assert!(
            error.to_string().starts_with("`extends` cycle: "),
            "{error}"
        );
        assert!(error.to_string().contains(" -> "), "{error}");
    }

    #[test]
    fn file_problems_are_reported_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.toml");
        let error = ConfigLoader::new()
            .file(&missing)
            .load()
            .expect_err("missing");
        assert!(matches!(error, Error::Read { ref path, .. } if *path == missing));

        let broken = write(dir.path(), "broken.toml", "[training\nbatch_size = 1\n");
        let error = ConfigLoader::new()
            .file(&broken)
            .load()
            .expect_err("broken");
        assert!(matches!(error, Error::Parse { .. }), "{error}");
        assert!(error.to_string().contains("line 1"), "{error}");

        let json = write(dir.path(), "config.json", "{}");
        let error = ConfigLoader::new().file(&json).load().expect_err("json");
        assert!(matches!(error, Error::UnsupportedFormat { .. }));

        let bad_extends = write(dir.path(), "bad.toml", "extends = 3\n");
        let error = ConfigLoader::new()
            .file(&bad_extends)
            .load()
            .expect_err("extends");
        assert!(
            error.to_string().contains("`extends` must be a path"),
            "{error}"
        );

        let missing_base = write(dir.path(), "orphan.toml", "extends = \"nowhere.toml\"\n");
        let error = ConfigLoader::new()
            .file(&missing_base)
            .load()
            .expect_err("base");
        assert!(error.to_string().contains("nowhere.toml"), "{error}");

        let empty_yaml = write(dir.path(), "empty.yaml", "\n");
        assert!(ConfigLoader::new().file(&empty_yaml).load().is_ok());
    }

    #[test]
    fn env_variables_map_double_underscores_to_dots() {
        let loaded = ConfigLoader::new()
            .env_from([
                ("FT_TRAINING__BATCH_SIZE", "8"),
                ("FT_MODEL__QUANTIZATION__BITS", "8"),
                ("FT_MODEL__PATH", "123"),
                ("FT_LORA__TARGET_MODULES", "q_proj,k_proj"),
                ("FT_LORA__NUM_LAYERS", "all"),
                ("FT_DATA__PACKING", "true"),
                ("FT_LOG", "debug"),
                ("FT_MLX_BACKEND", "cpu"),
                ("OTHER__THING", "1"),
            ])
            .load()
            .expect("valid");
        let config = &loaded.config;
        assert_eq!(config.training.batch_size, 8);
        assert_eq!(
            config.model.quantization.spec().map(|spec| spec.bits),
            Some(8)
        );
        assert_eq!(config.model.path, "123");
        assert_eq!(
            config.lora.target_modules,
            TargetModules::List(vec![LoraTarget::QProj, LoraTarget::KProj])
        );
        assert_eq!(config.lora.num_layers, LoraLayers::All);
        assert!(config.data.packing);
        assert_eq!(
            loaded.source_of("model.quantization.bits"),
            Some(&Source::Env {
                var: "FT_MODEL__QUANTIZATION__BITS".into()
            })
        );
    }

    #[test]
    fn env_prefix_is_configurable() {
        let loaded = ConfigLoader::new()
            .env_prefix("MYAPP_")
            .env_from([("MYAPP_LORA__RANK", "4"), ("FT_LORA__RANK", "5")])
            .load()
            .expect("valid");
        assert_eq!(loaded.config.lora.rank, 4);
    }

    #[test]
    fn env_problems_are_located() {
        let errors = invalid(
            ConfigLoader::new()
                .env_from([
                    ("FT_TRAINING__", "1"),
                    ("FT_TRAINING__BACH_SIZE", "8"),
                    ("FT_TRAINING__BATCH_SIZE", "eight"),
                ])
                .load(),
        );
        assert_eq!(
            messages(&errors),
            [
                "environment variable FT_TRAINING__ does not name a key: expected \
                 FT_SECTION__KEY, e.g. FT_TRAINING__BATCH_SIZE (from env FT_TRAINING__)",
                "unknown key training.bach_size (did you mean training.batch_size?) \
                 (from env FT_TRAINING__BACH_SIZE)",
                "training.batch_size: expected an integer, got string \"eight\" \
                 (from env FT_TRAINING__BATCH_SIZE)",
            ]
        );
    }

    #[test]
    fn set_values_are_toml_literals_or_text() {
        let loaded = ConfigLoader::new()
            .overrides([
                "optimizer.betas=[0.8, 0.95]",
                "model.path = models/My Model",
                "data.train=\"quoted.jsonl\"",
                "model.quantization={ bits = 4, group_size = 32 }",
                "lora.target_modules=[q_proj, v_proj, o_proj]",
                "lora.num_layers=-1",
                "training.max_grad_norm=0",
                "training.epochs=3",
            ])
            .load()
            .expect("valid");
        let config = &loaded.config;
        assert_eq!(config.optimizer.betas, [0.8, 0.95]);
        assert_eq!(config.model.path, "models/My Model");
        assert_eq!(config.data.train, Some(PathBuf::from("quoted.jsonl")));
        assert_eq!(
            config.model.quantization,
            Quantization::Affine(QuantSpec {
                bits: 4,
                group_size: 32
            })
        );
        assert_eq!(config.lora.target_modules.targets().len(), 3);
        assert_eq!(config.lora.num_layers, LoraLayers::All);
        assert_eq!(config.training.max_grad_norm, 0.0);
        assert_eq!(config.training.length(), TrainingLength::Epochs(3));
    }

    #[test]
    fn toml_literals_cannot_smuggle_extra_keys() {
        assert_eq!(toml_literal("8"), Some(Value::from(8)));
        assert_eq!(toml_literal("1\nother = 2"), None);
        assert_eq!(toml_literal("models/x"), None);
        assert_eq!(toml_literal(""), None);
    }

    #[test]
    fn set_problems_are_located() {
        let errors = invalid(
            ConfigLoader::new()
                .overrides([
                    "batch_size",
                    "=3",
                    "training..seed=1",
                    "training.bach_size=8",
                    "training.batch_size=0",
                    "training=5",
                ])
                .load(),
        );
        assert_eq!(
            messages(&errors),
            [
                "--set needs KEY=VALUE, e.g. training.batch_size=8 (from --set batch_size)",
                "--set key \"\" is not a dotted key path like training.batch_size (from --set =3)",
                "--set key \"training..seed\" is not a dotted key path like \
                 training.batch_size (from --set training..seed=1)",
                "training: expected a table, got integer 5 (from --set training=5)",
            ]
        );
        // Once `training` is replaced, the training keys below it are gone;
        // without that override every other problem shows.
        let errors = invalid(
            ConfigLoader::new()
                .overrides(["training.bach_size=8", "training.batch_size=0"])
                .load(),
        );
        assert_eq!(
            messages(&errors),
            [
                "unknown key training.bach_size (did you mean training.batch_size?) \
                 (from --set training.bach_size=8)",
                "training.batch_size must be >= 1, got 0 (from --set training.batch_size=0)",
            ]
        );
        assert!(errors.iter().all(|error| error.source.is_some()));
    }

    #[test]
    fn file_errors_are_all_reported_with_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "run.toml",
            "[training]\nbach_size = 8\nsteps = \"many\"\nlabel_smoothing = 1.0\n\
             [optimizer]\nlearning_rate = 0.0\n[lora]\nlearning_rate = 1e-4\n[trainer]\n",
        );
        let errors = invalid(ConfigLoader::new().file(&path).load());
        let from = format!("(from file {})", path.display());
        assert_eq!(
            messages(&errors),
            [
                format!(
                    "unknown key lora.learning_rate (did you mean optimizer.learning_rate?) {from}"
                ),
                format!("optimizer.learning_rate must be > 0, got 0.0 {from}"),
                format!("unknown key trainer (did you mean training?) {from}"),
                format!(
                    "unknown key training.bach_size (did you mean training.batch_size?) {from}"
                ),
                format!("training.label_smoothing must be in [0, 1), got 1.0 {from}"),
                format!("training.steps: expected an integer, got string \"many\" {from}"),
            ]
        );
        assert_eq!(
            errors.errors()[0].kind,
            ValidationErrorKind::UnknownKey {
                suggestion: Some("optimizer.learning_rate".into())
            }
        );
    }

    #[test]
    fn cross_rule_errors_carry_the_source_of_their_key() {
        let errors = invalid(
            ConfigLoader::new()
                .toml_str("run.toml", "[scheduler]\nmin_lr = 0.1\n")
                .load(),
        );
        assert_eq!(
            messages(&errors),
            [
                "scheduler.min_lr must be <= optimizer.learning_rate (0.0001), got 0.1 \
              (from file run.toml)"
            ]
        );
    }

    #[test]
    fn exclusive_keys_from_a_higher_layer_replace_the_lower_one() {
        let loaded = ConfigLoader::new()
            .toml_str(
                "base.toml",
                "[training]\nsteps = 500\n[scheduler]\nwarmup_steps = 50\n[data]\nvalid_split = 0.1\n",
            )
            .env_from([("FT_SCHEDULER__WARMUP_RATIO", "0.1")])
            .overrides(["training.epochs=2", "data.valid=valid.jsonl"])
            .load()
            .expect("valid");
        let config = &loaded.config;
        assert_eq!(config.training.steps, None);
        assert_eq!(config.training.length(), TrainingLength::Epochs(2));
        assert_eq!(config.scheduler.warmup_steps, None);
        assert_eq!(config.scheduler.warmup_ratio, Some(0.1));
        assert_eq!(config.data.valid_split, 0.0);
        assert_eq!(loaded.source_of("training.steps"), None);
        assert_eq!(loaded.source_of("data.valid_split"), Some(&Source::Default));

        // The default `steps` gives way to `epochs` from a file.
        let loaded = ConfigLoader::new()
            .toml_str("run.toml", "[training]\nepochs = 1\n")
            .load()
            .expect("valid");
        assert_eq!(loaded.config.training.length(), TrainingLength::Epochs(1));
    }

    #[test]
    fn layers_with_the_same_name_stay_distinct() {
        let loaded = ConfigLoader::new()
            .toml_str("run.toml", "[training]\nsteps = 10\n")
            .toml_str("run.toml", "[training]\nepochs = 2\n")
            .load()
            .expect("the later file replaces steps with epochs");
        assert_eq!(loaded.config.training.length(), TrainingLength::Epochs(2));
    }

    #[test]
    fn exclusive_keys_in_one_layer_conflict() {
        let errors = invalid(
            ConfigLoader::new()
                .toml_str("run.toml", "[training]\nsteps = 10\nepochs = 2\n")
                .load(),
        );
        assert_eq!(
            messages(&errors),
            [
                "training.steps and training.epochs are mutually exclusive; set only one of \
              them (from file run.toml)"
            ]
        );
        let errors = invalid(
            ConfigLoader::new()
                .overrides(["training.steps=10", "training.epochs=2"])
                .load(),
        );
        assert_eq!(errors.len(), 1);
        let errors = invalid(
            ConfigLoader::new()
                .env_from([("FT_TRAINING__STEPS", "10"), ("FT_TRAINING__EPOCHS", "2")])
                .load(),
        );
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn saved_config_loads_back_identically() {
        let loaded = ConfigLoader::new()
            .toml_str(
                "run.toml",
                "[model]\ndtype = \"bfloat16\"\n[model.quantization]\nbits = 4\n\
                 [training]\nepochs = 2\n[scheduler]\nwarmup_ratio = 0.1\n",
            )
            .overrides(["lora.target_modules=\"all-linear\"", "data.train=t.jsonl"])
            .load()
            .expect("valid");
        let text = loaded.config.to_toml_string().expect("toml");
        let dir = tempfile::tempdir().expect("tempdir");
        let saved = write(dir.path(), "config.toml", &text);
        let reloaded = ConfigLoader::new().file(&saved).load().expect("reload");
        assert_eq!(reloaded.config, loaded.config, "{text}");
    }

    #[test]
    fn invalid_error_lists_every_problem_one_per_line() {
        let error = ConfigLoader::new()
            .overrides(["training.batch_size=0", "lora.rank=0"])
            .load()
            .expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "invalid configuration (2 problems):\n\
             \x20 lora.rank must be >= 1, got 0 (from --set lora.rank=0)\n\
             \x20 training.batch_size must be >= 1, got 0 (from --set training.batch_size=0)"
        );
    }

    #[test]
    fn nest_builds_tables_along_the_path() {
        let segments = ["a".to_owned(), "b".to_owned()];
        let tree = nest(&segments, Value::from(1));
        assert_eq!(Value::from(tree).find_ref("a.b"), Some(&Value::from(1)));
    }
}
