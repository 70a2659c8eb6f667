//! Dataset formats and the examples they hold.
//!
//! One JSON object per line, in one of four shapes:
//!
//! | format | fields |
//! |---|---|
//! | [`Format::Chat`] | `{"messages": [{"role": "system"\|"user"\|"assistant"\|"tool", "content": "…"}, …], "tools": […]}` |
//! | [`Format::PromptCompletion`] | `{"prompt": "…", "completion": "…"}` |
//! | [`Format::Text`] | `{"text": "…"}` |
//! | [`Format::Preference`] | `{"prompt": "…", "completion": "…", "label": true\|false}` (KTO-style) |
//!
//! Chat lines may carry function calling in the OpenAI / Hugging Face shape:
//! a top-level `tools` list of JSON-schema function definitions, assistant
//! messages with `tool_calls`, and `tool` messages holding the results (see
//! [`ToolCall`], [`ToolSpec`] and docs/data-formats.md, "Tool calls").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, DiagnosticKind};

mod tool_use;
mod tools;
use tool_use::*;
use tools::*;
pub use tools::{ToolCall, ToolSpec};

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
    /// The result of a tool call (never trained on).
    Tool,
}

impl Role {
    /// The role's name as it appears in data and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said (empty for an assistant turn that only calls tools).
    pub content: String,
    /// The functions an assistant turn calls, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a tool result: the function's name (any role may carry a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// What checking a line needs beyond its format: rules of the chat template
/// the data is meant for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Tool call ids must be exactly 9 ASCII letters or digits, as the
    /// Mistral v3 format requires.
    pub mistral_call_ids: bool,
}

