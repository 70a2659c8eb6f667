//! Reading JSONL dataset files: one object per line, every problem reported.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, DiagnosticKind, ReportCounts};
use crate::error::{DataError, Result};
use crate::format::{check_object, describe, CheckOptions, Example, Format};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The longest line read as an example. A longer one is refused rather than
/// parsed and tokenized: tokenizing costs about 100 bytes of memory per byte
/// of text (a 200 MB line would need ~20 GB and minutes), and a training
/// example is at most `data.max_seq_len` tokens anyway.
pub const MAX_LINE_BYTES: usize = 8_000_000;

/// Where an example came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The file, as given.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
}

/// An example and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceExample {
    /// Its file and line.
    pub source: Source,
    /// The example.
    pub example: Example,
}

/// A parsed file: its usable examples and every problem found.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    /// The file, as given.
    pub file: String,
    /// The file's format (forced or detected); `None` if nothing was recognised.
    pub format: Option<Format>,
    /// Examples without errors, in line order.
    pub examples: Vec<SourceExample>,
    /// Problems, in line order.
    pub diagnostics: Vec<Diagnostic>,
    /// Counts (errors and warnings are counted by the report that merges this).
    pub counts: ReportCounts,
}

/// Reads and checks the JSONL file at `path`. `format` forces a format;
/// `None` detects it from the first recognisable line.
pub fn read_jsonl(path: impl AsRef<Path>, format: Option<Format>) -> Result<ParsedFile> {
    read_jsonl_with(path, format, &CheckOptions::default())
}

/// [`read_jsonl`] with the rules of the chat template the data is for
/// (e.g. Mistral v3's tool call ids).
pub fn read_jsonl_with(
    path: impl AsRef<Path>,
    format: Option<Format>,
    options: &CheckOptions,
) -> Result<ParsedFile> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_jsonl_with(
        &path.display().to_string(),
        &bytes,
        format,
        options,
    ))
}

/// Checks JSONL `bytes` (named `file` in diagnostics). Never fails: every
/// problem becomes a [`Diagnostic`]. Accepts CRLF line ends, a UTF-8 BOM and
/// blank lines.
pub fn parse_jsonl(file: &str, bytes: &[u8], format: Option<Format>) -> ParsedFile {
    parse_jsonl_with(file, bytes, format, &CheckOptions::default())
}

/// [`parse_jsonl`] with the rules of the chat template the data is for.
pub fn parse_jsonl_with(
    file: &str,
    bytes: &[u8],
    format: Option<Format>,
    options: &CheckOptions,
) -> ParsedFile {
    let mut parsed = ParsedFile {
        file: file.to_string(),
        format,
        counts: ReportCounts {
            files: 1,
            ..ReportCounts::default()
        },
        ..ParsedFile::default()
    };
    let forced = format.is_some();
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    // Unknown field name -> first line it appeared on.
    let mut unknown_fields: Vec<(String, usize)> = Vec::new();
    // Canonical example text -> first line, for exact duplicates.
    let mut seen: HashMap<String, usize> = HashMap::new();

    let mut lines = bytes.split(|b| *b == b'\n').peekable();
    let mut line_no = 0;
    while let Some(raw) = lines.next() {
        // A final newline does not start one more (empty) line.
        if raw.is_empty() && lines.peek().is_none() {
            break;
        }
        line_no += 1;
        parsed.counts.lines += 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            parsed.counts.blank_lines += 1;
            continue;
        }
        let Some(example) = parse_line(
            file,
            line_no,
            raw,
            forced,
            options,
            &mut parsed,
            &mut unknown_fields,
        ) else {
            continue;
        };
        let key = serde_json::to_string(&example).unwrap_or_default();
        if let Some(&first) = seen.get(&key) {
            parsed.counts.duplicates += 1;
            parsed.diagnostics.push(
                Diagnostic::warning(
                    file,
                    line_no,
                    DiagnosticKind::Duplicate,
                    format!("exact duplicate of line {first}"),
                )
                .related(first),
            );
        } else {
            seen.insert(key, line_no);
        }
        parsed.counts.examples += 1;
        *parsed
            .counts
            .per_format
            .entry(example.format())
            .or_default() += 1;
        let calls = example.tool_call_count();
        if calls > 0 || !example.tools().is_empty() {
            parsed.counts.tool_examples += 1;
            parsed.counts.tool_calls += calls;
        }
        if let Example::Preference { label, .. } = example {
            if label {
                parsed.counts.desirable += 1;
            } else {
                parsed.counts.undesirable += 1;
            }
        }
        parsed.examples.push(SourceExample {
            source: Source {
                file: file.to_string(),
                line: line_no,
            },
            example,
        });
    }

    if !unknown_fields.is_empty() {
        let names: BTreeSet<&str> = unknown_fields.iter().map(|(n, _)| n.as_str()).collect();
        let names = names.into_iter().collect::<Vec<_>>().join(", ");
        let first_line = unknown_fields.iter().map(|(_, l)| *l).min().unwrap_or(0);
        tracing::warn!(file, fields = %names, "ignoring fields no format uses");
        parsed.diagnostics.push(Diagnostic::warning(
            file,
            first_line,
            DiagnosticKind::UnknownFields,
            format!("ignored fields: {names}"),
        ));
    }
    if parsed.examples.is_empty() && !parsed.diagnostics.iter().any(Diagnostic::is_error) {
        parsed.diagnostics.push(Diagnostic::error(
            file,
            0,
            DiagnosticKind::EmptyFile,
            "the file holds no example",
        ));
    }
    parsed.diagnostics.sort_by_key(|d| d.line);
    parsed
}

