//! Writes a random-weight checkpoint with a given `config.json`, one shard
//! at a time (the full-size check, `cargo xtask check-7b`, writes
//! Mistral-7B-Instruct-v0.3's shapes with it):
//!
//! ```sh
//! cargo run --release -p ft-examples --example random_checkpoint -- \
//!     configs/models/mistral-7b-instruct-v0.3.json target/check-7b/model --shards 3
//! ```

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(config_path), Some(out)) = (args.next(), args.next()) else {
        bail!("usage: random_checkpoint CONFIG_JSON OUT_DIR [--shards N] [--seed S] [--dtype float32|bfloat16|float16]");
    };
    let (mut shards, mut seed, mut dtype) = (3_usize, 0_u64, mlx_rs::Dtype::Bfloat16);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--shards" => shards = value.parse().context("--shards")?,
            "--seed" => seed = value.parse().context("--seed")?,
            "--dtype" => {
                dtype = match value.as_str() {
                    "float32" => mlx_rs::Dtype::Float32,
                    "bfloat16" => mlx_rs::Dtype::Bfloat16,
                    "float16" => mlx_rs::Dtype::Float16,
                    other => bail!("unknown --dtype {other}"),
                }
            }
            other => bail!("unknown option {other}"),
        }
    }
    let text = std::fs::read_to_string(&config_path).with_context(|| config_path.clone())?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| config_path.clone())?;
    let out = PathBuf::from(out);
    let started = Instant::now();
    let written = ft_model::tiny::write_random_checkpoint(&out, &config, dtype, shards, seed)?;
    let generation = serde_json::json!({
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
    });
    std::fs::write(out.join("generation_config.json"), generation.to_string())?;
    println!(
        "wrote {written} shards to {} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