impl CheckOptions {
    /// The checks for data meant for `template` as chosen (without a
    /// tokenizer `auto` cannot be resolved: only an explicit `mistral-v3`
    /// turns Mistral's rules on; [`crate::ChatFormatter::check_options`]
    /// knows the resolved format).
    pub fn for_template(template: &crate::template::TemplateChoice) -> Self {
        CheckOptions {
            mistral_call_ids: *template == crate::template::TemplateChoice::MistralV3,
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
        /// The tools (function definitions) the conversation offers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tools: Vec<ToolSpec>,
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
            Example::Chat { messages, .. } => Some(messages.clone()),
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

    /// The tools a conversation offers (none for the other formats).
    pub fn tools(&self) -> &[ToolSpec] {
        match self {
            Example::Chat { tools, .. } => tools,
            _ => &[],
        }
    }

    /// The number of tool calls the example's assistant turns make.
    pub fn tool_call_count(&self) -> usize {
        match self {
            Example::Chat { messages, .. } => messages.iter().map(|m| m.tool_calls.len()).sum(),
            _ => 0,
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
    options: &CheckOptions,
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
        .filter(|k| !(format == Format::Chat && k.as_str() == "tools"))
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
        Format::Chat => {
            let tools = check_tool_specs(object, &mut sink);
            let messages = check_messages(object, &mut sink, &mut unknown_fields);
            if let Some(messages) = &messages {
                check_tool_use(messages, tools.as_deref(), options, &mut sink);
            }
            messages
                .zip(tools)
                .map(|(messages, tools)| Example::Chat { messages, tools })
        }
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
            if !MESSAGE_KEYS.contains(&key.as_str()) {
                let name = format!("messages[].{key}");
                if !unknown_fields.contains(&name) {
                    unknown_fields.push(name);
                }
            }
        }
        let role_path = format!("{path}.role");
        const ROLES: &str = "\"system\", \"user\", \"assistant\" or \"tool\"";
        let role = match msg.get("role") {
            None => {
                sink.error(
                    DiagnosticKind::MissingField,
                    &role_path,
                    "missing field `role`",
                )
                .expected = Some(ROLES.into());
                None
            }
            Some(Value::String(s)) => match s.as_str() {
                "system" => Some(Role::System),
                "user" => Some(Role::User),
                "assistant" => Some(Role::Assistant),
                "tool" => Some(Role::Tool),
                other => {
                    let d = sink.error(DiagnosticKind::UnknownRole, &role_path, "unknown role");
                    d.expected = Some(ROLES.into());
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
                d.expected = Some(ROLES.into());
                d.got = Some(describe(other));
                None
            }
        };
        roles.push(role);
        let tool_calls = check_tool_calls(msg, role, &path, sink);
        // Whether the message holds calls, even ones in error (its content is then optional).
        let calls_tools =
            matches!(msg.get("tool_calls"), Some(Value::Array(calls)) if !calls.is_empty());
        let content_path = format!("{path}.content");
        let content = match (role, msg.get("content")) {
            // A turn that only calls tools has nothing to say.
            (Some(Role::Assistant), None | Some(Value::Null)) if calls_tools => Some(String::new()),
            (Some(Role::Assistant), Some(Value::String(s))) if calls_tools => Some(s.clone()),
            // A function may return an empty text.
            (Some(Role::Tool), Some(Value::String(s))) => Some(s.clone()),
            _ => string_field(msg, "content", &content_path, sink),
        };
        let tool_call_id = optional_string(msg, "tool_call_id", &path, sink);
        if tool_call_id.is_some() && role.is_some_and(|r| r != Role::Tool) {
            misplaced(
                sink,
                &format!("{path}.tool_call_id"),
                "tool_call_id",
                "tool",
                role,
            );
        }
        let name = optional_string(msg, "name", &path, sink);
        if let (Some(role), Some(content), Some(tool_calls)) = (role, content, tool_calls) {
            messages.push(Message {
                role,
                content,
                tool_calls,
                tool_call_id,
                name,
            });
        }
    }
    check_role_order(&roles, sink);
    (messages.len() == items.len()).then_some(messages)
}

/// The keys a message may hold.
const MESSAGE_KEYS: [&str; 5] = ["role", "content", "tool_calls", "tool_call_id", "name"];

/// An error for a field that belongs on messages of another role.
fn misplaced(sink: &mut LineSink<'_>, path: &str, key: &str, wanted: &str, role: Option<Role>) {
    let d = sink.error(
        DiagnosticKind::MisplacedToolField,
        path,
        format!("`{key}` belongs on {wanted} messages"),
    );
    d.expected = Some(format!("a {wanted:?} message"));
    d.got = role.map(|r| format!("a {:?} message", r.as_str()));
}

/// Reads an optional, non-empty string field of a message (`null` counts as absent).
fn optional_string(
    msg: &Map<String, Value>,
    key: &str,
    path: &str,
    sink: &mut LineSink<'_>,
) -> Option<String> {
    match msg.get(key) {
        None | Some(Value::Null) => None,
        Some(_) => string_field(msg, key, &format!("{path}.{key}"), sink),
    }
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
        if role != Role::System && role != Role::Tool && !first_turn_checked {
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
        check_object(&o, format, &CheckOptions::default(), "f.jsonl", 1)
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
        assert!(
            matches!(c.example, Some(Example::Chat { ref messages, .. }) if messages.len() == 3)
        );
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

    // ---- Function calling -------------------------------------------------

    const WEATHER_TOOL: &str = r#"{"type":"function","function":{"name":"get_weather","description":"Weather of a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string"}},"required":["city"]}}}"#;
    const TIME_TOOL: &str = r#"{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{}}}}"#;

    /// A line with both tools and `messages`, given as JSON text.
    fn tool_line(messages: &str) -> String {
        format!(r#"{{"tools":[{WEATHER_TOOL},{TIME_TOOL}],"messages":[{messages}]}}"#)
    }

    fn check_with(json: &str, options: CheckOptions) -> ObjectCheck {
        let Value::Object(o) = serde_json::from_str(json).unwrap() else {
            panic!("not an object")
        };
        check_object(&o, Format::Chat, &options, "f.jsonl", 7)
    }

    /// The only error of `json`, rendered; fails when there is not exactly one.
    fn only_error(json: &str, options: CheckOptions) -> Diagnostic {
        let c = check_with(json, options);
        let errors: Vec<&Diagnostic> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert_eq!(errors.len(), 1, "{:#?}", c.diagnostics);
        assert!(c.example.is_none());
        errors[0].clone()
    }

    fn messages_of(c: &ObjectCheck) -> &[Message] {
        match &c.example {
            Some(Example::Chat { messages, .. }) => messages,
            other => panic!("no chat: {other:?} {:#?}", c.diagnostics),
        }
    }

    #[test]
    fn reads_tool_calls_with_string_or_object_arguments() {
        let c = check_with(
            &tool_line(
                r#"{"role":"user","content":"Weather in Paris, and the time?"},
                {"role":"assistant","tool_calls":[
                    {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},
                    {"id":"call_2","type":"function","function":{"name":"get_time","arguments":{}}}]},
                {"role":"tool","tool_call_id":"call_2","name":"get_time","content":"12:00"},
                {"role":"tool","tool_call_id":"call_1","content":"sunny"},
                {"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"get_weather","arguments":{"city":"Lyon","unit":"C"}}}]},
                {"role":"tool","content":""},
                {"role":"assistant","content":"Sunny in Paris at noon."}"#,
            ),
            CheckOptions::default(),
        );
        assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
        let messages = messages_of(&c);
        assert_eq!(messages.len(), 7);
        let call = &messages[1];
        assert_eq!((call.role, call.content.as_str()), (Role::Assistant, ""));
        assert_eq!(call.tool_calls.len(), 2);
        assert_eq!(call.tool_calls[0].id.as_deref(), Some("call_1"));
        assert_eq!(call.tool_calls[0].name, "get_weather");
        assert_eq!(
            call.tool_calls[0].arguments,
            serde_json::json!({"city": "Paris"})
        );
        assert_eq!(call.tool_calls[1].arguments, serde_json::json!({}));
        let result = &messages[2];
        assert_eq!(result.role, Role::Tool);
        assert_eq!(result.tool_call_id.as_deref(), Some("call_2"));
        assert_eq!(result.name.as_deref(), Some("get_time"));
        // The second round: no ids, null content, an empty result.
        assert_eq!(messages[4].tool_calls[0].id, None);
        assert_eq!(messages[5].content, "");
        let Some(example) = &c.example else { panic!() };
        assert_eq!(example.tools().len(), 2);
        assert_eq!(example.tools()[0].name, "get_weather");
        assert_eq!(example.tools()[0].required(), vec!["city"]);
        assert_eq!(
            example.tools()[1].raw,
            serde_json::from_str::<Value>(TIME_TOOL).unwrap()
        );
        assert_eq!(example.tool_call_count(), 3);
        // Serialized in the shape it was read in, and back.
        let text = serde_json::to_string(example).unwrap();
        assert!(text.contains(r#""type":"function""#), "{text}");
        assert_eq!(&serde_json::from_str::<Example>(&text).unwrap(), example);
    }

    #[test]
    fn a_tool_call_turn_may_also_speak_and_plain_chats_are_unchanged() {
        let c = check_with(
            &tool_line(
                r#"{"role":"user","content":"Paris?"},
                {"role":"assistant","content":"Let me look.","tool_calls":[{"id":"a","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},
                {"role":"tool","tool_call_id":"a","content":"sunny"},
                {"role":"assistant","content":"Sunny."}"#,
            ),
            CheckOptions::default(),
        );
        assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
        assert_eq!(messages_of(&c)[1].content, "Let me look.");
        // Without tool calls an empty assistant turn is still refused.
        let d = only_error(
            r#"{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"","tool_calls":[]}]}"#,
            CheckOptions::default(),
        );
        assert_eq!(
            (d.kind, d.field.as_deref()),
            (DiagnosticKind::EmptyField, Some("messages[1].content"))
        );
    }

    #[test]
    fn a_result_must_answer_a_call() {
        // By id.
        let d = only_error(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_time","arguments":{}}}]},
                {"role":"tool","tool_call_id":"call_9","content":"12:00"},
                {"role":"assistant","content":"Noon."}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            d.to_string(),
            "f.jsonl:7: error[unmatched_tool_result] messages[2].tool_call_id: no call of \
             messages[1] has this id (expected one of \"call_1\", got \"call_9\")"
        );
        // By order, when the results carry no id: one call, two results.
        let d = only_error(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[{"type":"function","function":{"name":"get_time","arguments":{}}}]},
                {"role":"tool","content":"12:00"},
                {"role":"tool","content":"13:00"},
                {"role":"assistant","content":"Noon."}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            (d.kind, d.field.as_deref()),
            (
                DiagnosticKind::UnmatchedToolResult,
                Some("messages[3].role")
            )
        );
        assert!(d.message.contains("matched to the calls by order"), "{d}");
        assert!(
            d.message.contains("makes 1 call and this is result 2"),
            "{d}"
        );
    }

    #[test]
    fn results_matched_by_order_must_name_their_call() {
        let c = check_with(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[
                    {"type":"function","function":{"name":"get_time","arguments":{}}},
                    {"type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},
                {"role":"tool","name":"get_weather","content":"sunny"},
                {"role":"tool","name":"get_time","content":"12:00"},
                {"role":"assistant","content":"Noon."}"#,
            ),
            CheckOptions::default(),
        );
        let k = kinds(&c);
        assert_eq!(
            k,
            vec![
                (
                    DiagnosticKind::UnmatchedToolResult,
                    Some("messages[2].name".into())
                ),
                (
                    DiagnosticKind::UnmatchedToolResult,
                    Some("messages[3].name".into())
                ),
            ]
        );
        let d = &c.diagnostics[0];
        assert!(
            d.message.contains("by order, as Hugging Face templates do"),
            "{d}"
        );
        assert_eq!(
            (d.expected.as_deref(), d.got.as_deref()),
            (Some("\"get_time\""), Some("\"get_weather\""))
        );
    }

    #[test]
    fn a_result_with_no_call_before_it() {
        let d = only_error(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"tool","tool_call_id":"x","content":"12:00"},
                {"role":"assistant","content":"Noon."}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            d.to_string(),
            "f.jsonl:7: error[unmatched_tool_result] messages[1].role: a tool result with no \
             call before it (expected an assistant message with `tool_calls` before the \
             results, got a \"user\" message)"
        );
        // Two results for one call.
        let d = only_error(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"get_time","arguments":{}}}]},
                {"role":"tool","tool_call_id":"a","content":"12:00"},
                {"role":"tool","tool_call_id":"a","content":"12:01"},
                {"role":"assistant","content":"Noon."}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            (d.kind, d.field.as_deref()),
            (DiagnosticKind::UnmatchedToolResult, Some("messages[3]"))
        );
    }

    #[test]
    fn a_call_to_an_undefined_function() {
        let d = only_error(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"get_wether","arguments":{"city":"Paris"}}}]}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            d.to_string(),
            "f.jsonl:7: error[unknown_function] messages[1].tool_calls[0].function.name: a call \
             to a function `tools` does not define (expected one of \"get_weather\", \
             \"get_time\", got \"get_wether\")"
        );
        // With no `tools` at all: a warning, the example is kept.
        let c = check_with(
            r#"{"messages":[{"role":"user","content":"u"},{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":{}}}]}]}"#,
            CheckOptions::default(),
        );
        assert_eq!(
            kinds(&c),
            vec![(DiagnosticKind::MissingTools, Some("tools".into()))]
        );
        assert!(!c.diagnostics[0].is_error());
        assert!(c.example.is_some());
    }

    #[test]
    fn arguments_must_be_a_json_object_with_the_required_fields() {
        let call = |arguments: &str| {
            tool_line(&format!(
                r#"{{"role":"user","content":"u"}},
                {{"role":"assistant","tool_calls":[{{"id":"a","type":"function","function":{{"name":"get_weather","arguments":{arguments}}}}}]}}"#
            ))
        };
        let d = only_error(&call(r#""{city: Paris}""#), CheckOptions::default());
        assert_eq!(
            (d.kind, d.field.as_deref()),
            (
                DiagnosticKind::InvalidArguments,
                Some("messages[1].tool_calls[0].function.arguments")
            )
        );
        assert!(d.message.contains("the string is not JSON"), "{d}");
        assert_eq!(d.got.as_deref(), Some("string \"{city: Paris}\""));
        let d = only_error(&call(r#""[1, 2]""#), CheckOptions::default());
        assert!(d.message.contains("holds array of 2, not an object"), "{d}");
        let d = only_error(&call("42"), CheckOptions::default());
        assert_eq!(d.kind, DiagnosticKind::InvalidArguments);
        let d = only_error(&call(r#""{\"unit\": \"C\"}""#), CheckOptions::default());
        assert_eq!(
            d.to_string(),
            "f.jsonl:7: error[invalid_arguments] messages[1].tool_calls[0].function.arguments: \
             missing argument `city` that tools[0] (`get_weather`) requires (expected \
             arguments city, got arguments unit)"
        );
        let d = only_error(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"get_weather"}}]}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            (d.kind, d.field.as_deref()),
            (
                DiagnosticKind::MissingField,
                Some("messages[1].tool_calls[0].function.arguments")
            )
        );
    }

    #[test]
    fn tool_schemas_must_be_json_schema_objects() {
        let line = |tool: &str| {
            format!(
                r#"{{"tools":[{tool}],"messages":[{{"role":"user","content":"u"}},{{"role":"assistant","content":"a"}}]}}"#
            )
        };
        let cases = [
            (r#""get_weather""#, "tools[0]"),
            (r#"{"type":"function"}"#, "tools[0].function"),
            (
                r#"{"type":"retrieval","function":{"name":"f"}}"#,
                "tools[0].type",
            ),
            (
                r#"{"type":"function","function":{"name":""}}"#,
                "tools[0].function.name",
            ),
            (
                r#"{"type":"function","function":{"name":"f","parameters":"city"}}"#,
                "tools[0].function.parameters",
            ),
            (
                r#"{"type":"function","function":{"name":"f","parameters":{"properties":{}}}}"#,
                "tools[0].function.parameters.type",
            ),
            (
                r#"{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":[]}}}"#,
                "tools[0].function.parameters.properties",
            ),
            (
                r#"{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{}},"required":["b"]}}}"#,
                "tools[0].function.parameters.required[0]",
            ),
        ];
        for (tool, field) in cases {
            let d = only_error(&line(tool), CheckOptions::default());
            assert_eq!(
                (d.kind, d.field.as_deref()),
                (DiagnosticKind::InvalidToolSchema, Some(field)),
                "{tool}: {d}"
            );
        }
        let d = only_error(
            &line(r#"{"type":"function","function":{"name":"f","parameters":{"type":"array"}}}"#),
            CheckOptions::default(),
        );
        assert_eq!(
            d.to_string(),
            "f.jsonl:7: error[invalid_tool_schema] tools[0].function.parameters.type: \
             `parameters` must be a JSON schema of type \"object\" (expected \"object\", got \
             string \"array\")"
        );
        let d = only_error(
            &line(&format!("{TIME_TOOL},{TIME_TOOL}")),
            CheckOptions::default(),
        );
        assert_eq!(d.field.as_deref(), Some("tools[1].function.name"));
        let d = only_error(
            r#"{"tools":{"a":1},"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}"#,
            CheckOptions::default(),
        );
        assert_eq!(
            (d.kind, d.field.as_deref()),
            (DiagnosticKind::WrongType, Some("tools"))
        );
        // A function without parameters takes none.
        let c = check_with(
            &line(r#"{"type":"function","function":{"name":"f"}}"#),
            CheckOptions::default(),
        );
        assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    }

    #[test]
    fn tool_fields_belong_on_their_roles() {
        let c = check_with(
            r#"{"messages":[{"role":"user","content":"u","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":{}}}]},{"role":"assistant","content":"a","tool_call_id":"a"}]}"#,
            CheckOptions::default(),
        );
        assert_eq!(
            kinds(&c),
            vec![
                (
                    DiagnosticKind::MisplacedToolField,
                    Some("messages[0].tool_calls".into())
                ),
                (
                    DiagnosticKind::MisplacedToolField,
                    Some("messages[1].tool_call_id".into())
                ),
            ]
        );
        assert_eq!(c.diagnostics[0].got.as_deref(), Some("a \"user\" message"));
        // A conversation may not end on a tool result.
        let c = check_with(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"get_time","arguments":{}}}]},
                {"role":"tool","tool_call_id":"a","content":"12:00"}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            kinds(&c),
            vec![(
                DiagnosticKind::LastTurnNotAssistant,
                Some("messages[2].role".into())
            )]
        );
    }

    #[test]
    fn call_ids_are_unique_and_fit_mistral_v3_when_it_is_the_template() {
        let line = |id: &str| {
            tool_line(&format!(
                r#"{{"role":"user","content":"u"}},
                {{"role":"assistant","tool_calls":[{{"id":"{id}","type":"function","function":{{"name":"get_time","arguments":{{}}}}}}]}},
                {{"role":"tool","tool_call_id":"{id}","content":"12:00"}},
                {{"role":"assistant","content":"Noon."}}"#
            ))
        };
        let mistral = CheckOptions {
            mistral_call_ids: true,
        };
        assert!(check_with(&line("call_1"), CheckOptions::default())
            .diagnostics
            .is_empty());
        assert!(check_with(&line("a1b2c3d4e"), mistral)
            .diagnostics
            .is_empty());
        for id in ["call_1", "a1b2c3d4", "a1b2c3d4e5", "a1b2c3d4-"] {
            let d = only_error(&line(id), mistral);
            assert_eq!(
                d.to_string(),
                format!(
                    "f.jsonl:7: error[invalid_tool_call_id] messages[1].tool_calls[0].id: Mistral \
                     v3 needs 9-character call ids such as `a1b2c3d4e`; rename the id in the call \
                     and its result (expected 9 ASCII letters or digits, got {id:?})"
                )
            );
        }
        // No ids at all: the call and the result are each reported.
        let c = check_with(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[{"type":"function","function":{"name":"get_time","arguments":{}}}]},
                {"role":"tool","content":"12:00"},
                {"role":"assistant","content":"Noon."}"#,
            ),
            mistral,
        );
        assert_eq!(
            kinds(&c),
            vec![
                (
                    DiagnosticKind::InvalidToolCallId,
                    Some("messages[1].tool_calls[0]".into())
                ),
                (
                    DiagnosticKind::InvalidToolCallId,
                    Some("messages[2]".into())
                ),
            ]
        );
        // Two calls of one turn sharing an id, whatever the template.
        let d = only_error(
            &tool_line(
                r#"{"role":"user","content":"u"},
                {"role":"assistant","tool_calls":[
                    {"id":"a","type":"function","function":{"name":"get_time","arguments":{}}},
                    {"id":"a","type":"function","function":{"name":"get_time","arguments":{}}}]}"#,
            ),
            CheckOptions::default(),
        );
        assert_eq!(
            (d.kind, d.field.as_deref()),
            (
                DiagnosticKind::InvalidToolCallId,
                Some("messages[1].tool_calls[1].id")
            )
        );
    }
}
