//! The training engine on a tiny random model with the default model's
//! tokenizer: overfitting, finite differences, accumulation, resume,
//! non-finite handling, early stopping.

use ft_config::NonFinitePolicy;
mod common;

use common::{config, model, tokenizer, train_losses};
use ft_lora::{LoraAdapters, LoraSpec};
use ft_model::Projection;
use ft_trainer::loss::BatchArrays;
use ft_trainer::parallel::Workers;
use ft_trainer::{
    loss_and_grads, Callbacks, Control, MetricsRecord, NoCallbacks, StepMetrics, StopCause,
    TrainError, Trainer,
};
use mlx_rs::Array;

#[test]
fn a_tiny_model_overfits_sixteen_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path(), 500);
    config.training.eval_every = 250;
    config.optimizer.learning_rate = 5e-3;
    let mut trainer = Trainer::with_model(config, model(1), tokenizer()).expect("trainer");
    let summary = trainer.train(&mut NoCallbacks).expect("train");
    let losses = train_losses(&dir.path().join("run"));
    let first = losses.first().expect("a step").1;
    let last = summary.final_loss.expect("a loss");
    assert!(last < 0.05, "loss went from {first} to {last}");
    assert!(summary.adapter_dir.join("adapters.safetensors").is_file());
    assert!(summary.best_val_loss.is_some());
}

