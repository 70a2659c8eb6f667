//! Value types of individual settings: named choices, LoRA targets, layer
//! counts and quantization.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::config::QuantSpec;

/// Declares a fieldless enum written in config files as one of a fixed set
/// of strings, with `NAMES`, `as_str`, `from_name`, `Display` and serde.
macro_rules! string_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident $(default $default:ident)? {
            $(
                $(#[doc = $vdoc:literal])*
                $variant:ident = $text:literal,
            )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[doc = $vdoc])* $variant,)*
        }

        impl $name {
            /// Every accepted name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),*];

            /// The name used in config files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            /// Parses a name as written in config files.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }

        $(impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        })?

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                Self::from_name(&name)
                    .ok_or_else(|| de::Error::unknown_variant(&name, Self::NAMES))
            }
        }
    };
}

string_enum! {
    /// Numeric type the base model's weights are loaded and computed in.
    pub enum Dtype default Float32 {
        /// 32-bit IEEE float.
        Float32 = "float32",
        /// 16-bit IEEE float.
        Float16 = "float16",
        /// 16-bit brain float.
        Bfloat16 = "bfloat16",
    }
}

string_enum! {
    /// Layout of the records in the data files.
    pub enum DataFormat default Auto {
        /// Detect from the first record.
        Auto = "auto",
        /// `{"messages": [{"role", "content"}, ...]}`.
        Chat = "chat",
        /// `{"prompt", "completion"}`.
        PromptCompletion = "prompt_completion",
        /// `{"text"}`.
        Text = "text",
        /// `{"prompt", "completion", "label"}` (KTO-style; ft-data's
        /// `Format` owns the fields, a test there holds this list to it).
        Preference = "preference",
    }
}

string_enum! {
    /// What to do with a sample longer than `data.max_seq_len`.
    pub enum OverLengthPolicy default Truncate {
        /// Cut it to the maximum length.
        Truncate = "truncate",
        /// Leave it out (and count it).
        Drop = "drop",
        /// Stop with an error naming the sample.
        Error = "error",
    }
}

string_enum! {
    /// Chat template that turns messages into tokens.
    pub enum ChatTemplate default Auto {
        /// The template that comes with the model, else one matching its family.
        Auto = "auto",
        /// Mistral v3 (`[INST] ... [/INST]`).
        MistralV3 = "mistral-v3",
        /// ChatML (`<|im_start|>role ... <|im_end|>`).
        Chatml = "chatml",
    }
}

string_enum! {
    /// What to do when the loss or the gradients are not finite.
    pub enum NonFinitePolicy default Skip {
        /// Skip the update and go on (the skip is logged and counted).
        Skip = "skip",
        /// Stop training with an error.
        Stop = "stop",
    }
}

string_enum! {
    /// Optimization algorithm.
    pub enum OptimizerName default AdamW {
        /// Adam with decoupled weight decay.
        AdamW = "adamw",
        /// Stochastic gradient descent, optionally with momentum.
        Sgd = "sgd",
    }
}

string_enum! {
    /// Shape of the learning-rate schedule after warmup.
    pub enum SchedulerKind default Cosine {
        /// Cosine decay from the learning rate down to `min_lr`.
        Cosine = "cosine",
        /// Linear decay from the learning rate down to `min_lr`.
        Linear = "linear",
        /// Constant learning rate.
        Constant = "constant",
    }
}

string_enum! {
    /// Verbosity of the console log.
    pub enum LogLevel default Info {
        /// Errors only.
        Error = "error",
        /// Errors and warnings.
        Warn = "warn",
        /// Progress and summaries.
        Info = "info",
        /// Details for diagnosing problems.
        Debug = "debug",
        /// Everything.
        Trace = "trace",
    }
}

