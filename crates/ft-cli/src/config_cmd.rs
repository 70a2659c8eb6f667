//! `ft config`: the effective configuration and where each value came from,
//! and the configuration reference.

use std::path::PathBuf;

use anyhow::anyhow;
use ft_config::{ConfigLoader, LoadedConfig};
use serde_json::json;

use crate::Failure;

/// Options of `ft config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// The effective settings (defaults < `extends` < file < `FT_SECTION__KEY`
    /// environment variables < `--set`), each followed by `# from <source>`.
    /// Exit code 1 when the configuration is invalid (every problem is listed).
    ///
    /// Example: `ft config show --config configs/quickstart.toml --set training.batch_size=2`
    Show(ShowArgs),
    /// The configuration reference (Markdown): every key, its type, default
    /// and meaning.
    ///
    /// Example: `ft config reference > docs/configuration.md`
    Reference,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// A TOML or YAML config file (without one: defaults, environment and --set).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one key, e.g. `--set lora.rank=4` (repeatable; highest precedence).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print one JSON object: `config` (the settings) and `sources` (key path
    /// -> where its value came from).
    #[arg(long)]
    json: bool,
}

/// Runs `ft config ...`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        ConfigCommand::Show(args) => show(args),
        ConfigCommand::Reference => {
            print!("{}", ft_config::reference_markdown());
            Ok(())
        }
    }
}

/// Loads the layered configuration the way `ft train` does.
pub fn load(config: Option<&PathBuf>, set: &[String]) -> Result<LoadedConfig, Failure> {
    let mut loader = ConfigLoader::new().process_env().overrides(set);
    if let Some(path) = config {
        loader = loader.file(path);
    }
    loader.load().map_err(|error| match error {
        ft_config::Error::Serialize(_) => Failure::Internal(error.into()),
        other => Failure::User(other.into()),
    })
}

fn show(args: &ShowArgs) -> Result<(), Failure> {
    let loaded = load(args.config.as_ref(), &args.set)?;
    if args.json {
        let sources: serde_json::Map<String, serde_json::Value> = loaded
            .provenance
            .iter()
            .map(|(key, source)| (key.clone(), json!(source.to_string())))
            .collect();
        let config = serde_json::to_value(&loaded.config)
            .map_err(|e| Failure::Internal(anyhow!("cannot write the configuration: {e}")))?;
        println!("{}", json!({ "config": config, "sources": sources }));
    } else {
        print!("{}", loaded.render_show());
    }
    Ok(())
}
