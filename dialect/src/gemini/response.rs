//! Answers: a Gemini `GenerateContentResponse` as an OpenAI chat completion
//! ([`to_openai`]).
//!
//! Usage: `promptTokenCount` (cached content included, as `cachedContentTokenCount`),
//! `candidatesTokenCount` plus `thoughtsTokenCount` (thinking is billed as output).

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_schemas::openai::CompletionUsage;

use crate::openai::{self, Completion};

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    thoughts_token_count: u32,
    #[serde(default)]
    cached_content_token_count: u32,
}

impl UsageMetadata {
    pub(crate) fn openai(self) -> CompletionUsage {
        openai::usage(
            self.prompt_token_count,
            self.candidates_token_count
                .saturating_add(self.thoughts_token_count),
            self.cached_content_token_count,
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Response {
    #[serde(default)]
    pub(crate) candidates: Vec<Candidate>,
    #[serde(default)]
    pub(crate) usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    pub(crate) model_version: Option<String>,
    #[serde(default)]
    pub(crate) response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Candidate {
    #[serde(default)]
    pub(crate) content: Option<Value>,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
    #[serde(default)]
    pub(crate) index: Option<u32>,
}

impl Candidate {
    pub(crate) fn parts(&self) -> &[Value] {
        self.content
            .as_ref()
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

/// Gemini's finish reason as OpenAI's.
pub fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// Text of a part that is answer text (thought summaries are not).
pub(crate) fn part_text(part: &Value) -> Option<&str> {
    if part.get("thought") == Some(&Value::Bool(true)) {
        return None;
    }
    part.get("text").and_then(Value::as_str)
}

/// A part's function call: (id if Gemini gave one, name, arguments as JSON text).
pub(crate) fn part_call(part: &Value) -> Option<(Option<&str>, &str, String)> {
    let call = part.get("functionCall")?;
    Some((
        call.get("id").and_then(Value::as_str),
        call.get("name").and_then(Value::as_str).unwrap_or(""),
        call.get("args")
            .cloned()
            .unwrap_or_else(|| json!({}))
            .to_string(),
    ))
}

pub(crate) fn call_id(given: Option<&str>, position: usize) -> String {
    given.map_or_else(
        || format!("{}_{position}", openai::generated_id("call_")),
        str::to_string,
    )
}

/// A Gemini `GenerateContentResponse` as an OpenAI chat completion.
pub fn to_openai(body: &str, model: &str) -> Result<Completion, serde_json::Error> {
    let response: Response = serde_json::from_str(body)?;
    let mut choices = Vec::new();
    for (i, candidate) in response.candidates.iter().enumerate() {
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in candidate.parts() {
            if let Some(t) = part_text(part) {
                text.push_str(t);
            }
            if let Some((id, name, arguments)) = part_call(part) {
                calls.push(openai::tool_call_json(
                    &call_id(id, calls.len()),
                    name,
                    &arguments,
                ));
            }
        }
        let finish = finish_reason(
            candidate.finish_reason.as_deref().unwrap_or("STOP"),
            !calls.is_empty(),
        );
        let content = (!text.is_empty() || calls.is_empty()).then_some(text);
        choices.push(openai::choice(
            candidate.index.unwrap_or(i as u32),
            content,
            calls,
            finish,
        ));
    }
    if choices.is_empty() {
        // The prompt was blocked (`promptFeedback.blockReason`): no candidate at all.
        choices.push(openai::choice(0, None, Vec::new(), "content_filter"));
    }
    let usage = response.usage_metadata.unwrap_or_default().openai();
    let id = response
        .response_id
        .unwrap_or_else(|| openai::generated_id("gen-"));
    Ok(Completion {
        body: openai::completion(
            &id,
            openai::unix_now(),
            response.model_version.as_deref().unwrap_or(model),
            choices,
            &usage,
        ),
        usage,
    })
}
