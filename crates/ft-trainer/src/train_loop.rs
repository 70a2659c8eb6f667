//! The training loop: steps in order, each followed by its metrics record,
//! the callbacks, evaluation, checkpoints and the decision to stop.

use crate::checkpoint;
use crate::early_stop::EarlyStopping;
use crate::error::io_error;
use crate::evaluate::validation_loss;
use crate::metrics::{Callbacks, Control, EvalMetrics, MetricsFile, MetricsRecord, StepMetrics};
use crate::run::{Progress, RunSetup};
use crate::step::{scalar, train_step, StepOutcome};
use crate::trainer::StopCause;
use crate::Result;
use ft_data::Batcher;
use mlx_rs::Array;
use std::time::Instant;

/// How the loop ended.
pub(crate) struct LoopEnd {
    pub(crate) stop: StopCause,
    /// Training loss of the last step that was not skipped.
    pub(crate) final_loss: Option<f64>,
    pub(crate) last_eval: Option<EvalMetrics>,
}

/// Creates the run directory with the run's `config.toml` and opens its
/// metrics file; `None` on ranks that do not write files.
pub(crate) fn open_run_dir(setup: &RunSetup, progress: &Progress) -> Result<Option<MetricsFile>> {
    if !setup.writes_files() {
        return Ok(None);
    }
    std::fs::create_dir_all(&setup.run_dir).map_err(io_error(&setup.run_dir))?;
    let config_path = setup.run_dir.join("config.toml");
    std::fs::write(&config_path, &setup.config_toml).map_err(io_error(&config_path))?;
    let metrics_path = setup.run_dir.join(&setup.config.logging.metrics_file);
    Ok(Some(MetricsFile::open(
        &metrics_path,
        progress.resumed.then_some(progress.state.step),
    )?))
}

/// A run in the middle of its loop: the fixed setup and the training set's
/// batcher are borrowed while the progress changes.
pub(crate) struct TrainLoop<'a> {
    setup: &'a RunSetup,
    progress: &'a mut Progress,
    batcher: Batcher<'a>,
    metrics: Option<MetricsFile>,
    callbacks: &'a mut dyn Callbacks,
    early_stopping: EarlyStopping,
    final_loss: Option<f64>,
    last_eval: Option<EvalMetrics>,
}

impl<'a> TrainLoop<'a> {
    /// Starts the loop where `progress` left the data stream (a fresh run:
    /// at its beginning).
    pub(crate) fn new(
        setup: &'a RunSetup,
        progress: &'a mut Progress,
        metrics: Option<MetricsFile>,
        callbacks: &'a mut dyn Callbacks,
    ) -> Result<Self> {
        let batcher = setup.data.train.batcher(setup.batch_options())?;
        if progress.state.step == 0 && !progress.resumed {
            progress.state.cursor = batcher.start();
        }
        Ok(TrainLoop {
            setup,
            progress,
            batcher,
            metrics,
            callbacks,
            early_stopping: EarlyStopping::from_config(&setup.config.training),
            final_loss: None,
            last_eval: None,
        })
    }

    /// Runs steps until the schedule's last, early stopping, or a stop
    /// asked for by a callback.
    pub(crate) fn run(mut self) -> Result<LoopEnd> {
        while self.progress.state.step < self.setup.schedule.total_steps {
            if let Some(stop) = self.next_step()? {
                return Ok(self.end(stop));
            }
        }
        Ok(self.end(StopCause::Completed))
    }

    /// One step and what follows it; why the run stops there, if it does.
    fn next_step(&mut self) -> Result<Option<StopCause>> {
        let started = Instant::now();
        let lr = self.setup.schedule.at(self.progress.state.step);
        let Some(outcome) = train_step(self.setup, self.progress, &mut self.batcher, lr)? else {
            // Nothing to train on, so nothing to report or evaluate either.
            self.progress.state.step += 1;
            return Ok(None);
        };
        let metrics = self.record_step(&outcome, lr, started.elapsed().as_secs_f64())?;
        let control = self.callbacks.on_step(&metrics);
        self.after_step(control)
    }

