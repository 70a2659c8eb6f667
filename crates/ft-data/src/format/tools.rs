//! Function calling in one line: the `tools` list (JSON-schema function
//! definitions) and the assistant's `tool_calls`, parsed and checked field
//! by field.

use super::*;

/// One function call of an assistant turn. Read from and written as
/// `{"id": "…", "type": "function", "function": {"name": "…", "arguments": {…}}}`;
/// `arguments` may be read as a JSON string holding the object (OpenAI's
/// shape) and is always kept as the object (what chat templates expect).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ToolCallRepr", into = "ToolCallRepr")]
pub struct ToolCall {
    /// The call's id, which its result names in `tool_call_id`.
    pub id: Option<String>,
    /// The function called.
    pub name: String,
    /// The arguments: always a JSON object.
    pub arguments: Value,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ToolCallRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: FunctionRepr,
}

#[derive(Serialize, Deserialize)]
pub(super) struct FunctionRepr {
    name: String,
    arguments: Value,
}

pub(super) fn function_type() -> String {
    "function".into()
}

impl TryFrom<ToolCallRepr> for ToolCall {
    type Error = String;

    fn try_from(repr: ToolCallRepr) -> Result<Self, Self::Error> {
        let arguments = parse_arguments(&repr.function.arguments)?;
        Ok(ToolCall {
            id: repr.id,
            name: repr.function.name,
            arguments,
        })
    }
}

impl From<ToolCall> for ToolCallRepr {
    fn from(call: ToolCall) -> Self {
        ToolCallRepr {
            id: call.id,
            kind: function_type(),
            function: FunctionRepr {
                name: call.name,
                arguments: call.arguments,
            },
        }
    }
}

/// Call arguments as an object: given as one, or as a string holding one.
pub(super) fn parse_arguments(value: &Value) -> Result<Value, String> {
    match value {
        Value::Object(_) => Ok(value.clone()),
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(parsed @ Value::Object(_)) => Ok(parsed),
            Ok(other) => Err(format!(
                "the string holds {}, not an object",
                describe(&other)
            )),
            Err(e) => Err(format!("the string is not JSON: {e}")),
        },
        other => Err(format!(
            "{} is neither an object nor a string",
            describe(other)
        )),
    }
}

/// One tool a conversation offers: a function definition
/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
/// The raw JSON is kept (and is what serializes) so templates see the
/// definition exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct ToolSpec {
    /// The function's name.
    pub name: String,
    /// The JSON-schema of its arguments (`{"type": "object", …}`), if given.
    pub parameters: Option<Value>,
    /// The definition as written.
    pub raw: Value,
}

