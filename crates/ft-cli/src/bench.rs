//! `ft bench-generate` (hidden): greedy generation timings on given prompt
//! ids, one JSON line per run, for `cargo xtask bench generate`.

use crate::Failure;
use anyhow::anyhow;
use ft_model::{generate, load_model, LoadOptions, NoAdapter, SamplingOptions};
use serde_json::json;

/// Options of `ft bench-generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory, a .gguf file, a Hugging Face Hub id
    /// (org/name[@revision]) or a built-in name.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Dequantize quantized weights to float32 on load.
    #[arg(long)]
    dequantize: bool,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    prompt_ids: Vec<u32>,
    /// Tokens generated per run (no stop token: always this many).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Pick tokens on the host (the sampling path: temperature 1, top-k 1,
    /// still the argmax) instead of the pipelined greedy path on the device.
    #[arg(long)]
    host_sampling: bool,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    if args.max_tokens < 2 {
        return Err(Failure::User(anyhow!(
            "--max-tokens must be at least 2 (decode speed is measured after the first token)"
        )));
    }
    let options = LoadOptions {
        dequantize: args.dequantize,
        ..LoadOptions::default()
    };
    let model = load_model(&args.model, &options).map_err(crate::common::model_failure)?;
    let mut sampling = SamplingOptions {
        max_tokens: args.max_tokens,
        ..SamplingOptions::default()
    };
    if args.host_sampling {
        sampling.temperature = 1.0;
        sampling.top_k = 1;
    }
    for run in 0..args.warmup + args.repeats {
        let generation = generate(&model, &NoAdapter, &args.prompt_ids, &sampling, &mut |_| {
            true
        })
        .map_err(|error| match error {
            ft_model::Error::InvalidRequest(_) => Failure::User(error.into()),
            other => Failure::Internal(other.into()),
        })?;
        if run < args.warmup {
            continue;
        }
        let decoded = generation.tokens.len().saturating_sub(1);
        println!(
            "{}",
            json!({
                "prompt_tokens": generation.prompt_tokens,
                "prompt_seconds": generation.prompt_seconds,
                "prompt_tps": generation.prompt_tokens as f64 / generation.prompt_seconds,
                "generation_tokens": generation.tokens.len(),
                "decode_seconds": generation.decode_seconds,
                "decode_tps": decoded as f64 / generation.decode_seconds,
                "tokens": generation.tokens,
            })
        );
    }
    Ok(())
}
