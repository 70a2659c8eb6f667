//! Adapter files in mlx-lm's format (`adapters.safetensors` +
//! `adapter_config.json`, loadable by `mlx_lm generate --adapter-path`) and
//! Hugging Face PEFT's (`adapter_model.safetensors` + `adapter_config.json`).

use crate::adapter::{LoraAdapters, LoraLayout, LoraSpec};
use crate::{LoraError, Result};
use ft_model::{ModelArgs, Projection};
use mlx_rs::Array;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// An adapter file layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFormat {
    /// mlx-lm: `lora_a (in, r)`, `lora_b (r, out)`, scale in the config.
    Mlx,
    /// PEFT: `lora_A.weight (r, in)`, `lora_B.weight (out, r)`, `lora_alpha`.
    Peft,
}

impl AdapterFormat {
    /// The weights file of this format.
    pub fn weights_file(self) -> &'static str {
        match self {
            Self::Mlx => "adapters.safetensors",
            Self::Peft => "adapter_model.safetensors",
        }
    }

    /// Detects the format of an adapter directory from its weights file.
    pub fn detect(dir: &Path) -> Result<Self> {
        for format in [Self::Mlx, Self::Peft] {
            if dir.join(format.weights_file()).is_file() {
                return Ok(format);
            }
        }
        Err(LoraError::Adapter {
            path: dir.to_path_buf(),
            message: "not an adapter directory: expected adapters.safetensors (mlx-lm) or \
                      adapter_model.safetensors (PEFT) next to adapter_config.json"
                .into(),
        })
    }
}

/// Adapters read from disk, with the base model they were trained on.
#[derive(Debug)]
pub struct LoadedAdapter {
    /// The adapters.
    pub adapters: LoraAdapters,
    /// The base model recorded in the adapter config, if any.
    pub base_model: Option<String>,
    /// The format the files were in.
    pub format: AdapterFormat,
}

const PEFT_PREFIX: &str = "base_model.model.";

