//! Tool calls: a request that forces one (`tool_choice` "required" or a named function) is
//! answered with a call of that function instead of text.

use serde_json::Value;

use super::{message_text, messages};

/// A function call the mock answers with instead of text.
pub(super) struct ToolCall {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) arguments: String,
}

/// The call a request forces: `tool_choice` "required" (the first function tool) or
/// `{"type": "function", "function": {"name"}}`, unless the last message already is a tool
/// result (then the mock answers in text, as a model does after it got what it asked for).
/// The arguments are `{"<first property of the tool's parameters, else input>": "<the last
/// user message's text>"}`.
pub fn forced_tool_call_of(request: &Value) -> Option<(String, String)> {
    let last_role = messages(request).last()?.get("role")?.as_str()?;
    if last_role == "tool" {
        return None;
    }
    let functions = request
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|t| (t.get("type")?.as_str()? == "function").then(|| t.get("function"))?);
    let tool = match request.get("tool_choice")? {
        Value::String(choice) if choice == "required" => functions.into_iter().next()?,
        Value::Object(choice) => {
            let name = choice.get("function")?.get("name")?.as_str()?;
            functions
                .into_iter()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name))?
        }
        _ => return None,
    };
    let name = tool.get("name")?.as_str()?.to_owned();
    let property = tool
        .get("parameters")
        .and_then(|p| p.get("properties"))
        .and_then(Value::as_object)
        .and_then(|p| p.keys().next().cloned())
        .unwrap_or_else(|| "input".into());
    let seed = messages(request)
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let arguments = serde_json::json!({ property: seed }).to_string();
    Some((name, arguments))
}

pub(super) fn forced_tool_call(request: &Value) -> Option<ToolCall> {
    let (name, arguments) = forced_tool_call_of(request)?;
    Some(ToolCall {
        id: format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
        name,
        arguments,
    })
}
