//! Evaluation: the mean loss of a model with adapters on a dataset, on one
//! process or split between the ranks of a data-parallel run.

use crate::parallel::Workers;
use crate::run::RunSetup;
use crate::step::{parallel_loss_sum, scalar};
use crate::{Result, TrainError};
use ft_data::{BatchOptions, Dataset};
use ft_lora::LoraAdapters;
use ft_model::{LinearAdapter, Model};
use mlx_rs::Array;

/// Loss of a model (with adapters) on a dataset.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy per target token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub target_tokens: u64,
    /// Batches evaluated.
    pub batches: usize,
}

/// Mean cross-entropy of `adapter` on `dataset` in length-sorted batches
/// of `batch_size` rows, over at most `max_batches` batches.
pub fn evaluate(
    model: &Model,
    adapter: &dyn LinearAdapter,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    max_batches: Option<usize>,
) -> Result<EvalResult> {
    let workers = Workers::auto(batch_size);
    evaluate_with(
        model,
        adapter,
        dataset,
        batch_size,
        pad_id,
        max_batches,
        &workers,
    )
}

/// [`evaluate`] with the given workers.
pub fn evaluate_with(
    model: &Model,
    adapter: &dyn LinearAdapter,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    max_batches: Option<usize>,
    workers: &Workers,
) -> Result<EvalResult> {
    let (total, tokens, batches) = evaluate_shard(
        model,
        adapter,
        dataset,
        batch_size,
        pad_id,
        max_batches,
        workers,
        (0, 1),
    )?;
    let loss = mean_loss(total, tokens)?;
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        target_tokens: tokens,
        batches,
    })
}

/// Mean loss and target tokens of `adapters` on a run's validation set
/// (`None` without one), limited to `training.eval_batches` batches; every
/// rank evaluates its share and the sums are added across ranks.
pub(crate) fn validation_loss(
    setup: &RunSetup,
    adapters: &LoraAdapters,
) -> Result<Option<(f64, u64)>> {
    let Some(valid) = &setup.data.valid else {
        return Ok(None);
    };
    let training = &setup.config.training;
    let (loss_sum, tokens, _) = evaluate_shard(
        &setup.model,
        &adapters.view(),
        valid,
        training.batch_size as usize,
        setup.tokenizer.special().pad_id(),
        training.eval_batches.map(|n| n as usize),
        &setup.eval_workers,
        (setup.group.rank(), setup.group.size()),
    )?;
    let (loss_sum, tokens) = if setup.group.size() > 1 {
        let summed = setup
            .group
            .all_sum(&Array::from_slice(&[loss_sum as f32, tokens as f32], &[2]))?;
        summed.eval()?;
        match summed.as_slice::<f32>() {
            &[loss_sum, tokens] => (f64::from(loss_sum), tokens as u64),
            other => {
                return Err(TrainError::Distributed(format!(
                    "the evaluation sums came back with {} values instead of 2",
                    other.len()
                )))
            }
        }
    } else {
        (loss_sum, tokens)
    };
    Ok(Some((mean_loss(loss_sum, tokens)?, tokens)))
}

/// Mean loss per target token of an evaluation.
fn mean_loss(loss_sum: f64, tokens: u64) -> Result<f64> {
    if tokens == 0 {
        return Err(TrainError::Config(
            "the evaluation data has no loss targets".into(),
        ));
    }
    Ok(loss_sum / tokens as f64)
}

/// Loss sum, target tokens and batches of rank `shard.0` of `shard.1`'s
/// share of the evaluation batches (every `shard.1`-th batch).
#[allow(clippy::too_many_arguments)]
fn evaluate_shard(
    model: &Model,
    adapter: &dyn LinearAdapter,
    dataset: &Dataset,
    batch_size: usize,
    pad_id: u32,
    max_batches: Option<usize>,
    workers: &Workers,
    (rank, ranks): (usize, usize),
) -> Result<(f64, u64, usize)> {
    let batcher = dataset.batcher(BatchOptions {
        batch_size: batch_size.max(1),
        shuffle: false,
        bucket_window: usize::MAX,
        pad_id,
        ..BatchOptions::default()
    })?;
    let _threads = workers.activate();
    let mut total = 0.0f64;
    let mut tokens = 0u64;
    let mut batches = 0usize;
    for batch in batcher
        .epoch_batches(0)
        .iter()
        .take(max_batches.unwrap_or(usize::MAX))
        .skip(rank)
        .step_by(ranks.max(1))
    {
        if batch.target_tokens == 0 {
            continue;
        }
        let parts = workers.split(batch);
        let loss = parallel_loss_sum(model, adapter, &parts, workers, 0.0)?;
        total += scalar(&loss)?;
        tokens += batch.target_tokens as u64;
        batches += 1;
    }
    Ok((total, tokens, batches))
}

#[cfg(test)]
mod tests {
    use super::mean_loss;

    #[test]
    fn the_mean_loss_is_per_target_token() {
        let mean = mean_loss(6.0, 4).expect("targets");
        assert!((mean - 1.5).abs() < 1e-12);
    }

    #[test]
    fn an_evaluation_without_targets_is_an_error() {
        assert!(mean_loss(0.0, 0).is_err());
    }
}
