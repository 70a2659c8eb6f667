//! The model's own Jinja chat templates: a sandboxed minijinja environment
//! with the functions Hugging Face templates use (`raise_exception`,
//! `strftime_now`), a check of the source before it runs, and the
//! assistant spans found by rendering prefixes or with invisible markers.

use super::*;

/// Markers wrapped around assistant content for the fallback strategy:
/// private-use characters that no real text or template contains.
/// Work one render may do (minijinja fuel: about one per instruction and
/// per 64 bytes of data). Real chat templates need far less, even on the
/// longest line a dataset may hold (a test renders one); `{% for %}` loops
/// nested over large ranges run out in a fraction of a second instead of
/// running for hours.
pub(super) const TEMPLATE_FUEL: u64 = 5_000_000;

pub(super) const OPEN_MARK: &str = "\u{F8F0}ft-assistant-open\u{F8F1}";
pub(super) const CLOSE_MARK: &str = "\u{F8F0}ft-assistant-close\u{F8F1}";

/// A compiled HF-style Jinja chat template.
pub(super) struct JinjaTemplate {
    env: minijinja::Environment<'static>,
    bos_text: String,
    eos_text: String,
    /// Texts of the end-of-turn tokens, for the marker strategy.
    end_texts: Vec<String>,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate").finish_non_exhaustive()
    }
}

/// The most operators (`+ - * / % ~ . | [ ( < > = !`, `not and or is in if
/// else`) one `{{ }}` or `{% %}` block may hold. minijinja parses and
/// compiles operator chains recursively without a depth limit: about 10,000
/// in one expression overflow a 2 MB thread stack and abort the process.
/// Real chat templates use a few dozen at most.
pub(super) const MAX_OPERATORS_PER_BLOCK: usize = 500;

/// One `{{ }}` or `{% %}` block of a template source.
pub(super) struct Block<'s> {
    /// Line of its opening delimiter.
    line: usize,
    /// A statement (`{% %}`) rather than an expression (`{{ }}`).
    statement: bool,
    /// What is between the delimiters (whitespace-control `-` and `+` removed).
    content: &'s str,
}

/// The blocks of `source`, comments skipped; a block left open runs to the end.
pub(super) fn blocks(source: &str) -> Vec<Block<'_>> {
    let bytes = source.as_bytes();
    let mut found = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\n' {
            line += 1;
        }
        let next = bytes[i + 1];
        if bytes[i] != b'{' || !matches!(next, b'{' | b'%' | b'#') {
            i += 1;
            continue;
        }
        let close = if next == b'{' { b'}' } else { next };
        let start_line = line;
        let start = i + 2;
        let mut end = bytes.len();
        let mut quote = None;
        i += 2;
        while i < bytes.len() {
            let byte = bytes[i];
            if byte == b'\n' {
                line += 1;
            }
            match quote {
                Some(_) if byte == b'\\' => i += 1,
                Some(q) if byte == q => quote = None,
                Some(_) => {}
                None if byte == close && bytes.get(i + 1) == Some(&b'}') => {
                    end = i;
                    i += 1;
                    break;
                }
                None if next != b'#' && (byte == b'\'' || byte == b'"') => quote = Some(byte),
                None => {}
            }
            i += 1;
        }
        if next != b'#' {
            // One whitespace-control sign at each end (`{%-`, `-%}`), no more:
            // `{{ --1 }}` is an expression.
            let inner = source.get(start..end.min(source.len())).unwrap_or_default();
            let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
            let content = inner.strip_suffix(['-', '+']).unwrap_or(inner).trim();
            found.push(Block {
                line: start_line,
                statement: next == b'%',
                content,
            });
        }
        i += 1;
    }
    found
}

