//! Validation: unknown keys (with did-you-mean), types, ranges and rules that
//! involve several settings. Every problem is collected; nothing stops at the
//! first one.

use std::fmt;

use figment::value::{Dict, Num, Value};

use crate::config::Config;
use crate::loader::Source;
use crate::schema::{self, FieldInfo, Kind};
use crate::values::{LoraTarget, TargetModules};

/// What kind of problem a [`ValidationError`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidationErrorKind {
    /// The key is not part of the schema.
    UnknownKey {
        /// The closest known key, if one is close enough.
        suggestion: Option<String>,
    },
    /// The value has the wrong type (e.g. a string where a number belongs).
    Type,
    /// The value has the right type but is outside the allowed values.
    Range,
    /// Settings that contradict each other.
    Conflict,
    /// An environment variable or `--set` argument that is not `KEY=VALUE`.
    Syntax,
}

/// One problem with the settings, located by key path and origin.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationError {
    /// Dotted key path of the offending setting, e.g. `training.batch_size`;
    /// empty when the problem is not about one key (a `--set` argument
    /// without `=`, say).
    pub key: String,
    /// What kind of problem it is.
    pub kind: ValidationErrorKind,
    /// The full message, starting with the key, e.g.
    /// `training.batch_size must be >= 1, got 0`.
    pub message: String,
    /// Where the offending value came from, when known.
    pub source: Option<Source>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.source {
            Some(source) => write!(f, " (from {source})"),
            None => Ok(()),
        }
    }
}

/// Every problem found in a configuration; displayed one per line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidationErrors {
    errors: Vec<ValidationError>,
}

impl ValidationErrors {
    /// The problems, in the order they were found.
    pub fn errors(&self) -> &[ValidationError] {
        &self.errors
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether there is no problem.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Iterates over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.errors.iter()
    }

    pub(crate) fn push(&mut self, error: ValidationError) {
        self.errors.push(error);
    }

    pub(crate) fn extend(&mut self, errors: impl IntoIterator<Item = ValidationError>) {
        self.errors.extend(errors);
    }

