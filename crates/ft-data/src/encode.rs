//! From examples to token ids and loss masks, with the over-length policy.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::diagnostic::{Diagnostic, DiagnosticKind, ReportCounts};
use crate::error::{DataError, Result};
use crate::format::{Example, Format};
use crate::jsonl::{Source, SourceExample};
use crate::template::{ChatFormatter, TemplateChoice, Tokenized};
use crate::tokenizer::TextTokenizer;

/// What to do with an example longer than the maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLengthPolicy {
    /// Keep the first `max_len` tokens (a warning per example).
    #[default]
    Truncate,
    /// Leave the example out (a warning per example).
    Drop,
    /// Report an error: the dataset is refused.
    Error,
}

/// Which tokens the loss covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Only assistant turns / completions (and the token closing each).
    #[default]
    Completions,
    /// Every token.
    All,
}

/// Which labelled (preference) examples supervised fine-tuning uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelFilter {
    /// Only `label: true` examples.
    #[default]
    Desirable,
    /// Only `label: false` examples.
    Undesirable,
    /// Both.
    All,
}

impl LabelFilter {
    fn keeps(self, label: bool) -> bool {
        match self {
            LabelFilter::Desirable => label,
            LabelFilter::Undesirable => !label,
            LabelFilter::All => true,
        }
    }
}

/// How examples become tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EncodeOptions {
    /// Maximum tokens per example.
    pub max_len: usize,
    /// What to do with longer examples.
    pub over_length: OverLengthPolicy,
    /// Which tokens the loss covers.
    pub train_on: TrainOn,
    /// Which preference examples to keep.
    pub labels: LabelFilter,
    /// The chat format.
    pub template: TemplateChoice,
    /// Tokenize examples in parallel (rayon).
    pub parallel: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            max_len: 2048,
            over_length: OverLengthPolicy::default(),
            train_on: TrainOn::default(),
            labels: LabelFilter::default(),
            template: TemplateChoice::default(),
            parallel: true,
        }
    }
}

/// An example as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedExample {
    /// Where it came from.
    pub source: Source,
    /// Its format.
    pub format: Format,
    /// The preference label, for preference data.
    pub label: Option<bool>,
    /// Token ids (BOS included when the model uses it).
    pub ids: Vec<u32>,
    /// `mask[t]` is true when token `t` is a loss target (predicted from the
    /// tokens before it). `mask[0]` is always false.
    pub mask: Vec<bool>,
    /// Whether it was cut to the maximum length.
    pub truncated: bool,
}

impl EncodedExample {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there is no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of loss targets.
    pub fn target_count(&self) -> usize {
        self.mask.iter().filter(|m| **m).count()
    }
}

/// The result of encoding many examples.
#[derive(Debug, Clone, Default)]
pub struct EncodedSet {
    /// Examples kept for training, in input order.
    pub examples: Vec<EncodedExample>,
    /// Problems found while encoding.
    pub diagnostics: Vec<Diagnostic>,
    /// Truncated / dropped / skipped / kept counts.
    pub counts: ReportCounts,
}

/// Turns examples into tokens and masks for one tokenizer and options.
#[derive(Debug)]
pub struct Encoder<'t> {
    tokenizer: &'t TextTokenizer,
    formatter: ChatFormatter,
    options: EncodeOptions,
}

impl<'t> Encoder<'t> {
    /// An encoder; fails when the template does not compile or the options
    /// are unusable.
    pub fn new(tokenizer: &'t TextTokenizer, options: EncodeOptions) -> Result<Self> {
        if options.max_len < 2 {
            return Err(DataError::options(format!(
                "max_len must be at least 2 tokens, got {}",
                options.max_len
            )));
        }
        let formatter = ChatFormatter::new(&options.template, tokenizer)?;
        Ok(Encoder {
            tokenizer,
            formatter,
            options,
        })
    }

    /// The options in use.
    pub fn options(&self) -> &EncodeOptions {
        &self.options
    }

    /// The chat formatter in use.
    pub fn formatter(&self) -> &ChatFormatter {
        &self.formatter
    }

    /// The tokenizer in use.
    pub fn tokenizer(&self) -> &TextTokenizer {
        self.tokenizer
    }

