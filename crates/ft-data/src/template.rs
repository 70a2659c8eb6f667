//! Chat formatting: the model's own Jinja template, the built-in Mistral v0.3
//! Instruct format, or raw concatenation; each yields token ids plus a mask
//! of the assistant tokens.
//!
//! The mask covers the assistant's text *and* the end-of-turn token closing
//! it (`</s>`, `<|im_end|>`, …): a model that never learns to emit it never
//! stops. With a Jinja template the assistant spans are found by rendering
//! prefixes of the conversation (exact, since it uses the template's own
//! text); when a template is not prefix-stable (e.g. it moves the system
//! prompt to the last user turn) it falls back to rendering once with
//! invisible markers around each assistant message. Either result is checked
//! against the plain rendering.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::format::{CheckOptions, Message, Role, ToolSpec};
use crate::tokenizer::TextTokenizer;

mod jinja;
use jinja::JinjaTemplate;

/// Which chat format to use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateChoice {
    /// The model's template when it has one, else the built-in Mistral v0.3 format.
    #[default]
    Auto,
    /// The model's Jinja template (an error when it has none).
    Model,
    /// This Jinja template source.
    Jinja(String),
    /// The built-in Mistral v0.3 Instruct format.
    MistralV3,
    /// No chat markup: BOS, the texts one after another, EOS after each
    /// assistant text. Meant for prompt/completion data.
    Raw,
}

/// Token ids and, per token, whether it belongs to an assistant turn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokenized {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `true` for tokens the model should learn to produce.
    pub mask: Vec<bool>,
}

impl Tokenized {
    fn push(&mut self, ids: &[u32], trained: bool) {
        self.ids.extend_from_slice(ids);
        self.mask.extend(std::iter::repeat_n(trained, ids.len()));
    }
}

/// Formats conversations into tokens and assistant masks.
#[derive(Debug)]
pub struct ChatFormatter {
    kind: FormatterKind,
}

#[derive(Debug)]
enum FormatterKind {
    Jinja(Box<JinjaTemplate>),
    MistralV3 { inst: u32, inst_end: u32 },
    Raw,
}

impl ChatFormatter {
    /// A formatter for `choice` with `tokenizer`'s special tokens.
    pub fn new(choice: &TemplateChoice, tokenizer: &TextTokenizer) -> Result<Self> {
        let kind = match choice {
            TemplateChoice::Auto => match tokenizer.chat_template() {
                Some(source) => FormatterKind::Jinja(Box::new(model_template(source, tokenizer)?)),
                None => mistral_v3(tokenizer)?,
            },
            TemplateChoice::Model => {
                let source = tokenizer
                    .chat_template()
                    .ok_or_else(|| DataError::template("the model ships no chat template"))?;
                FormatterKind::Jinja(Box::new(model_template(source, tokenizer)?))
            }
            TemplateChoice::Jinja(source) => {
                FormatterKind::Jinja(Box::new(JinjaTemplate::new(source, tokenizer)?))
            }
            TemplateChoice::MistralV3 => mistral_v3(tokenizer)?,
            TemplateChoice::Raw => FormatterKind::Raw,
        };
        Ok(ChatFormatter { kind })
    }

