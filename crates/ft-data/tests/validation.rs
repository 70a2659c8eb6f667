//! A file with many kinds of defects yields exactly one located diagnostic
//! per defect, and the default model's tokenizer flags the over-long one.

#![allow(clippy::unwrap_used)]

use ft_data::{
    check_structure, validate, DataOptions, Dataset, DiagnosticKind as K, EncodeOptions, Format,
    OverLengthPolicy, Severity, ValidationReport,
};

mod common;

use common::{default_tokenizer, fixture};

/// The structural defects of `defects.jsonl`: (line, kind, field, severity).
fn expected_structural() -> Vec<(usize, K, Option<&'static str>, Severity)> {
    use Severity::{Error as E, Warning as W};
    vec![
        (3, K::InvalidJson, None, E),
        (4, K::InvalidUtf8, None, E),
        (5, K::NotAnObject, None, E),
        (6, K::WrongType, Some("messages"), E),
        (7, K::EmptyField, Some("messages"), E),
        (8, K::UnknownRole, Some("messages[1].role"), E),
        (9, K::MissingField, Some("messages[1].content"), E),
        (10, K::EmptyField, Some("messages[0].content"), E),
        (11, K::WrongType, Some("messages[1].content"), E),
        (12, K::ConsecutiveAssistant, Some("messages[2].role"), E),
        (13, K::NoAssistantTurn, Some("messages"), E),
        (14, K::LastTurnNotAssistant, Some("messages[2].role"), E),
        (15, K::SystemNotFirst, Some("messages[1].role"), E),
        (16, K::Duplicate, None, W),
        (17, K::UnknownFields, None, W),
        (19, K::FormatMismatch, None, E),
        (20, K::MissingField, Some("messages"), E),
        (21, K::WrongType, Some("messages[0]"), E),
        (22, K::WrongType, Some("messages[0].role"), E),
    ]
}

fn assert_matches(report: &ValidationReport, expected: &[(usize, K, Option<&str>, Severity)]) {
    let got: Vec<(usize, K, Option<&str>, Severity)> = report
        .diagnostics
        .iter()
        .map(|d| (d.line, d.kind, d.field.as_deref(), d.severity))
        .collect();
    let rendered: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(got, expected, "diagnostics:\n{}", rendered.join("\n"));
    for d in &report.diagnostics {
        assert!(d.file.ends_with(".jsonl"), "{d}");
        assert!(d.line > 0, "{d}");
    }
}

#[test]
fn one_located_message_per_structural_defect() {
    let report = check_structure(&[fixture("defects.jsonl")], None).unwrap();
    assert_matches(&report, &expected_structural());
    let c = &report.counts;
    assert_eq!((c.lines, c.blank_lines), (25, 2));
    // Lines 1, 16, 17, 18, 23 and 25 are usable examples.
    assert_eq!(c.examples, 6);
    assert_eq!(c.per_format.get(&Format::Chat), Some(&6));
    assert_eq!((c.errors, c.warnings), (17, 2));

    // Details that make the messages useful.
    let find = |line| report.diagnostics.iter().find(|d| d.line == line).unwrap();
    assert_eq!(find(16).related_line, Some(1));
    assert!(find(17).message.contains("id") && find(17).message.contains("source"));
    assert_eq!(find(8).got.as_deref(), Some("\"bot\""));
    assert_eq!(find(11).got.as_deref(), Some("number 42"));
    assert_eq!(find(19).expected.as_deref(), Some("chat"));
    assert_eq!(find(19).got.as_deref(), Some("prompt_completion"));
    assert!(!report.is_ok());

    // Machine-readable output for `--json`.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["diagnostics"][0]["kind"], "invalid_json");
    assert_eq!(json["diagnostics"][5]["field"], "messages[1].role");
}

#[test]
fn preference_defects() {
    let report = check_structure(&[fixture("defects_preference.jsonl")], None).unwrap();
    let expected = vec![
        (3, K::WrongType, Some("label"), Severity::Error),
        (4, K::MissingField, Some("label"), Severity::Error),
        (5, K::EmptyField, Some("prompt"), Severity::Error),
        (6, K::WrongType, Some("completion"), Severity::Error),
    ];
    assert_matches(&report, &expected);
    assert_eq!((report.counts.desirable, report.counts.undesirable), (1, 1));
}

#[test]
fn tokenized_validation_flags_over_long_examples() {
    let Some(tokenizer) = default_tokenizer() else {
        return;
    };
    let options = DataOptions {
        format: None,
        encode: EncodeOptions {
            max_len: 256,
            over_length: OverLengthPolicy::Error,
            ..EncodeOptions::default()
        },
    };
    let report = validate(&[fixture("defects.jsonl")], &tokenizer, &options).unwrap();
    let mut expected = expected_structural();
    expected.push((23, K::TooLong, None, Severity::Error));
    assert_matches(&report, &expected);
    let too_long = report
        .diagnostics
        .iter()
        .find(|d| d.kind == K::TooLong)
        .unwrap();
    assert_eq!(too_long.expected.as_deref(), Some("at most 256 tokens"));

    // Refused as a training set, with the full report attached.
    let err = Dataset::load(&[fixture("defects.jsonl")], &tokenizer, &options).unwrap_err();
    match err {
        ft_data::DataError::Invalid { errors, report, .. } => {
            assert_eq!(errors, 18);
            assert_eq!(report.diagnostics.len(), 20);
        }
        other => panic!("unexpected error {other}"),
    }

    // Under `truncate` the long example is kept, cut to 256 tokens.
    let truncate = DataOptions {
        encode: EncodeOptions {
            over_length: OverLengthPolicy::Truncate,
            ..options.encode.clone()
        },
        ..options.clone()
    };
    let data = Dataset::prepare(&[fixture("defects.jsonl")], &tokenizer, &truncate).unwrap();
    assert_eq!(data.report.counts.truncated, 1);
    assert_eq!(data.examples.len(), 6);
    assert_eq!(data.stats.max_len, 256);
    assert!(data.examples.iter().all(|e| e.mask.iter().any(|m| *m)));
}