string_enum! {
    /// A linear layer of a transformer block that LoRA can adapt.
    pub enum LoraTarget {
        /// Attention query projection.
        QProj = "q_proj",
        /// Attention key projection.
        KProj = "k_proj",
        /// Attention value projection.
        VProj = "v_proj",
        /// Attention output projection.
        OProj = "o_proj",
        /// MLP gate projection.
        GateProj = "gate_proj",
        /// MLP up projection.
        UpProj = "up_proj",
        /// MLP down projection.
        DownProj = "down_proj",
    }
}

impl LoraTarget {
    /// Every target, in declaration order.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::QProj,
        LoraTarget::KProj,
        LoraTarget::VProj,
        LoraTarget::OProj,
        LoraTarget::GateProj,
        LoraTarget::UpProj,
        LoraTarget::DownProj,
    ];
}

/// Which linear layers of each adapted block get a LoRA adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Every linear layer (`"all-linear"`).
    AllLinear,
    /// The listed layers (non-empty, no repeats once validated).
    List(Vec<LoraTarget>),
}

impl TargetModules {
    /// The string that selects every linear layer.
    pub const ALL_LINEAR: &'static str = "all-linear";

    /// The selected layers, in declaration order for `AllLinear`.
    pub fn targets(&self) -> Vec<LoraTarget> {
        match self {
            TargetModules::AllLinear => LoraTarget::ALL.to_vec(),
            TargetModules::List(targets) => targets.clone(),
        }
    }

    /// Whether `target` is selected.
    pub fn includes(&self, target: LoraTarget) -> bool {
        match self {
            TargetModules::AllLinear => true,
            TargetModules::List(targets) => targets.contains(&target),
        }
    }
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::List(vec![LoraTarget::QProj, LoraTarget::VProj])
    }
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetModules::AllLinear => serializer.serialize_str(Self::ALL_LINEAR),
            TargetModules::List(targets) => {
                let mut seq = serializer.serialize_seq(Some(targets.len()))?;
                for target in targets {
                    seq.serialize_element(target)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetsVisitor;

        impl<'de> Visitor<'de> for TargetsVisitor {
            type Value = TargetModules;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a list of module names or \"{}\"",
                    TargetModules::ALL_LINEAR
                )
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                if name == TargetModules::ALL_LINEAR {
                    Ok(TargetModules::AllLinear)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(name), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut targets = Vec::new();
                while let Some(target) = seq.next_element::<LoraTarget>()? {
                    targets.push(target);
                }
                Ok(TargetModules::List(targets))
            }
        }

        deserializer.deserialize_any(TargetsVisitor)
    }
}

/// How many transformer blocks get LoRA adapters, counted from the last
/// block backwards (as mlx-lm does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraLayers {
    /// Every block (`-1` or `"all"` in config files).
    All,
    /// The last `n` blocks (`n >= 1`).
    Last(u32),
}

impl LoraLayers {
    /// How many blocks are adapted in a model with `total` blocks.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            LoraLayers::All => total,
            LoraLayers::Last(n) => usize::try_from(n).map_or(total, |n| n.min(total)),
        }
    }
}

impl Default for LoraLayers {
    fn default() -> Self {
        LoraLayers::Last(16)
    }
}

impl Serialize for LoraLayers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LoraLayers::All => serializer.serialize_str("all"),
            LoraLayers::Last(n) => serializer.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for LoraLayers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LayersVisitor;

        impl Visitor<'_> for LayersVisitor {
            type Value = LoraLayers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive layer count, -1 or \"all\"")
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                if n == -1 {
                    return Ok(LoraLayers::All);
                }
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Ok(LoraLayers::Last(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(n), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Ok(LoraLayers::Last(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(n), &self)),
                }
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                if name == "all" {
                    Ok(LoraLayers::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(name), &self))
                }
            }
        }

        deserializer.deserialize_any(LayersVisitor)
    }
}

/// Whether and how the frozen base weights are quantized (QLoRA).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Quantization {
    /// Keep the weights in `model.dtype` (`"none"` in config files).
    #[default]
    None,
    /// Group-wise affine quantization of the base weights.
    Affine(QuantSpec),
}

