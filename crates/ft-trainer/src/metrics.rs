//! What a run reports while it goes: per-step and per-evaluation metrics,
//! the callbacks that receive them, and the `metrics.jsonl` file.

use crate::error::io_error;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Metrics of one optimizer step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    /// Optimizer steps completed (1-based).
    pub step: u64,
    /// Steps in the run.
    pub total_steps: u64,
    /// Mean training loss over the step's target tokens.
    pub loss: f64,
    /// Learning rate used for the update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Loss targets in the step.
    pub target_tokens: u64,
    /// Non-padding tokens processed in the step.
    pub real_tokens: u64,
    /// Non-padding tokens per second over this step.
    pub tokens_per_second: f64,
    /// Peak MLX memory so far, in bytes.
    pub peak_memory_bytes: u64,
    /// MLX memory held by live arrays after the step, in bytes (a leak shows
    /// here first; 0 in files written before it was recorded).
    #[serde(default)]
    pub active_memory_bytes: u64,
    /// Seconds of training so far (across resumes).
    pub elapsed_seconds: f64,
    /// Epoch of the data cursor after this step.
    pub epoch: u64,
    /// Whether the update was skipped (non-finite loss or gradients).
    pub skipped: bool,
}

/// Metrics of one evaluation on the validation set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalMetrics {
    /// Optimizer steps completed when it ran.
    pub step: u64,
    /// Mean cross-entropy per target token (no label smoothing).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub target_tokens: u64,
    /// Whether this is the best validation loss so far.
    pub improved: bool,
}

/// Whether the run goes on after a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Write a checkpoint and stop (e.g. on Ctrl-C).
    Stop,
}

/// Hooks for library users and the CLI; every method has a no-op default.
pub trait Callbacks {
    /// After every optimizer step.
    fn on_step(&mut self, _metrics: &StepMetrics) -> Control {
        Control::Continue
    }
    /// After every evaluation.
    fn on_eval(&mut self, _metrics: &EvalMetrics) -> Control {
        Control::Continue
    }
    /// After a checkpoint is written (its directory).
    fn on_checkpoint(&mut self, _dir: &Path) {}
}

/// Callbacks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCallbacks;

impl Callbacks for NoCallbacks {}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricsRecord {
    /// A training step.
    Train(StepMetrics),
    /// An evaluation.
    Eval(EvalMetrics),
}

impl MetricsRecord {
    fn step(&self) -> u64 {
        match self {
            MetricsRecord::Train(m) => m.step,
            MetricsRecord::Eval(m) => m.step,
        }
    }
}

/// Appends records to `metrics.jsonl`, one JSON object per line.
pub struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    /// Opens the file for appending; on a resumed run, records after
    /// `resume_step` (written by the interrupted run after its last
    /// checkpoint) are dropped first so the file tells one consistent story.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        if let Some(step) = resume_step {
            let kept: Vec<String> = read_metrics(path)?
                .into_iter()
                .filter(|record| record.step() <= step)
                .filter_map(|record| serde_json::to_string(&record).ok())
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            std::fs::write(path, text).map_err(io_error(path))?;
        } else if path.exists() {
            std::fs::remove_file(path).map_err(io_error(path))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record.
    pub fn append(&mut self, record: &MetricsRecord) -> Result<()> {
        let line = serde_json::to_string(record).unwrap_or_default();
        writeln!(self.file, "{line}").map_err(io_error(&self.path))
    }
}

/// Reads `metrics.jsonl` (missing file: no records; unreadable lines are skipped
/// since a crash can cut the last one short).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(io_error(path)(error)),
    }
}
