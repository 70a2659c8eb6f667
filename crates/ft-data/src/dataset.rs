//! The front door: files in, validated and encoded examples out.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::batch::{BatchOptions, Batcher};
use crate::diagnostic::{ReportCounts, ValidationReport};
use crate::encode::{EncodeOptions, EncodedExample, Encoder};
use crate::error::Result;
use crate::format::{CheckOptions, Format};
use crate::jsonl::{read_jsonl_with, ParsedFile};
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
        // The rules of the template actually used (`auto` may be Mistral v3).
        let checks = encoder.formatter().check_options();
        let mut report = ValidationReport::default();
        let mut examples = Vec::new();
        for file in files {
            let parsed = read_jsonl_with(file, options.format, &checks)?;
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
    check_structure_with(files, format, &CheckOptions::default())
}

/// [`check_structure`] with the rules of the chat template the data is for
/// (see [`CheckOptions::for_template`]).
pub fn check_structure_with<P: AsRef<Path>>(
    files: &[P],
    format: Option<Format>,
    options: &CheckOptions,
) -> Result<ValidationReport> {
    let mut report = ValidationReport::default();
    for file in files {
        let ParsedFile {
            diagnostics,
            counts,
            ..
        } = read_jsonl_with(file, format, options)?;
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
    into.tool_examples += from.tool_examples;
    into.tool_calls += from.tool_calls;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::diagnostic::DiagnosticKind;
    use crate::template::TemplateChoice;
    use crate::test_support::tiny_spm;

    /// One tool round with the call id `id`, as a JSONL line.
    fn tool_line(id: &str) -> String {
        format!(
            r#"{{"tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"object","properties":{{"x":{{"type":"string"}}}},"required":["x"]}}}}}}],"messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","tool_calls":[{{"id":"{id}","type":"function","function":{{"name":"f","arguments":"{{\"x\": \"ab\"}}"}}}}]}},{{"role":"tool","tool_call_id":"{id}","content":"the"}},{{"role":"assistant","content":"ab"}}]}}"#
        )
    }

    #[test]
    fn the_resolved_template_decides_the_tool_checks_and_stats_count_tools() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tools.jsonl");
        let data = format!("{}\n{}\n", tool_line("call_1"), tool_line("a1b2c3d4e"));
        std::fs::write(&file, data).unwrap();
        let tok = tiny_spm();
        // `auto` on a model without a template is Mistral v3: its id rule
        // applies, and it cannot render tool turns yet (a located error).
        let dataset = Dataset::prepare(&[&file], &tok, &DataOptions::default()).unwrap();
        let located: Vec<_> = dataset
            .report
            .diagnostics
            .iter()
            .map(|d| (d.line, d.kind, d.field.as_deref()))
            .collect();
        assert_eq!(
            located,
            vec![
                (
                    1,
                    DiagnosticKind::InvalidToolCallId,
                    Some("messages[1].tool_calls[0].id")
                ),
                (2, DiagnosticKind::Template, None),
            ]
        );
        assert!(dataset.report.diagnostics[1]
            .message
            .contains("tool calls are not supported by the `mistral-v3` template yet"));
        assert!(dataset.examples.is_empty());
        // Structure only, with the template as chosen: `auto` is not resolved.
        let report = check_structure(&[&file], None).unwrap();
        assert!(report.is_ok(), "{:#?}", report.diagnostics);
        let checks = CheckOptions::for_template(&TemplateChoice::MistralV3);
        let report = check_structure_with(&[&file], None, &checks).unwrap();
        assert_eq!(report.counts.errors, 1);
        // A Jinja template that renders tools: both lines train, and are counted.
        let template = "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}\
            [{{ c.function.name }} {{ c.function.arguments.x }}]{% endfor %}</s>\
            {% elif m.role == 'tool' %}({{ m.content }}){% else %}{{ m.content }}</s>{% endif %}{% endfor %}";
        let options = DataOptions {
            encode: EncodeOptions {
                template: TemplateChoice::Jinja(template.into()),
                ..EncodeOptions::default()
            },
            ..DataOptions::default()
        };
        let dataset = Dataset::prepare(&[&file], &tok, &options).unwrap();
        assert!(dataset.report.is_ok(), "{:#?}", dataset.report.diagnostics);
        assert_eq!(dataset.examples.len(), 2);
        assert_eq!(
            (dataset.stats.tool_examples, dataset.stats.tool_calls),
            (2, 2)
        );
        let seen = dataset.render(&tok, 0..1).unwrap();
        // (SentencePiece decodes a space before each text after a control token.)
        assert_eq!(seen[0].text, "<s> hi</s> [f ab]</s> (the)ab</s>");
        let targets: Vec<&str> = seen[0].targets.iter().map(|t| t.trim()).collect();
        assert_eq!(targets, vec!["[f ab]</s>", "ab</s>"]);
    }
}
