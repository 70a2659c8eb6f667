//! One optimizer step: gradients accumulated over micro-batches, added
//! across ranks, clipped and applied, and rolled back when the loss or the
//! gradient norm is not finite.

use crate::loss::{loss_sum, BatchArrays};
use crate::parallel::{shard_rows, Workers};
use crate::run::{Progress, RunSetup};
use crate::{Result, TrainError};
use ft_config::rng::mix_seed;
use ft_config::NonFinitePolicy;
use ft_data::Batcher;
use ft_lora::{LoraAdapters, LoraLayout};
use ft_model::{LinearAdapter, Model};
use ft_optim::{clip_by_global_norm, GradAccumulator};
use mlx_rs::Array;

/// Loss sum of one micro-batch and its gradients with respect to the
/// adapter arrays `params` (laid out by `layout`); nothing else is
/// differentiated, so no gradient is computed for frozen weights.
pub fn loss_and_grads(
    model: &Model,
    layout: &LoraLayout,
    params: &[Array],
    parts: &[BatchArrays],
    workers: &Workers,
    dropout_seed: Option<u64>,
    label_smoothing: f32,
) -> Result<(Array, Vec<Array>)> {
    let objective = |params: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
        let view = layout.view(params, dropout_seed);
        parallel_loss_sum(model, &view, parts, workers, label_smoothing)
            .map(|loss| vec![loss])
            .map_err(|error| mlx_rs::error::Exception::custom(error.to_string()))
    };
    let argnums: Vec<i32> = (0..params.len() as i32).collect();
    let (values, grads) =
        mlx_rs::transforms::value_and_grad_with_argnums(objective, &argnums[..])(params)?;
    let loss = values
        .into_iter()
        .next()
        .ok_or_else(|| TrainError::Config("the objective returned no value".into()))?;
    Ok((loss, grads))
}

/// The loss sum of a batch split into `parts`, each computed on its
/// worker's stream.
pub fn parallel_loss_sum(
    model: &Model,
    adapter: &dyn LinearAdapter,
    parts: &[BatchArrays],
    workers: &Workers,
    label_smoothing: f32,
) -> Result<Array> {
    let mut total: Option<Array> = None;
    for (index, part) in parts.iter().enumerate() {
        if part.target_tokens == 0 {
            continue;
        }
        let loss = workers.on(index, || loss_sum(model, adapter, part, label_smoothing))?;
        total = Some(match total {
            None => loss,
            Some(sum) => sum.add(&loss)?,
        });
    }
    Ok(total.unwrap_or_else(|| Array::from_f32(0.0)))
}

/// What one optimizer step did.
pub(crate) struct StepOutcome {
    /// Mean loss per target token.
    pub(crate) loss: f64,
    /// Global gradient norm before clipping.
    pub(crate) grad_norm: f64,
    /// Target tokens of the global batch (all ranks).
    pub(crate) target_tokens: u64,
    /// Non-padding tokens of the global batch (all ranks).
    pub(crate) real_tokens: u64,
    /// The update was rolled back for a non-finite value.
    pub(crate) skipped: bool,
}

/// Loss and gradient sums over a step's micro-batches, before the
/// division by the step's target tokens.
struct Sums {
    grads: GradAccumulator,
    loss: Array,
    target_tokens: u64,
    real_tokens: u64,
}

/// Takes step `progress.state.step + 1` at learning rate `lr` on the next
/// micro-batches of `batcher`. `None` when they hold no loss targets: the
/// step is then counted as skipped, with nothing to update.
pub(crate) fn train_step(
    setup: &RunSetup,
    progress: &mut Progress,
    batcher: &mut Batcher<'_>,
    lr: f64,
) -> Result<Option<StepOutcome>> {
    let sums = accumulate(setup, progress, batcher)?;
    let (target_tokens, real_tokens) = (sums.target_tokens, sums.real_tokens);
    if target_tokens == 0 {
        tracing::warn!(
            step = progress.state.step + 1,
            "no loss targets in this step's batches; skipped"
        );
        progress.state.skipped_steps += 1;
        return Ok(None);
    }
    let inverse = 1.0 / target_tokens as f32;
    let (grads, loss_sum) = reduce(setup, &progress.adapters, sums, inverse)?;
    let mean_loss = loss_sum.multiply(Array::from_f32(inverse))?;
    let (loss, grad_norm, skipped) = update(setup, progress, grads, &mean_loss, lr)?;
    Ok(Some(StepOutcome {
        loss,
        grad_norm,
        target_tokens,
        real_tokens,
        skipped,
    }))
}

/// Loss and gradient sums of this rank's rows of the step's micro-batches;
/// the token counts are of the whole global batches.
fn accumulate(
    setup: &RunSetup,
    progress: &mut Progress,
    batcher: &mut Batcher<'_>,
) -> Result<Sums> {
    // One stream: with the backward pass, splitting measured slower.
    let workers = Workers::single();
    let training = &setup.config.training;
    let (rank, ranks) = (setup.group.rank(), setup.group.size());
    let mut sums = Sums {
        grads: GradAccumulator::new(),
        loss: Array::from_f32(0.0),
        target_tokens: 0,
        real_tokens: 0,
    };
    for micro in 0..training.grad_accumulation.max(1) {
        let batch = batcher
            .next_batch(&mut progress.state.cursor)?
            .ok_or_else(|| TrainError::Config("the training set yields no batch".into()))?;
        sums.target_tokens += batch.target_tokens as u64;
        sums.real_tokens += batch.real_tokens() as u64;
        let batch = if ranks > 1 {
            shard_rows(&batch, rank, ranks)
        } else {
            batch
        };
        if batch.target_tokens == 0 {
            continue;
        }
        let parts = workers.split(&batch);
        let (loss, grads) = loss_and_grads(
            &setup.model,
            &progress.adapters.layout,
            &progress.adapters.params,
            &parts,
            &workers,
            micro_batch_seed(setup, &progress.adapters, progress.state.step, micro),
            training.label_smoothing as f32,
        )?;
        sums.loss = sums.loss.add(&loss)?;
        sums.grads.add(grads)?;
    }
    Ok(sums)
}

