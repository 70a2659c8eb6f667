//! Properties of layering and input handling: merging order, precedence,
//! and the fuzz targets (`fuzz_*`, see [`crate::fuzz`]): arbitrary and
//! mutated `--set`, environment and file input never panics and ends in a
//! valid configuration or in errors that say where the bad value came from.

use figment::value::Value;
use proptest::prelude::*;

use crate::fuzz::{fuzz, mutated};
use crate::schema;
use crate::{Config, ConfigLoader, Error, LoadedConfig, Result, Source};

/// Loading must end in a config or in located errors: validation errors
/// name their source, a file that does not parse names the line (or the
/// `extends` field), file errors name the file.
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
        Err(Error::Parse { message, .. }) => {
            prop_assert!(
                message.contains("line") || message.contains("`extends`"),
                "parse error without a location: {}",
                message
            );
        }
        Err(Error::Read { .. } | Error::ExtendsCycle { .. } | Error::UnsupportedFormat { .. }) => {}
        Err(other) => prop_assert!(false, "unexpected error kind: {}", other),
    }
    Ok(())
}

/// Values that stress the parsers: numbers at the edges, TOML and YAML
/// syntax, non-ASCII, control characters.
fn raw_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "-?[0-9]{1,20}(\\.[0-9]{0,3})?(e-?[0-9]{1,3})?",
        "\\[[a-z_0-9\", .-]{0,30}\\]",
        "\\{[a-z_0-9\"=, ]{0,30}\\}",
        "(true|false|all|none|all-linear|nan|inf|-inf|-1|0|1e999|18446744073709551616|\"\"|'x'|~|null)",
    ]
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

/// `--set` arguments and `FT_*` variables: arbitrary strings, known keys with
/// arbitrary values, and well-formed overrides edited at random.
#[test]
fn fuzz_config_overrides() {
    let fields: Vec<&'static str> = schema::fields().map(|field| field.key).collect();
    let count = fields.len();
    let keyed = (0..count, raw_value()).prop_map({
        let fields = fields.clone();
        move |(index, raw)| format!("{}={raw}", fields[index])
    });
    let seeds: Vec<Vec<u8>> = fields
        .iter()
        .map(|key| format!("{key}=1").into_bytes())
        .collect();
    let dictionary: Vec<Vec<u8>> = [
        "=", ".", "[", "]", "\"", ",", "-", "e", "\n", "__", "é", "\0",
    ]
    .iter()
    .map(|token| token.as_bytes().to_vec())
    .collect();
    let edited = mutated(seeds, dictionary, 4)
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let arg = prop_oneof![any::<String>(), keyed, edited];
    let var = prop_oneof![
        ("FT_[A-Z_]{0,24}", any::<String>()),
        (0..count, raw_value()).prop_map(move |(index, raw)| {
            (
                format!("FT_{}", fields[index].replace('.', "__").to_uppercase()),
                raw,
            )
        }),
    ];
    let strategy = (
        prop::collection::vec(arg, 0..4),
        prop::collection::vec(var, 0..3),
    );
    fuzz("config_overrides", 256, strategy, |(sets, vars)| {
        assert_ok_or_located(&ConfigLoader::new().overrides(sets.clone()).load())?;
        assert_ok_or_located(&ConfigLoader::new().env_from(vars.clone()).load())?;
        assert_ok_or_located(&ConfigLoader::new().env_from(vars).overrides(sets).load())
    });
}

/// Config file text: arbitrary strings, TOML-shaped lines, and schema keys
/// with values of random types.
#[test]
fn fuzz_config_toml_text() {
    let fields: Vec<&'static str> = schema::fields().map(|field| field.key).collect();
    let count = fields.len();
    let schema_lines =
        prop::collection::vec((0..count, raw_value()), 0..8).prop_map(move |lines| {
            let mut text = String::new();
            for (index, value) in lines {
                if let Some((table, name)) = fields[index].rsplit_once('.') {
                    text.push_str(&format!("[{table}]\n{name} = {value}\n"));
                }
            }
            text
        });
    let text = prop_oneof![
        any::<String>(),
        "((\\[[a-z_.]{0,16}\\]|[a-z_.]{1,20} ?= ?(\"[a-z0-9_/.-]{0,8}\"|-?[0-9.e]{1,6}|true|false|\\[[0-9a-z\", ]{0,12}\\]|\\{[a-z0-9=, ]{0,12}\\}))\n){0,10}",
        schema_lines,
    ];
    fuzz("config_toml_text", 256, text, |text| {
        // Repeated tables are a TOML error; either way there is no panic.
        assert_ok_or_located(&ConfigLoader::new().toml_str("fuzz.toml", text).load())
    });
}

/// The shipped presets (configs/*.toml), edited at random and loaded as
/// files next to the untouched presets (so `extends` still resolves).
#[test]
fn fuzz_config_mutated_presets() {
    let presets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(&presets).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            let text = std::fs::read(&path).expect("preset");
            std::fs::write(dir.path().join(path.file_name().expect("name")), &text).expect("copy");
            seeds.push(text);
        }
    }
    assert!(!seeds.is_empty(), "no presets in {}", presets.display());
    let dictionary: Vec<Vec<u8>> = [
        "=",
        "[",
        "]",
        "[[",
        "\"",
        "'",
        "\"\"\"",
        "{",
        "}",
        ",",
        ".",
        "#",
        "\n",
        "-1",
        "0",
        "1e999",
        "nan",
        "inf",
        "9223372036854775808",
        "true",
        "\"x\"",
        "[]",
        "{}",
        "extends = \"quickstart.toml\"\n",
        "extends = \"fuzzed.toml\"\n",
        "extends = 3\n",
        "[lora]\n",
        "rank",
        "é",
        "\u{0}",
        "\r",
    ]
    .iter()
    .map(|token| token.as_bytes().to_vec())
    .collect();
    let file = dir.path().join("fuzzed.toml");
    fuzz(
        "config_mutated_presets",
        128,
        mutated(seeds, dictionary, 6),
        |bytes| {
            std::fs::write(&file, &bytes)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            assert_ok_or_located(&ConfigLoader::new().file(&file).load())
        },
    );
}