impl LoraAdapters {
    /// Writes the adapters into `dir` (created if needed) in `format`;
    /// `base_model` is recorded in the config.
    pub fn save(&self, dir: &Path, format: AdapterFormat, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| LoraError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let spec = &self.layout.spec;
        let names = self.layout.array_names();
        let (arrays, config): (Vec<(String, Array)>, Value) = match format {
            AdapterFormat::Mlx => {
                let keys: Vec<String> = spec
                    .targets
                    .iter()
                    .map(|p| format!("{}.{}", p.parent(), p.name()))
                    .collect();
                let config = json!({
                    "fine_tune_type": if spec.dora { "dora" } else { "lora" },
                    "num_layers": spec.layers.len(),
                    "lora_parameters": {
                        "rank": spec.rank,
                        "scale": spec.scale(),
                        "dropout": spec.dropout,
                        "keys": keys,
                    },
                    "model": base_model,
                    "ft": { "alpha": spec.alpha, "layers": spec.layers },
                });
                (
                    names.into_iter().zip(self.params.iter().cloned()).collect(),
                    config,
                )
            }
            AdapterFormat::Peft => {
                let mut arrays = Vec::new();
                for (name, array) in names.iter().zip(&self.params) {
                    let (key, suffix) = name.rsplit_once('.').unwrap_or((name, ""));
                    let (peft_name, value) = match suffix {
                        "lora_a" => (format!("{PEFT_PREFIX}{key}.lora_A.weight"), array.t()),
                        "lora_b" => (format!("{PEFT_PREFIX}{key}.lora_B.weight"), array.t()),
                        _ => (
                            format!("{PEFT_PREFIX}{key}.lora_magnitude_vector"),
                            array.clone(),
                        ),
                    };
                    arrays.push((peft_name, value));
                }
                let modules: Vec<&str> = spec.targets.iter().map(|p| p.name()).collect();
                let config = json!({
                    "peft_type": "LORA",
                    "task_type": "CAUSAL_LM",
                    "base_model_name_or_path": base_model,
                    "r": spec.rank,
                    "lora_alpha": spec.alpha,
                    "lora_dropout": spec.dropout,
                    "target_modules": modules,
                    "layers_to_transform": spec.layers,
                    "use_dora": spec.dora,
                    "use_rslora": false,
                    "bias": "none",
                    "fan_in_fan_out": false,
                    "inference_mode": true,
                    "init_lora_weights": true,
                    "modules_to_save": null,
                });
                (arrays, config)
            }
        };
        let weights_path = dir.join(format.weights_file());
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        Array::save_safetensors(arrays, Some(&metadata), &weights_path).map_err(|error| {
            LoraError::Adapter {
                path: weights_path.clone(),
                message: error.to_string(),
            }
        })?;
        let config_path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).unwrap_or_default();
        std::fs::write(&config_path, text + "\n").map_err(|source| LoraError::Io {
            path: config_path,
            source,
        })
    }

    /// Reads adapters of either format from `dir` for a model with `args`,
    /// checking every name and shape.
    pub fn load(dir: &Path, args: &ModelArgs) -> Result<LoadedAdapter> {
        let format = AdapterFormat::detect(dir)?;
        let config_path = dir.join("adapter_config.json");
        let bad = |path: &Path, message: String| LoraError::Adapter {
            path: path.to_path_buf(),
            message,
        };
        if !config_path.is_file() {
            return Err(bad(
                &config_path,
                format!(
                    "missing: the adapter's settings (rank, scale, layers) are read from                      adapter_config.json next to {}",
                    format.weights_file()
                ),
            ));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoraError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| bad(&config_path, format!("not valid JSON: {e}")))?;
        if !config.is_object() {
            return Err(bad(
                &config_path,
                format!(
                    "expected a JSON object, got {}",
                    ft_model::load::json_kind(&config)
                ),
            ));
        }
        let weights_path = dir.join(format.weights_file());
        // MLX trusts the header's shapes and offsets: check them first.
        let header = ft_model::load::check_safetensors(&weights_path)?;
        let (spec, base_model) = match format {
            AdapterFormat::Mlx => mlx_spec(&config, args, &header),
            AdapterFormat::Peft => peft_spec(&config, args),
        }
        .map_err(|message| bad(&config_path, message))?;
        let layout = LoraLayout::new(spec, args).map_err(|e| bad(&config_path, e.to_string()))?;
        let mut tensors = Array::load_safetensors(&weights_path)
            .map_err(|e| bad(&weights_path, format!("cannot read the tensors: {e}")))?;
        let mut params = Vec::with_capacity(layout.num_arrays());
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        for (name, shape) in layout.array_names().into_iter().zip(layout.array_shapes()) {
            let (file_name, transposed) = match format {
                AdapterFormat::Mlx => (name.clone(), false),
                AdapterFormat::Peft => {
                    let (key, suffix) = name.rsplit_once('.').unwrap_or((&name, ""));
                    match suffix {
                        "lora_a" => (format!("{PEFT_PREFIX}{key}.lora_A.weight"), true),
                        "lora_b" => (format!("{PEFT_PREFIX}{key}.lora_B.weight"), true),
                        _ => (format!("{PEFT_PREFIX}{key}.lora_magnitude_vector"), false),
                    }
                }
            };
            let Some(array) = tensors.remove(&file_name) else {
                missing.push(file_name);
                continue;
            };
            let array = if transposed { array.t() } else { array };
            if array.shape() != shape.as_slice() {
                mismatched.push(format!(
                    "{file_name}: expected {shape:?}, got {:?}",
                    array.shape()
                ));
                continue;
            }
            params.push(array.as_dtype(mlx_rs::Dtype::Float32)?);
        }
        if !missing.is_empty() || !mismatched.is_empty() {
            let mut message = String::from("the adapter does not fit this model:");
            if !missing.is_empty() {
                message += &format!(" missing tensors {missing:?};");
            }
            if !mismatched.is_empty() {
                message += &format!(" shape mismatches {mismatched:?};");
            }
            return Err(bad(&weights_path, message.trim_end_matches(';').into()));
        }
        if !tensors.is_empty() {
            let mut extra: Vec<String> = tensors.into_keys().collect();
            extra.sort();
            return Err(bad(
                &weights_path,
                format!("tensors the adapter config does not describe: {extra:?}"),
            ));
        }
        mlx_rs::transforms::eval(params.iter())?;
        Ok(LoadedAdapter {
            adapters: LoraAdapters { layout, params },
            base_model,
            format,
        })
    }
}

type SpecAndBase = std::result::Result<(LoraSpec, Option<String>), String>;

fn field<'a>(config: &'a Value, path: &str) -> std::result::Result<&'a Value, String> {
    path.split('.')
        .try_fold(config, |value, key| value.get(key))
        .ok_or_else(|| format!("field `{path}` is missing"))
}

fn number(config: &Value, path: &str) -> std::result::Result<f64, String> {
    let value = field(config, path)?;
    value
        .as_f64()
        .ok_or_else(|| format!("field `{path}`: expected a number, got {value}"))
}

/// A count that must be a whole number >= 1 (`as usize` would turn -2 into 0
/// and 2.5 into 2 silently).
fn positive_integer(config: &Value, path: &str) -> std::result::Result<usize, String> {
    let value = field(config, path)?;
    value
        .as_u64()
        .filter(|&n| n >= 1)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("field `{path}`: expected a whole number >= 1, got {value}"))
}

fn projections(names: &[&str], path: &str) -> std::result::Result<Vec<Projection>, String> {
    names
        .iter()
        .map(|name| {
            let short = name.rsplit('.').next().unwrap_or(name);
            Projection::from_name(short).ok_or_else(|| {
                format!("field `{path}`: `{name}` is not a projection of a Llama/Mistral layer")
            })
        })
        .collect()
}