    /// `Ok` when empty, else `Err(self)`.
    pub(crate) fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl IntoIterator for ValidationErrors {
    type Item = ValidationError;
    type IntoIter = std::vec::IntoIter<ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl FromIterator<ValidationError> for ValidationErrors {
    fn from_iter<I: IntoIterator<Item = ValidationError>>(iter: I) -> Self {
        ValidationErrors {
            errors: iter.into_iter().collect(),
        }
    }
}

/// Validates a configuration built in code: see [`Config::validate`].
pub(crate) fn validate_config(config: &Config) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    match Value::serialize(config) {
        Ok(Value::Dict(_, root)) => {
            let no_source = |_: &Value| None;
            let mut checker = Checker::new(&no_source);
            checker.check_root(&root);
            errors.extend(checker.errors);
        }
        Ok(_) => {}
        Err(error) => errors.push(ValidationError {
            key: String::new(),
            kind: ValidationErrorKind::Type,
            message: format!("the configuration cannot be represented: {error}"),
            source: None,
        }),
    }
    errors.extend(
        cross_rules(config)
            .into_iter()
            .map(|finding| finding.into_error(None)),
    );
    errors.into_result()
}

/// A problem found by a rule over several settings, not yet located.
pub(crate) struct Finding {
    /// The key the problem is reported at.
    pub key: &'static str,
    pub kind: ValidationErrorKind,
    pub message: String,
}

impl Finding {
    pub(crate) fn into_error(self, source: Option<Source>) -> ValidationError {
        ValidationError {
            key: self.key.to_owned(),
            kind: self.kind,
            message: self.message,
            source,
        }
    }
}

/// Key pairs of which at most one may be set. A zero value counts as unset,
/// so that e.g. `warmup_steps = 0` next to `warmup_ratio` is harmless.
pub(crate) const EXCLUSIVE_PAIRS: &[(&str, &str)] = &[
    ("training.steps", "training.epochs"),
    ("scheduler.warmup_steps", "scheduler.warmup_ratio"),
    ("data.valid", "data.valid_split"),
];

/// The rules that involve several settings.
pub(crate) fn cross_rules(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let training = &config.training;
    let scheduler = &config.scheduler;
    let data = &config.data;
    let nonzero_u32 = |value: Option<u32>| value.is_some_and(|value| value != 0);
    let nonzero_f64 = |value: Option<f64>| value.is_some_and(|value| value != 0.0);

    let set = [
        (nonzero_u32(training.steps), nonzero_u32(training.epochs)),
        (
            nonzero_u32(scheduler.warmup_steps),
            nonzero_f64(scheduler.warmup_ratio),
        ),
        (data.valid.is_some(), data.valid_split != 0.0),
    ];
    for (&(a, b), (a_set, b_set)) in EXCLUSIVE_PAIRS.iter().zip(set) {
        if a_set && b_set {
            findings.push(Finding {
                key: a,
                kind: ValidationErrorKind::Conflict,
                message: format!("{a} and {b} are mutually exclusive; set only one of them"),
            });
        }
    }

    if let (Some(warmup), Some(steps)) = (scheduler.warmup_steps, training.steps) {
        if warmup > steps {
            findings.push(Finding {
                key: "scheduler.warmup_steps",
                kind: ValidationErrorKind::Range,
                message: format!(
                    "scheduler.warmup_steps must be <= training.steps ({steps}), got {warmup}"
                ),
            });
        }
    }

    let learning_rate = config.optimizer.learning_rate;
    if scheduler.min_lr > learning_rate {
        findings.push(Finding {
            key: "scheduler.min_lr",
            kind: ValidationErrorKind::Range,
            message: format!(
                "scheduler.min_lr must be <= optimizer.learning_rate ({}), got {}",
                show_float(learning_rate),
                show_float(scheduler.min_lr)
            ),
        });
    }

    if training.early_stopping_patience.is_some() {
        if training.eval_every == 0 {
            findings.push(Finding {
                key: "training.early_stopping_patience",
                kind: ValidationErrorKind::Conflict,
                message: "training.early_stopping_patience needs evaluations, but \
                          training.eval_every is 0"
                    .to_owned(),
            });
        } else if data.train.is_some() && data.valid.is_none() && data.valid_split == 0.0 {
            findings.push(Finding {
                key: "training.early_stopping_patience",
                kind: ValidationErrorKind::Conflict,
                message: "training.early_stopping_patience needs a validation set: set \
                          data.valid or data.valid_split"
                    .to_owned(),
            });
        }
    }
    findings
}

/// Why a single value is not acceptable for its field.
enum Problem {
    /// Wrong type: what was expected.
    Type(String),
    /// Right type, outside `allowed` (phrased to follow "must be").
    Range(String),
    /// A message of its own, without the key.
    Other(String),
}

/// Walks a value tree against the schema, collecting problems and the paths
/// of the values that had them (so that they can be dropped and the rest of
/// the tree still deserialized and checked).
pub(crate) struct Checker<'a> {
    source_of: &'a dyn Fn(&Value) -> Option<Source>,
    pub errors: Vec<ValidationError>,
    pub rejected: Vec<Vec<String>>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(source_of: &'a dyn Fn(&Value) -> Option<Source>) -> Self {
        Checker {
            source_of,
            errors: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// Checks a whole configuration tree.
    pub(crate) fn check_root(&mut self, root: &Dict) {
        self.check_table(&mut Vec::new(), root);
    }

    fn check_table(&mut self, path: &mut Vec<String>, table: &Dict) {
        let table_key = key_path(path);
        for (name, value) in table {
            path.push(name.clone());
            let key = key_path(path);
            if let Some(field) = schema::field(&key) {
                self.check_field(path, &key, field, value);
            } else if schema::is_table(&key) {
                match value {
                    Value::Dict(_, inner) => self.check_table(path, inner),
                    other => self.report(
                        path,
                        &key,
                        ValidationErrorKind::Type,
                        format!("{key}: expected a table, got {}", describe(other)),
                        other,
                    ),
                }
            } else {
                let suggestion = suggest_key(&table_key, name);
                let message = match &suggestion {
                    Some(suggestion) => format!("unknown key {key} (did you mean {suggestion}?)"),
                    None if table_key.is_empty() => format!(
                        "unknown key {key} (the sections are {})",
                        schema::children("")
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => format!("unknown key {key}"),
                };
                self.report(
                    path,
                    &key,
                    ValidationErrorKind::UnknownKey { suggestion },
                    message,
                    value,
                );
            }
            path.pop();
        }
    }

    fn check_field(&mut self, path: &mut Vec<String>, key: &str, field: &FieldInfo, value: &Value) {
        // A quantization table holds fields of its own.
        if let (Kind::Quantization, Value::Dict(_, inner)) = (field.kind, value) {
            self.check_table(path, inner);
            return;
        }
        let (kind, message) = match check_value(&field.kind, value) {
            Ok(()) => return,
            Err(Problem::Type(expected)) => (
                ValidationErrorKind::Type,
                format!("{key}: expected {expected}, got {}", describe(value)),
            ),
            Err(Problem::Range(allowed)) => (
                ValidationErrorKind::Range,
                format!("{key} must be {allowed}, got {}", show(value)),
            ),
            Err(Problem::Other(message)) => {
                (ValidationErrorKind::Range, format!("{key} {message}"))
            }
        };
        self.report(path, key, kind, message, value);
    }

    fn report(
        &mut self,
        path: &[String],
        key: &str,
        kind: ValidationErrorKind,
        message: String,
        value: &Value,
    ) {
        self.errors.push(ValidationError {
            key: key.to_owned(),
            kind,
            message,
            source: (self.source_of)(value),
        });
        self.rejected.push(path.to_vec());
    }
}

/// Checks one value against its kind.
fn check_value(kind: &Kind, value: &Value) -> Result<(), Problem> {
    match kind {
        Kind::Optional(_) if matches!(value, Value::Empty(..)) => Ok(()),
        Kind::Optional(inner) => check_value(inner, value),
        Kind::Bool => match value {
            Value::Bool(..) => Ok(()),
            _ => Err(Problem::Type("a boolean (true or false)".into())),
        },
        Kind::Int { min, max } => {
            let n = integer(value).ok_or_else(|| Problem::Type("an integer".into()))?;
            if n < i128::from(*min) {
                Err(Problem::Range(format!(">= {min}")))
            } else if n > i128::from(*max) {
                Err(Problem::Range(format!("<= {max}")))
            } else {
                Ok(())
            }
        }
        Kind::IntOneOf(allowed) => {
            let n = integer(value).ok_or_else(|| Problem::Type("an integer".into()))?;
            if allowed.iter().any(|&a| i128::from(a) == n) {
                Ok(())
            } else {
                Err(Problem::Range(format!("one of {}", kind.allowed_label())))
            }
        }
        Kind::Float(range) => {
            let x = number(value).ok_or_else(|| Problem::Type("a number".into()))?;
            check_float(range, x)
        }
        Kind::FloatPair(range) => {
            let expected = || Problem::Type("an array of 2 numbers".into());
            let Value::Array(_, items) = value else {
                return Err(expected());
            };
            let [first, second] = items.as_slice() else {
                return Err(expected());
            };
            for item in [first, second] {
                check_float(range, number(item).ok_or_else(expected)?)?;
            }
            Ok(())
        }
        Kind::Text | Kind::Path => match text(value) {
            Some("") => Err(Problem::Other("must not be empty".into())),
            Some(_) => Ok(()),
            None if matches!(kind, Kind::Path) => Err(Problem::Type("a path (string)".into())),
            None => Err(Problem::Type("a string".into())),
        },
        Kind::Choice(names) => {
            let name = text(value).ok_or_else(|| Problem::Type("a string".into()))?;
            check_name(name, names, kind)
        }
        Kind::Modules => check_modules(value),
        Kind::Layers => match value {
            Value::String(_, s) if s == "all" => Ok(()),
            Value::Num(..) => match integer(value) {
                Some(-1) => Ok(()),
                Some(n) if (1..=i128::from(u32::MAX)).contains(&n) => Ok(()),
                Some(_) => Err(Problem::Range(kind.allowed_label())),
                None => Err(Problem::Type("an integer or \"all\"".into())),
            },
            _ => Err(Problem::Type("an integer or \"all\"".into())),
        },
        Kind::Quantization => match value {
            Value::String(_, s) if s == "none" => Ok(()),
            Value::String(..) => Err(Problem::Range(
                "\"none\" or a table with bits and group_size".into(),
            )),
            _ => Err(Problem::Type(
                "\"none\" or a table with bits and group_size".into(),
            )),
        },
    }
}

fn check_float(range: &schema::Range, x: f64) -> Result<(), Problem> {
    if !x.is_finite() {
        Err(Problem::Range("a finite number".into()))
    } else if !range.contains(x) {
        Err(Problem::Range(range.to_string()))
    } else {
        Ok(())
    }
}

fn check_name(name: &str, names: &[&str], kind: &Kind) -> Result<(), Problem> {
    if names.contains(&name) {
        return Ok(());
    }
    let hint = closest(name, names.iter().copied())
        .map(|best| format!(" (did you mean \"{best}\"?)"))
        .unwrap_or_default();
    Err(Problem::Other(format!(
        "must be one of {}, got \"{name}\"{hint}",
        kind.allowed_label()
    )))
}

fn check_modules(value: &Value) -> Result<(), Problem> {
    let items = match value {
        Value::Array(_, items) => items,
        Value::String(_, s) if s == TargetModules::ALL_LINEAR => return Ok(()),
        Value::String(_, s) => {
            return Err(Problem::Other(format!(
                "must be a list of module names or \"{}\", got \"{s}\"",
                TargetModules::ALL_LINEAR
            )))
        }
        _ => {
            return Err(Problem::Type(format!(
                "a list of module names or \"{}\"",
                TargetModules::ALL_LINEAR
            )))
        }
    };
    if items.is_empty() {
        return Err(Problem::Other(
            "must name at least one module (or be \"all-linear\")".into(),
        ));
    }
    let mut seen = Vec::new();
    for item in items {
        let name = text(item).ok_or_else(|| Problem::Type("a list of module names".into()))?;
        check_name(name, LoraTarget::NAMES, &Kind::Choice(LoraTarget::NAMES))
            .map_err(|_| unknown_module(name))?;
        if seen.contains(&name) {
            return Err(Problem::Other(format!("lists \"{name}\" more than once")));
        }
        seen.push(name);
    }
    Ok(())
}

fn unknown_module(name: &str) -> Problem {
    let hint = closest(name, LoraTarget::NAMES.iter().copied())
        .map(|best| format!(" (did you mean \"{best}\"?)"))
        .unwrap_or_default();
    Problem::Other(format!(
        "lists unknown module \"{name}\"{hint}; known modules: {}",
        LoraTarget::NAMES.join(", ")
    ))
}

/// An integer value (floats do not count, even integral ones).
pub(crate) fn integer(value: &Value) -> Option<i128> {
    let Value::Num(_, num) = value else {
        return None;
    };
    Some(match *num {
        Num::U8(n) => n.into(),
        Num::U16(n) => n.into(),
        Num::U32(n) => n.into(),
        Num::U64(n) => n.into(),
        Num::USize(n) => u64::try_from(n).ok()?.into(),
        Num::U128(n) => i128::try_from(n).ok()?,
        Num::I8(n) => n.into(),
        Num::I16(n) => n.into(),
        Num::I32(n) => n.into(),
        Num::I64(n) => n.into(),
        Num::ISize(n) => i64::try_from(n).ok()?.into(),
        Num::I128(n) => n,
        Num::F32(_) | Num::F64(_) => return None,
    })
}

/// A numeric value as `f64` (integers are accepted).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Num(_, Num::F32(x)) => Some(f64::from(*x)),
        Value::Num(_, Num::F64(x)) => Some(*x),
        // Precision loss is irrelevant for settings-sized integers.
        #[allow(clippy::cast_precision_loss)]
        Value::Num(..) => integer(value).map(|n| n as f64),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(_, s) => Some(s),
        _ => None,
    }
}

/// A value as shown after "got": its type and, for scalars, itself.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("string \"{s}\""),
        Value::Char(_, c) => format!("string \"{c}\""),
        Value::Bool(_, b) => format!("boolean {b}"),
        Value::Num(_, Num::F32(_) | Num::F64(_)) => format!("float {}", show(value)),
        Value::Num(..) => format!("integer {}", show(value)),
        Value::Empty(..) => "nothing".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(..) => "an array".into(),
    }
}