#[test]
fn lora_gradients_match_finite_differences() {
    let model = model(2);
    let tokenizer = tokenizer();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 1);
    let (train, _) = ft_trainer::load_datasets(&cfg, &tokenizer).expect("data");
    let batch = train
        .batcher(ft_data::BatchOptions {
            batch_size: 2,
            ..Default::default()
        })
        .expect("batcher")
        .epoch_batches(0)
        .remove(0);
    let arrays = BatchArrays::new(&batch);
    let spec = LoraSpec {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![Projection::Q, Projection::Down],
        layers: vec![0, 1],
        dora: false,
    };
    let mut adapters = LoraAdapters::init(&model, spec, 3).expect("adapters");
    // Non-zero B so that A has a gradient too.
    for param in adapters.params.iter_mut().skip(1).step_by(2) {
        *param = mlx_rs::random::normal::<f32>(param.shape(), None, 0.1, None).expect("b");
    }
    let layout = adapters.layout.clone();
    let loss_at = |params: &[Array]| -> f64 {
        let (loss, _) = loss_and_grads(
            &model,
            &layout,
            params,
            std::slice::from_ref(&arrays),
            &Workers::single(),
            None,
            0.0,
        )
        .expect("loss");
        f64::from(loss.as_slice::<f32>()[0]) / arrays.target_tokens as f64
    };
    let (_, grads) = loss_and_grads(
        &model,
        &layout,
        &adapters.params,
        std::slice::from_ref(&arrays),
        &Workers::single(),
        None,
        0.0,
    )
    .expect("grads");
    let h = 1e-2f32;
    let mut checked = 0;
    for (index, grad) in grads.iter().enumerate() {
        let grad: Vec<f32> = grad.as_slice::<f32>().to_vec();
        let values: Vec<f32> = adapters.params[index].as_slice::<f32>().to_vec();
        for element in [0usize, values.len() / 2, values.len() - 1] {
            let shifted = |delta: f32| {
                let mut params = adapters.params.clone();
                let mut changed = values.clone();
                changed[element] += delta;
                params[index] = Array::from_slice(&changed, adapters.params[index].shape());
                loss_at(&params)
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * f64::from(h));
            let analytic = f64::from(grad[element]) / arrays.target_tokens as f64;
            let tolerance = 2e-3 + 2e-2 * analytic.abs();
            assert!(
                (numeric - analytic).abs() <= tolerance,
                "array {index} element {element}: numeric {numeric} vs analytic {analytic}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, grads.len() * 3);
}

#[test]
fn accumulated_micro_batches_equal_the_large_batch() {
    let model = model(3);
    let tokenizer = tokenizer();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 1);
    let (train, _) = ft_trainer::load_datasets(&cfg, &tokenizer).expect("data");
    let batcher = train
        .batcher(ft_data::BatchOptions {
            batch_size: 4,
            ..Default::default()
        })
        .expect("batcher");
    let rows = batcher.plan(0).remove(0);
    let spec = LoraSpec::from_config(&cfg.lora, model.args.num_layers);
    let mut adapters = LoraAdapters::init(&model, spec, 4).expect("adapters");
    for param in adapters.params.iter_mut().skip(1).step_by(2) {
        *param = mlx_rs::random::normal::<f32>(param.shape(), None, 0.1, None).expect("b");
    }
    // The large batch split over parallel CPU streams (two on two cores),
    // the micro-batches each on the default stream.
    let grads_of = |rows: &[Vec<usize>], workers: &Workers| {
        let batch = batcher.build(rows);
        let parts = workers.split(&batch);
        let (loss, grads) = loss_and_grads(
            &model,
            &adapters.layout,
            &adapters.params,
            &parts,
            workers,
            None,
            0.1,
        )
        .expect("grads");
        (loss, grads, batch.target_tokens)
    };
    let (_, large, large_tokens) = grads_of(&rows, &Workers::auto(4));
    let mut accumulator = ft_optim::GradAccumulator::new();
    let mut tokens = 0;
    for half in rows.chunks(2) {
        let (_, grads, count) = grads_of(half, &Workers::single());
        accumulator.add(grads).expect("add");
        tokens += count;
    }
    assert_eq!(tokens, large_tokens);
    let accumulated = accumulator.take_scaled(1.0 / tokens as f32).expect("take");
    let scale = Array::from_f32(1.0 / large_tokens as f32);
    for (a, b) in accumulated.iter().zip(&large) {
        let b = b.multiply(&scale).expect("scale");
        let diff = a
            .subtract(&b)
            .expect("diff")
            .abs()
            .expect("abs")
            .max(None)
            .expect("max");
        assert!(
            diff.item_exact::<f32>() <= 1e-5,
            "max abs diff {}",
            diff.item_exact::<f32>()
        );
    }
}

/// Stops the run after `at` steps, as Ctrl-C does.
struct StopAt(u64);

impl Callbacks for StopAt {
    fn on_step(&mut self, metrics: &StepMetrics) -> Control {
        if metrics.step >= self.0 {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

#[test]
fn a_resumed_run_continues_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = |sub: &str| {
        let mut config = config(dir.path(), 8);
        config.lora.dropout = 0.1;
        config.training.grad_accumulation = 2;
        config.training.save_every = 3;
        config.optimizer.learning_rate = 3e-3;
        config.checkpoint.output_dir = dir.path().join(sub);
        config
    };
    let mut straight =
        Trainer::with_model(base("straight"), model(5), tokenizer()).expect("trainer");
    straight.train(&mut NoCallbacks).expect("train");

    let mut first = Trainer::with_model(base("resumed"), model(5), tokenizer()).expect("trainer");
    let summary = first.train(&mut StopAt(5)).expect("train");
    assert_eq!(summary.steps, 5);
    let mut config = base("resumed");
    config.checkpoint.resume = Some(dir.path().join("resumed"));
    let mut second = Trainer::with_model(config, model(5), tokenizer()).expect("resume");
    assert_eq!(second.state().step, 5);
    second.train(&mut NoCallbacks).expect("train");

    let expected = train_losses(&dir.path().join("straight"));
    let got = train_losses(&dir.path().join("resumed"));
    assert_eq!(expected.len(), 8);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    for ((step, a), (_, b)) in expected.iter().zip(&got) {
        assert!((a - b).abs() <= 1e-5, "step {step}: {a} vs {b}");
    }
    let read = |sub: &str| {
        Array::load_safetensors(dir.path().join(sub).join("adapter/adapters.safetensors"))
            .expect("adapter")
    };
    let (a, b) = (read("straight"), read("resumed"));
    for (name, array) in &a {
        assert_eq!(array.as_slice::<f32>(), b[name].as_slice::<f32>(), "{name}");
    }
}

#[test]
fn a_learning_rate_far_too_high_stops_with_the_last_checkpoint_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path(), 40);
    config.training.save_every = 1;
    config.training.max_grad_norm = 0.0;
    config.training.on_nonfinite = NonFinitePolicy::Stop;
    config.optimizer.learning_rate = 1e30;
    let mut trainer = Trainer::with_model(config, model(6), tokenizer()).expect("trainer");
    let error = trainer.train(&mut NoCallbacks).expect_err("diverges");
    let TrainError::NonFinite {
        last_checkpoint,
        step,
        ..
    } = &error
    else {
        panic!("unexpected error {error}");
    };
    assert!(error.to_string().contains("not finite"), "{error}");
    let checkpoint = last_checkpoint
        .clone()
        .expect("a checkpoint before the blow-up");
    assert!(*step > 1);
    let tiny = model(6);
    let mut optimizer = ft_optim::Optimizer::adamw(ft_optim::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    let loaded =
        ft_trainer::checkpoint::load(&checkpoint, &tiny.args, &mut optimizer).expect("loads");
    assert_eq!(loaded.state.step, *step - 1);
}

#[test]
fn the_skip_policy_keeps_the_weights_of_the_last_good_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path(), 6);
    config.training.max_grad_norm = 0.0;
    config.training.on_nonfinite = NonFinitePolicy::Skip;
    config.optimizer.learning_rate = 1e30;
    let mut trainer = Trainer::with_model(config, model(7), tokenizer()).expect("trainer");
    let summary = trainer.train(&mut NoCallbacks).expect("train");
    assert!(summary.skipped_steps > 0, "{summary:?}");
    for param in &trainer.adapters().params {
        assert!(param.as_slice::<f32>().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn gradient_checkpointing_changes_memory_not_results() {
    let run = |checkpointing: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path(), 4);
        config.lora.dropout = 0.1;
        config.training.grad_checkpointing = checkpointing;
        let mut trainer = Trainer::with_model(config, model(8), tokenizer()).expect("trainer");
        trainer.train(&mut NoCallbacks).expect("train");
        (
            train_losses(&dir.path().join("run")),
            trainer.adapters().params.clone(),
        )
    };
    let (plain_losses, plain) = run(false);
    let (losses, params) = run(true);
    assert_eq!(plain_losses.len(), 4);
    for ((step, a), (_, b)) in plain_losses.iter().zip(&losses) {
        assert!((a - b).abs() < 1e-5, "step {step}: {a} vs {b}");
    }
    for (a, b) in plain.iter().zip(&params) {
        let diff = a
            .subtract(b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max(None))
            .expect("diff");
        assert!(
            diff.as_slice::<f32>()[0] < 1e-5,
            "adapter differs by {diff:?}"
        );
    }
}

#[test]
fn early_stopping_ends_the_run_once_patience_runs_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path(), 40);
    config.training.eval_every = 1;
    config.training.early_stopping_patience = Some(2);
    // No loss can beat the first by this much: every later evaluation counts
    // against the patience, so the run stops at the third.
    config.training.early_stopping_min_delta = 1e6;
    let mut trainer = Trainer::with_model(config, model(9), tokenizer()).expect("trainer");
    let summary = trainer.train(&mut NoCallbacks).expect("train");
    assert_eq!(summary.stop, StopCause::EarlyStopping, "{summary:?}");
    assert_eq!(summary.steps, 3);
    assert_eq!(trainer.state().evals_without_improvement, 2);
    let run = dir.path().join("run");
    let evals: Vec<_> = ft_trainer::metrics::read_metrics(&run.join("metrics.jsonl"))
        .expect("metrics")
        .into_iter()
        .filter_map(|record| match record {
            MetricsRecord::Eval(eval) => Some(eval),
            MetricsRecord::Train(_) => None,
        })
        .collect();
    let seen: Vec<_> = evals.iter().map(|e| (e.step, e.improved)).collect();
    assert_eq!(seen, [(1, true), (2, false), (3, false)]);
    // Read back from JSON, the loss may differ in its last bit.
    let best = summary.best_val_loss.expect("a best loss");
    assert!(
        (best - evals[0].loss).abs() < 1e-9,
        "{best} vs {}",
        evals[0].loss
    );
    assert_eq!(summary.last_eval.map(|e| e.step), Some(3));
    assert!(run.join("best-adapter/adapters.safetensors").is_file());
    let last = summary.last_checkpoint.expect("a final checkpoint");
    assert!(last.ends_with("step-000003"), "{}", last.display());
}