fn string_list<'a>(config: &'a Value, path: &str) -> std::result::Result<Vec<&'a str>, String> {
    let value = field(config, path)?;
    value
        .as_array()
        .and_then(|items| items.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("field `{path}`: expected a list of strings, got {value}"))
}

/// The projections an mlx-lm adapter without `lora_parameters.keys` adapts:
/// mlx-lm then wraps every linear layer of the adapted blocks, so the
/// targets are the modules that have `lora_a` tensors.
fn targets_from_tensors(
    header: &ft_model::load::SafetensorsHeader,
) -> std::result::Result<Vec<Projection>, String> {
    let mut found = Vec::new();
    for name in header.tensors.keys() {
        let Some(module) = name.strip_suffix(".lora_a") else {
            continue;
        };
        let short = module.rsplit('.').next().unwrap_or(module);
        let projection = Projection::from_name(short).ok_or_else(|| {
            format!(
                "field `lora_parameters.keys` is absent, and the tensor `{name}` adapts \
                 `{short}`, which is not a projection of a Llama/Mistral layer"
            )
        })?;
        if !found.contains(&projection) {
            found.push(projection);
        }
    }
    if found.is_empty() {
        return Err(
            "field `lora_parameters.keys` is absent, and the weights hold no \
                    `*.lora_a` tensor to infer the adapted projections from"
                .into(),
        );
    }
    // Checkpoint order, as a `keys` list would give them.
    Ok(Projection::ALL
        .into_iter()
        .filter(|p| found.contains(p))
        .collect())
}

fn mlx_spec(
    config: &Value,
    args: &ModelArgs,
    header: &ft_model::load::SafetensorsHeader,
) -> SpecAndBase {
    let rank = positive_integer(config, "lora_parameters.rank")?;
    let scale = number(config, "lora_parameters.scale")?;
    let dropout = number(config, "lora_parameters.dropout").unwrap_or(0.0);
    // mlx-lm writes no `keys` by default (or `null`) and then adapts every
    // linear layer of a block; the tensors say which those are.
    let targets = match config.pointer("/lora_parameters/keys") {
        None | Some(Value::Null) => targets_from_tensors(header)?,
        Some(_) => projections(
            &string_list(config, "lora_parameters.keys")?,
            "lora_parameters.keys",
        )?,
    };
    let total = args.num_layers;
    let num_layers = field(config, "num_layers")?;
    let num_layers = num_layers
        .as_i64()
        .filter(|&n| n >= 1 || n == -1)
        .ok_or_else(|| {
            format!(
                "field `num_layers`: expected a whole number >= 1, or -1 for all, got {num_layers}"
            )
        })?;
    let layers = match config.pointer("/ft/layers").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .map(|v| v.as_u64().map(|l| l as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or("field `ft.layers`: expected a list of layer indices")?,
        None if num_layers < 0 => (0..total).collect(),
        None => (total.saturating_sub(num_layers as usize)..total).collect(),
    };
    let fine_tune_type = config
        .get("fine_tune_type")
        .and_then(Value::as_str)
        .unwrap_or("lora");
    if !matches!(fine_tune_type, "lora" | "dora") {
        return Err(format!(
            "field `fine_tune_type`: expected \"lora\" or \"dora\", got \"{fine_tune_type}\""
        ));
    }
    let spec = LoraSpec {
        rank,
        alpha: scale * rank as f64,
        dropout,
        targets,
        layers,
        dora: fine_tune_type == "dora",
    };
    let base = config
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((spec, base))
}

fn peft_spec(config: &Value, args: &ModelArgs) -> SpecAndBase {
    let peft_type = field(config, "peft_type")?;
    if peft_type.as_str() != Some("LORA") {
        return Err(format!(
            "field `peft_type`: expected \"LORA\", got {peft_type}"
        ));
    }
    let rank = positive_integer(config, "r")?;
    let alpha = number(config, "lora_alpha")?;
    let dropout = number(config, "lora_dropout").unwrap_or(0.0);
    let modules = match field(config, "target_modules")? {
        Value::String(all) if all == "all-linear" => Projection::ALL.to_vec(),
        _ => projections(&string_list(config, "target_modules")?, "target_modules")?,
    };
    let layers = match config.get("layers_to_transform") {
        None | Some(Value::Null) => (0..args.num_layers).collect(),
        Some(Value::Number(n)) => vec![n.as_u64().unwrap_or(u64::MAX) as usize],
        Some(value) => value
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|v| v.as_u64().map(|l| l as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                format!("field `layers_to_transform`: expected layer indices, got {value}")
            })?,
    };
    let spec = LoraSpec {
        rank,
        alpha,
        dropout,
        targets: modules,
        layers,
        dora: config
            .get("use_dora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let base = config
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((spec, base))
}
