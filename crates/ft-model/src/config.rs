//! Model hyper-parameters: a serde mirror of Hugging Face `config.json`
//! ([`HfConfig`]) turned into validated [`ModelArgs`].

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architectures this crate implements (the `architectures` entry of config.json).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

/// `config.json` as Hugging Face writes it, for the Llama family.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HfConfig {
    /// e.g. `["MistralForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `llama` or `mistral`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f32,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    /// Llama-3 style RoPE frequency scaling.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Whether lm_head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Sliding-window attention span (Mistral v0.1); null means full attention.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Longest trained context.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s): a number or a list.
    #[serde(default)]
    pub eos_token_id: Option<EosIds>,
    /// MLX quantization of the checkpoint (`group_size`, `bits`, per-layer overrides).
    #[serde(default)]
    // Absent, not null, when dense: mlx-lm takes any `quantization` key
    // for a partly quantized model (and fails on null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
    /// The checkpoint's dtype name (informational).
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_rms_norm_eps() -> f32 {
    1e-5
}
fn default_rope_theta() -> f32 {
    10_000.0
}

/// `eos_token_id` is an integer in some configs and a list in others.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EosIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl EosIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// Llama-3 RoPE scaling (`rope_type = "llama3"`); other types are rejected.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct RopeScaling {
    /// `llama3` (also accepted under the older key `type`).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Overall context extension factor.
    pub factor: f32,
    /// Wavelengths above original/low_freq_factor are scaled fully.
    #[serde(default = "one")]
    pub low_freq_factor: f32,
    /// Wavelengths below original/high_freq_factor are kept.
    #[serde(default = "four")]
    pub high_freq_factor: f32,
    /// Context length the model was trained with before extension.
    #[serde(default = "default_original_context")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f32 {
    1.0
}
fn four() -> f32 {
    4.0
}
fn default_original_context() -> usize {
    8192
}

/// Validated hyper-parameters the decoder is built from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelArgs {
    /// `llama` or `mistral` (affects only metadata on export).
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Optional Llama-3 RoPE scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether lm_head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Sliding-window span, if any.
    pub sliding_window: Option<usize>,
    /// Longest context.
    pub max_position_embeddings: Option<usize>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids.
    pub eos_token_ids: Vec<u32>,
}