/// The dropout seed of a micro-batch (`None` without dropout). Each rank
/// draws its own masks; rank 0's are the single-process run's.
fn micro_batch_seed(
    setup: &RunSetup,
    adapters: &LoraAdapters,
    step: u64,
    micro: u32,
) -> Option<u64> {
    (adapters.layout.spec.dropout > 0.0).then(|| {
        let seed = dropout_seed(setup.config.training.seed, step, micro);
        match setup.group.rank() {
            0 => seed,
            rank => mix_seed(seed, rank as u64),
        }
    })
}

/// The step's gradients scaled by `inverse` (one over its target tokens)
/// and its loss sum, both added across ranks first.
fn reduce(
    setup: &RunSetup,
    adapters: &LoraAdapters,
    sums: Sums,
    inverse: f32,
) -> Result<(Vec<Array>, Array)> {
    let Sums {
        mut grads, loss, ..
    } = sums;
    if setup.group.size() <= 1 {
        return Ok((grads.take_scaled(inverse)?, loss));
    }
    // One exchange per step: every gradient and the loss sum, flattened
    // together (a rank whose rows had no targets adds zeros).
    let mut flat = if grads.micro_batches() == 0 {
        adapters
            .params
            .iter()
            .map(mlx_rs::ops::zeros_like)
            .collect::<std::result::Result<Vec<_>, _>>()?
    } else {
        grads.take_scaled(1.0)?
    };
    flat.push(loss.reshape(&[1])?);
    let mut reduced = setup.group.all_sum_flat(&flat)?;
    let loss = reduced
        .pop()
        .ok_or_else(|| TrainError::Distributed("empty reduction".into()))?
        .reshape(&[])?;
    let factor = Array::from_f32(inverse);
    let grads = reduced
        .iter()
        .map(|sum| sum.multiply(&factor))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((grads, loss))
}

/// Clips `grads` and applies them; returns the loss, the gradient norm and
/// whether the update was rolled back. A non-finite loss or norm puts the
/// adapters and the optimizer back as they were, then skips the step or
/// fails, as `training.on_nonfinite` says.
fn update(
    setup: &RunSetup,
    progress: &mut Progress,
    mut grads: Vec<Array>,
    mean_loss: &Array,
    lr: f64,
) -> Result<(f64, f64, bool)> {
    let training = &setup.config.training;
    let grad_norm = clip_by_global_norm(&mut grads, training.max_grad_norm)?;
    let previous = (progress.adapters.params.clone(), progress.optimizer.clone());
    progress
        .optimizer
        .update(&mut progress.adapters.params, &grads, lr)?;
    let mut outputs = vec![mean_loss, &grad_norm];
    outputs.extend(progress.adapters.params.iter());
    outputs.extend(progress.optimizer.state_arrays());
    mlx_rs::transforms::eval(outputs)?;
    let loss = scalar(mean_loss)?;
    let norm = scalar(&grad_norm)?;
    let Some((what, value)) = non_finite(loss, norm) else {
        return Ok((loss, norm, false));
    };
    (progress.adapters.params, progress.optimizer) = previous;
    let step = progress.state.step + 1;
    match training.on_nonfinite {
        NonFinitePolicy::Skip => {
            tracing::warn!(step, what, value, "non-finite value: update skipped");
            progress.state.skipped_steps += 1;
            Ok((loss, norm, true))
        }
        NonFinitePolicy::Stop => Err(TrainError::NonFinite {
            step,
            what,
            value,
            last_checkpoint: progress.last_checkpoint.clone(),
        }),
    }
}

/// The first of the step's loss and gradient norm that is not finite,
/// named for the message.
fn non_finite(loss: f64, grad_norm: f64) -> Option<(&'static str, f64)> {
    if !loss.is_finite() {
        Some(("loss", loss))
    } else if !grad_norm.is_finite() {
        Some(("gradient norm", grad_norm))
    } else {
        None
    }
}

/// A seed for the dropout masks of one micro-batch: a pure function of the
/// run seed and the position in the run, so a resumed run draws the same masks.
fn dropout_seed(seed: u64, step: u64, micro: u32) -> u64 {
    mix_seed(mix_seed(seed, step), u64::from(micro))
}

/// A float32 scalar read back to the host.
pub(crate) fn scalar(array: &Array) -> Result<f64> {
    array.eval()?;
    Ok(array
        .as_slice::<f32>()
        .first()
        .map_or(f64::NAN, |&value| f64::from(value)))
}

#[cfg(test)]
mod tests {
    use super::non_finite;

    #[test]
    fn a_non_finite_loss_is_named_before_the_gradient_norm() {
        assert_eq!(non_finite(1.0, 2.0), None);
        assert_eq!(
            non_finite(f64::INFINITY, f64::NAN),
            Some(("loss", f64::INFINITY))
        );
        let (what, value) = non_finite(0.5, f64::NAN).expect("a non-finite norm");
        assert_eq!(what, "gradient norm");
        assert!(value.is_nan());
    }
}
