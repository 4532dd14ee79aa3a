//! Writing the OpenAI answer shape: a `chat.completion`, its `chat.completion.chunk`s and
//! usage.

use serde_json::{json, Value};
use sluice_schemas::openai::{CompletionUsage, ErrorBody, PromptTokensDetails};

/// A successful completion, translated to OpenAI's response shape.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The response body the caller gets, as JSON.
    pub body: String,
    /// Usage as the provider reported it.
    pub usage: CompletionUsage,
}

/// What a translated provider stream yields, in the internal shape.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A `chat.completion.chunk` (JSON).
    Chunk(String),
    /// The provider failed mid-stream: its error in OpenAI's shape.
    Error(ErrorBody),
    /// The stream is complete (`[DONE]`).
    Done,
}

/// Turns one provider's server-sent events into the internal stream, event by event.
pub trait StreamToOpenAi {
    /// One event's `data` (every dialect repeats the event name in it) becomes zero or
    /// more items, pushed to `out`; data that is not the provider's JSON is an error.
    fn event(&mut self, data: &str, out: &mut Vec<StreamItem>) -> Result<(), serde_json::Error>;

    /// The provider's stream ended. A provider that marks its end in-band pushes nothing
    /// here; one whose stream simply stops (Gemini) pushes its last chunks and
    /// [`StreamItem::Done`] if the stream was complete.
    fn end(&mut self, _out: &mut Vec<StreamItem>) {}
}

/// Usage in OpenAI's terms: prompt tokens include cached ones.
pub fn usage(prompt: u32, completion: u32, cached: u32) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        prompt_tokens_details: (cached > 0).then_some(PromptTokensDetails {
            cached_tokens: cached,
        }),
    }
}

/// A tool call in an answer.
pub fn tool_call_json(id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
}

/// One choice of a `chat.completion`.
pub fn choice(index: u32, text: Option<String>, tool_calls: Vec<Value>, finish: &str) -> Value {
    let mut message = json!({"role": "assistant", "content": text});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish})
}

/// A whole `chat.completion` body.
pub fn completion(
    id: &str,
    created: i64,
    model: &str,
    choices: Vec<Value>,
    usage: &CompletionUsage,
) -> String {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    })
    .to_string()
}

/// Writes the `chat.completion.chunk`s of one streamed answer.
#[derive(Debug, Clone)]
pub struct Chunks {
    pub id: String,
    pub created: i64,
    pub model: String,
}

impl Chunks {
    fn chunk(&self, choices: Value, usage: Option<&CompletionUsage>) -> String {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = json!(usage);
        }
        chunk.to_string()
    }

    fn delta(&self, index: u32, delta: Value) -> String {
        self.chunk(
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]),
            None,
        )
    }

    /// The first chunk: the assistant role.
    pub fn role(&self, index: u32) -> String {
        self.delta(index, json!({"role": "assistant", "content": ""}))
    }

    pub fn text(&self, index: u32, text: &str) -> String {
        self.delta(index, json!({"content": text}))
    }

    /// A tool call begins: its position among the answer's tool calls, id and name.
    pub fn tool_start(&self, index: u32, position: u32, id: &str, name: &str) -> String {
        self.delta(
            index,
            json!({"tool_calls": [{"index": position, "id": id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
        )
    }

    /// More of a tool call's arguments (a JSON text, in pieces).
    pub fn tool_arguments(&self, index: u32, position: u32, arguments: &str) -> String {
        self.delta(
            index,
            json!({"tool_calls": [{"index": position, "function": {"arguments": arguments}}]}),
        )
    }

    pub fn finish(&self, index: u32, reason: &str) -> String {
        self.chunk(
            json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]),
            None,
        )
    }

    /// The usage chunk OpenAI sends last with `stream_options.include_usage`.
    pub fn usage(&self, usage: &CompletionUsage) -> String {
        self.chunk(json!([]), Some(usage))
    }
}

pub fn unix_now() -> i64 {
    sluice_schemas::now_ms() / 1000
}

/// An id for an answer whose provider gave none.
pub fn generated_id(prefix: &str) -> String {
    format!("{prefix}{:x}", sluice_schemas::now_ms())
}
