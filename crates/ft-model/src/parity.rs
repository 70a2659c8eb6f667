//! Logits parity with fixtures written by `xtask/python/mlx_ref.py`
//! (mlx-lm's logits of fixed prompts, sliced per position: the first
//! entries, a strided sample of the vocabulary and the top 5), shared by the
//! parity tests of ft-model and ft-lora.

use crate::{AttentionScope, LinearAdapter, Model, Result};
use mlx_rs::Array;
use serde_json::Value;

/// The outcome of comparing a model's logits with a fixture.
#[derive(Clone, Debug)]
pub struct Parity {
    /// Logits compared.
    pub compared: usize,
    /// The largest absolute difference and where it was.
    pub worst: (f32, String),
    /// Positions whose most likely token differs from the fixture's.
    pub argmax_mismatches: Vec<String>,
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_f64().map(|x| x as f32))
                .collect()
        })
        .unwrap_or_default()
}

fn indices(value: &Value) -> Vec<usize> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_u64().map(|x| x as usize))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `model` with `adapter` on each prompt of `fixture` and compares the
/// logits it recorded.
pub fn compare(model: &Model, adapter: &dyn LinearAdapter, fixture: &Value) -> Result<Parity> {
    let vocab = model.args.vocab_size;
    let mut parity = Parity {
        compared: 0,
        worst: (0.0, "all equal".into()),
        argmax_mismatches: Vec::new(),
    };
    let prompts = fixture["prompts"].as_array().cloned().unwrap_or_default();
    for prompt in &prompts {
        let name = prompt["name"].as_str().unwrap_or("?");
        let ids: Vec<i32> = indices(&prompt["ids"])
            .iter()
            .map(|&id| id as i32)
            .collect();
        let input = Array::from_slice(&ids, &[1, ids.len() as i32]);
        let logits = model
            .forward(&input, adapter, None, AttentionScope::Causal)?
            .as_dtype(mlx_rs::Dtype::Float32)?;
        logits.eval()?;
        let all = logits.as_slice::<f32>();
        for position in prompt["positions"].as_array().cloned().unwrap_or_default() {
            let at = position["position"].as_u64().unwrap_or(0) as usize;
            let row = &all[at * vocab..(at + 1) * vocab];
            let stride = position["stride"].as_u64().unwrap_or(1) as usize;
            let top_ids = indices(&position["top_ids"]);
            let expected = floats(&position["head"])
                .into_iter()
                .enumerate()
                .chain(
                    floats(&position["strided"])
                        .into_iter()
                        .enumerate()
                        .map(|(index, value)| (index * stride, value)),
                )
                .chain(top_ids.iter().copied().zip(floats(&position["top_values"])));
            for (id, theirs) in expected {
                let ours = row[id];
                let diff = (ours - theirs).abs();
                parity.compared += 1;
                if diff > parity.worst.0 || !diff.is_finite() {
                    parity.worst = (
                        diff,
                        format!("{name}, position {at}, id {id}: ours {ours}, mlx_lm {theirs}"),
                    );
                }
            }
            let argmax = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(id, _)| id);
            if argmax != top_ids.first().copied() {
                parity
                    .argmax_mismatches
                    .push(format!("{name}, position {at}"));
            }
        }
    }
    Ok(parity)
}
