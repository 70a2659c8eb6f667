//! Located problems found in a dataset, and the report that collects them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::format::Format;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; the example is still usable (or was fixed, e.g. truncated).
    Warning,
    /// The example cannot be used; training refuses a dataset with errors.
    Error,
}

/// A stable code for each kind of problem (serialized in `snake_case`;
/// scripts may match on it, so variants are never renamed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DiagnosticKind {
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The line is not valid JSON.
    InvalidJson,
    /// The line is JSON but not an object.
    NotAnObject,
    /// No known format fits the object's fields.
    UnknownFormat,
    /// The line's format differs from the file's.
    FormatMismatch,
    /// A required field is missing.
    MissingField,
    /// A field is empty (or only whitespace).
    EmptyField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A message role other than system, user, assistant or tool.
    UnknownRole,
    /// A system message that is not the first message.
    SystemNotFirst,
    /// Two assistant turns in a row.
    ConsecutiveAssistant,
    /// Two user turns in a row.
    ConsecutiveUser,
    /// The first turn after the system prompt is not a user turn.
    AssistantFirst,
    /// A conversation with no assistant turn.
    NoAssistantTurn,
    /// A conversation whose last turn is not the assistant's.
    LastTurnNotAssistant,
    /// Fields no format uses (ignored).
    UnknownFields,
    /// Exactly the same example appeared on an earlier line.
    Duplicate,
    /// Longer than the maximum sequence length after tokenization.
    TooLong,
    /// The example has no token to train on (e.g. nothing left after truncation).
    NoTargets,
    /// The chat template failed on this example.
    Template,
    /// The tokenizer failed on this example.
    Tokenization,
    /// The file holds no usable example.
    EmptyFile,
    /// A line longer than any example can be (see [`crate::jsonl::MAX_LINE_BYTES`]).
    LineTooLong,
    /// A tool result with no matching call (by `tool_call_id`, or by order
    /// when results carry no id), or a second result for one call.
    UnmatchedToolResult,
    /// A call to a function the line's `tools` does not define.
    UnknownFunction,
    /// Call arguments that are not a JSON object, or that lack an argument
    /// the function's schema requires.
    InvalidArguments,
    /// A `tools` entry that is not a function with a JSON-schema object of
    /// parameters.
    InvalidToolSchema,
    /// A call id two calls of one turn share, or (Mistral v3) one that is not
    /// 9 ASCII letters or digits.
    InvalidToolCallId,
    /// `tool_calls` on a non-assistant message or `tool_call_id` on a
    /// non-tool message.
    MisplacedToolField,
    /// Tool calls without a `tools` list.
    MissingTools,
}

impl DiagnosticKind {
    /// The stable code, as serialized.
    pub fn code(self) -> &'static str {
        match self {
            DiagnosticKind::InvalidUtf8 => "invalid_utf8",
            DiagnosticKind::InvalidJson => "invalid_json",
            DiagnosticKind::NotAnObject => "not_an_object",
            DiagnosticKind::UnknownFormat => "unknown_format",
            DiagnosticKind::FormatMismatch => "format_mismatch",
            DiagnosticKind::MissingField => "missing_field",
            DiagnosticKind::EmptyField => "empty_field",
            DiagnosticKind::WrongType => "wrong_type",
            DiagnosticKind::UnknownRole => "unknown_role",
            DiagnosticKind::SystemNotFirst => "system_not_first",
            DiagnosticKind::ConsecutiveAssistant => "consecutive_assistant",
            DiagnosticKind::ConsecutiveUser => "consecutive_user",
            DiagnosticKind::AssistantFirst => "assistant_first",
            DiagnosticKind::NoAssistantTurn => "no_assistant_turn",
            DiagnosticKind::LastTurnNotAssistant => "last_turn_not_assistant",
            DiagnosticKind::UnknownFields => "unknown_fields",
            DiagnosticKind::Duplicate => "duplicate",
            DiagnosticKind::TooLong => "too_long",
            DiagnosticKind::NoTargets => "no_targets",
            DiagnosticKind::Template => "template",
            DiagnosticKind::Tokenization => "tokenization",
            DiagnosticKind::EmptyFile => "empty_file",
            DiagnosticKind::LineTooLong => "line_too_long",
            DiagnosticKind::UnmatchedToolResult => "unmatched_tool_result",
            DiagnosticKind::UnknownFunction => "unknown_function",
            DiagnosticKind::InvalidArguments => "invalid_arguments",
            DiagnosticKind::InvalidToolSchema => "invalid_tool_schema",
            DiagnosticKind::InvalidToolCallId => "invalid_tool_call_id",
            DiagnosticKind::MisplacedToolField => "misplaced_tool_field",
            DiagnosticKind::MissingTools => "missing_tools",
        }
    }
}

