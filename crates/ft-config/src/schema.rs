//! Field metadata: the one table that validation, `config show` and the
//! generated reference all read.
//!
//! Each section struct is declared through [`section!`], which turns every
//! field's doc comment into both the Rust documentation and the `doc` of its
//! [`FieldInfo`], so the description is written exactly once.

use std::collections::BTreeSet;
use std::fmt;

/// What values a field accepts; drives both type/range checks and the
/// "Type"/"Allowed" columns of the reference.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// One integer out of a fixed set.
    IntOneOf(&'static [i64]),
    /// A finite number within a range (integers are accepted).
    Float(Range),
    /// Exactly two finite numbers, each within a range.
    FloatPair(Range),
    /// A non-empty string.
    Text,
    /// A non-empty file-system path.
    Path,
    /// One name out of a fixed set.
    Choice(&'static [&'static str]),
    /// LoRA target modules: a non-empty list of distinct module names, or
    /// the string `"all-linear"`.
    Modules,
    /// A layer count: a positive integer, or `-1` / `"all"`.
    Layers,
    /// `"none"`, or a table whose keys are fields of their own.
    Quantization,
    /// The inner kind, or unset (absent).
    Optional(&'static Kind),
}

impl Kind {
    /// The kind of a set value, looking through [`Kind::Optional`].
    pub(crate) fn set_kind(&self) -> &Kind {
        match self {
            Kind::Optional(inner) => inner.set_kind(),
            other => other,
        }
    }

    /// Whether a value given as plain text (environment, `--set`) should be
    /// kept as text rather than parsed as a TOML literal.
    pub(crate) fn is_textual(&self) -> bool {
        matches!(self.set_kind(), Kind::Text | Kind::Path | Kind::Choice(_))
    }

    /// The "Type" column of the reference.
    pub(crate) fn type_label(&self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Int { .. } | Kind::IntOneOf(_) => "integer".into(),
            Kind::Float(_) => "float".into(),
            Kind::FloatPair(_) => "[float, float]".into(),
            Kind::Text | Kind::Choice(_) => "string".into(),
            Kind::Path => "path".into(),
            Kind::Modules => "list of strings, or string".into(),
            Kind::Layers => "integer or string".into(),
            Kind::Quantization => "string or table".into(),
            Kind::Optional(inner) => format!("{} (optional)", inner.type_label()),
        }
    }

    /// The "Allowed" column of the reference, and the `must be ...` part of
    /// range errors.
    pub(crate) fn allowed_label(&self) -> String {
        match self {
            Kind::Bool => "true, false".into(),
            Kind::Int { min, max } => int_range_label(*min, *max),
            Kind::IntOneOf(values) => one_of_label(values.iter().map(ToString::to_string)),
            Kind::Float(range) | Kind::FloatPair(range) => range.to_string(),
            Kind::Text | Kind::Path => "non-empty".into(),
            Kind::Choice(names) => one_of_label(names.iter().map(|name| format!("\"{name}\""))),
            Kind::Modules => format!(
                "list of {}; or \"{}\"",
                one_of_label(
                    crate::values::LoraTarget::NAMES
                        .iter()
                        .map(|name| format!("\"{name}\""))
                ),
                crate::values::TargetModules::ALL_LINEAR
            ),
            Kind::Layers => ">= 1, or -1 / \"all\" for every layer".into(),
            Kind::Quantization => "\"none\", or a table with bits and group_size".into(),
            Kind::Optional(inner) => inner.allowed_label(),
        }
    }
}

fn int_range_label(min: i64, max: i64) -> String {
    // Upper bounds that only reflect the Rust type are noise to a user.
    if max >= i64::from(u32::MAX) {
        format!(">= {min}")
    } else {
        format!("between {min} and {max}")
    }
}

fn one_of_label(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// One end of a [`Range`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bound {
    Unbounded,
    Inclusive(f64),
    Exclusive(f64),
}

