//! Dataset formats and the examples they hold.
//!
//! One JSON object per line, in one of four shapes:
//!
//! | format | fields |
//! |---|---|
//! | [`Format::Chat`] | `{"messages": [{"role": "system"\|"user"\|"assistant", "content": "…"}, …]}` |
//! | [`Format::PromptCompletion`] | `{"prompt": "…", "completion": "…"}` |
//! | [`Format::Text`] | `{"text": "…"}` |
//! | [`Format::Preference`] | `{"prompt": "…", "completion": "…", "label": true\|false}` (KTO-style) |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, DiagnosticKind};

/// The shape of the objects in a dataset file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"messages": [...]}`
    Chat,
    /// `{"prompt", "completion"}`
    PromptCompletion,
    /// `{"text"}`
    Text,
    /// `{"prompt", "completion", "label": bool}`
    Preference,
}

impl Format {
    /// The name used in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::Chat => "chat",
            Format::PromptCompletion => "prompt_completion",
            Format::Text => "text",
            Format::Preference => "preference",
        }
    }

    /// The fields this format reads.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Format::Chat => &["messages"],
            Format::PromptCompletion => &["prompt", "completion"],
            Format::Text => &["text"],
            Format::Preference => &["prompt", "completion", "label"],
        }
    }

    /// Guesses the format from an object's keys, or `None` when no format fits.
    pub fn detect(object: &Map<String, Value>) -> Option<Format> {
        if object.contains_key("messages") {
            Some(Format::Chat)
        } else if object.contains_key("label")
            && (object.contains_key("prompt") || object.contains_key("completion"))
        {
            Some(Format::Preference)
        } else if object.contains_key("prompt") || object.contains_key("completion") {
            Some(Format::PromptCompletion)
        } else if object.contains_key("text") {
            Some(Format::Text)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = crate::DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chat" | "messages" => Ok(Format::Chat),
            "prompt_completion" | "prompt-completion" | "completion" | "completions" => {
                Ok(Format::PromptCompletion)
            }
            "text" => Ok(Format::Text),
            "preference" | "kto" => Ok(Format::Preference),
            other => Err(crate::DataError::options(format!(
                "unknown format {other:?} (expected chat, prompt_completion, text or preference)"
            ))),
        }
    }
}

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The human turn.
    User,
    /// The model turn (what training targets).
    Assistant,
}

impl Role {
    /// The role's name as it appears in data and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One training example, as read from a line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum Example {
    /// A conversation.
    Chat {
        /// The messages, in order.
        messages: Vec<Message>,
    },
    /// A prompt and the completion to learn.
    PromptCompletion {
        /// The prompt (not trained on by default).
        prompt: String,
        /// The completion (trained on).
        completion: String,
    },
    /// Plain text (every token trained on).
    Text {
        /// The text.
        text: String,
    },
    /// A prompt/completion pair labelled desirable or not.
    Preference {
        /// The prompt.
        prompt: String,
        /// The completion.
        completion: String,
        /// `true` for a desirable completion.
        label: bool,
    },
}

impl Example {
    /// The example's format.
    pub fn format(&self) -> Format {
        match self {
            Example::Chat { .. } => Format::Chat,
            Example::PromptCompletion { .. } => Format::PromptCompletion,
            Example::Text { .. } => Format::Text,
            Example::Preference { .. } => Format::Preference,
        }
    }

    /// The example as a conversation, for formats that have one (chat,
    /// prompt/completion and preference); `None` for plain text.
    pub fn as_messages(&self) -> Option<Vec<Message>> {
        match self {
            Example::Chat { messages } => Some(messages.clone()),
            Example::PromptCompletion { prompt, completion }
            | Example::Preference {
                prompt, completion, ..
            } => Some(vec![
                Message::new(Role::User, prompt.clone()),
                Message::new(Role::Assistant, completion.clone()),
            ]),
            Example::Text { .. } => None,
        }
    }
}

/// The outcome of checking one JSON object against a format.
pub(crate) struct ObjectCheck {
    /// The example, when the object has no error.
    pub example: Option<Example>,
    /// Problems found (errors and warnings).
    pub diagnostics: Vec<Diagnostic>,
    /// Paths of fields no format uses (reported once per file by the caller).
    pub unknown_fields: Vec<String>,
}

/// Where diagnostics for one line go.
struct LineSink<'a> {
    file: &'a str,
    line: usize,
    diagnostics: Vec<Diagnostic>,
}