/// Identifiers of an expression outside string literals, each with whether
/// it stands alone: not an attribute (`x.name`), and not followed by an
/// attribute, an index or a call.
pub(super) fn identifiers(expression: &str) -> Vec<(&str, bool)> {
    let bytes = expression.as_bytes();
    let mut found = Vec::new();
    let mut quote = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match quote {
            Some(_) if byte == b'\\' => i += 1,
            Some(q) if byte == q => quote = None,
            Some(_) => {}
            None if byte == b'\'' || byte == b'"' => quote = Some(byte),
            None if byte.is_ascii_alphabetic() || byte == b'_' => {
                let start = i;
                while bytes
                    .get(i + 1)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                {
                    i += 1;
                }
                let before = expression[..start].trim_end().bytes().last();
                let after = expression[i + 1..].trim_start().bytes().next();
                let alone = before != Some(b'.') && !matches!(after, Some(b'.' | b'[' | b'('));
                found.push((&expression[start..=i], alone));
            }
            None => {}
        }
        i += 1;
    }
    found
}

/// Refuses template sources that would crash minijinja instead of failing:
/// an expression with so many operators that compiling it overflows the
/// stack, and a namespace stored inside itself (`{% set ns.x = ns %}`),
/// which minijinja formats and compares by recursing without end.
pub(super) fn check_template_source(source: &str) -> Result<()> {
    let mut namespaces: Vec<&str> = Vec::new();
    for block in blocks(source) {
        let operators = block
            .content
            .bytes()
            .filter(|b| b"+-*/%~.|[(<>=!".contains(b))
            .count()
            + identifiers(block.content)
                .iter()
                .filter(|(word, _)| {
                    matches!(*word, "not" | "and" | "or" | "is" | "in" | "if" | "else")
                })
                .count();
        if operators > MAX_OPERATORS_PER_BLOCK {
            return Err(DataError::template(format!(
                "line {}: a block with {operators} operators, more than the \
                 {MAX_OPERATORS_PER_BLOCK} allowed: refused, as compiling it could overflow \
                 the stack (real chat templates use a few dozen)",
                block.line
            )));
        }
        let Some(rest) = block
            .content
            .strip_prefix("set ")
            .filter(|_| block.statement)
        else {
            continue;
        };
        let Some((target, value)) = rest.split_once('=') else {
            continue;
        };
        let target = target.trim();
        let refers_to = |names: &[&str]| {
            identifiers(value)
                .into_iter()
                .any(|(word, alone)| alone && names.contains(&word))
        };
        match target.split_once('.') {
            // `{% set ns.x = ... %}`: the value must not hold that namespace or another.
            Some((object, _)) => {
                let mut held = namespaces.clone();
                held.push(object.trim());
                if refers_to(&held) {
                    return Err(DataError::template(format!(
                        "line {}: `{{% set {target} = {} %}}` stores a namespace in a \
                         namespace: minijinja cannot print or compare such a cycle (it would \
                         overflow the stack)",
                        block.line,
                        value.trim()
                    )));
                }
            }
            // `{% set ns = namespace(...) %}` and its aliases.
            None => {
                let value = value.trim_start();
                if value.starts_with("namespace(") || refers_to(&namespaces) {
                    namespaces.push(target);
                }
            }
        }
    }
    Ok(())
}

impl JinjaTemplate {
    pub(super) fn new(source: &str, tokenizer: &TextTokenizer) -> Result<Self> {
        check_template_source(source)?;
        let mut env = minijinja::Environment::new();
        // HF renders with trim_blocks and lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(DataError::template)?;
        env.set_syntax(syntax);
        // A template comes with the model: bound the work one render may do,
        // so a runaway loop is an error, not a hung run.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| DataError::template(format!("does not compile: {e}")))?;
        let end_texts = tokenizer
            .special()
            .end_of_turn
            .iter()
            .filter_map(|&id| tokenizer.piece(id))
            .collect();
        Ok(JinjaTemplate {
            env,
            bos_text: tokenizer.bos_text().unwrap_or_default().to_string(),
            eos_text: tokenizer.eos_text().unwrap_or_default().to_string(),
            end_texts,
        })
    }