impl ModelArgs {
    /// Reads and validates `config.json`; errors name the file and the field.
    pub fn from_config_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let raw: HfConfig =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                // A syntax error has no field to name (serde_path_to_error says `?`).
                let message = if error.inner().is_syntax() || error.inner().is_eof() {
                    format!("not valid JSON: {}", error.inner())
                } else {
                    format!("field `{}`: {}", error.path(), error.inner())
                };
                Error::Config {
                    path: path.to_path_buf(),
                    message,
                }
            })?;
        Self::from_hf(&raw).map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Validates an [`HfConfig`]; the error names the offending field.
    pub fn from_hf(raw: &HfConfig) -> std::result::Result<Self, String> {
        if let Some(unknown) = raw
            .architectures
            .iter()
            .find(|arch| !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()))
        {
            return Err(format!(
                "architectures: `{unknown}` is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ));
        }
        let positive = |name: &str, value: usize| {
            if value == 0 {
                Err(format!("{name} must be >= 1, got 0"))
            } else {
                Ok(value)
            }
        };
        let hidden_size = positive("hidden_size", raw.hidden_size)?;
        let num_heads = positive("num_attention_heads", raw.num_attention_heads)?;
        let num_kv_heads = positive(
            "num_key_value_heads",
            raw.num_key_value_heads.unwrap_or(num_heads),
        )?;
        if num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_key_value_heads ({num_kv_heads}) must divide num_attention_heads ({num_heads})"
            ));
        }
        let head_dim = match raw.head_dim {
            Some(dim) => positive("head_dim", dim)?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(format!(
                    "head_dim is absent and hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads})"
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!("head_dim must be even for RoPE, got {head_dim}"));
        }
        if let Some(scaling) = &raw.rope_scaling {
            if scaling.rope_type != "llama3" {
                return Err(format!(
                    "rope_scaling.rope_type: `{}` is not supported (supported: llama3)",
                    scaling.rope_type
                ));
            }
        }
        let model_type = raw.model_type.clone().unwrap_or_else(|| {
            if raw.architectures.iter().any(|a| a == "MistralForCausalLM") {
                "mistral".into()
            } else {
                "llama".into()
            }
        });
        Ok(Self {
            model_type,
            hidden_size,
            intermediate_size: positive("intermediate_size", raw.intermediate_size)?,
            num_layers: positive("num_hidden_layers", raw.num_hidden_layers)?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: positive("vocab_size", raw.vocab_size)?,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling: raw.rope_scaling.clone(),
            tie_word_embeddings: raw.tie_word_embeddings,
            sliding_window: raw.sliding_window,
            max_position_embeddings: raw.max_position_embeddings,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw
                .eos_token_id
                .as_ref()
                .map(EosIds::to_vec)
                .unwrap_or_default(),
        })
    }

    /// `(out_features, in_features)` of a projection's weight matrix.
    pub fn projection_shape(&self, projection: crate::Projection) -> (i32, i32) {
        use crate::Projection::*;
        let hidden = self.hidden_size as i32;
        let q_out = (self.num_heads * self.head_dim) as i32;
        let kv_out = (self.num_kv_heads * self.head_dim) as i32;
        let ffn = self.intermediate_size as i32;
        match projection {
            Q => (q_out, hidden),
            K | V => (kv_out, hidden),
            O => (hidden, q_out),
            Gate | Up => (ffn, hidden),
            Down => (hidden, ffn),
        }
    }

    /// The config.json that describes these arguments.
    pub fn to_hf(&self) -> HfConfig {
        HfConfig {
            architectures: vec![if self.model_type == "mistral" {
                "MistralForCausalLM".into()
            } else {
                "LlamaForCausalLM".into()
            }],
            model_type: Some(self.model_type.clone()),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: Some(self.num_kv_heads),
            head_dim: Some(self.head_dim),
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling.clone(),
            tie_word_embeddings: self.tie_word_embeddings,
            sliding_window: self.sliding_window,
            max_position_embeddings: self.max_position_embeddings,
            bos_token_id: self.bos_token_id,
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(EosIds::One(*one)),
                many => Some(EosIds::Many(many.to_vec())),
            },
            quantization: None,
            torch_dtype: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistral_json() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["MistralForCausalLM"],
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": null,
            "head_dim": 128, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false
        })
    }

    #[test]
    fn mistral_v03_config_resolves() {
        let raw: HfConfig = serde_json::from_value(mistral_json()).expect("parses");
        let args = ModelArgs::from_hf(&raw).expect("valid");
        assert_eq!(args.model_type, "mistral");
        assert_eq!(
            (args.num_heads, args.num_kv_heads, args.head_dim),
            (32, 8, 128)
        );
        assert_eq!(args.eos_token_ids, vec![2]);
        let round = ModelArgs::from_hf(&args.to_hf()).expect("round trip");
        assert_eq!(round, args);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut json = mistral_json();
        json["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        let raw: HfConfig = serde_json::from_value(json).expect("parses");
        let error = ModelArgs::from_hf(&raw).expect_err("rejected");
        assert!(error.contains("GPT2LMHeadModel"), "{error}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        let mut json = mistral_json();
        json.as_object_mut().expect("object").remove("hidden_size");
        std::fs::write(&path, json.to_string()).expect("write");
        let error = ModelArgs::from_config_file(&path).expect_err("missing field");
        assert!(error.to_string().contains("hidden_size"), "{error}");

        let mut json = mistral_json();
        json["num_attention_heads"] = serde_json::json!("thirty-two");
        std::fs::write(&path, json.to_string()).expect("write");
        let error = ModelArgs::from_config_file(&path).expect_err("wrong type");
        assert!(error.to_string().contains("config.json"), "{error}");
        assert!(error.to_string().contains("invalid type"), "{error}");
    }

    #[test]
    fn heads_must_divide() {
        let mut json = mistral_json();
        json["num_key_value_heads"] = serde_json::json!(5);
        let raw: HfConfig = serde_json::from_value(json).expect("parses");
        let error = ModelArgs::from_hf(&raw).expect_err("rejected");
        assert!(error.contains("num_key_value_heads"), "{error}");
    }
}