    /// Counts a step taken in `seconds` and writes its metrics record.
    fn record_step(&mut self, outcome: &StepOutcome, lr: f64, seconds: f64) -> Result<StepMetrics> {
        let state = &mut self.progress.state;
        state.step += 1;
        let clear_every = u64::from(self.setup.config.memory.clear_cache_every);
        if clear_every > 0 && state.step.is_multiple_of(clear_every) {
            mlx_rs::memory::clear_cache()?;
        }
        state.seconds += seconds;
        state.trained_tokens += outcome.real_tokens;
        if !outcome.skipped {
            self.final_loss = Some(outcome.loss);
        }
        let metrics = StepMetrics {
            step: state.step,
            total_steps: self.setup.schedule.total_steps,
            loss: outcome.loss,
            lr,
            grad_norm: outcome.grad_norm,
            target_tokens: outcome.target_tokens,
            real_tokens: outcome.real_tokens,
            tokens_per_second: outcome.real_tokens as f64 / seconds.max(1e-9),
            peak_memory_bytes: mlx_rs::memory::peak_memory().unwrap_or(0) as u64,
            active_memory_bytes: mlx_rs::memory::active_memory().unwrap_or(0) as u64,
            elapsed_seconds: state.seconds,
            epoch: state.cursor.epoch,
            skipped: outcome.skipped,
        };
        if let Some(file) = self.metrics.as_mut() {
            file.append(&MetricsRecord::Train(metrics.clone()))?;
        }
        Ok(metrics)
    }

    /// The evaluation and checkpoint due after a step, then whether to stop
    /// (`control` is what the step's callback asked for).
    fn after_step(&mut self, mut control: Control) -> Result<Option<StopCause>> {
        let setup = self.setup;
        let training = &setup.config.training;
        let step = self.progress.state.step;
        let at_end = step == setup.schedule.total_steps;
        let mut early_stop = false;
        if (every(training.eval_every, step) || at_end) && setup.data.valid.is_some() {
            if let Some(eval) = self.evaluate()? {
                if let Some(file) = self.metrics.as_mut() {
                    file.append(&MetricsRecord::Eval(eval.clone()))?;
                }
                if self.callbacks.on_eval(&eval) == Control::Stop {
                    control = Control::Stop;
                }
                early_stop = self.early_stopping.should_stop(&self.progress.state);
                self.last_eval = Some(eval);
            }
        }
        if every(training.save_every, step) && !at_end {
            self.progress.save_checkpoint(setup, self.callbacks)?;
        }
        if early_stop {
            return Ok(Some(StopCause::EarlyStopping));
        }
        if self.stop_wanted(control)? {
            return Ok(Some(StopCause::Interrupted));
        }
        Ok(None)
    }

    /// Evaluates the adapters on the validation set, records the loss for
    /// early stopping and keeps the best adapter so far.
    fn evaluate(&mut self) -> Result<Option<EvalMetrics>> {
        let setup = self.setup;
        let Some((loss, target_tokens)) = validation_loss(setup, &self.progress.adapters)? else {
            return Ok(None);
        };
        let improved = self.early_stopping.record(&mut self.progress.state, loss);
        if improved && setup.writes_files() {
            checkpoint::save_adapter(
                &self.progress.adapters,
                &setup.run_dir.join("best-adapter"),
                &setup.config.model.path,
            )?;
        }
        Ok(Some(EvalMetrics {
            step: self.progress.state.step,
            loss,
            perplexity: loss.exp(),
            target_tokens,
            improved,
        }))
    }

    /// Whether this rank or, in a distributed run, any rank asked to stop
    /// (Ctrl-C on one rank stops them all at the same step).
    fn stop_wanted(&self, control: Control) -> Result<bool> {
        let mut stop = control == Control::Stop;
        if self.setup.group.size() > 1 {
            // Every rank takes part in the exchange, whatever it wants.
            let wanted = Array::from_f32(f32::from(u8::from(stop)));
            let anyone = self.setup.group.all_sum(&wanted)?;
            if scalar(&anyone)? > 0.0 {
                stop = true;
            }
        }
        Ok(stop)
    }

    fn end(self, stop: StopCause) -> LoopEnd {
        LoopEnd {
            stop,
            final_loss: self.final_loss,
            last_eval: self.last_eval,
        }
    }
}

/// Whether an action done every `interval` steps (0: never) is due at `step`.
fn every(interval: u32, step: u64) -> bool {
    interval > 0 && step.is_multiple_of(u64::from(interval))
}