    pub(super) fn render(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| message_value(m, m.content.clone()))
            .collect();
        self.render_values(messages, tools, add_generation_prompt)
    }

    pub(super) fn render_values(
        &self,
        messages: Vec<serde_json::Value>,
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.env.get_template("chat").map_err(DataError::template)?;
        // As transformers: `tools` is none when the conversation offers none,
        // else the definitions as written.
        let tools: Option<Vec<&serde_json::Value>> =
            (!tools.is_empty()).then(|| tools.iter().map(|t| &t.raw).collect());
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            tools => minijinja::Value::from(minijinja::value::Serde(tools)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_text.clone(),
            eos_token => self.eos_text.clone(),
        };
        template.render(ctx).map_err(|e| {
            if e.kind() == minijinja::ErrorKind::OutOfFuel {
                return DataError::template(format!(
                    "rendering stopped after {TEMPLATE_FUEL} steps of work on one conversation: \
                     the template runs away (a loop over a huge range?) {e}"
                ));
            }
            let mut message = e.to_string();
            if let Some(detail) = e.detail() {
                if !message.contains(detail) {
                    message = format!("{message}: {detail}");
                }
            }
            DataError::template(message)
        })
    }

    pub(super) fn encode(
        &self,
        tokenizer: &TextTokenizer,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<Tokenized> {
        let full = self.render(messages, tools, false)?;
        check_tool_turns_rendered(messages, &full)?;
        let spans = match self.spans_by_prefix(messages, tools, &full) {
            Some(spans) => spans,
            None => self.spans_by_markers(messages, tools, &full)?,
        };
        let (ids, offsets) = tokenizer.encode_with_offsets(&full)?;
        let mut mask = vec![false; ids.len()];
        let special = tokenizer.special();
        let mut last_span_closed = true;
        for (n, &(start, end)) in spans.iter().enumerate() {
            let inside: Vec<usize> = offsets
                .iter()
                .enumerate()
                .filter(|(_, &(s, e))| {
                    if s == e {
                        s >= start && s < end
                    } else {
                        e > start && s < end
                    }
                })
                .map(|(i, _)| i)
                .collect();
            // Train up to and including the token that closes the turn; what
            // follows it (e.g. the newline after `<|im_end|>`) is markup.
            let close = inside.iter().rposition(|&i| special.is_end_of_turn(ids[i]));
            let trained = match close {
                Some(at) => &inside[..=at],
                None => &inside[..],
            };
            for &i in trained {
                mask[i] = true;
            }
            if n + 1 == spans.len() {
                last_span_closed = close.is_some();
            }
        }
        let mut out = Tokenized { ids, mask };
        // A template that leaves the final turn open gets EOS appended, so
        // the model still learns to stop.
        if !spans.is_empty() && !last_span_closed {
            out.push(&[eos_or_error(tokenizer)?], true);
        }
        Ok(out)
    }

    /// Assistant spans from prefix renders: the text a template adds for
    /// message `i` is render(..=i) minus render(..i, generation prompt).
    pub(super) fn spans_by_prefix(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        full: &str,
    ) -> Option<Vec<(usize, usize)>> {
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..i], tools, true).ok()?;
            let through = self.render(&messages[..=i], tools, false).ok()?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return None;
            }
            // Some templates add nothing for the generation prompt and put the
            // role header in the message render; skip to the content then.
            let content_at = through[before.len()..]
                .find(message.content.as_str())
                .map_or(before.len(), |at| before.len() + at);
            spans.push((content_at, through.len()));
        }
        Some(spans)
    }

    /// Assistant spans from one render with markers around assistant content,
    /// each extended over an end-of-turn token that directly follows it.
    pub(super) fn spans_by_markers(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        full: &str,
    ) -> Result<Vec<(usize, usize)>> {
        // Markers wrap the content only: the text a template writes for tool
        // calls would fall outside them, untrained. Refuse rather than mask wrongly.
        if let Some(i) = messages.iter().position(|m| !m.tool_calls.is_empty()) {
            return Err(DataError::template(format!(
                "messages[{i}].tool_calls: cannot locate the tool calls in the rendered \
                 template (it does not render conversations prefix by prefix the same way)"
            )));
        }
        let marked: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let content = if m.role == Role::Assistant {
                    format!("{OPEN_MARK}{}{CLOSE_MARK}", m.content)
                } else {
                    m.content.clone()
                };
                message_value(m, content)
            })
            .collect();
        let rendered = self.render_values(marked, tools, false)?;
        let mut clean = String::with_capacity(rendered.len());
        let mut spans = Vec::new();
        let mut rest = rendered.as_str();
        let fail =
            || DataError::template("cannot locate the assistant turns in the rendered template");
        while let Some(open) = rest.find(OPEN_MARK) {
            clean.push_str(&rest[..open]);
            rest = &rest[open + OPEN_MARK.len()..];
            let close = rest.find(CLOSE_MARK).ok_or_else(fail)?;
            let start = clean.len();
            clean.push_str(&rest[..close]);
            spans.push((start, clean.len()));
            rest = &rest[close + CLOSE_MARK.len()..];
        }
        clean.push_str(rest);
        let assistants = messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        if clean != full || spans.len() != assistants || clean.contains(CLOSE_MARK) {
            return Err(fail());
        }
        for span in &mut spans {
            let after = &full[span.1..];
            if let Some(end) = self
                .end_texts
                .iter()
                .find(|t| !t.is_empty() && after.starts_with(t.as_str()))
            {
                span.1 += end.len();
            }
        }
        Ok(spans)
    }
}