/// A range of floats, shown in interval notation (`[0, 1)`, `> 0`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    pub lo: Bound,
    pub hi: Bound,
}

impl Range {
    /// `>= lo`.
    pub(crate) const fn at_least(lo: f64) -> Self {
        Range {
            lo: Bound::Inclusive(lo),
            hi: Bound::Unbounded,
        }
    }

    /// `> lo`.
    pub(crate) const fn above(lo: f64) -> Self {
        Range {
            lo: Bound::Exclusive(lo),
            hi: Bound::Unbounded,
        }
    }

    /// `[lo, hi)`.
    pub(crate) const fn half_open(lo: f64, hi: f64) -> Self {
        Range {
            lo: Bound::Inclusive(lo),
            hi: Bound::Exclusive(hi),
        }
    }

    /// Whether `value` lies in the range (NaN never does).
    pub(crate) fn contains(&self, value: f64) -> bool {
        let above_lo = match self.lo {
            Bound::Unbounded => true,
            Bound::Inclusive(lo) => value >= lo,
            Bound::Exclusive(lo) => value > lo,
        };
        let below_hi = match self.hi {
            Bound::Unbounded => true,
            Bound::Inclusive(hi) => value <= hi,
            Bound::Exclusive(hi) => value < hi,
        };
        above_lo && below_hi
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.lo, self.hi) {
            (Bound::Unbounded, Bound::Unbounded) => write!(f, "any number"),
            (Bound::Inclusive(lo), Bound::Unbounded) => write!(f, ">= {lo}"),
            (Bound::Exclusive(lo), Bound::Unbounded) => write!(f, "> {lo}"),
            (Bound::Unbounded, Bound::Inclusive(hi)) => write!(f, "<= {hi}"),
            (Bound::Unbounded, Bound::Exclusive(hi)) => write!(f, "< {hi}"),
            (lo, hi) => {
                let (open, lo) = match lo {
                    Bound::Inclusive(lo) => ('[', lo),
                    Bound::Exclusive(lo) => ('(', lo),
                    Bound::Unbounded => ('(', f64::NEG_INFINITY),
                };
                let (close, hi) = match hi {
                    Bound::Inclusive(hi) => (']', hi),
                    Bound::Exclusive(hi) => (')', hi),
                    Bound::Unbounded => (')', f64::INFINITY),
                };
                write!(f, "in {open}{lo}, {hi}{close}")
            }
        }
    }
}

/// Metadata of one configurable key.
#[derive(Debug)]
pub(crate) struct FieldInfo {
    /// Full dotted key path, e.g. `training.batch_size`.
    pub key: &'static str,
    /// Accepted values.
    pub kind: Kind,
    /// The field's doc comment, one source line per line.
    pub doc: &'static str,
}

impl FieldInfo {
    /// The last segment of the key (the field name).
    pub(crate) fn name(&self) -> &'static str {
        self.key.rsplit('.').next().unwrap_or(self.key)
    }

    /// The doc comment as one paragraph.
    pub(crate) fn description(&self) -> String {
        join_doc(self.doc)
    }
}

/// Metadata of one table of settings.
pub(crate) struct SectionInfo {
    /// Dotted key path of the table, e.g. `training` or `model.quantization`.
    pub key: &'static str,
    /// The struct's doc comment.
    pub doc: &'static str,
    /// Its fields, in declaration order.
    pub fields: &'static [FieldInfo],
    /// The section's defaults as a value tree (keyed by field name).
    pub defaults: fn() -> Option<figment::value::Value>,
}

