//! Function calling across a conversation: every call names a defined
//! function with the arguments it requires, every result answers a call,
//! and Mistral v3's call ids.

use super::tools::*;
use super::*;

/// Whether `id` fits Mistral v3: exactly 9 ASCII letters or digits.
pub(super) fn is_mistral_call_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// How to fix a call id for Mistral v3.
pub(super) const MISTRAL_ID_FIX: &str =
    "Mistral v3 needs 9-character call ids such as `a1b2c3d4e`; \
                              rename the id in the call and its result";

/// Cross-checks of a parsed conversation: each result answers a call of the
/// assistant turn before it, each call names a function `tools` defines with
/// the arguments its schema requires, and (for Mistral v3) call ids fit.
pub(super) fn check_tool_use(
    messages: &[Message],
    tools: Option<&[ToolSpec]>,
    options: &CheckOptions,
    sink: &mut LineSink<'_>,
) {
    let calls = messages.iter().map(|m| m.tool_calls.len()).sum::<usize>();
    // The calls of the latest assistant turn, and which results they got.
    let mut round: Option<(usize, Vec<bool>)> = None;
    let mut results_in_round = 0;
    for (i, message) in messages.iter().enumerate() {
        match message.role {
            Role::Assistant => {
                round = (!message.tool_calls.is_empty())
                    .then(|| (i, vec![false; message.tool_calls.len()]));
                results_in_round = 0;
                check_calls(i, message, tools, options, sink);
            }
            Role::Tool => {
                let n = results_in_round;
                results_in_round += 1;
                check_result(i, n, message, messages, &mut round, options, sink);
            }
            Role::System | Role::User => round = None,
        }
    }
    if calls > 0 && tools.is_some_and(<[ToolSpec]>::is_empty) {
        sink.warning(
            DiagnosticKind::MissingTools,
            "tools",
            "the conversation calls functions but has no `tools` list: the model is not shown \
             what the functions are",
        );
    }
}

/// The checks of one assistant turn's calls.
pub(super) fn check_calls(
    i: usize,
    message: &Message,
    tools: Option<&[ToolSpec]>,
    options: &CheckOptions,
    sink: &mut LineSink<'_>,
) {
    for (k, call) in message.tool_calls.iter().enumerate() {
        let call_path = format!("messages[{i}].tool_calls[{k}]");
        if let Some(id) = &call.id {
            if let Some(first) = message.tool_calls[..k]
                .iter()
                .position(|c| c.id.as_ref() == Some(id))
            {
                let d = sink.error(
                    DiagnosticKind::InvalidToolCallId,
                    &format!("{call_path}.id"),
                    format!(
                        "tool_calls[{first}] has the same id: a result could not tell them apart"
                    ),
                );
                d.expected = Some("an id no other call of the turn has".into());
                d.got = Some(format!("{id:?}"));
            }
        }
        if options.mistral_call_ids {
            match &call.id {
                None => {
                    let d = sink.error(
                        DiagnosticKind::InvalidToolCallId,
                        &call_path,
                        format!("the call has no id; {MISTRAL_ID_FIX}"),
                    );
                    d.expected = Some("`id`: 9 ASCII letters or digits".into());
                    d.got = Some("no `id`".into());
                }
                Some(id) if !is_mistral_call_id(id) => {
                    let d = sink.error(
                        DiagnosticKind::InvalidToolCallId,
                        &format!("{call_path}.id"),
                        MISTRAL_ID_FIX,
                    );
                    d.expected = Some("9 ASCII letters or digits".into());
                    d.got = Some(format!("{id:?}"));
                }
                Some(_) => {}
            }
        }
        let Some(tools) = tools.filter(|t| !t.is_empty()) else {
            continue;
        };
        let Some((j, spec)) = tools.iter().enumerate().find(|(_, t)| t.name == call.name) else {
            let names: Vec<String> = tools.iter().map(|t| format!("{:?}", t.name)).collect();
            let d = sink.error(
                DiagnosticKind::UnknownFunction,
                &format!("{call_path}.function.name"),
                "a call to a function `tools` does not define",
            );
            d.expected = Some(format!("one of {}", names.join(", ")));
            d.got = Some(format!("{:?}", call.name));
            continue;
        };
        let given: Vec<&str> = call
            .arguments
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let missing: Vec<&str> = spec
            .required()
            .into_iter()
            .filter(|name| !given.contains(name))
            .collect();
        if !missing.is_empty() {
            let d = sink.error(
                DiagnosticKind::InvalidArguments,
                &format!("{call_path}.function.arguments"),
                format!(
                    "missing argument{} {} that tools[{j}] (`{}`) requires",
                    if missing.len() == 1 { "" } else { "s" },
                    missing
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    spec.name
                ),
            );
            d.expected = Some(format!("arguments {}", spec.required().join(", ")));
            d.got = Some(if given.is_empty() {
                "no argument".into()
            } else {
                format!("arguments {}", given.join(", "))
            });
        }
    }
}