impl fmt::Display for DiagnosticKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One located problem in a dataset file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file, as given.
    pub file: String,
    /// 1-based line number (0 for problems about the whole file).
    pub line: usize,
    /// Path of the field inside the line's object, e.g. `messages[2].role`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Stable code of the problem.
    pub kind: DiagnosticKind,
    /// Error or warning.
    pub severity: Severity,
    /// Human-readable description.
    pub message: String,
    /// What was expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub got: Option<String>,
    /// A related line, e.g. the first occurrence of a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related_line: Option<usize>,
}

impl Diagnostic {
    /// A new error diagnostic.
    pub fn error(
        file: &str,
        line: usize,
        kind: DiagnosticKind,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.to_string(),
            line,
            field: None,
            kind,
            severity: Severity::Error,
            message: message.into(),
            expected: None,
            got: None,
            related_line: None,
        }
    }

    /// A new warning diagnostic.
    pub fn warning(
        file: &str,
        line: usize,
        kind: DiagnosticKind,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, line, kind, message)
        }
    }

    /// Sets the field path.
    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Sets what was expected and what was found.
    #[must_use]
    pub fn expected_got(mut self, expected: impl Into<String>, got: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self.got = Some(got.into());
        self
    }

    /// Sets the related line.
    #[must_use]
    pub fn related(mut self, line: usize) -> Self {
        self.related_line = Some(line);
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line: error[kind] field: message (expected X, got Y)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // Line 0 is the whole file: `file: error[...]`, not `file:0:`.
        if self.line == 0 {
            write!(f, "{}: {severity}[{}]", self.file, self.kind)?;
        } else {
            write!(f, "{}:{}: {severity}[{}]", self.file, self.line, self.kind)?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)?;
        match (&self.expected, &self.got) {
            (Some(e), Some(g)) => write!(f, " (expected {e}, got {g})")?,
            (Some(e), None) => write!(f, " (expected {e})")?,
            _ => {}
        }
        if let Some(line) = self.related_line {
            write!(f, " (see line {line})")?;
        }
        Ok(())
    }
}

/// Counts gathered while reading and encoding a dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportCounts {
    /// Files read.
    pub files: usize,
    /// Lines read, blank ones included.
    pub lines: usize,
    /// Blank lines (skipped).
    pub blank_lines: usize,
    /// Lines that parsed into an example.
    pub examples: usize,
    /// Examples per format.
    pub per_format: BTreeMap<Format, usize>,
    /// Preference examples labelled desirable (`label: true`).
    pub desirable: usize,
    /// Preference examples labelled undesirable (`label: false`).
    pub undesirable: usize,
    /// Examples left out because of their label.
    pub skipped_by_label: usize,
    /// Exact duplicates seen.
    pub duplicates: usize,
    /// Examples truncated to the maximum length.
    pub truncated: usize,
    /// Examples dropped (too long under `drop`, or nothing to train on).
    pub dropped: usize,
    /// Examples kept for training.
    pub kept: usize,
    /// Error diagnostics.
    pub errors: usize,
    /// Warning diagnostics.
    pub warnings: usize,
    /// Readable chat examples that offer tools or call them.
    #[serde(default)]
    pub tool_examples: usize,
    /// Tool calls in readable examples.
    #[serde(default)]
    pub tool_calls: usize,
}

/// Every problem found in one or more files, with counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Problems, in file and line order.
    pub diagnostics: Vec<Diagnostic>,
    /// Counts.
    pub counts: ReportCounts,
}

impl ValidationReport {
    /// True when there is no error (warnings are allowed).
    pub fn is_ok(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The error diagnostics.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// Adds diagnostics, keeping the error/warning counts current.
    pub fn extend(&mut self, diagnostics: impl IntoIterator<Item = Diagnostic>) {
        for d in diagnostics {
            match d.severity {
                Severity::Error => self.counts.errors += 1,
                Severity::Warning => self.counts.warnings += 1,
            }
            self.diagnostics.push(d);
        }
    }

    /// Sorts diagnostics by file, line and field so output is stable.
    pub fn sort(&mut self) {
        self.diagnostics
            .sort_by(|a, b| (&a.file, a.line, &a.field).cmp(&(&b.file, b.line, &b.field)));
    }

    /// Fails with [`DataError::Invalid`](crate::DataError::Invalid) when there are errors.
    pub fn into_result(self) -> crate::Result<ValidationReport> {
        let errors = self.errors().count();
        if errors == 0 {
            return Ok(self);
        }
        let first = self
            .errors()
            .next()
            .map(ToString::to_string)
            .unwrap_or_default();
        Err(crate::DataError::Invalid {
            errors,
            first,
            report: Box::new(self),
        })
    }
}