impl LineSink<'_> {
    fn error(
        &mut self,
        kind: DiagnosticKind,
        field: &str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.diagnostics
            .push(Diagnostic::error(self.file, self.line, kind, message).field(field));
        let last = self.diagnostics.len() - 1;
        &mut self.diagnostics[last]
    }

    fn warning(&mut self, kind: DiagnosticKind, field: &str, message: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::warning(self.file, self.line, kind, message).field(field));
    }

    fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// A JSON value's type name with a short preview, for "got …" texts.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => {
            let preview: String = s.chars().take(24).collect();
            let ellipsis = if s.chars().count() > 24 { "…" } else { "" };
            format!("string {preview:?}{ellipsis}")
        }
        Value::Array(a) => format!("array of {}", a.len()),
        Value::Object(_) => "object".into(),
    }
}

/// Reads a required, non-empty string field.
fn string_field(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
    sink: &mut LineSink<'_>,
) -> Option<String> {
    match object.get(key) {
        None => {
            sink.error(
                DiagnosticKind::MissingField,
                path,
                format!("missing field `{key}`"),
            )
            .expected = Some("string".into());
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            let d = sink.error(
                DiagnosticKind::EmptyField,
                path,
                format!("`{key}` is empty"),
            );
            d.expected = Some("non-empty string".into());
            d.got = Some(describe(&Value::String(s.clone())));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            let d = sink.error(
                DiagnosticKind::WrongType,
                path,
                format!("`{key}` must be a string"),
            );
            d.expected = Some("string".into());
            d.got = Some(describe(other));
            None
        }
    }
}

/// Checks `object` as `format`, reporting every problem on the line.
pub(crate) fn check_object(
    object: &Map<String, Value>,
    format: Format,
    file: &str,
    line: usize,
) -> ObjectCheck {
    let mut sink = LineSink {
        file,
        line,
        diagnostics: Vec::new(),
    };
    let mut unknown_fields: Vec<String> = object
        .keys()
        .filter(|k| !format.fields().contains(&k.as_str()))
        .cloned()
        .collect();

    let example = match format {
        Format::Text => {
            string_field(object, "text", "text", &mut sink).map(|text| Example::Text { text })
        }
        Format::PromptCompletion => {
            let prompt = string_field(object, "prompt", "prompt", &mut sink);
            let completion = string_field(object, "completion", "completion", &mut sink);
            prompt
                .zip(completion)
                .map(|(prompt, completion)| Example::PromptCompletion { prompt, completion })
        }
        Format::Preference => {
            let prompt = string_field(object, "prompt", "prompt", &mut sink);
            let completion = string_field(object, "completion", "completion", &mut sink);
            let label = match object.get("label") {
                None => {
                    sink.error(
                        DiagnosticKind::MissingField,
                        "label",
                        "missing field `label`",
                    )
                    .expected = Some("true or false".into());
                    None
                }
                Some(Value::Bool(b)) => Some(*b),
                Some(other) => {
                    let d = sink.error(
                        DiagnosticKind::WrongType,
                        "label",
                        "`label` must be a boolean",
                    );
                    d.expected = Some("true or false".into());
                    d.got = Some(describe(other));
                    None
                }
            };
            match (prompt, completion, label) {
                (Some(prompt), Some(completion), Some(label)) => Some(Example::Preference {
                    prompt,
                    completion,
                    label,
                }),
                _ => None,
            }
        }
        Format::Chat => check_messages(object, &mut sink, &mut unknown_fields)
            .map(|messages| Example::Chat { messages }),
    };
    let example = if sink.has_errors() { None } else { example };
    ObjectCheck {
        example,
        diagnostics: sink.diagnostics,
        unknown_fields,
    }
}