/// Parses one non-blank line; pushes diagnostics into `parsed`.
fn parse_line(
    file: &str,
    line: usize,
    raw: &[u8],
    forced: bool,
    options: &CheckOptions,
    parsed: &mut ParsedFile,
    unknown_fields: &mut Vec<(String, usize)>,
) -> Option<Example> {
    if raw.len() > MAX_LINE_BYTES {
        parsed.diagnostics.push(
            Diagnostic::error(
                file,
                line,
                DiagnosticKind::LineTooLong,
                format!(
                    "the line is {}, longer than the {} a line may hold: one example is at \
                     most data.max_seq_len tokens, so split long documents into several examples",
                    megabytes(raw.len()),
                    megabytes(MAX_LINE_BYTES)
                ),
            )
            .expected_got(
                format!("at most {MAX_LINE_BYTES} bytes"),
                format!("{} bytes", raw.len()),
            ),
        );
        return None;
    }
    let text = match std::str::from_utf8(raw) {
        Ok(text) => text,
        Err(e) => {
            parsed.diagnostics.push(
                Diagnostic::error(
                    file,
                    line,
                    DiagnosticKind::InvalidUtf8,
                    format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
                )
                .expected_got("UTF-8 text", format!("byte 0x{:02x}", raw[e.valid_up_to()])),
            );
            return None;
        }
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            parsed.diagnostics.push(
                Diagnostic::error(
                    file,
                    line,
                    DiagnosticKind::InvalidJson,
                    format!("invalid JSON: {e}"),
                )
                .expected_got("one JSON object per line", json_error_got(text, &e)),
            );
            return None;
        }
    };
    let Value::Object(object) = value else {
        parsed.diagnostics.push(
            Diagnostic::error(
                file,
                line,
                DiagnosticKind::NotAnObject,
                "each line must be a JSON object",
            )
            .expected_got("object", describe(&value)),
        );
        return None;
    };
    let detected = Format::detect(&object);
    let format = match (parsed.format, detected) {
        (Some(file_format), _) if forced || is_compatible(file_format, detected) => file_format,
        (Some(file_format), Some(line_format)) => {
            parsed.diagnostics.push(
                Diagnostic::error(
                    file,
                    line,
                    DiagnosticKind::FormatMismatch,
                    "this line's format differs from the file's",
                )
                .expected_got(file_format.name(), line_format.name()),
            );
            return None;
        }
        (Some(file_format), None) => file_format,
        (None, Some(line_format)) => {
            parsed.format = Some(line_format);
            line_format
        }
        (None, None) => {
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            parsed.diagnostics.push(
                Diagnostic::error(
                    file,
                    line,
                    DiagnosticKind::UnknownFormat,
                    "no known format fits this object",
                )
                .expected_got(
                    "`messages`, `prompt`+`completion`[+`label`] or `text`",
                    format!("fields {keys:?}"),
                ),
            );
            return None;
        }
    };
    let check = check_object(&object, format, options, file, line);
    for name in check.unknown_fields {
        if !unknown_fields.iter().any(|(n, _)| *n == name) {
            unknown_fields.push((name, line));
        }
    }
    parsed.diagnostics.extend(check.diagnostics);
    check.example
}

/// A line detected as prompt/completion in a preference file is checked as a
/// preference line, so a missing `label` is reported as such; a line with no
/// recognisable field is checked against the file's format.
fn is_compatible(file_format: Format, detected: Option<Format>) -> bool {
    match detected {
        None => true,
        Some(d) if d == file_format => true,
        Some(Format::PromptCompletion) => file_format == Format::Preference,
        Some(_) => false,
    }
}

