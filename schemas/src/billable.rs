//! Which fields of the internal (OpenAI) chat request may reach a provider.
//!
//! Sluice bills what its price table knows: prompt and completion text tokens. A field that
//! makes a provider bill something else (a dearer service tier, audio tokens, web search
//! calls, built-in tools) would let a caller spend past its budget and be billed 0 for it,
//! so the pass-through is an allow-list: the ingress refuses anything else with a 400
//! before it publishes, and the worker checks again before it calls (a record published by
//! an older ingress, or by anything else that can write the topic).

use serde_json::{Map, Value};

/// Top-level fields that pass through: they change what is generated, not what it costs
/// per token (`n` multiplies completions; the reservation covers it).
pub const ALLOWED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "reasoning_effort",
    "verbosity",
    "metadata",
    "store",
    "modalities",
    "service_tier",
];

/// Why a request field may not reach a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The field (`service_tier`, `tools[0].type`, `messages[2].content[0].type`, ...).
    pub param: String,
    pub problem: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not accepted: {}", self.param, self.problem)
    }
}

fn refused(param: impl Into<String>, problem: &'static str) -> Result<(), Refused> {
    Err(Refused {
        param: param.into(),
        problem,
    })
}

/// Checks a chat request body (a JSON object, Sluice's own `sluice` field removed).
pub fn check(request: &Map<String, Value>) -> Result<(), Refused> {
    for (name, value) in request {
        match name.as_str() {
            "service_tier" => match value {
                // `auto` is the project's default tier, which the operator (not the caller)
                // sets at the provider.
                Value::Null => {}
                Value::String(t) if t == "auto" || t == "default" => {}
                _ => {
                    return refused(
                        "service_tier",
                        "only \"auto\" or \"default\": other tiers (priority, flex, scale) are billed at prices Sluice does not charge",
                    )
                }
            },
            "modalities" => {
                let text_only = match value {
                    Value::Null => true,
                    Value::Array(m) => m.iter().all(|m| m.as_str() == Some("text")),
                    _ => false,
                };
                if !text_only {
                    return refused(
                        "modalities",
                        "only [\"text\"]: audio output is billed as audio tokens, which Sluice does not price",
                    );
                }
            }
            "tools" => {
                for (i, tool) in value.as_array().map_or(&[][..], Vec::as_slice).iter().enumerate() {
                    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
                    if kind != "function" && kind != "custom" {
                        return refused(
                            format!("tools[{i}].type"),
                            "only function tools: built-in tools (web search, file search, code interpreter, ...) are billed per call, which Sluice does not price",
                        );
                    }
                }
            }
            "messages" => check_messages(value)?,
            "audio" => {
                return refused(
                    "audio",
                    "audio output is billed as audio tokens, which Sluice does not price",
                )
            }
            "web_search_options" => {
                return refused(
                    "web_search_options",
                    "web search is billed per call, which Sluice does not price",
                )
            }
            "prediction" => {
                return refused(
                    "prediction",
                    "rejected prediction tokens are billed as completion tokens beyond the answer's cap",
                )
            }
            other if !ALLOWED_FIELDS.contains(&other) => {
                return refused(
                    other.to_string(),
                    "unknown fields are not passed to providers (a provider may bill for them)",
                )
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why a content part of this `type` may not reach a provider, if it may not: audio input
/// is billed as audio tokens.
pub fn refused_part(kind: &str) -> Option<&'static str> {
    (kind == "input_audio")
        .then_some("audio input is billed as audio tokens, which Sluice does not price")
}

/// `messages[i].content[j].type` for a refused part.
pub fn part_param(message: usize, part: usize) -> String {
    format!("messages[{message}].content[{part}].type")
}

fn check_messages(messages: &Value) -> Result<(), Refused> {
    let messages = messages.as_array().map_or(&[][..], Vec::as_slice);
    for (i, message) in messages.iter().enumerate() {
        let Some(Value::Array(parts)) = message.get("content") else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            if let Some(problem) = part
                .get("type")
                .and_then(Value::as_str)
                .and_then(refused_part)
            {
                return refused(part_param(i, j), problem);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    fn checked(v: Value) -> Result<(), Refused> {
        check(v.as_object().unwrap())
    }

    #[test]
    fn billable_fields_are_refused_and_the_rest_passes() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(checked(base.clone()), Ok(()));
        let ok = [
            json!({"service_tier": "auto"}),
            json!({"service_tier": "default"}),
            json!({"modalities": ["text"]}),
            json!({"n": 2, "temperature": 0.1, "logprobs": true, "top_logprobs": 2, "seed": 1}),
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
        ];
        for extra in ok {
            let mut body = base.as_object().unwrap().clone();
            body.extend(extra.as_object().unwrap().clone());
            assert_eq!(check(&body), Ok(()), "{extra}");
        }
        let bad = [
            (json!({"service_tier": "priority"}), "service_tier"),
            (json!({"service_tier": "flex"}), "service_tier"),
            (json!({"service_tier": 1}), "service_tier"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (
                json!({"audio": {"voice": "alloy", "format": "wav"}}),
                "audio",
            ),
            (json!({"web_search_options": {}}), "web_search_options"),
            (
                json!({"prediction": {"type": "content", "content": "x"}}),
                "prediction",
            ),
            (
                json!({"tools": [{"type": "function"}, {"type": "web_search"}]}),
                "tools[1].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"some_new_paid_feature": true}),
                "some_new_paid_feature",
            ),
        ];
        for (extra, param) in bad {
            let mut body = base.as_object().unwrap().clone();
            body.extend(extra.as_object().unwrap().clone());
            let err = check(&body).unwrap_err();
            assert_eq!(err.param, param, "{extra}");
        }
    }
}