impl ToolSpec {
    /// The argument names the schema's `required` lists.
    pub fn required(&self) -> Vec<&str> {
        self.parameters
            .as_ref()
            .and_then(|p| p.get("required"))
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

impl TryFrom<Value> for ToolSpec {
    type Error = String;

    fn try_from(raw: Value) -> Result<Self, Self::Error> {
        let function = raw
            .get("function")
            .ok_or_else(|| "a tool needs a `function` object".to_string())?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| "a tool's function needs a `name`".to_string())?
            .to_string();
        let parameters = function.get("parameters").cloned();
        Ok(ToolSpec {
            name,
            parameters,
            raw,
        })
    }
}

impl From<ToolSpec> for Value {
    fn from(spec: ToolSpec) -> Self {
        spec.raw
    }
}

/// Reads a message's `tool_calls`: `Some(calls)` (empty when there are
/// none), `None` when something in them is wrong (each problem reported).
pub(super) fn check_tool_calls(
    msg: &Map<String, Value>,
    role: Option<Role>,
    path: &str,
    sink: &mut LineSink<'_>,
) -> Option<Vec<ToolCall>> {
    let calls_path = format!("{path}.tool_calls");
    let items = match msg.get("tool_calls") {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(items)) if items.is_empty() => return Some(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            let d = sink.error(
                DiagnosticKind::WrongType,
                &calls_path,
                "`tool_calls` must be an array",
            );
            d.expected = Some("array of calls".into());
            d.got = Some(describe(other));
            return None;
        }
    };
    if role.is_some_and(|r| r != Role::Assistant) {
        misplaced(sink, &calls_path, "tool_calls", "assistant", role);
        return None;
    }
    let mut calls = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let call_path = format!("{calls_path}[{k}]");
        let Value::Object(call) = item else {
            let d = sink.error(
                DiagnosticKind::WrongType,
                &call_path,
                "a tool call must be an object",
            );
            d.expected = Some(
                "{\"id\": …, \"type\": \"function\", \"function\": {\"name\": …, \"arguments\": …}}"
                    .into(),
            );
            d.got = Some(describe(item));
            continue;
        };
        match call.get("type") {
            None => {}
            Some(Value::String(t)) if t == "function" => {}
            Some(other) => {
                let d = sink.error(
                    DiagnosticKind::WrongType,
                    &format!("{call_path}.type"),
                    "a tool call's `type` must be \"function\"",
                );
                d.expected = Some("\"function\"".into());
                d.got = Some(describe(other));
            }
        }
        let id = optional_string(call, "id", &call_path, sink);
        let function_path = format!("{call_path}.function");
        let function = match call.get("function") {
            Some(Value::Object(function)) => function,
            None => {
                sink.error(
                    DiagnosticKind::MissingField,
                    &function_path,
                    "missing field `function`",
                )
                .expected = Some("{\"name\": …, \"arguments\": …}".into());
                continue;
            }
            Some(other) => {
                let d = sink.error(
                    DiagnosticKind::WrongType,
                    &function_path,
                    "`function` must be an object",
                );
                d.expected = Some("{\"name\": …, \"arguments\": …}".into());
                d.got = Some(describe(other));
                continue;
            }
        };
        let name = string_field(function, "name", &format!("{function_path}.name"), sink);
        let arguments_path = format!("{function_path}.arguments");
        let arguments = match function.get("arguments") {
            None => {
                sink.error(
                    DiagnosticKind::MissingField,
                    &arguments_path,
                    "missing field `arguments`",
                )
                .expected = Some("a JSON object, or a string holding one (`{}` for none)".into());
                None
            }
            Some(value) => match parse_arguments(value) {
                Ok(arguments) => Some(arguments),
                Err(why) => {
                    let d = sink.error(
                        DiagnosticKind::InvalidArguments,
                        &arguments_path,
                        format!("the arguments are not a JSON object: {why}"),
                    );
                    d.expected =
                        Some("a JSON object, or a string holding one (`{}` for none)".into());
                    d.got = Some(describe(value));
                    None
                }
            },
        };
        if let (Some(name), Some(arguments)) = (name, arguments) {
            calls.push(ToolCall {
                id,
                name,
                arguments,
            });
        }
    }
    (calls.len() == items.len()).then_some(calls)
}