/// A scalar value as written in TOML.
fn show(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("\"{s}\""),
        Value::Char(_, c) => format!("\"{c}\""),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, Num::F32(x)) => show_float(f64::from(*x)),
        Value::Num(_, Num::F64(x)) => show_float(*x),
        Value::Num(..) => integer(value).map_or_else(String::new, |n| n.to_string()),
        Value::Empty(..) => "nothing".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(_, items) => {
            let items: Vec<_> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// A float as written in TOML (`1.0`, `1e-8`, `nan`, `-inf`).
pub(crate) fn show_float(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x:?}")
    }
}

/// A dotted key path; segments that are not bare TOML keys are quoted so
/// that `"a.b"` is not mistaken for `a.b`.
pub(crate) fn key_path(path: &[String]) -> String {
    path.iter()
        .map(|segment| {
            let bare = !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if bare {
                segment.clone()
            } else {
                format!("{segment:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn join_key(table: &str, name: &str) -> String {
    if table.is_empty() {
        name.to_owned()
    } else {
        format!("{table}.{name}")
    }
}

/// The known key closest to the unknown `name` in `table`: a sibling, or a
/// setting of the same name in another table (e.g. `training.learning_rate`
/// → `optimizer.learning_rate`).
pub(crate) fn suggest_key(table: &str, name: &str) -> Option<String> {
    if let Some(sibling) = closest(name, schema::children(table).into_iter()) {
        return Some(join_key(table, sibling));
    }
    let by_name = closest(name, schema::fields().map(FieldInfo::name))?;
    schema::fields()
        .find(|field| field.name() == by_name)
        .map(|field| field.key.to_owned())
}

/// The candidate closest to `name` by edit distance, if close enough to be a
/// plausible typo (or if one is a prefix of the other, e.g. `warmup`).
pub(crate) fn closest<'c>(
    name: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    let name = name.to_lowercase();
    candidates
        .filter_map(|candidate| {
            let distance = edit_distance(&name, candidate);
            let longest = name.chars().count().max(candidate.chars().count());
            // Up to a third of the characters (rounded up) may differ.
            let typo = distance <= longest.div_ceil(3);
            let prefix = name.len() >= 3
                && (candidate.starts_with(name.as_str()) || name.starts_with(candidate));
            (typo || prefix).then_some((distance, candidate))
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::Quantization;
    use crate::QuantSpec;
    use std::path::PathBuf;

    fn errors_of(config: &Config) -> Vec<String> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn assert_single_error(config: &Config, expected: &str) {
        let errors = errors_of(config);
        assert_eq!(errors, [expected.to_owned()]);
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("bach_size", "batch_size"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn closest_finds_typos_and_prefixes_only() {
        let names = ["batch_size", "seed", "steps", "warmup_steps"];
        assert_eq!(closest("bach_size", names.into_iter()), Some("batch_size"));
        assert_eq!(closest("BATCH_SIZE", names.into_iter()), Some("batch_size"));
        assert_eq!(closest("warmup", names.into_iter()), Some("warmup_steps"));
        assert_eq!(closest("zzzzzz", names.into_iter()), None);
    }

    #[test]
    fn suggestions_look_in_the_table_then_everywhere() {
        assert_eq!(
            suggest_key("training", "bach_size").as_deref(),
            Some("training.batch_size")
        );
        assert_eq!(
            suggest_key("training", "learning_rate").as_deref(),
            Some("optimizer.learning_rate")
        );
        assert_eq!(suggest_key("", "trainig").as_deref(), Some("training"));
        assert_eq!(
            suggest_key("", "batch_size").as_deref(),
            Some("training.batch_size")
        );
        assert_eq!(suggest_key("lora", "qqqqqqqqqq"), None);
    }

    #[test]
    fn key_paths_quote_segments_that_are_not_bare() {
        let path = ["training".to_owned(), "a.b".to_owned()];
        assert_eq!(key_path(&path), "training.\"a.b\"");
    }

    #[test]
    fn integer_ranges_name_the_bound_and_the_value() {
        let mut config = Config::default();
        config.training.batch_size = 0;
        assert_single_error(&config, "training.batch_size must be >= 1, got 0");
        let mut config = Config::default();
        config.lora.rank = 0;
        assert_single_error(&config, "lora.rank must be >= 1, got 0");
        let mut config = Config::default();
        config.data.max_seq_len = 1;
        assert_single_error(&config, "data.max_seq_len must be >= 2, got 1");
        let mut config = Config::default();
        config.training.grad_accumulation = 0;
        assert_single_error(&config, "training.grad_accumulation must be >= 1, got 0");
        let mut config = Config::default();
        config.training.eval_batches = Some(0);
        assert_single_error(&config, "training.eval_batches must be >= 1, got 0");
        let mut config = Config::default();
        config.training.seed = u64::MAX;
        assert_single_error(
            &config,
            &format!("training.seed must be <= {}, got {}", i64::MAX, u64::MAX),
        );
    }

    #[test]
    fn float_ranges_use_interval_notation() {
        type Change = fn(&mut Config);
        let cases: [(Change, &str); 9] = [
            (|c| c.lora.alpha = 0.0, "lora.alpha must be > 0, got 0.0"),
            (
                |c| c.lora.dropout = 1.0,
                "lora.dropout must be in [0, 1), got 1.0",
            ),
            (
                |c| c.training.label_smoothing = 1.0,
                "training.label_smoothing must be in [0, 1), got 1.0",
            ),
            (
                |c| c.training.max_grad_norm = -1.0,
                "training.max_grad_norm must be >= 0, got -1.0",
            ),
            (
                |c| c.optimizer.learning_rate = 0.0,
                "optimizer.learning_rate must be > 0, got 0.0",
            ),
            (
                |c| c.optimizer.eps = -1e-8,
                "optimizer.eps must be > 0, got -1e-8",
            ),
            (
                |c| c.data.valid_split = 1.5,
                "data.valid_split must be in [0, 1), got 1.5",
            ),
            (
                |c| c.scheduler.warmup_ratio = Some(1.0),
                "scheduler.warmup_ratio must be in [0, 1), got 1.0",
            ),
            (
                |c| c.optimizer.momentum = f64::NAN,
                "optimizer.momentum must be a finite number, got nan",
            ),
        ];
        for (change, expected) in cases {
            let mut config = Config::default();
            change(&mut config);
            assert_single_error(&config, expected);
        }
        let mut config = Config::default();
        config.optimizer.betas = [0.9, 1.0];
        assert_single_error(&config, "optimizer.betas must be in [0, 1), got [0.9, 1.0]");
        let mut config = Config::default();
        config.training.early_stopping_min_delta = -0.5;
        assert_single_error(
            &config,
            "training.early_stopping_min_delta must be >= 0, got -0.5",
        );
        let mut config = Config::default();
        config.scheduler.min_lr = -1.0;
        assert_single_error(&config, "scheduler.min_lr must be >= 0, got -1.0");
    }

    #[test]
    fn quantization_bits_and_group_size_are_checked() {
        let mut config = Config::default();
        config.model.quantization = Quantization::Affine(QuantSpec {
            bits: 3,
            group_size: 48,
        });
        assert_eq!(
            errors_of(&config),
            [
                "model.quantization.bits must be one of 4, 8, got 3",
                "model.quantization.group_size must be one of 32, 64, 128, got 48",
            ]
        );
    }

    #[test]
    fn empty_paths_and_names_are_rejected() {
        let mut config = Config::default();
        config.model.path = String::new();
        config.checkpoint.output_dir = PathBuf::new();
        config.data.train = Some(PathBuf::new());
        assert_eq!(
            errors_of(&config),
            [
                "checkpoint.output_dir must not be empty",
                "data.train must not be empty",
                "model.path must not be empty",
            ]
        );
    }

    #[test]
    fn target_modules_must_be_distinct_and_non_empty() {
        let mut config = Config::default();
        config.lora.target_modules = TargetModules::List(Vec::new());
        assert_single_error(
            &config,
            "lora.target_modules must name at least one module (or be \"all-linear\")",
        );
        config.lora.target_modules =
            TargetModules::List(vec![LoraTarget::QProj, LoraTarget::QProj]);
        assert_single_error(
            &config,
            "lora.target_modules lists \"q_proj\" more than once",
        );
    }

    #[test]
    fn mutually_exclusive_settings_conflict() {
        let mut config = Config::default();
        config.training.epochs = Some(2);
        config.scheduler.warmup_steps = Some(10);
        config.scheduler.warmup_ratio = Some(0.1);
        config.data.valid = Some(PathBuf::from("valid.jsonl"));
        config.data.valid_split = 0.1;
        assert_eq!(
            errors_of(&config),
            [
                "training.steps and training.epochs are mutually exclusive; set only one of them",
                "scheduler.warmup_steps and scheduler.warmup_ratio are mutually exclusive; \
                 set only one of them",
                "data.valid and data.valid_split are mutually exclusive; set only one of them",
            ]
        );
        // Zero counts as unset.
        let mut config = Config::default();
        config.scheduler.warmup_steps = Some(0);
        config.scheduler.warmup_ratio = Some(0.1);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn warmup_may_not_exceed_the_run_and_min_lr_the_peak() {
        let mut config = Config::default();
        config.scheduler.warmup_steps = Some(101);
        config.scheduler.min_lr = 1.0;
        assert_eq!(
            errors_of(&config),
            [
                "scheduler.warmup_steps must be <= training.steps (100), got 101",
                "scheduler.min_lr must be <= optimizer.learning_rate (0.0001), got 1.0",
            ]
        );
    }

    #[test]
    fn early_stopping_needs_evaluations_and_validation_data() {
        let mut config = Config::default();
        config.training.early_stopping_patience = Some(3);
        config.training.eval_every = 0;
        assert_single_error(
            &config,
            "training.early_stopping_patience needs evaluations, but training.eval_every is 0",
        );
        config.training.eval_every = 10;
        config.data.train = Some(PathBuf::from("train.jsonl"));
        assert_single_error(
            &config,
            "training.early_stopping_patience needs a validation set: set data.valid or \
             data.valid_split",
        );
        config.data.valid_split = 0.1;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut config = Config::default();
        config.training.batch_size = 0;
        config.lora.rank = 0;
        config.optimizer.learning_rate = -1.0;
        config.scheduler.min_lr = 0.5;
        let errors = config.validate().expect_err("invalid");
        assert_eq!(errors.len(), 4, "{errors}");
        assert_eq!(errors.to_string().lines().count(), 4);
    }

    #[test]
    fn checker_reports_types_unknown_keys_and_sources() {
        let mut root = Dict::new();
        let mut training = Dict::new();
        training.insert("bach_size".into(), Value::from(8));
        training.insert("batch_size".into(), Value::from("eight"));
        training.insert("grad_checkpointing".into(), Value::from(1));
        root.insert("training".into(), Value::from(training));
        root.insert("lora".into(), Value::from(3));
        let source = |_: &Value| {
            Some(Source::File {
                path: PathBuf::from("run.toml"),
                depth: 0,
            })
        };
        let mut checker = Checker::new(&source);
        checker.check_root(&root);
        let messages: Vec<_> = checker.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "lora: expected a table, got integer 3 (from file run.toml)",
                "unknown key training.bach_size (did you mean training.batch_size?) \
                 (from file run.toml)",
                "training.batch_size: expected an integer, got string \"eight\" \
                 (from file run.toml)",
                "training.grad_checkpointing: expected a boolean (true or false), \
                 got integer 1 (from file run.toml)",
            ]
        );
        assert_eq!(
            checker.errors[1].kind,
            ValidationErrorKind::UnknownKey {
                suggestion: Some("training.batch_size".into())
            }
        );
        assert_eq!(checker.rejected.len(), 4);
    }

    #[test]
    fn checker_suggests_choices_and_modules() {
        let mut root = Dict::new();
        let mut model = Dict::new();
        model.insert("dtype".into(), Value::from("bfloat"));
        root.insert("model".into(), Value::from(model));
        let mut lora = Dict::new();
        lora.insert(
            "target_modules".into(),
            Value::from(vec!["q_proj", "vproj"]),
        );
        lora.insert("num_layers".into(), Value::from(0));
        root.insert("lora".into(), Value::from(lora));
        let mut checker = Checker::new(&|_| None);
        checker.check_root(&root);
        let messages: Vec<_> = checker.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "lora.num_layers must be >= 1, or -1 / \"all\" for every layer, got 0",
                "lora.target_modules lists unknown module \"vproj\" (did you mean \"v_proj\"?); \
                 known modules: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
                "model.dtype must be one of \"float32\", \"float16\", \"bfloat16\", got \
                 \"bfloat\" (did you mean \"bfloat16\"?)",
            ]
        );
    }
}
