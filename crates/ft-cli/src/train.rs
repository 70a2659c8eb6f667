//! `ft train`: a fine-tuning run as a person sees it.

use crate::common::{human_bytes, load_config, thousands, train_failure};
use crate::Failure;
use anyhow::anyhow;
use ft_trainer::{Callbacks, Control, EvalMetrics, StepMetrics, StopCause, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `ft train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::common::ConfigChoice,
    /// Continue from a checkpoint directory, or from the newest checkpoint of a run directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar (log lines only).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    distributed: crate::distributed::DistributedArgs,
}

impl Args {
    /// The JSON log file the configuration asks for, if the configuration loads.
    pub fn json_log_file(&self) -> Option<PathBuf> {
        load_config(&self.run.config, &self.run.sets)
            .ok()
            .and_then(|config| config.logging.json_file)
    }
}

struct Progress {
    bar: ProgressBar,
    interrupted: Arc<AtomicBool>,
    watchdog: Option<crate::distributed::Watchdog>,
}

impl Callbacks for Progress {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        if let Some(watchdog) = &self.watchdog {
            watchdog.alive();
        }
        self.bar.set_position(m.step);
        let skipped = if m.skipped {
            " (skipped: not finite)"
        } else {
            ""
        };
        self.bar.set_message(format!(
            "loss {:.4}{skipped} | lr {:.2e} | {:.0} tok/s | peak {}",
            m.loss,
            m.lr,
            m.tokens_per_second,
            human_bytes(m.peak_memory_bytes)
        ));
        tracing::info!(
            step = m.step,
            loss = m.loss,
            lr = m.lr,
            grad_norm = m.grad_norm,
            tokens_per_second = m.tokens_per_second,
            peak_memory_bytes = m.peak_memory_bytes,
            "step"
        );
        if self.interrupted.load(Ordering::SeqCst) {
            self.bar
                .println("interrupted: writing a checkpoint before exiting");
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_eval(&mut self, m: &EvalMetrics) -> Control {
        if let Some(watchdog) = &self.watchdog {
            watchdog.alive();
        }
        let mark = if m.improved { " (best)" } else { "" };
        let line = format!(
            "step {:>5}: validation loss {:.4}, perplexity {:.2}{mark}",
            m.step, m.loss, m.perplexity
        );
        if self.bar.is_hidden() {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
        tracing::info!(
            step = m.step,
            val_loss = m.loss,
            perplexity = m.perplexity,
            "eval"
        );
        Control::Continue
    }

    fn on_checkpoint(&mut self, dir: &Path) {
        tracing::info!(checkpoint = %dir.display(), "checkpoint written");
    }
}

/// Runs `ft train`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let mut sets = args.run.sets.clone();
    if let Some(resume) = &args.resume {
        sets.push(format!("checkpoint.resume={}", toml_string(resume)?));
    }
    let config = load_config(&args.run.config, &sets)?;
    let started = Instant::now();
    eprintln!("loading {} and the data...", config.model.path);
    let mut trainer = Trainer::new(config).map_err(train_failure)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let watchdog = crate::distributed::join(&args.distributed, &mut trainer)?;
    let (rank, ranks) = trainer.rank();
    if rank > 0 {
        return follow(trainer, watchdog);
    }
    let info = trainer.info();
    let config = trainer.config().clone();
    let stats = &trainer.train_set().stats;
    println!("mlx-ft train");
    println!(
        "  model      {} ({} layers, {} parameters, {})",
        info.model,
        info.model_layers,
        thousands(info.base_parameters),
        config.model.dtype
    );
    println!(
        "  adapters   LoRA rank {} alpha {} on the last {} layers: {} trainable parameters ({})",
        config.lora.rank,
        config.lora.alpha,
        trainer.adapters().layout.spec.layers.len(),
        thousands(info.trainable_parameters),
        human_bytes(info.adapter_bytes)
    );
    println!(
        "  data       {} training examples ({} tokens, {} targets), {} validation examples",
        info.train_examples,
        thousands(stats.tokens as u64),
        thousands(stats.target_tokens as u64),
        info.valid_examples
    );
    println!(
        "  schedule   {} steps of {} x {} sequences, lr {:.1e} {} after {} warmup steps",
        info.total_steps,
        config.training.batch_size,
        config.training.grad_accumulation,
        config.optimizer.learning_rate,
        config.scheduler.kind,
        trainer.schedule().warmup_steps
    );
    if info.start_step > 0 {
        println!("  resumed    at step {}", info.start_step);
    }
    if ranks > 1 {
        println!(
            "  ranks      {ranks} (data-parallel: {} of the {} rows of each batch on this rank)",
            ft_trainer::parallel::shard_range(config.training.batch_size as usize, 0, ranks).len(),
            config.training.batch_size
        );
    }
    println!(
        "  loaded     in {load_seconds:.1} s (model{}, tokenizer, data, adapters), MLX peak {}",
        if matches!(config.model.quantization, ft_config::Quantization::None) {
            ""
        } else {
            " quantized on load"
        },
        human_bytes(info.load_peak_memory_bytes)
    );
    println!("  run dir    {}", info.run_dir.display());

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // A second signal exits at once.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .map_err(|error| Failure::Internal(anyhow!("cannot install the signal handler: {error}")))?;

    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(info.total_steps)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps | {msg} | eta {eta}",
        )
        .map_err(|error| Failure::Internal(error.into()))?,
    );
    bar.set_position(info.start_step);
    let mut progress = Progress {
        bar,
        interrupted,
        watchdog,
    };
    let outcome = trainer.train(&mut progress);
    progress.bar.finish_and_clear();
    let metrics_path = info.run_dir.join(&config.logging.metrics_file);
    if config.logging.plots {
        draw_plot(&metrics_path, &info.run_dir.join("loss.svg"));
    }
    let summary = outcome.map_err(train_failure)?;
    let how = match summary.stop {
        StopCause::Completed => "finished",
        StopCause::EarlyStopping => "stopped early (validation loss stopped improving)",
        StopCause::Interrupted => "interrupted",
    };
    println!(
        "{how} after {} steps in {:.1} s ({:.1} s in this process)",
        summary.steps,
        summary.seconds,
        started.elapsed().as_secs_f64()
    );
    if let Some(loss) = summary.final_loss {
        println!("  final training loss   {loss:.4}");
    }
    if let Some(best) = summary.best_val_loss {
        println!(
            "  best validation loss  {best:.4} (perplexity {:.2})",
            best.exp()
        );
    }
    println!(
        "  trained tokens        {} ({:.0} tok/s), peak memory {}",
        thousands(summary.trained_tokens),
        summary.trained_tokens as f64 / summary.seconds.max(1e-9),
        human_bytes(summary.peak_memory_bytes)
    );
    if summary.skipped_steps > 0 {
        println!(
            "  skipped updates       {} (non-finite values)",
            summary.skipped_steps
        );
    }
    println!("  adapter               {}", summary.adapter_dir.display());
    if let Some(checkpoint) = &summary.last_checkpoint {
        println!("  last checkpoint       {}", checkpoint.display());
    }
    if summary.stop == StopCause::Interrupted {
        println!(
            // The run's own effective config: it keeps every --set override.
            "resume with: ft train --config {} --resume {}",
            info.run_dir.join("config.toml").display(),
            info.run_dir.display()
        );
    }
    Ok(())
}

/// A rank other than 0 of a data-parallel run: trains its share quietly
/// (rank 0 shows progress and writes the run directory).
fn follow(
    mut trainer: Trainer,
    watchdog: Option<crate::distributed::Watchdog>,
) -> Result<(), Failure> {
    let (rank, ranks) = trainer.rank();
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .map_err(|error| Failure::Internal(anyhow!("cannot install the signal handler: {error}")))?;
    let mut progress = Progress {
        bar: ProgressBar::hidden(),
        interrupted,
        watchdog,
    };
    let summary = trainer.train(&mut progress).map_err(train_failure)?;
    eprintln!(
        "rank {rank} of {ranks}: {} steps done; rank 0 wrote the run directory",
        summary.steps
    );
    Ok(())
}

fn draw_plot(metrics: &Path, image: &Path) {
    let records = match ft_trainer::metrics::read_metrics(metrics) {
        Ok(records) => records,
        Err(error) => {
            tracing::warn!(%error, "no loss curve: metrics unreadable");
            return;
        }
    };
    match crate::plot::loss_curve(&records, image) {
        Ok(()) => println!("  loss curve            {}", image.display()),
        Err(error) => tracing::warn!(%error, "no loss curve drawn"),
    }
}

/// A path as a TOML string value for `--set`.
fn toml_string(path: &Path) -> Result<String, Failure> {
    let text = path
        .to_str()
        .ok_or_else(|| Failure::User(anyhow!("{} is not valid UTF-8", path.display())))?;
    Ok(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}