fn check_messages(
    object: &Map<String, Value>,
    sink: &mut LineSink<'_>,
    unknown_fields: &mut Vec<String>,
) -> Option<Vec<Message>> {
    let items = match object.get("messages") {
        None => {
            sink.error(
                DiagnosticKind::MissingField,
                "messages",
                "missing field `messages`",
            )
            .expected = Some("array of messages".into());
            return None;
        }
        Some(Value::Array(items)) if items.is_empty() => {
            sink.error(
                DiagnosticKind::EmptyField,
                "messages",
                "`messages` is empty",
            )
            .expected = Some("at least one user and one assistant message".into());
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            let d = sink.error(
                DiagnosticKind::WrongType,
                "messages",
                "`messages` must be an array",
            );
            d.expected = Some("array of messages".into());
            d.got = Some(describe(other));
            return None;
        }
    };

    // Parse every message first (reporting each problem), then check the order
    // of the roles that could be read.
    let mut messages = Vec::with_capacity(items.len());
    let mut roles: Vec<Option<Role>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("messages[{i}]");
        let Value::Object(msg) = item else {
            let d = sink.error(
                DiagnosticKind::WrongType,
                &path,
                "a message must be an object",
            );
            d.expected = Some("object with `role` and `content`".into());
            d.got = Some(describe(item));
            roles.push(None);
            continue;
        };
        for key in msg.keys() {
            if key != "role" && key != "content" {
                let name = format!("messages[].{key}");
                if !unknown_fields.contains(&name) {
                    unknown_fields.push(name);
                }
            }
        }
        let role_path = format!("{path}.role");
        let role = match msg.get("role") {
            None => {
                sink.error(
                    DiagnosticKind::MissingField,
                    &role_path,
                    "missing field `role`",
                )
                .expected = Some("\"system\", \"user\" or \"assistant\"".into());
                None
            }
            Some(Value::String(s)) => match s.as_str() {
                "system" => Some(Role::System),
                "user" => Some(Role::User),
                "assistant" => Some(Role::Assistant),
                other => {
                    let d = sink.error(DiagnosticKind::UnknownRole, &role_path, "unknown role");
                    d.expected = Some("\"system\", \"user\" or \"assistant\"".into());
                    d.got = Some(format!("{other:?}"));
                    None
                }
            },
            Some(other) => {
                let d = sink.error(
                    DiagnosticKind::WrongType,
                    &role_path,
                    "`role` must be a string",
                );
                d.expected = Some("\"system\", \"user\" or \"assistant\"".into());
                d.got = Some(describe(other));
                None
            }
        };
        roles.push(role);
        let content = string_field(msg, "content", &format!("{path}.content"), sink);
        if let (Some(role), Some(content)) = (role, content) {
            messages.push(Message { role, content });
        }
    }
    check_role_order(&roles, sink);
    (messages.len() == items.len()).then_some(messages)
}