/// A template that ignores `tool_calls` or tool results would train a call
/// as an empty turn and hide the results: refuse the conversation instead.
/// A call counts as rendered when the text names its function, a result
/// when the text holds its (trimmed) content.
pub(super) fn check_tool_turns_rendered(messages: &[Message], full: &str) -> Result<()> {
    for (i, message) in messages.iter().enumerate() {
        for (k, call) in message.tool_calls.iter().enumerate() {
            if !full.contains(call.name.as_str()) {
                return Err(DataError::template(format!(
                    "messages[{i}].tool_calls[{k}]: this chat template does not render tool \
                     calls (the text never names `{}`): the call would train as an empty turn; \
                     use a template that renders `tool_calls`",
                    call.name
                )));
            }
        }
        let content = message.content.trim();
        if message.role == Role::Tool && !content.is_empty() && !full.contains(content) {
            return Err(DataError::template(format!(
                "messages[{i}]: this chat template does not render tool results (the text \
                 lacks this result's content); use a template that renders `tool` messages"
            )));
        }
    }
    Ok(())
}

/// A message as transformers hands it to a template: a dict with `role` and
/// `content`, plus `tool_calls` (each `{"id", "type": "function",
/// "function": {"name", "arguments"}}`, arguments as an object),
/// `tool_call_id` and `name` when the message has them.
pub(super) fn message_value(message: &Message, content: String) -> serde_json::Value {
    let mut value = serde_json::json!({"role": message.role.as_str(), "content": content});
    if !message.tool_calls.is_empty() {
        value["tool_calls"] = serde_json::to_value(&message.tool_calls).unwrap_or_default();
    }
    if let Some(id) = &message.tool_call_id {
        value["tool_call_id"] = id.clone().into();
    }
    if let Some(name) = &message.name {
        value["name"] = name.clone().into();
    }
    value
}

pub(super) fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        message,
    ))
}

/// `strftime_now(format)` as HF provides it, for templates that print today's
/// date (UTC). Supports the common `%` codes.
pub(super) fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs, &format)
}

pub(super) fn format_utc(secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
