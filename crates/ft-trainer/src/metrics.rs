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
    /// Mean training loss over the step's target tokens (NaN or infinite
    /// on a skipped step: written as `null`, read back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Learning rate used for the update.
    pub lr: f64,
    /// Global gradient norm before clipping (`null` in the file when not finite).
    #[serde(deserialize_with = "nan_if_null")]
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
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// `exp(loss)`.
    #[serde(deserialize_with = "nan_if_null")]
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
            replace_file(path, text.as_bytes())?;
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

    /// Appends one record (one `write` of the whole line, so a crash cuts
    /// at most the last line short, which [`read_metrics`] skips).
    pub fn append(&mut self, record: &MetricsRecord) -> Result<()> {
        let mut line = serde_json::to_string(record).unwrap_or_default();
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|source| {
            if crate::disk::is_out_of_space(&source) {
                crate::disk::disk_full(&self.path, Some(line.len() as u64))
            } else {
                io_error(&self.path)(source)
            }
        })
    }
}

/// Replaces `path` with `bytes` through a synced temporary file and a
/// rename, so a crash leaves the old file or the new one, not a cut one.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.partial"));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(path)(source));
    }
    std::fs::rename(&temp, path).map_err(io_error(path))
}

/// Reads a float that JSON stores as `null` when it is NaN or infinite.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64) -> MetricsRecord {
        MetricsRecord::Train(StepMetrics {
            step,
            total_steps: 9,
            loss,
            lr: 1e-3,
            grad_norm: loss,
            target_tokens: 4,
            real_tokens: 8,
            tokens_per_second: 1.0,
            peak_memory_bytes: 0,
            active_memory_bytes: 0,
            elapsed_seconds: 0.0,
            epoch: 0,
            skipped: !loss.is_finite(),
        })
    }

    #[test]
    fn a_skipped_step_with_a_nan_loss_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let mut file = MetricsFile::open(&path, None).expect("open");
        file.append(&step(1, 0.5)).expect("append");
        file.append(&step(2, f64::NAN)).expect("append");
        let records = read_metrics(&path).expect("read");
        assert_eq!(records.len(), 2);
        let MetricsRecord::Train(skipped) = &records[1] else {
            panic!("a train record");
        };
        assert!(skipped.skipped && skipped.loss.is_nan() && skipped.grad_norm.is_nan());
    }

    #[test]
    fn resuming_drops_later_records_and_a_line_a_crash_cut_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let mut file = MetricsFile::open(&path, None).expect("open");
        for n in 1..=4 {
            file.append(&step(n, 0.5)).expect("append");
        }
        drop(file);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str(r#"{"kind":"train","step":5,"total_st"#);
        std::fs::write(&path, text).expect("cut line");
        let mut file = MetricsFile::open(&path, Some(3)).expect("resume");
        file.append(&step(4, 0.25)).expect("append");
        let steps: Vec<u64> = read_metrics(&path)
            .expect("read")
            .iter()
            .map(MetricsRecord::step)
            .collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(!dir.path().join(".metrics.jsonl.partial").exists());
    }
}