/// `bytes` as `12.3 MB`.
fn megabytes(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The text around a JSON syntax error, for the diagnostic's "got".
fn json_error_got(text: &str, e: &serde_json::Error) -> String {
    let column = e.column().saturating_sub(1);
    let near: String = text
        .chars()
        .skip(column.saturating_sub(10))
        .take(20)
        .collect();
    format!("{near:?} near column {}", e.column())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bom_crlf_blank_lines() {
        let data = b"\xEF\xBB\xBF{\"text\":\"a\"}\r\n\r\n  \n{\"text\":\"b\"}\r\n";
        let p = parse_jsonl("f", data, None);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        assert_eq!(p.examples.len(), 2);
        assert_eq!(p.examples[1].source.line, 4);
        assert_eq!(p.counts.blank_lines, 2);
        assert_eq!(p.format, Some(Format::Text));
    }

    #[test]
    fn duplicates_point_at_first_line() {
        let data = b"{\"text\":\"a\"}\n{\"text\":\"b\"}\n{ \"text\" : \"a\" }\n";
        let p = parse_jsonl("f", data, None);
        assert_eq!(p.diagnostics.len(), 1);
        let d = &p.diagnostics[0];
        assert_eq!(
            (d.kind, d.line, d.related_line),
            (DiagnosticKind::Duplicate, 3, Some(1))
        );
    }

    #[test]
    fn format_mismatch_and_forced_format() {
        let data = b"{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n";
        let p = parse_jsonl("f", data, None);
        assert_eq!(p.diagnostics[0].kind, DiagnosticKind::FormatMismatch);
        let p = parse_jsonl("f", data, Some(Format::PromptCompletion));
        assert_eq!(p.diagnostics[0].kind, DiagnosticKind::MissingField);
        assert_eq!(p.diagnostics[0].line, 1);
    }

    #[test]
    fn unknown_fields_warn_once() {
        let data = b"{\"text\":\"a\",\"id\":1}\n{\"text\":\"b\",\"id\":2,\"src\":\"x\"}\n";
        let p = parse_jsonl("f", data, None);
        assert_eq!(p.diagnostics.len(), 1);
        assert_eq!(p.diagnostics[0].kind, DiagnosticKind::UnknownFields);
        assert!(p.diagnostics[0].message.contains("id, src"));
        assert_eq!(p.examples.len(), 2);
    }

    #[test]
    fn an_overlong_line_is_refused_without_parsing() {
        let mut data = b"{\"text\":\"a\"}\n{\"text\":\"".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES));
        data.extend(b"\"}\n{\"text\":\"b\"}\n");
        let p = parse_jsonl("f", &data, None);
        assert_eq!(p.examples.len(), 2);
        let d = &p.diagnostics[0];
        assert_eq!((d.line, d.kind), (2, DiagnosticKind::LineTooLong));
        assert!(d
            .to_string()
            .starts_with("f:2: error[line_too_long] the line is 8.0 MB"));
    }

    #[test]
    fn a_file_wide_problem_has_no_line_number() {
        let p = parse_jsonl("f.jsonl", b"\n\n", None);
        assert_eq!(
            p.diagnostics[0].to_string(),
            "f.jsonl: error[empty_file] the file holds no example"
        );
    }

    #[test]
    fn counts_examples_with_tools_and_their_calls() {
        let tool = r#"{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}"#;
        let call = |id: &str| {
            format!(
                r#"{{"id":"{id}","type":"function","function":{{"name":"f","arguments":"{{}}"}}}}"#
            )
        };
        let data = format!(
            "{{\"tools\":[{tool}],\"messages\":[{{\"role\":\"user\",\"content\":\"u\"}},{{\"role\":\"assistant\",\"tool_calls\":[{},{}]}},{{\"role\":\"tool\",\"tool_call_id\":\"a\",\"content\":\"1\"}},{{\"role\":\"tool\",\"tool_call_id\":\"b\",\"content\":\"2\"}},{{\"role\":\"assistant\",\"content\":\"done\"}}]}}\n\
             {{\"tools\":[{tool}],\"messages\":[{{\"role\":\"user\",\"content\":\"u\"}},{{\"role\":\"assistant\",\"tool_calls\":[{}]}}]}}\n\
             {{\"tools\":[{tool}],\"messages\":[{{\"role\":\"user\",\"content\":\"u\"}},{{\"role\":\"assistant\",\"content\":\"no call\"}}]}}\n\
             {{\"messages\":[{{\"role\":\"user\",\"content\":\"u\"}},{{\"role\":\"assistant\",\"content\":\"plain\"}}]}}\n",
            call("a"),
            call("b"),
            call("c")
        );
        let p = parse_jsonl("f", data.as_bytes(), None);
        assert!(p.diagnostics.is_empty(), "{:#?}", p.diagnostics);
        assert_eq!(p.examples.len(), 4);
        assert_eq!((p.counts.tool_examples, p.counts.tool_calls), (3, 3));
        // Mistral v3's rule applies only when asked for.
        let mistral = CheckOptions {
            mistral_call_ids: true,
        };
        let p = parse_jsonl_with("f", data.as_bytes(), None, &mistral);
        let located: Vec<_> = p
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
                (
                    1,
                    DiagnosticKind::InvalidToolCallId,
                    Some("messages[1].tool_calls[1].id")
                ),
                (
                    2,
                    DiagnosticKind::InvalidToolCallId,
                    Some("messages[1].tool_calls[0].id")
                ),
            ]
        );
        assert_eq!((p.counts.tool_examples, p.counts.tool_calls), (1, 0));
    }

    #[test]
    fn invalid_utf8_and_json() {
        let data = b"{\"text\":\"\xff\"}\n{\"text\":\n[1]\n";
        let p = parse_jsonl("f", data, None);
        let kinds: Vec<_> = p.diagnostics.iter().map(|d| (d.line, d.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, DiagnosticKind::InvalidUtf8),
                (2, DiagnosticKind::InvalidJson),
                (3, DiagnosticKind::NotAnObject)
            ]
        );
    }
}
