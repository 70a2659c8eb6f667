//! `ft config show`: the effective settings as TOML, each value annotated
//! with where it came from.

use figment::value::{Dict, Num, Value};

use crate::loader::{LoadedConfig, Source};
use crate::schema;
use crate::validate::integer;

impl LoadedConfig {
    /// The effective configuration as TOML text for `ft config show`: every
    /// section and key in schema order, each value followed by
    /// `# from <source>`, unset optional keys as comments.
    pub fn render_show(&self) -> String {
        let effective = match Value::serialize(&self.config) {
            Ok(Value::Dict(_, effective)) => effective,
            _ => Dict::new(),
        };
        let mut out = String::from(
            "# Effective configuration; `# from ...` tells where each value came from.\n",
        );
        for section in schema::sections() {
            // A sub-table (model.quantization) exists only when it is a table.
            let Some(Value::Dict(_, table)) = Value::from(effective.clone()).find(section.key)
            else {
                continue;
            };
            let rows: Vec<(String, Option<String>)> = section
                .fields
                .iter()
                .filter_map(|field| match table.get(field.name()) {
                    None | Some(Value::Empty(..)) => {
                        Some((format!("# {} is unset", field.name()), None))
                    }
                    Some(Value::Dict(..)) => None,
                    Some(value) => {
                        let source = self.source_of(field.key).unwrap_or(&Source::Default);
                        Some((
                            format!("{} = {}", field.name(), toml_inline(value)),
                            Some(format!("# from {source}")),
                        ))
                    }
                })
                .collect();
            let width = rows
                .iter()
                .filter(|(_, comment)| comment.is_some())
                .map(|(line, _)| line.len())
                .max()
                .unwrap_or(0);
            out.push_str(&format!("\n[{}]\n", section.key));
            for (line, comment) in rows {
                match comment {
                    Some(comment) => out.push_str(&format!("{line:<width$}  {comment}\n")),
                    None => out.push_str(&format!("{line}\n")),
                }
            }
        }
        out
    }
}

/// A value as an inline TOML literal.
pub(crate) fn toml_inline(value: &Value) -> String {
    to_toml(value).map_or_else(String::new, |value| value.to_string())
}

fn to_toml(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::String(_, s) => toml::Value::String(s.clone()),
        Value::Char(_, c) => toml::Value::String(c.to_string()),
        Value::Bool(_, b) => toml::Value::Boolean(*b),
        Value::Num(_, Num::F32(x)) => toml::Value::Float(f64::from(*x)),
        Value::Num(_, Num::F64(x)) => toml::Value::Float(*x),
        Value::Num(..) => toml::Value::Integer(i64::try_from(integer(value)?).ok()?),
        Value::Empty(..) => return None,
        Value::Array(_, items) => toml::Value::Array(items.iter().filter_map(to_toml).collect()),
        Value::Dict(_, dict) => toml::Value::Table(
            dict.iter()
                .filter_map(|(key, value)| Some((key.clone(), to_toml(value)?)))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::ConfigLoader;

    #[test]
    fn show_lists_values_with_their_sources() {
        let loaded = ConfigLoader::new()
            .toml_str(
                "run.toml",
                "[model.quantization]\nbits = 8\n[lora]\nrank = 4\n",
            )
            .env_from([("FT_TRAINING__BATCH_SIZE", "2")])
            .overrides(["optimizer.learning_rate=3e-4"])
            .load()
            .expect("valid");
        let shown = loaded.render_show();
        let line = |start: &str| {
            shown
                .lines()
                .find(|line| line.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in\n{shown}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("rank ="), "rank = 4 # from file run.toml");
        assert_eq!(
            line("batch_size ="),
            "batch_size = 2 # from env FT_TRAINING__BATCH_SIZE"
        );
        assert_eq!(
            line("learning_rate ="),
            "learning_rate = 0.0003 # from --set optimizer.learning_rate=3e-4"
        );
        assert_eq!(line("bits ="), "bits = 8 # from file run.toml");
        assert_eq!(line("group_size ="), "group_size = 64 # from default");
        assert_eq!(
            line("path ="),
            "path = \"smollm2-135m-instruct\" # from default"
        );
        assert_eq!(line("betas ="), "betas = [0.9, 0.999] # from default");
        assert_eq!(line("# epochs"), "# epochs is unset");
        assert!(shown.contains("\n[model.quantization]\n"), "{shown}");
        assert!(!shown.contains("quantization ="), "{shown}");
        // Stripped of comments, the listing is the effective config as TOML.
        let reparsed = crate::Config::from_toml_str(&shown).expect("show output is TOML");
        assert_eq!(reparsed, loaded.config);
    }

    #[test]
    fn show_without_quantization_has_no_sub_table() {
        let shown = ConfigLoader::new().load().expect("valid").render_show();
        assert!(shown.contains("quantization = \"none\""), "{shown}");
        assert!(!shown.contains("[model.quantization]"), "{shown}");
        for section in [
            "model",
            "lora",
            "data",
            "training",
            "optimizer",
            "scheduler",
        ] {
            assert!(shown.contains(&format!("\n[{section}]\n")), "{shown}");
        }
    }
}
