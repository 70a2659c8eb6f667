//! `ft estimate-memory`: predicted peak training memory, before any weight
//! is loaded.

use crate::common::{human_bytes, load_config, thousands, train_failure};
use crate::Failure;
use ft_trainer::memory::{data_extent, estimate, model_args};
use std::path::PathBuf;

/// Arguments of `ft estimate-memory`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::common::ConfigChoice,
    /// Sequence length to assume instead of the training data's longest
    /// example (or `data.max_seq_len` when there is no data file).
    #[arg(long)]
    seq_len: Option<u64>,
    /// Read the model's shapes from this config.json instead of `model.path`
    /// (to plan for a model not downloaded yet).
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `ft estimate-memory`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let config = load_config(&args.run.config, &args.run.sets)?;
    let model = match &args.model_config {
        Some(path) => {
            ft_model::ModelArgs::from_config_file(path).map_err(crate::common::model_failure)?
        }
        None => model_args(&config.model.path).map_err(train_failure)?,
    };
    let (sequence_length, target_tokens) = match args.seq_len {
        Some(length) => (length, u64::from(config.training.batch_size) * length),
        None if args.model_config.is_some() => {
            let length = u64::from(config.data.max_seq_len);
            (length, u64::from(config.training.batch_size) * length)
        }
        None => data_extent(&config).map_err(train_failure)?,
    };
    let config = if args.model_config.is_some() {
        config
    } else {
        ft_trainer::memory::as_loaded(&config)
    };
    let estimate = estimate(&config, &model, sequence_length, target_tokens);
    if args.json {
        println!("{}", serde_json::to_string(&estimate).unwrap_or_default());
        return Ok(());
    }
    println!(
        "peak training memory for {} ({} layers, hidden {}, {}), batch {} x {} tokens:",
        config.model.path,
        model.num_layers,
        model.hidden_size,
        config.model.dtype,
        estimate.batch_size,
        estimate.sequence_length
    );
    let rows = [
        ("weights (frozen)", estimate.weights),
        ("adapters", estimate.adapters),
        ("gradients", estimate.gradients),
        ("optimizer state", estimate.optimizer),
        ("activations", estimate.activations),
        ("logits (targets only)", estimate.logits),
        ("float32 expansion", estimate.expanded_weights),
        ("quantized recompute", estimate.quantized_recompute),
    ];
    let optional = ["float32 expansion", "quantized recompute"];
    for (name, bytes) in rows {
        if bytes == 0 && optional.contains(&name) {
            continue;
        }
        println!("  {name:<22} {:>10}", human_bytes(bytes));
    }
    println!("  {:<22} {:>10}", "total", human_bytes(estimate.total));
    println!(
        "  ({} trainable parameters, {} target tokens per micro-batch)",
        thousands(estimate.trainable_parameters),
        thousands(estimate.target_tokens)
    );
    Ok(())
}