impl Quantization {
    /// The quantization settings, if the base weights are quantized.
    pub fn spec(&self) -> Option<&QuantSpec> {
        match self {
            Quantization::None => None,
            Quantization::Affine(spec) => Some(spec),
        }
    }
}

impl Serialize for Quantization {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Quantization::None => serializer.serialize_str("none"),
            Quantization::Affine(spec) => spec.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Quantization {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantizationVisitor;

        impl<'de> Visitor<'de> for QuantizationVisitor {
            type Value = Quantization;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"none\" or a table with bits and group_size")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                if name == "none" {
                    Ok(Quantization::None)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(name), &self))
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                QuantSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Quantization::Affine)
            }
        }

        deserializer.deserialize_any(QuantizationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::value::Value;

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> T {
        let tree = Value::serialize(value).expect("serializes");
        tree.deserialize().expect("deserializes")
    }

    #[test]
    fn string_enums_round_trip_by_name() {
        for name in DataFormat::NAMES {
            let format = DataFormat::from_name(name).expect("known name");
            assert_eq!(format.as_str(), *name);
            assert_eq!(roundtrip(&format), format);
        }
        assert_eq!(ChatTemplate::MistralV3.to_string(), "mistral-v3");
        assert_eq!(Dtype::default(), Dtype::Float32);
        assert!(Dtype::from_name("fp32").is_none());
        let error = Value::from("fp32")
            .deserialize::<Dtype>()
            .expect_err("unknown name");
        assert!(error.to_string().contains("float32"), "{error}");
    }

    #[test]
    fn target_modules_accept_list_or_all_linear() {
        assert_eq!(
            Value::from("all-linear")
                .deserialize::<TargetModules>()
                .ok(),
            Some(TargetModules::AllLinear)
        );
        let list = Value::from(vec!["k_proj", "down_proj"]);
        let modules: TargetModules = list.deserialize().expect("list");
        assert_eq!(
            modules,
            TargetModules::List(vec![LoraTarget::KProj, LoraTarget::DownProj])
        );
        assert!(modules.includes(LoraTarget::KProj));
        assert!(!modules.includes(LoraTarget::QProj));
        assert_eq!(TargetModules::AllLinear.targets().len(), 7);
        assert!(Value::from("everything")
            .deserialize::<TargetModules>()
            .is_err());
        assert_eq!(
            roundtrip(&TargetModules::AllLinear),
            TargetModules::AllLinear
        );
        assert_eq!(roundtrip(&modules), modules);
    }

    #[test]
    fn layers_accept_count_minus_one_or_all() {
        assert_eq!(
            Value::from(-1).deserialize::<LoraLayers>().ok(),
            Some(LoraLayers::All)
        );
        assert_eq!(
            Value::from("all").deserialize::<LoraLayers>().ok(),
            Some(LoraLayers::All)
        );
        assert_eq!(
            Value::from(8).deserialize::<LoraLayers>().ok(),
            Some(LoraLayers::Last(8))
        );
        assert!(Value::from(0).deserialize::<LoraLayers>().is_err());
        assert!(Value::from(-2).deserialize::<LoraLayers>().is_err());
        assert_eq!(LoraLayers::Last(16).resolve(30), 16);
        assert_eq!(LoraLayers::Last(16).resolve(12), 12);
        assert_eq!(LoraLayers::All.resolve(32), 32);
        assert_eq!(roundtrip(&LoraLayers::All), LoraLayers::All);
        assert_eq!(roundtrip(&LoraLayers::Last(4)), LoraLayers::Last(4));
    }

    #[test]
    fn quantization_is_none_or_a_table() {
        assert_eq!(
            Value::from("none").deserialize::<Quantization>().ok(),
            Some(Quantization::None)
        );
        let spec = QuantSpec {
            bits: 8,
            group_size: 32,
        };
        let quantized = Quantization::Affine(spec.clone());
        assert_eq!(roundtrip(&quantized), quantized);
        assert_eq!(quantized.spec(), Some(&spec));
        assert!(Value::from("q4").deserialize::<Quantization>().is_err());
    }
}