    /// Tokens and loss mask of one example, before the length policy.
    pub fn encode(&self, example: &Example) -> Result<Tokenized> {
        let mut out = match example {
            Example::Text { text } => {
                // Plain text may hold pre-formatted chats: special tokens in it count.
                let special = self.tokenizer.special();
                let mut ids = self.tokenizer.encode(text)?;
                if let (true, Some(bos)) = (special.add_bos, special.bos) {
                    if ids.first() != Some(&bos) {
                        ids.insert(0, bos);
                    }
                }
                if let Some(eos) = special.eos {
                    if ids.last() != Some(&eos) {
                        ids.push(eos);
                    }
                }
                let mask = vec![true; ids.len()];
                Tokenized { ids, mask }
            }
            Example::Chat { messages, tools } => {
                self.formatter
                    .encode_chat(self.tokenizer, messages, tools)?
            }
            other => {
                let messages = other
                    .as_messages()
                    .ok_or_else(|| DataError::template("example has no conversation"))?;
                self.formatter.encode(self.tokenizer, &messages)?
            }
        };
        if self.options.train_on == TrainOn::All {
            out.mask.iter_mut().for_each(|m| *m = true);
        }
        // The first token has nothing before it to be predicted from.
        if let Some(first) = out.mask.first_mut() {
            *first = false;
        }
        Ok(out)
    }

    /// Encodes every example (in parallel when enabled), applying the label
    /// filter and the over-length policy; never fails, problems become
    /// diagnostics.
    pub fn encode_all(&self, examples: &[SourceExample]) -> EncodedSet {
        let one = |ex: &SourceExample| self.encode_one(ex);
        let outcomes: Vec<Outcome> = if self.options.parallel {
            examples.par_iter().map(one).collect()
        } else {
            examples.iter().map(one).collect()
        };
        let mut set = EncodedSet::default();
        for outcome in outcomes {
            set.diagnostics.extend(outcome.diagnostic);
            match outcome.kind {
                OutcomeKind::Kept(example) => {
                    set.counts.truncated += usize::from(example.truncated);
                    set.counts.kept += 1;
                    set.examples.push(*example);
                }
                OutcomeKind::Dropped => set.counts.dropped += 1,
                OutcomeKind::SkippedByLabel => set.counts.skipped_by_label += 1,
                OutcomeKind::Failed => {}
            }
        }
        set
    }

    fn encode_one(&self, ex: &SourceExample) -> Outcome {
        let file = ex.source.file.as_str();
        let line = ex.source.line;
        let tokenized = match self.encode(&ex.example) {
            Ok(t) => t,
            Err(e) => {
                let kind = match e {
                    DataError::Template { .. } => DiagnosticKind::Template,
                    _ => DiagnosticKind::Tokenization,
                };
                return Outcome::failed(Diagnostic::error(file, line, kind, e.to_string()));
            }
        };
        let label = match ex.example {
            Example::Preference { label, .. } => Some(label),
            _ => None,
        };
        let max = self.options.max_len;
        let len = tokenized.ids.len();
        let mut diagnostic = None;
        let mut encoded = EncodedExample {
            source: ex.source.clone(),
            format: ex.example.format(),
            label,
            ids: tokenized.ids,
            mask: tokenized.mask,
            truncated: false,
        };
        if len > max {
            let too_long = |d: Diagnostic| {
                d.expected_got(format!("at most {max} tokens"), format!("{len} tokens"))
            };
            match self.options.over_length {
                OverLengthPolicy::Error => {
                    return Outcome::failed(too_long(Diagnostic::error(
                        file,
                        line,
                        DiagnosticKind::TooLong,
                        "example is longer than max_len",
                    )));
                }
                OverLengthPolicy::Drop => {
                    return Outcome {
                        diagnostic: Some(too_long(Diagnostic::warning(
                            file,
                            line,
                            DiagnosticKind::TooLong,
                            "example is longer than max_len; dropped",
                        ))),
                        kind: OutcomeKind::Dropped,
                    };
                }
                OverLengthPolicy::Truncate => {
                    encoded.ids.truncate(max);
                    encoded.mask.truncate(max);
                    encoded.truncated = true;
                    diagnostic = Some(too_long(Diagnostic::warning(
                        file,
                        line,
                        DiagnosticKind::TooLong,
                        format!("example is longer than max_len; truncated to {max} tokens"),
                    )));
                }
            }
        }
        if encoded.target_count() == 0 {
            let why = if encoded.truncated {
                "no token to train on is left after truncation; dropped"
            } else {
                "the example has no token to train on; dropped"
            };
            return Outcome {
                diagnostic: Some(Diagnostic::warning(
                    file,
                    line,
                    DiagnosticKind::NoTargets,
                    why,
                )),
                kind: OutcomeKind::Dropped,
            };
        }
        if let Some(label) = label {
            if !self.options.labels.keeps(label) {
                return Outcome {
                    diagnostic,
                    kind: OutcomeKind::SkippedByLabel,
                };
            }
        }
        Outcome {
            diagnostic,
            kind: OutcomeKind::Kept(Box::new(encoded)),
        }
    }
}