    /// A short name of the format, for reports.
    pub fn name(&self) -> &'static str {
        match self.kind {
            FormatterKind::Jinja(_) => "jinja",
            FormatterKind::MistralV3 { .. } => "mistral_v3",
            FormatterKind::Raw => "raw",
        }
    }

    /// The checks data for this format needs (Mistral v3's call ids).
    pub fn check_options(&self) -> CheckOptions {
        CheckOptions {
            mistral_call_ids: matches!(self.kind, FormatterKind::MistralV3 { .. }),
        }
    }

    /// Renders a conversation to text (Jinja only; `None` for the built-in
    /// token-level formats).
    pub fn render_text(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Option<String>> {
        self.render_chat_text(messages, &[], add_generation_prompt)
    }

    /// [`render_text`](Self::render_text) for a conversation that offers `tools`.
    pub fn render_chat_text(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<Option<String>> {
        match &self.kind {
            FormatterKind::Jinja(t) => t.render(messages, tools, add_generation_prompt).map(Some),
            _ => Ok(None),
        }
    }

    /// Token ids that prompt the model for the next assistant turn of
    /// `messages` (a conversation ending with a user turn): the template's
    /// generation prompt, or `[INST] ... [/INST]` for Mistral v3.
    pub fn encode_prompt(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[Message],
    ) -> Result<Vec<u32>> {
        let mut ids = match &self.kind {
            FormatterKind::Jinja(t) => tokenizer.encode(&t.render(messages, &[], true)?)?,
            FormatterKind::MistralV3 { inst, inst_end } => {
                refuse_tools("mistral-v3", messages, &[])?;
                encode_mistral_v3(tokenizer, messages, *inst, *inst_end)?.ids
            }
            FormatterKind::Raw => {
                refuse_tools("raw", messages, &[])?;
                encode_raw(tokenizer, messages)?.ids
            }
        };
        let special = tokenizer.special();
        if let Some(bos) = special.bos {
            if special.add_bos && ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Tokenizes a conversation; the mask marks assistant tokens and the
    /// end-of-turn token after each.
    pub fn encode(&self, tokenizer: &TextTokenizer, messages: &[Message]) -> Result<Tokenized> {
        self.encode_chat(tokenizer, messages, &[])
    }

    /// [`encode`](Self::encode) for a conversation that offers `tools`. The
    /// mask marks the assistant turns, tool calls included; tool results and
    /// the tool list are never targets. Only Jinja templates render tools:
    /// the built-in formats refuse a conversation that uses them.
    pub fn encode_chat(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<Tokenized> {
        let mut out = match &self.kind {
            FormatterKind::Jinja(t) => t.encode(tokenizer, messages, tools)?,
            FormatterKind::MistralV3 { inst, inst_end } => {
                refuse_tools("mistral-v3", messages, tools)?;
                encode_mistral_v3(tokenizer, messages, *inst, *inst_end)?
            }
            FormatterKind::Raw => {
                refuse_tools("raw", messages, tools)?;
                encode_raw(tokenizer, messages)?
            }
        };
        let special = tokenizer.special();
        if let Some(bos) = special.bos {
            if special.add_bos && out.ids.first() != Some(&bos) {
                out.ids.insert(0, bos);
                out.mask.insert(0, false);
            }
        }
        Ok(out)
    }
}

/// The model's own template; an error names the file (and field) it came from.
fn model_template(source: &str, tokenizer: &TextTokenizer) -> Result<JinjaTemplate> {
    JinjaTemplate::new(source, tokenizer).map_err(|error| {
        match (error, tokenizer.chat_template_origin()) {
            (DataError::Template { message }, Some(origin)) => {
                DataError::template(format!("{origin}: {message}"))
            }
            (error, _) => error,
        }
    })
}

/// The built-in formats cannot render tools yet: a conversation that offers
/// or calls tools is an error rather than silently losing those turns.
fn refuse_tools(format: &str, messages: &[Message], tools: &[ToolSpec]) -> Result<()> {
    let at = messages
        .iter()
        .position(|m| m.role == Role::Tool || !m.tool_calls.is_empty());
    let what = match at {
        Some(i) if messages[i].role == Role::Tool => format!("messages[{i}] is a tool result: "),
        Some(i) => format!("messages[{i}].tool_calls: "),
        None if !tools.is_empty() => "tools: ".to_string(),
        None => return Ok(()),
    };
    Err(DataError::template(format!(
        "{what}tool calls are not supported by the `{format}` template yet; use a model \
         whose own chat template renders tools (`--template auto`)"
    )))
}

fn mistral_v3(tokenizer: &TextTokenizer) -> Result<FormatterKind> {
    let id = |piece: &str| {
        tokenizer.token_id(piece).ok_or_else(|| {
            DataError::template(format!(
                "the Mistral v0.3 format needs the {piece} control token, which this vocabulary lacks \
                 (give the model's chat template instead)"
            ))
        })
    };
    Ok(FormatterKind::MistralV3 {
        inst: id("[INST]")?,
        inst_end: id("[/INST]")?,
    })
}

fn eos_or_error(tokenizer: &TextTokenizer) -> Result<u32> {
    tokenizer
        .special()
        .eos
        .ok_or_else(|| DataError::tokenizer("the tokenizer has no EOS token"))
}

/// `<s>[INST] user[/INST] assistant</s>[INST] …`, the system prompt prepended
/// to the last user turn (as mistral-common does for v3).
fn encode_mistral_v3(
    tokenizer: &TextTokenizer,
    messages: &[Message],
    inst: u32,
    inst_end: u32,
) -> Result<Tokenized> {
    let eos = eos_or_error(tokenizer)?;
    let mut out = Tokenized::default();
    if let Some(bos) = tokenizer.special().bos {
        out.push(&[bos], false);
    }
    let system = messages
        .iter()
        .find(|m| m.role == Role::System)
        .map(|m| m.content.as_str());
    let last_user = messages.iter().rposition(|m| m.role == Role::User);
    for (i, message) in messages.iter().enumerate() {
        match message.role {
            Role::System => {}
            Role::User => {
                let content = match system {
                    Some(system) if Some(i) == last_user => {
                        format!("{system}\n\n{}", message.content)
                    }
                    _ => message.content.clone(),
                };
                out.push(&[inst], false);
                out.push(&tokenizer.encode_literal(&content)?, false);
                out.push(&[inst_end], false);
            }
            Role::Assistant => {
                out.push(&tokenizer.encode_literal(&message.content)?, true);
                out.push(&[eos], true);
            }
            // Refused before (see `refuse_tools`).
            Role::Tool => {}
        }
    }
    Ok(out)
}

/// Texts one after another, EOS after each assistant text.
fn encode_raw(tokenizer: &TextTokenizer, messages: &[Message]) -> Result<Tokenized> {
    let eos = eos_or_error(tokenizer)?;
    let mut out = Tokenized::default();
    for message in messages {
        let trained = message.role == Role::Assistant;
        out.push(&tokenizer.encode_literal(&message.content)?, trained);
        if trained {
            out.push(&[eos], true);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::jinja::*;
    use super::*;
    use crate::test_support::{default_tokenizer, tiny_spm};

    fn chat() -> Vec<Message> {
        vec![
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "hi"),
            Message::new(Role::Assistant, "hello world"),
            Message::new(Role::User, "the ab"),
            Message::new(Role::Assistant, "ab"),
        ]
    }

    /// The trained tokens, decoded, per contiguous run.
    fn trained_runs(tok: &TextTokenizer, t: &Tokenized) -> Vec<String> {
        let mut runs = Vec::new();
        let mut current = Vec::new();
        for (id, m) in t.ids.iter().zip(&t.mask) {
            if *m {
                current.push(*id);
            } else if !current.is_empty() {
                runs.push(tok.decode(&std::mem::take(&mut current), false).unwrap());
            }
        }
        if !current.is_empty() {
            runs.push(tok.decode(&current, false).unwrap());
        }
        runs
    }

    #[test]
    fn mistral_v3_layout() {
        let tok = tiny_spm();
        let f = ChatFormatter::new(&TemplateChoice::Auto, &tok).unwrap();
        assert_eq!(f.name(), "mistral_v3");
        let t = f.encode(&tok, &chat()).unwrap();
        assert_eq!(t.ids[0..2], [1, 3]);
        // Mask: assistant text plus its </s>.
        let eos_positions: Vec<usize> = t
            .ids
            .iter()
            .enumerate()
            .filter(|(_, &i)| i == 2)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(eos_positions.len(), 2);
        assert!(eos_positions.iter().all(|&p| t.mask[p]));
        let text = tok.decode(&t.ids, false).unwrap();
        assert_eq!(
            text,
            "<s>[INST] hi[/INST] hello world</s>[INST] Be brief.\n\nthe ab[/INST] ab</s>"
        );
        assert_eq!(trained_runs(&tok, &t), vec!["hello world</s>", "ab</s>"]);
    }

    #[test]
    fn chatml_masks_on_default_model() {
        let Some(tok) = default_tokenizer() else {
            return;
        };
        let f = ChatFormatter::new(&TemplateChoice::Auto, &tok).unwrap();
        assert_eq!(f.name(), "jinja");
        let t = f.encode(&tok, &chat()).unwrap();
        assert_eq!(
            trained_runs(&tok, &t),
            vec!["hello world<|im_end|>", "ab<|im_end|>"]
        );
        // Without a system message the template adds its default one; masks still hold.
        let t = f.encode(&tok, &chat()[1..]).unwrap();
        let text = tok.decode(&t.ids, false).unwrap();
        assert!(text.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
        assert_eq!(
            trained_runs(&tok, &t),
            vec!["hello world<|im_end|>", "ab<|im_end|>"]
        );
    }

    #[test]
    fn marker_fallback_for_non_prefix_templates() {
        let Some(tok) = default_tokenizer() else {
            return;
        };
        // Puts the system prompt into the *last* user turn, so prefixes differ.
        let source = "{% set sys = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | list %}\
            {% set ns = namespace(last=-1) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}\
            {% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{% if loop.index0 == ns.last and sys %}{{ sys[0] }}\n{% endif %}{{ m.content }}<|im_end|>\n\
            {% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content.strip() }}<|im_end|>\n{% endif %}{% endfor %}";
        let f = ChatFormatter::new(&TemplateChoice::Jinja(source.into()), &tok).unwrap();
        let t = f.encode(&tok, &chat()).unwrap();
        assert_eq!(
            trained_runs(&tok, &t),
            vec!["hello world<|im_end|>", "ab<|im_end|>"]
        );
    }

    #[test]
    fn open_final_turn_gets_eos() {
        let Some(tok) = default_tokenizer() else {
            return;
        };
        let source = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}";
        let f = ChatFormatter::new(&TemplateChoice::Jinja(source.into()), &tok).unwrap();
        let t = f.encode(&tok, &chat()[1..3]).unwrap();
        assert_eq!(*t.ids.last().unwrap(), 2);
        assert!(*t.mask.last().unwrap());
        // " hello" straddles the span start and counts as assistant text.
        assert_eq!(trained_runs(&tok, &t), vec![" hello world\n<|im_end|>"]);
    }

    #[test]
    fn raise_exception_and_pycompat() {
        let tok = tiny_spm();
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
            {% for m in messages %}{{ m.content.upper() }}{% endfor %}";
        let f = ChatFormatter::new(&TemplateChoice::Jinja(source.into()), &tok).unwrap();
        let err = f.encode(&tok, &chat()).unwrap_err().to_string();
        assert!(err.contains("first must be user"), "{err}");
        let text = f.render_text(&chat()[1..3], false).unwrap().unwrap();
        assert_eq!(text, "HIHELLO WORLD");
        assert!(ChatFormatter::new(&TemplateChoice::Jinja("{% for %}".into()), &tok).is_err());
    }

    /// A conversation with two parallel calls, their results and an answer.
    fn tool_chat() -> (Vec<Message>, Vec<ToolSpec>) {
        let tool = serde_json::json!({"type": "function", "function": {
            "name": "get_time", "description": "The time",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
        let call = |id: &str, city: &str| crate::format::ToolCall {
            id: Some(id.into()),
            name: "get_time".into(),
            arguments: serde_json::json!({ "city": city }),
        };
        let result = |id: &str, content: &str| Message {
            tool_call_id: Some(id.into()),
            name: Some("get_time".into()),
            ..Message::new(Role::Tool, content)
        };
        let messages = vec![
            Message::new(Role::User, "hi"),
            Message {
                tool_calls: vec![call("c1", "Paris"), call("c2", "Rome")],
                ..Message::new(Role::Assistant, "")
            },
            result("c1", "noon"),
            result("c2", "one"),
            Message::new(Role::Assistant, "ab"),
        ];
        (messages, vec![ToolSpec::try_from(tool).unwrap()])
    }

    /// Prints the tools, each call (name, arguments, id) and each result
    /// (id, name, content), as transformers hands them to a template.
    const TOOL_TEMPLATE: &str = "{% if tools %}tools:{% for t in tools %} {{ t.function.name }}\
        ({{ t.function.description }}){% endfor %}{{ '\\n' }}{% endif %}\
        {% for m in messages %}\
        {% if m.role == 'assistant' and m.tool_calls %}call:{% for c in m.tool_calls %} \
        {{ c.function.name }} {{ c.function.arguments | tojson }} {{ c.id }} {{ c.type }};{% endfor %}</s>\n\
        {% elif m.role == 'tool' %}result {{ m.tool_call_id }} {{ m.name }}: {{ m.content }}\n\
        {% else %}{{ m.role }}: {{ m.content }}</s>\n{% endif %}{% endfor %}";

    #[test]
    fn jinja_templates_see_tools_and_tool_calls() {
        let tok = tiny_spm();
        let f = ChatFormatter::new(&TemplateChoice::Jinja(TOOL_TEMPLATE.into()), &tok).unwrap();
        let (messages, tools) = tool_chat();
        let text = f
            .render_chat_text(&messages, &tools, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            text,
            "tools: get_time(The time)\n\
             user: hi</s>\n\
             call: get_time {\"city\": \"Paris\"} c1 function; get_time {\"city\": \"Rome\"} c2 function;</s>\n\
             result c1 get_time: noon\n\
             result c2 get_time: one\n\
             assistant: ab</s>\n"
        );
        // Without tools the template sees none.
        let plain = f.render_text(&messages[..1], false).unwrap().unwrap();
        assert_eq!(plain, "user: hi</s>\n");
        // The calls and the answer are trained on; the results and the tool list are not.
        let t = f.encode_chat(&tok, &messages, &tools).unwrap();
        let runs = trained_runs(&tok, &t);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(
            runs[0].contains("call: get_time {\"city\": \"Paris\"} c1"),
            "{runs:?}"
        );
        assert!(runs[0].ends_with("</s>"), "{runs:?}");
        assert!(runs[1].ends_with("ab</s>"), "{runs:?}");
        assert!(runs
            .iter()
            .all(|r| !r.contains("result") && !r.contains("tools")));
    }

    #[test]
    fn a_template_that_drops_tool_turns_is_an_error() {
        let tok = tiny_spm();
        let (messages, tools) = tool_chat();
        // Prints contents only: the calls would train as empty turns.
        let source = "{% for m in messages %}{{ m.role }}: {{ m.content }}</s>{% endfor %}";
        let f = ChatFormatter::new(&TemplateChoice::Jinja(source.into()), &tok).unwrap();
        let err = f
            .encode_chat(&tok, &messages, &tools)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "chat template: messages[1].tool_calls[0]: this chat template does not render \
                 tool calls (the text never names `get_time`)"
            ),
            "{err}"
        );
        // Prints calls but skips results.
        let source = "{% for m in messages %}{% if m.role != 'tool' %}{{ m.content }}\
            {% for c in m.tool_calls or [] %}{{ c.function.name }}{% endfor %}</s>{% endif %}{% endfor %}";
        let f = ChatFormatter::new(&TemplateChoice::Jinja(source.into()), &tok).unwrap();
        let err = f
            .encode_chat(&tok, &messages, &tools)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "chat template: messages[2]: this chat template does not render tool results"
            ),
            "{err}"
        );
    }

    #[test]
    fn built_in_formats_refuse_tool_turns() {
        let tok = tiny_spm();
        let (messages, tools) = tool_chat();
        for (choice, name) in [
            (TemplateChoice::MistralV3, "mistral-v3"),
            (TemplateChoice::Raw, "raw"),
        ] {
            let f = ChatFormatter::new(&choice, &tok).unwrap();
            let err = f
                .encode_chat(&tok, &messages, &tools)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "chat template: messages[1].tool_calls: tool calls are not supported by the \
                     `{name}` template yet; use a model whose own chat template renders tools \
                     (`--template auto`)"
                )
            );
            // A tool list alone is refused too; a plain chat is not.
            let err = f
                .encode_chat(&tok, &chat(), &tools)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("chat template: tools: tool calls"), "{err}");
            assert!(f.encode_chat(&tok, &chat(), &[]).is_ok());
        }
        let mistral = ChatFormatter::new(&TemplateChoice::MistralV3, &tok).unwrap();
        assert!(mistral.check_options().mistral_call_ids);
        let raw = ChatFormatter::new(&TemplateChoice::Raw, &tok).unwrap();
        assert!(!raw.check_options().mistral_call_ids);
    }

    #[test]
    fn dates() {
        // 2024-02-29 12:34:56 UTC, a Thursday.
        assert_eq!(
            format_utc(1_709_210_096, "%d %b %Y %A %H:%M:%S %%"),
            "29 Feb 2024 Thursday 12:34:56 %"
        );
        assert_eq!(format_utc(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
    }
}