/// Joins doc-comment lines into one paragraph.
pub(crate) fn join_doc(doc: &str) -> String {
    doc.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Declares a settings struct whose fields' doc comments double as the
/// field metadata (see the module docs). Each field is written as
/// `/// doc  name: Type = default_expr; kind_expr;`.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident at $prefix:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr ; $kind:expr ;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $name {
            /// Metadata of this section and its fields.
            pub(crate) const SECTION: $crate::schema::SectionInfo = $crate::schema::SectionInfo {
                key: $prefix,
                doc: concat!($($sdoc, "\n",)*),
                fields: &[
                    $($crate::schema::FieldInfo {
                        key: concat!($prefix, ".", stringify!($field)),
                        kind: $kind,
                        doc: concat!($($doc, "\n",)*),
                    },)*
                ],
                defaults: || figment::value::Value::serialize(Self::default()).ok(),
            };
        }
    };
}

/// Every section, in the order of `config show` and the reference.
pub(crate) fn sections() -> &'static [SectionInfo] {
    use crate::config::*;
    const SECTIONS: &[SectionInfo] = &[
        ModelConfig::SECTION,
        QuantSpec::SECTION,
        LoraConfig::SECTION,
        DataConfig::SECTION,
        TrainingConfig::SECTION,
        OptimizerConfig::SECTION,
        SchedulerConfig::SECTION,
        CheckpointConfig::SECTION,
        LoggingConfig::SECTION,
        MemoryConfig::SECTION,
    ];
    SECTIONS
}

/// Every field of every section.
pub(crate) fn fields() -> impl Iterator<Item = &'static FieldInfo> {
    sections().iter().flat_map(|section| section.fields.iter())
}

/// The field at a dotted key path.
pub(crate) fn field(key: &str) -> Option<&'static FieldInfo> {
    fields().find(|field| field.key == key)
}

/// The names directly below a table key path (`""` is the root).
pub(crate) fn children(table: &str) -> BTreeSet<&'static str> {
    fields()
        .filter_map(|field| {
            let rest = if table.is_empty() {
                field.key
            } else {
                field.key.strip_prefix(table)?.strip_prefix('.')?
            };
            rest.split('.').next()
        })
        .collect()
}

/// Whether a key path names a table of settings (a section or sub-table).
pub(crate) fn is_table(key: &str) -> bool {
    !children(key).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_documented_and_unique() {
        let mut seen = BTreeSet::new();
        for field in fields() {
            assert!(!field.description().is_empty(), "{} has no doc", field.key);
            assert!(seen.insert(field.key), "{} declared twice", field.key);
        }
        for section in sections() {
            assert!(
                !join_doc(section.doc).is_empty(),
                "{} has no doc",
                section.key
            );
            assert!((section.defaults)().is_some(), "{} defaults", section.key);
        }
    }

    #[test]
    fn children_of_root_are_the_nine_sections() {
        let roots: Vec<_> = children("").into_iter().collect();
        assert_eq!(
            roots,
            [
                "checkpoint",
                "data",
                "logging",
                "lora",
                "memory",
                "model",
                "optimizer",
                "scheduler",
                "training"
            ]
        );
        assert!(children("model").contains("quantization"));
        assert_eq!(
            children("model.quantization")
                .into_iter()
                .collect::<Vec<_>>(),
            ["bits", "group_size"]
        );
        assert!(is_table("model.quantization"));
        assert!(!is_table("training.batch_size"));
    }

    #[test]
    fn range_labels_use_interval_notation() {
        assert_eq!(Range::half_open(0.0, 1.0).to_string(), "in [0, 1)");
        let closed = Range {
            lo: Bound::Inclusive(0.0),
            hi: Bound::Inclusive(1.0),
        };
        assert_eq!(closed.to_string(), "in [0, 1]");
        assert_eq!(Range::above(0.0).to_string(), "> 0");
        assert_eq!(Range::at_least(0.0).to_string(), ">= 0");
        assert!(!Range::at_least(0.0).contains(f64::NAN));
        assert!(Range::half_open(0.0, 1.0).contains(0.0));
        assert!(!Range::half_open(0.0, 1.0).contains(1.0));
        assert_eq!(int_range_label(1, i64::from(u32::MAX)), ">= 1");
        assert_eq!(int_range_label(1, 8), "between 1 and 8");
    }
}
