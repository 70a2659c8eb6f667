//! Properties of layering and input handling: merging order, precedence, and
//! no panics on arbitrary `--set`, environment or file input.

use figment::value::Value;
use proptest::prelude::*;

use crate::schema;
use crate::{Config, ConfigLoader, Error, LoadedConfig, Result, Source};

/// Loading must end in a config or in located validation errors.
fn assert_ok_or_located(result: &Result<LoadedConfig>) -> Result<(), TestCaseError> {
    match result {
        Ok(loaded) => {
            prop_assert_eq!(loaded.config.validate(), Ok(()));
        }
        Err(Error::Invalid(errors)) => {
            prop_assert!(!errors.is_empty());
            for error in errors {
                prop_assert!(error.source.is_some(), "unlocated: {}", error);
            }
        }
        Err(Error::Parse { .. }) => {}
        Err(other) => prop_assert!(false, "unexpected error kind: {}", other),
    }
    Ok(())
}

/// Integer keys with their valid range, to build random valid layers.
const INT_KEYS: &[(&str, i64, i64)] = &[
    ("training.batch_size", 1, 64),
    ("training.seed", 0, 1 << 40),
    ("lora.rank", 1, 256),
    ("data.max_seq_len", 2, 8192),
    ("checkpoint.keep_last", 0, 10),
];

proptest! {
    #[test]
    fn the_highest_layer_that_sets_a_key_wins(
        key_index in 0..INT_KEYS.len(),
        file in proptest::option::of(any::<u32>()),
        env in proptest::option::of(any::<u32>()),
        sets in prop::collection::vec(any::<u32>(), 0..3),
    ) {
        let (key, min, max) = INT_KEYS[key_index];
        let pick = |raw: u32| min + i64::from(raw) % (max - min + 1);
        let (section, name) = key.split_once('.').unwrap_or_default();
        let mut loader = ConfigLoader::new();
        let mut expected = None;
        if let Some(raw) = file {
            loader = loader.toml_str("run.toml", format!("[{section}]\n{name} = {}\n", pick(raw)));
            expected = Some((pick(raw), Source::File { path: "run.toml".into(), depth: 0 }));
        }
        if let Some(raw) = env {
            let var = format!("FT_{}__{}", section.to_uppercase(), name.to_uppercase());
            loader = loader.env_from([(var.clone(), pick(raw).to_string())]);
            expected = Some((pick(raw), Source::Env { var }));
        }
        for raw in &sets {
            let arg = format!("{key}={}", pick(*raw));
            loader = loader.overrides([arg.clone()]);
            expected = Some((pick(*raw), Source::Set { arg }));
        }
        let loaded = loader.load().map_err(|error| TestCaseError::fail(error.to_string()))?;
        let value = Value::serialize(&loaded.config)
            .ok()
            .and_then(|tree| tree.find(key))
            .and_then(|value| crate::validate::integer(&value));
        let source = loaded.source_of(key).cloned();
        match expected {
            Some((expected_value, expected_source)) => {
                prop_assert_eq!(value, Some(i128::from(expected_value)));
                prop_assert_eq!(source, Some(expected_source));
            }
            None => prop_assert_eq!(source, Some(Source::Default)),
        }
    }

    #[test]
    fn any_set_string_is_ok_or_a_located_error(arg in any::<String>()) {
        assert_ok_or_located(&ConfigLoader::new().overrides([arg]).load())?;
    }

    #[test]
    fn any_value_for_a_known_key_is_ok_or_a_located_error(
        field_index in 0..64usize,
        raw in prop_oneof![
            any::<String>(),
            "-?[0-9]{1,20}(\\.[0-9]{0,3})?(e-?[0-9]{1,3})?",
            "\\[[a-z_0-9\", .-]{0,30}\\]",
            "\\{[a-z_0-9\"=, ]{0,30}\\}",
            "(true|false|all|none|all-linear|nan|inf|-1|0)",
        ],
    ) {
        let fields: Vec<_> = schema::fields().collect();
        let field = fields[field_index % fields.len()];
        let arg = format!("{}={raw}", field.key);
        let env = [(format!("FT_{}", field.key.replace('.', "__").to_uppercase()), raw)];
        assert_ok_or_located(&ConfigLoader::new().overrides([arg]).load())?;
        assert_ok_or_located(&ConfigLoader::new().env_from(env).load())?;
    }

    #[test]
    fn any_environment_is_ok_or_a_located_error(
        vars in prop::collection::vec(("FT_[A-Z_]{0,24}", any::<String>()), 0..4),
    ) {
        assert_ok_or_located(&ConfigLoader::new().env_from(vars).load())?;
    }

    #[test]
    fn toml_ish_input_never_panics(
        text in prop_oneof![
            any::<String>(),
            "((\\[[a-z_.]{0,16}\\]|[a-z_.]{1,20} ?= ?(\"[a-z0-9_/.-]{0,8}\"|-?[0-9.e]{1,6}|true|false|\\[[0-9a-z\", ]{0,12}\\]|\\{[a-z0-9=, ]{0,12}\\}))\n){0,10}",
        ],
    ) {
        assert_ok_or_located(&ConfigLoader::new().toml_str("fuzz.toml", text).load())?;
    }

    #[test]
    fn schema_keys_with_random_values_never_panic(
        lines in prop::collection::vec(
            (0..64usize, "(-?[0-9]{1,4}(\\.[0-9]{1,2})?|\"[a-z_-]{0,10}\"|true|false|\\[\"[a-z_]{1,8}\"\\])"),
            0..8,
        ),
    ) {
        let fields: Vec<_> = schema::fields().collect();
        let mut text = String::new();
        for (index, value) in lines {
            let field = fields[index % fields.len()];
            if let Some((table, name)) = field.key.rsplit_once('.') {
                text.push_str(&format!("[{table}]\n{name} = {value}\n"));
            }
        }
        // Repeated tables are a TOML error; either way there is no panic.
        assert_ok_or_located(&ConfigLoader::new().toml_str("fuzz.toml", text).load())?;
    }

    #[test]
    fn valid_configs_survive_a_toml_round_trip(
        values in prop::collection::vec((0..INT_KEYS.len(), any::<u32>()), 0..6),
        epochs in proptest::option::of(1u32..10),
        dropout in 0.0f64..0.99,
    ) {
        let mut overrides: Vec<String> = values
            .into_iter()
            .map(|(index, raw)| {
                let (key, min, max) = INT_KEYS[index];
                format!("{key}={}", min + i64::from(raw) % (max - min + 1))
            })
            .collect();
        overrides.push(format!("lora.dropout={dropout}"));
        if let Some(epochs) = epochs {
            overrides.push(format!("training.epochs={epochs}"));
        }
        let config = ConfigLoader::new()
            .overrides(overrides)
            .load()
            .map_err(|error| TestCaseError::fail(error.to_string()))?
            .config;
        let text = config.to_toml_string().map_err(|error| TestCaseError::fail(error.to_string()))?;
        let back = Config::from_toml_str(&text).map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(back, config);
    }
}
