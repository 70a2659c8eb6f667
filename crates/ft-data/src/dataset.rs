//! The front door: files in, validated and encoded examples out.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batch::{BatchOptions, Batcher};
use crate::diagnostic::{ReportCounts, ValidationReport};
use crate::encode::{EncodeOptions, EncodedExample, Encoder};
use crate::error::Result;
use crate::format::Format;
use crate::jsonl::{read_jsonl, ParsedFile};
use crate::render::{render_example, RenderedExample};
use crate::stats::DataStats;
use crate::tokenizer::TextTokenizer;

/// How dataset files are read and encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataOptions {
    /// Force a format instead of detecting it per file.
    pub format: Option<Format>,
    /// Tokenization, masks and length policy.
    pub encode: EncodeOptions,
}

/// Encoded examples of one or more files, with the full report and stats.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Examples kept for training, in file and line order.
    pub examples: Vec<EncodedExample>,
    /// Every problem found, with counts.
    pub report: ValidationReport,
    /// Statistics of the kept examples.
    pub stats: DataStats,
}

impl Dataset {
    /// Reads, checks and encodes `files`; fails only when a file cannot be
    /// read or the tokenizer/template is unusable. Problems in the data are
    /// in [`Dataset::report`].
    pub fn prepare<P: AsRef<Path>>(
        files: &[P],
        tokenizer: &TextTokenizer,
        options: &DataOptions,
    ) -> Result<Self> {
        let encoder = Encoder::new(tokenizer, options.encode.clone())?;
        let mut report = ValidationReport::default();
        let mut examples = Vec::new();
        for file in files {
            let parsed = read_jsonl(file, options.format)?;
            let encoded = encoder.encode_all(&parsed.examples);
            merge_counts(&mut report.counts, &parsed.counts);
            merge_counts(&mut report.counts, &encoded.counts);
            report.extend(parsed.diagnostics);
            report.extend(encoded.diagnostics);
            examples.extend(encoded.examples);
        }
        report.sort();
        let stats = DataStats::new(&examples, &report.counts);
        Ok(Dataset {
            examples,
            report,
            stats,
        })
    }

    /// Like [`prepare`](Self::prepare), but refuses data with errors
    /// ([`DataError::Invalid`](crate::DataError::Invalid) carries the report).
    pub fn load<P: AsRef<Path>>(
        files: &[P],
        tokenizer: &TextTokenizer,
        options: &DataOptions,
    ) -> Result<Self> {
        let dataset = Self::prepare(files, tokenizer, options)?;
        let Dataset {
            examples,
            report,
            stats,
        } = dataset;
        let report = report.into_result()?;
        Ok(Dataset {
            examples,
            report,
            stats,
        })
    }

    /// A batcher over the examples.
    pub fn batcher(&self, options: BatchOptions) -> Result<Batcher<'_>> {
        Batcher::new(&self.examples, options)
    }

    /// "What the model sees" for the examples in `range` (clamped to the data).
    pub fn render(
        &self,
        tokenizer: &TextTokenizer,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<RenderedExample>> {
        let end = range.end.min(self.examples.len());
        let start = range.start.min(end);
        self.examples[start..end]
            .iter()
            .map(|e| render_example(tokenizer, e))
            .collect()
    }
}

/// Checks `files` with a tokenizer: structure, roles, duplicates and lengths.
/// Every problem is reported; only unreadable files fail.
pub fn validate<P: AsRef<Path>>(
    files: &[P],
    tokenizer: &TextTokenizer,
    options: &DataOptions,
) -> Result<ValidationReport> {
    Dataset::prepare(files, tokenizer, options).map(|d| d.report)
}

/// Checks only the structure of `files` (no tokenizer: lengths are not checked).
pub fn check_structure<P: AsRef<Path>>(
    files: &[P],
    format: Option<Format>,
) -> Result<ValidationReport> {
    let mut report = ValidationReport::default();
    for file in files {
        let ParsedFile {
            diagnostics,
            counts,
            ..
        } = read_jsonl(file, format)?;
        merge_counts(&mut report.counts, &counts);
        report.extend(diagnostics);
    }
    report.sort();
    Ok(report)
}

/// Adds `from` into `into` (errors/warnings are counted by the report itself).
fn merge_counts(into: &mut ReportCounts, from: &ReportCounts) {
    into.files += from.files;
    into.lines += from.lines;
    into.blank_lines += from.blank_lines;
    into.examples += from.examples;
    for (format, n) in &from.per_format {
        *into.per_format.entry(*format).or_default() += n;
    }
    into.desirable += from.desirable;
    into.undesirable += from.undesirable;
    into.skipped_by_label += from.skipped_by_label;
    into.duplicates += from.duplicates;
    into.truncated += from.truncated;
    into.dropped += from.dropped;
    into.kept += from.kept;
}