/// The checks of one tool result, the `n`-th after the latest assistant turn.
pub(super) fn check_result(
    i: usize,
    n: usize,
    message: &Message,
    messages: &[Message],
    round: &mut Option<(usize, Vec<bool>)>,
    options: &CheckOptions,
    sink: &mut LineSink<'_>,
) {
    let path = format!("messages[{i}]");
    if options.mistral_call_ids && message.tool_call_id.is_none() {
        let d = sink.error(
            DiagnosticKind::InvalidToolCallId,
            &path,
            "the result has no `tool_call_id`: Mistral v3 names the call each result answers",
        );
        d.expected = Some("`tool_call_id`: the 9-character id of its call".into());
        d.got = Some("no `tool_call_id`".into());
    }
    let Some((at, answered)) = round.as_mut() else {
        let before = i
            .checked_sub(1)
            .map_or("the start of the conversation".into(), |p| {
                format!("a {:?} message", messages[p].role.as_str())
            });
        let d = sink.error(
            DiagnosticKind::UnmatchedToolResult,
            &format!("{path}.role"),
            "a tool result with no call before it",
        );
        d.expected = Some("an assistant message with `tool_calls` before the results".into());
        d.got = Some(before);
        return;
    };
    let calls = &messages[*at].tool_calls;
    let k = match &message.tool_call_id {
        Some(id) => {
            let Some(k) = calls.iter().position(|c| c.id.as_ref() == Some(id)) else {
                let ids: Vec<String> = calls
                    .iter()
                    .filter_map(|c| c.id.as_ref().map(|id| format!("{id:?}")))
                    .collect();
                let d = sink.error(
                    DiagnosticKind::UnmatchedToolResult,
                    &format!("{path}.tool_call_id"),
                    format!("no call of messages[{at}] has this id"),
                );
                d.expected = Some(if ids.is_empty() {
                    format!("an id of a call of messages[{at}] (its calls have none)")
                } else {
                    format!("one of {}", ids.join(", "))
                });
                d.got = Some(format!("{id:?}"));
                return;
            };
            k
        }
        None => {
            if n >= calls.len() {
                let d = sink.error(
                    DiagnosticKind::UnmatchedToolResult,
                    &format!("{path}.role"),
                    format!(
                        "a tool result with no matching call: messages[{at}] makes {} call{} and \
                         this is result {} (a result without `tool_call_id` is matched to the \
                         calls by order, as Hugging Face templates do)",
                        calls.len(),
                        if calls.len() == 1 { "" } else { "s" },
                        n + 1
                    ),
                );
                d.expected = Some(format!(
                    "at most {} result{}",
                    calls.len(),
                    if calls.len() == 1 { "" } else { "s" }
                ));
                d.got = Some(format!("result {}", n + 1));
                return;
            }
            n
        }
    };
    if answered[k] {
        let d = sink.error(
            DiagnosticKind::UnmatchedToolResult,
            &path,
            format!("messages[{at}].tool_calls[{k}] already has a result"),
        );
        d.expected = Some("one result per call".into());
        d.got = Some("a second result".into());
        return;
    }
    answered[k] = true;
    if let Some(name) = &message.name {
        if *name != calls[k].name {
            let how = if message.tool_call_id.is_some() {
                "by `tool_call_id`".to_string()
            } else {
                "by order, as Hugging Face templates do, since it has no `tool_call_id`".to_string()
            };
            let d = sink.error(
                DiagnosticKind::UnmatchedToolResult,
                &format!("{path}.name"),
                format!(
                    "the result names another function than its call, messages[{at}].tool_calls[{k}] (matched {how})"
                ),
            );
            d.expected = Some(format!("{:?}", calls[k].name));
            d.got = Some(format!("{name:?}"));
        }
    }
}