/// Reads the line's `tools`: `Some(specs)` (empty when absent), `None`
/// when a definition is not a usable JSON-schema function (each problem
/// reported as `invalid_tool_schema`).
pub(super) fn check_tool_specs(
    object: &Map<String, Value>,
    sink: &mut LineSink<'_>,
) -> Option<Vec<ToolSpec>> {
    const SHAPE: &str = "{\"type\": \"function\", \"function\": {\"name\": …, \"description\": …, \"parameters\": {\"type\": \"object\", …}}}";
    let items = match object.get("tools") {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            let d = sink.error(
                DiagnosticKind::WrongType,
                "tools",
                "`tools` must be an array",
            );
            d.expected = Some("array of function definitions".into());
            d.got = Some(describe(other));
            return None;
        }
    };
    let mut specs = Vec::with_capacity(items.len());
    let mut ok = true;
    for (j, item) in items.iter().enumerate() {
        let path = format!("tools[{j}]");
        let mut fail = |field: String, message: String, expected: &str, got: Option<String>| {
            let d = sink.error(DiagnosticKind::InvalidToolSchema, &field, message);
            d.expected = Some(expected.into());
            d.got = got;
        };
        let Value::Object(tool) = item else {
            fail(
                path,
                "a tool must be an object".into(),
                SHAPE,
                Some(describe(item)),
            );
            ok = false;
            continue;
        };
        match tool.get("type") {
            None => {}
            Some(Value::String(t)) if t == "function" => {}
            Some(other) => {
                fail(
                    format!("{path}.type"),
                    "only function tools are supported".into(),
                    "\"function\"",
                    Some(describe(other)),
                );
                ok = false;
            }
        }
        let Some(Value::Object(function)) = tool.get("function") else {
            let got = tool
                .get("function")
                .map_or("no `function`".into(), describe);
            fail(
                format!("{path}.function"),
                "a tool needs a `function` object".into(),
                SHAPE,
                Some(got),
            );
            ok = false;
            continue;
        };
        match function.get("name") {
            Some(Value::String(name)) if !name.trim().is_empty() => {}
            other => {
                fail(
                    format!("{path}.function.name"),
                    "a function needs a non-empty `name`".into(),
                    "non-empty string",
                    Some(other.map_or("nothing".into(), describe)),
                );
                ok = false;
            }
        }
        if let Some(description) = function.get("description") {
            if !description.is_string() {
                fail(
                    format!("{path}.function.description"),
                    "`description` must be a string".into(),
                    "string",
                    Some(describe(description)),
                );
                ok = false;
            }
        }
        if let Some(parameters) = function.get("parameters") {
            ok &= check_parameters(
                parameters,
                &format!("{path}.function.parameters"),
                &mut fail,
            );
        }
        if ok {
            if let Ok(spec) = ToolSpec::try_from(item.clone()) {
                if let Some(first) = specs.iter().position(|s: &ToolSpec| s.name == spec.name) {
                    fail(
                        format!("{path}.function.name"),
                        format!("tools[{first}] already defines a function of this name"),
                        "a name no other tool has",
                        Some(format!("{:?}", spec.name)),
                    );
                    ok = false;
                }
                specs.push(spec);
            }
        }
    }
    ok.then_some(specs)
}

/// A function's `parameters` must be a JSON-schema object: `type: "object"`,
/// `properties` an object, `required` names among the properties.
pub(super) fn check_parameters(
    parameters: &Value,
    path: &str,
    fail: &mut impl FnMut(String, String, &str, Option<String>),
) -> bool {
    let Value::Object(schema) = parameters else {
        fail(
            path.into(),
            "`parameters` must be a JSON-schema object".into(),
            "{\"type\": \"object\", \"properties\": {…}, \"required\": […]}",
            Some(describe(parameters)),
        );
        return false;
    };
    let mut ok = true;
    match schema.get("type") {
        Some(Value::String(t)) if t == "object" => {}
        other => {
            fail(
                format!("{path}.type"),
                "`parameters` must be a JSON schema of type \"object\"".into(),
                "\"object\"",
                Some(other.map_or("nothing".into(), describe)),
            );
            ok = false;
        }
    }
    let properties = match schema.get("properties") {
        None => None,
        Some(Value::Object(properties)) => Some(properties),
        Some(other) => {
            fail(
                format!("{path}.properties"),
                "`properties` must be an object".into(),
                "an object of argument schemas",
                Some(describe(other)),
            );
            return false;
        }
    };
    match schema.get("required") {
        None => {}
        Some(Value::Array(names)) => {
            for (n, name) in names.iter().enumerate() {
                let field = format!("{path}.required[{n}]");
                match name {
                    Value::String(name) => {
                        if properties.is_some_and(|p| !p.contains_key(name)) {
                            fail(
                                field,
                                format!(
                                    "`required` names `{name}`, which `properties` does not define"
                                ),
                                "a name from `properties`",
                                Some(format!("{name:?}")),
                            );
                            ok = false;
                        }
                    }
                    other => {
                        fail(
                            field,
                            "`required` must list names".into(),
                            "string",
                            Some(describe(other)),
                        );
                        ok = false;
                    }
                }
            }
        }
        Some(other) => {
            fail(
                format!("{path}.required"),
                "`required` must be an array of names".into(),
                "array of strings",
                Some(describe(other)),
            );
            ok = false;
        }
    }
    ok
}
