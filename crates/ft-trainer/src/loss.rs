//! The training objective: token-level cross-entropy (with optional label
//! smoothing) over the loss-masked tokens of a batch, as a *sum*, so that
//! dividing by the target count of all accumulated micro-batches gives the
//! exact large-batch mean.

use crate::Result;
use ft_data::Batch;
use ft_model::{AttentionScope, LinearAdapter, Model};
use mlx_rs::{Array, Dtype};

/// A batch as arrays: inputs are all tokens but the last; the targets are
/// gathered at the masked-in positions only, so the output head and the
/// softmax run on target tokens alone (prompt and padding positions cost
/// no vocabulary-sized work).
pub struct BatchArrays {
    /// Input ids `(rows, width - 1)`.
    pub inputs: Array,
    /// Flat indices into `rows * (width - 1)` of the positions that predict a target.
    pub positions: Array,
    /// The target ids at those positions.
    pub targets: Array,
    /// Segment ids of packed rows `(rows, width - 1)`.
    pub segments: Option<Array>,
    /// Number of targets.
    pub target_tokens: usize,
    /// Real (non-padding) tokens.
    pub real_tokens: usize,
}

impl BatchArrays {
    /// Converts a data batch.
    pub fn new(batch: &Batch) -> Self {
        let rows = batch.ids.len();
        let width = batch.width().max(2);
        let inner = width - 1;
        let mut inputs = Vec::with_capacity(rows * inner);
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (r, (ids, mask)) in batch.ids.iter().zip(&batch.mask).enumerate() {
            for t in 0..inner {
                inputs.push(ids.get(t).copied().unwrap_or(0) as i32);
                if mask.get(t + 1).copied().unwrap_or(false) {
                    positions.push((r * inner + t) as u32);
                    targets.push(ids[t + 1] as i32);
                }
            }
        }
        let segments = batch.segment_ids.as_ref().map(|segments| {
            let flat: Vec<i32> = segments
                .iter()
                .flat_map(|row| (0..inner).map(move |t| row.get(t).copied().unwrap_or(0) as i32))
                .collect();
            Array::from_slice(&flat, &[rows as i32, inner as i32])
        });
        let target_tokens = targets.len();
        BatchArrays {
            inputs: Array::from_slice(&inputs, &[rows as i32, inner as i32]),
            positions: Array::from_slice(&positions, &[positions.len() as i32]),
            targets: Array::from_slice(&targets, &[targets.len() as i32]),
            segments,
            target_tokens,
            real_tokens: batch.real_tokens(),
        }
    }
}

/// Sum over target tokens of the (label-smoothed) cross-entropy, as a
/// float32 scalar.
pub fn loss_sum(
    model: &Model,
    adapter: &dyn LinearAdapter,
    batch: &BatchArrays,
    label_smoothing: f32,
) -> Result<Array> {
    let scope = match &batch.segments {
        Some(segments) => AttentionScope::Segments(segments),
        None => AttentionScope::Causal,
    };
    let hidden = model.hidden_states(&batch.inputs, adapter, None, scope)?;
    let width = hidden.shape()[2];
    let picked = hidden
        .reshape(&[-1, width])?
        .take_axis(&batch.positions, 0)?;
    let logits = model.logits(&picked)?.as_dtype(Dtype::Float32)?;
    let normalizer = logits.logsumexp_axis(-1, false)?;
    let target_logits = logits
        .take_along_axis(batch.targets.reshape(&[-1, 1])?, -1)?
        .reshape(&[-1])?;
    let nll = normalizer.subtract(&target_logits)?;
    let per_token = if label_smoothing > 0.0 {
        // Smoothing spreads `label_smoothing` of the target mass uniformly
        // over the vocabulary: its cross-entropy is lse - mean(logits).
        let uniform = normalizer.subtract(&logits.mean_axis(-1, false)?)?;
        nll.multiply(Array::from_f32(1.0 - label_smoothing))?
            .add(&uniform.multiply(Array::from_f32(label_smoothing))?)?
    } else {
        nll
    };
    Ok(per_token.sum(None)?)
}