fn check_role_order(roles: &[Option<Role>], sink: &mut LineSink<'_>) {
    if roles.iter().any(Option::is_none) {
        // Some message is already in error; order checks on a partial list would mislead.
        return;
    }
    let role_path = |i: usize| format!("messages[{i}].role");
    let mut previous: Option<Role> = None;
    let mut first_turn_checked = false;
    for (i, role) in roles.iter().enumerate() {
        let Some(role) = *role else { continue };
        match role {
            Role::System if i > 0 => {
                let d = sink.error(
                    DiagnosticKind::SystemNotFirst,
                    &role_path(i),
                    "a system message must be the first message",
                );
                d.expected = Some("\"user\" or \"assistant\"".into());
                d.got = Some("\"system\"".into());
            }
            Role::Assistant if previous == Some(Role::Assistant) => {
                let d = sink.error(
                    DiagnosticKind::ConsecutiveAssistant,
                    &role_path(i),
                    "two assistant turns in a row",
                );
                d.expected = Some("\"user\"".into());
                d.got = Some("\"assistant\"".into());
            }
            Role::User if previous == Some(Role::User) => sink.warning(
                DiagnosticKind::ConsecutiveUser,
                &role_path(i),
                "two user turns in a row (many chat templates refuse this)",
            ),
            _ => {}
        }
        if role != Role::System && !first_turn_checked {
            first_turn_checked = true;
            if role == Role::Assistant {
                sink.warning(
                    DiagnosticKind::AssistantFirst,
                    &role_path(i),
                    "the conversation starts with an assistant turn, not a user turn",
                );
            }
        }
        previous = Some(role);
    }
    let known: Vec<(usize, Role)> = roles
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect();
    if !known.iter().any(|(_, r)| *r == Role::Assistant) {
        let d = sink.error(
            DiagnosticKind::NoAssistantTurn,
            "messages",
            "the conversation has no assistant turn to learn from",
        );
        d.expected = Some("at least one \"assistant\" message".into());
    } else if let Some((i, last)) = known.last() {
        if *last != Role::Assistant {
            let d = sink.error(
                DiagnosticKind::LastTurnNotAssistant,
                &role_path(*i),
                "the conversation must end with an assistant turn",
            );
            d.expected = Some("\"assistant\"".into());
            d.got = Some(format!("{:?}", last.as_str()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// ft-config names the formats a config may choose and documents their
    /// fields; the formats and their fields are this module's. They stay one.
    #[test]
    fn the_config_formats_are_these_formats() {
        let formats = [
            Format::Chat,
            Format::PromptCompletion,
            Format::Text,
            Format::Preference,
        ];
        let names: Vec<&str> = ft_config::DataFormat::NAMES
            .iter()
            .copied()
            .filter(|name| *name != "auto")
            .collect();
        let ours: Vec<&str> = formats.iter().map(|format| format.name()).collect();
        assert_eq!(names, ours);
        let config_source = include_str!("../../ft-config/src/values.rs");
        for format in formats {
            assert_eq!(format.name().parse::<Format>().unwrap(), format);
            let fields = format
                .fields()
                .iter()
                .map(|field| format!("\"{field}\""))
                .collect::<Vec<_>>()
                .join(", ");
            assert!(
                config_source.contains(&format!("`{{{fields}")),
                "ft-config's DataFormat docs should list {fields} for {format}"
            );
        }
    }

    fn check(json: &str, format: Format) -> ObjectCheck {
        let Value::Object(o) = serde_json::from_str(json).unwrap() else {
            panic!("not an object")
        };
        check_object(&o, format, "f.jsonl", 1)
    }

    fn kinds(c: &ObjectCheck) -> Vec<(DiagnosticKind, Option<String>)> {
        c.diagnostics
            .iter()
            .map(|d| (d.kind, d.field.clone()))
            .collect()
    }

    #[test]
    fn detects_formats() {
        let detect = |s: &str| {
            let Value::Object(o) = serde_json::from_str(s).unwrap() else {
                panic!()
            };
            Format::detect(&o)
        };
        assert_eq!(detect(r#"{"messages":[]}"#), Some(Format::Chat));
        assert_eq!(
            detect(r#"{"prompt":"a","completion":"b"}"#),
            Some(Format::PromptCompletion)
        );
        assert_eq!(
            detect(r#"{"prompt":"a","completion":"b","label":true}"#),
            Some(Format::Preference)
        );
        assert_eq!(detect(r#"{"text":"a"}"#), Some(Format::Text));
        assert_eq!(detect(r#"{"foo":"a"}"#), None);
    }

    #[test]
    fn valid_chat() {
        let c = check(
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"}],"id":3}"#,
            Format::Chat,
        );
        assert!(c.diagnostics.is_empty());
        assert_eq!(c.unknown_fields, vec!["id".to_string()]);
        assert!(matches!(c.example, Some(Example::Chat { ref messages }) if messages.len() == 3));
    }

    #[test]
    fn reports_every_message_problem() {
        let c = check(
            r#"{"messages":[{"role":"user","content":""},{"role":"bot","content":"x"},{"role":"assistant"},{"content":1}]}"#,
            Format::Chat,
        );
        assert!(c.example.is_none());
        let k = kinds(&c);
        assert!(k.contains(&(
            DiagnosticKind::EmptyField,
            Some("messages[0].content".into())
        )));
        assert!(k.contains(&(DiagnosticKind::UnknownRole, Some("messages[1].role".into()))));
        assert!(k.contains(&(
            DiagnosticKind::MissingField,
            Some("messages[2].content".into())
        )));
        assert!(k.contains(&(
            DiagnosticKind::MissingField,
            Some("messages[3].role".into())
        )));
        assert!(k.contains(&(
            DiagnosticKind::WrongType,
            Some("messages[3].content".into())
        )));
    }

    #[test]
    fn role_order() {
        let c = check(
            r#"{"messages":[{"role":"user","content":"u"},{"role":"system","content":"s"},{"role":"assistant","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"u"}]}"#,
            Format::Chat,
        );
        let k: Vec<_> = kinds(&c).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            k,
            vec![
                DiagnosticKind::SystemNotFirst,
                DiagnosticKind::ConsecutiveAssistant,
                DiagnosticKind::LastTurnNotAssistant
            ]
        );
        let c = check(
            r#"{"messages":[{"role":"user","content":"u"}]}"#,
            Format::Chat,
        );
        assert_eq!(
            kinds(&c),
            vec![(DiagnosticKind::NoAssistantTurn, Some("messages".into()))]
        );
    }

    #[test]
    fn preference_label_types() {
        let c = check(
            r#"{"prompt":"p","completion":"c","label":"yes"}"#,
            Format::Preference,
        );
        assert_eq!(
            kinds(&c),
            vec![(DiagnosticKind::WrongType, Some("label".into()))]
        );
        assert_eq!(c.diagnostics[0].got.as_deref(), Some("string \"yes\""));
        let c = check(
            r#"{"prompt":"p","completion":"c","label":false}"#,
            Format::Preference,
        );
        assert_eq!(
            c.example,
            Some(Example::Preference {
                prompt: "p".into(),
                completion: "c".into(),
                label: false
            })
        );
    }
}
