//! `ft inspect`: what a model is, and whether it runs.

use crate::Failure;
use anyhow::anyhow;
use ft_model::{load_model, AttentionScope, LoadOptions, NoAdapter, Weight};
use mlx_rs::Array;
use serde_json::json;
use std::time::Instant;

/// Options of `ft inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory, a .gguf file, a Hugging Face Hub id
    /// (org/name[@revision]) or a built-in name.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Dequantize quantized weights to float32 on load.
    #[arg(long)]
    dequantize: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let options = LoadOptions {
        dequantize: args.dequantize,
        ..LoadOptions::default()
    };
    let model = load_model(&args.model, &options).map_err(crate::common::model_failure)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let parameters = model.parameters();
    let bytes: u64 = model
        .named_weights()
        .iter()
        .map(|(_, array)| array.nbytes() as u64)
        .sum();
    let quantized_bits: std::collections::BTreeSet<i32> = model
        .weights()
        .filter_map(|weight| match weight {
            Weight::Quantized { bits, .. } => Some(*bits),
            Weight::Dense(_) => None,
        })
        .collect();

    // A forward pass over a few ids: the weights must give finite logits.
    let ids = Array::from_slice(&[1_i32, 2, 3, 4, 5, 6, 7, 8], &[1, 8]);
    let forward = || -> Result<Array, Failure> {
        let logits = model
            .forward(&ids, &NoAdapter, None, AttentionScope::Causal)
            .map_err(|e| Failure::Internal(e.into()))?;
        logits.eval().map_err(|e| Failure::Internal(e.into()))?;
        Ok(logits)
    };
    // The first pass pays one-off costs (allocation, kernel set-up): time the second.
    forward()?;
    let forward_started = Instant::now();
    let logits = forward()?;
    let forward_ms = forward_started.elapsed().as_secs_f64() * 1e3;
    let finite = logits.as_slice::<f32>().iter().all(|v| v.is_finite());

    let a = &model.args;
    if args.json {
        println!(
            "{}",
            json!({
                "model": args.model, "args": a, "parameters": parameters, "bytes": bytes,
                "quantized_bits": quantized_bits, "load_seconds": load_seconds,
                "forward_ms_8_tokens": forward_ms, "logits_finite": finite,
            })
        );
    } else {
        println!("model        {}", args.model);
        println!(
            "architecture {} ({} layers, hidden {}, heads {}/{} kv, head_dim {}, ffn {}, vocab {})",
            a.model_type,
            a.num_layers,
            a.hidden_size,
            a.num_heads,
            a.num_kv_heads,
            a.head_dim,
            a.intermediate_size,
            a.vocab_size
        );
        println!(
            "rope         theta {}{}; tied embeddings: {}",
            a.rope_theta,
            if a.rope_scaling.is_some() {
                " (llama3 scaling)"
            } else {
                ""
            },
            a.tie_word_embeddings
        );
        println!(
            "weights      {:.1} M parameters, {:.1} MB in memory{}",
            parameters as f64 / 1e6,
            bytes as f64 / 1e6,
            if quantized_bits.is_empty() {
                String::new()
            } else {
                let bits: Vec<String> = quantized_bits.iter().map(i32::to_string).collect();
                format!(", {}-bit quantized", bits.join("/"))
            }
        );
        println!("load         {load_seconds:.2} s; forward of 8 tokens {forward_ms:.1} ms; logits finite: {finite}");
    }
    if finite {
        Ok(())
    } else {
        Err(Failure::User(anyhow!(
            "{}: the forward pass produced non-finite logits",
            args.model
        )))
    }
}