struct Outcome {
    diagnostic: Option<Diagnostic>,
    kind: OutcomeKind,
}

impl Outcome {
    fn failed(diagnostic: Diagnostic) -> Self {
        Outcome {
            diagnostic: Some(diagnostic),
            kind: OutcomeKind::Failed,
        }
    }
}

enum OutcomeKind {
    Kept(Box<EncodedExample>),
    Dropped,
    SkippedByLabel,
    Failed,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::{Message, Role};
    use crate::test_support::tiny_spm;

    fn source(line: usize, example: Example) -> SourceExample {
        SourceExample {
            source: Source {
                file: "f".into(),
                line,
            },
            example,
        }
    }

    #[test]
    fn text_trains_everything_but_the_first_token() {
        let tok = tiny_spm();
        let enc = Encoder::new(&tok, EncodeOptions::default()).unwrap();
        let t = enc
            .encode(&Example::Text {
                text: "hi ab".into(),
            })
            .unwrap();
        assert_eq!(t.ids.first(), Some(&1));
        assert_eq!(t.ids.last(), Some(&2));
        assert!(!t.mask[0] && t.mask[1..].iter().all(|m| *m));
        // Pre-formatted text that already has BOS/EOS does not get them twice.
        let again = enc
            .encode(&Example::Text {
                text: "<s>hi ab</s>".into(),
            })
            .unwrap();
        assert_eq!(again.ids, t.ids);
    }

    #[test]
    fn policies_and_labels() {
        let tok = tiny_spm();
        let long = Example::PromptCompletion {
            prompt: "hi".into(),
            completion: "ab ".repeat(20),
        };
        let examples = vec![
            source(1, long.clone()),
            source(
                2,
                Example::Preference {
                    prompt: "hi".into(),
                    completion: "ab".into(),
                    label: false,
                },
            ),
            source(
                3,
                Example::Chat {
                    messages: vec![
                        Message::new(Role::User, "hi"),
                        Message::new(Role::Assistant, "ab"),
                    ],
                    tools: Vec::new(),
                },
            ),
        ];
        let opts = |over_length| EncodeOptions {
            max_len: 10,
            over_length,
            ..EncodeOptions::default()
        };
        let set = Encoder::new(&tok, opts(OverLengthPolicy::Truncate))
            .unwrap()
            .encode_all(&examples);
        assert_eq!(
            (
                set.counts.kept,
                set.counts.truncated,
                set.counts.skipped_by_label
            ),
            (2, 1, 1)
        );
        assert_eq!(set.examples[0].len(), 10);
        assert_eq!(set.diagnostics[0].kind, DiagnosticKind::TooLong);
        assert!(!set.diagnostics[0].is_error());

        let set = Encoder::new(&tok, opts(OverLengthPolicy::Drop))
            .unwrap()
            .encode_all(&examples);
        assert_eq!((set.counts.kept, set.counts.dropped), (1, 1));

        let set = Encoder::new(&tok, opts(OverLengthPolicy::Error))
            .unwrap()
            .encode_all(&examples);
        assert!(set.diagnostics[0].is_error());
        assert_eq!(set.diagnostics[0].line, 1);

        let all = EncodeOptions {
            labels: LabelFilter::All,
            parallel: false,
            ..opts(OverLengthPolicy::Drop)
        };
        let set = Encoder::new(&tok, all).unwrap().encode_all(&examples);
        assert_eq!(set.counts.kept, 2);
    }

    #[test]
    fn train_on_all() {
        let tok = tiny_spm();
        let ex = Example::PromptCompletion {
            prompt: "hi".into(),
            completion: "ab".into(),
        };
        let enc = Encoder::new(&tok, EncodeOptions::default()).unwrap();
        let completions = enc.encode(&ex).unwrap();
        let enc = Encoder::new(
            &tok,
            EncodeOptions {
                train_on: TrainOn::All,
                ..EncodeOptions::default()
            },
        )
        .unwrap();
        let all = enc.encode(&ex).unwrap();
        assert_eq!(completions.ids, all.ids);
        assert!(
            completions.mask.iter().filter(|m| **m).count()
                < all.mask.iter().filter(|m| **m).count()
        );
        assert!(!all.mask[0] && all.mask[1..].iter().all(|m| *m));
    }
}
