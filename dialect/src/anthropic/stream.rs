//! Streams, both ways: Anthropic's server-sent events as OpenAI `chat.completion.chunk`s
//! ([`ToOpenAi`], the workers' Anthropic provider), and the OpenAI chunks of one answer as
//! Anthropic's events ([`FromOpenAi`], the ingress's streamed `/v1/messages`).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use sluice_schemas::openai::ErrorBody;

use super::error;
use super::response::{message_id, stop_reason, usage_from_openai, Usage};
use crate::openai::{self, Chunks, StreamItem, StreamToOpenAi};

/// Anthropic's stream events as OpenAI chunks.
pub struct ToOpenAi {
    chunks: Option<Chunks>,
    usage: Usage,
    /// Tool-use content blocks (by block index) and their position among tool calls.
    tools: HashMap<u64, u32>,
    /// Blocks of the JSON-mode tool, whose input is streamed as content.
    json_blocks: HashSet<u64>,
    json_tool: Option<String>,
}

impl ToOpenAi {
    pub fn new(json_tool: Option<String>) -> ToOpenAi {
        ToOpenAi {
            chunks: None,
            usage: Usage::default(),
            tools: HashMap::new(),
            json_blocks: HashSet::new(),
            json_tool,
        }
    }

    fn chunks(&mut self) -> &Chunks {
        self.chunks.get_or_insert_with(|| Chunks {
            id: openai::generated_id("msg_"),
            created: openai::unix_now(),
            model: String::new(),
        })
    }
}

impl StreamToOpenAi for ToOpenAi {
    fn event(&mut self, data: &str, out: &mut Vec<StreamItem>) -> Result<(), serde_json::Error> {
        let event: Value = serde_json::from_str(data)?;
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let message = &event["message"];
                self.chunks = Some(Chunks {
                    id: message["id"].as_str().unwrap_or("").to_string(),
                    created: openai::unix_now(),
                    model: message["model"].as_str().unwrap_or("").to_string(),
                });
                if let Ok(usage) = serde_json::from_value(message["usage"].clone()) {
                    self.usage.update(usage);
                }
                out.push(StreamItem::Chunk(self.chunks().role(0)));
            }
            "content_block_start" => {
                let block = &event["content_block"];
                match block["type"].as_str() {
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or("");
                        if !text.is_empty() {
                            out.push(StreamItem::Chunk(self.chunks().text(0, text)));
                        }
                    }
                    Some("tool_use") => {
                        let name = block["name"].as_str().unwrap_or("");
                        if Some(name) == self.json_tool.as_deref() {
                            self.json_blocks.insert(index);
                        } else {
                            let position = self.tools.len() as u32;
                            self.tools.insert(index, position);
                            let id = block["id"].as_str().unwrap_or("");
                            out.push(StreamItem::Chunk(
                                self.chunks().tool_start(0, position, id, name),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.push(StreamItem::Chunk(
                            self.chunks().text(0, delta["text"].as_str().unwrap_or("")),
                        ));
                    }
                    Some("input_json_delta") => {
                        let partial = delta["partial_json"].as_str().unwrap_or("");
                        if self.json_blocks.contains(&index) {
                            out.push(StreamItem::Chunk(self.chunks().text(0, partial)));
                        } else if let Some(position) = self.tools.get(&index).copied() {
                            out.push(StreamItem::Chunk(
                                self.chunks().tool_arguments(0, position, partial),
                            ));
                        }
                    }
                    // Thinking and signatures have no place in a chat completion.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Ok(usage) = serde_json::from_value(event["usage"].clone()) {
                    self.usage.update(usage);
                }
                let stop = event["delta"]["stop_reason"].as_str();
                let reason = if stop == Some("tool_use") && self.tools.is_empty() {
                    "stop"
                } else {
                    super::response::finish_reason(stop)
                };
                out.push(StreamItem::Chunk(self.chunks().finish(0, reason)));
            }
            "message_stop" => {
                let usage = self.usage.openai();
                out.push(StreamItem::Chunk(self.chunks().usage(&usage)));
                out.push(StreamItem::Done);
            }
            "error" => {
                let error = error::to_openai(data).unwrap_or_else(|| {
                    ErrorBody::new(
                        "api_error",
                        Some("api_error"),
                        "The provider failed mid-stream.",
                    )
                });
                out.push(StreamItem::Error(error));
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }
}

/// One Anthropic server-sent event: its `event:` name and `data:` JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: &'static str,
    pub data: String,
}

fn event(name: &'static str, data: Value) -> Event {
    Event {
        name,
        data: data.to_string(),
    }
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    None,
    Text,
    Tool,
}

/// Turns the OpenAI chunks of one stream into Anthropic's events.
#[derive(Debug)]
pub struct FromOpenAi {
    model: String,
    /// The ingress's own count, sent in `message_start` before the provider's is known.
    prompt_estimate: i32,
    started: bool,
    block: Block,
    /// Index of the next content block.
    next_index: u32,
    stop_reason: &'static str,
    usage: Option<Value>,
}

impl FromOpenAi {
    pub fn new(model: &str, prompt_estimate: i32) -> FromOpenAi {
        FromOpenAi {
            model: model.to_string(),
            prompt_estimate,
            started: false,
            block: Block::None,
            next_index: 0,
            stop_reason: "end_turn",
            usage: None,
        }
    }
    fn start(&mut self, id: &str, model: Option<&str>, out: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(id), "type": "message", "role": "assistant", "content": [],
                "model": model.unwrap_or(&self.model), "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.prompt_estimate.max(0), "output_tokens": 0}}}),
        ));
    }

    fn close_block(&mut self, out: &mut Vec<Event>) {
        if self.block != Block::None {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.next_index - 1}),
            ));
            self.block = Block::None;
        }
    }

    fn open_block(&mut self, kind: Block, block: Value, out: &mut Vec<Event>) {
        self.close_block(out);
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": self.next_index, "content_block": block}),
        ));
        self.next_index += 1;
        self.block = kind;
    }

    /// One OpenAI chunk (JSON text).
    pub fn chunk(&mut self, data: &str) -> Vec<Event> {
        let mut out = Vec::new();
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        self.start(
            chunk["id"].as_str().unwrap_or(""),
            chunk["model"].as_str(),
            &mut out,
        );
        if chunk["usage"].is_object() {
            self.usage = Some(chunk["usage"].clone());
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.block != Block::Text {
                self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            let index = self.next_index - 1;
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
        {
            if let Some(id) = call["id"].as_str() {
                self.open_block(
                    Block::Tool,
                    json!({"type": "tool_use", "id": id, "name": call["function"]["name"], "input": {}}),
                    &mut out,
                );
            }
            let arguments = call["function"]["arguments"].as_str().unwrap_or("");
            if self.block == Block::Tool && !arguments.is_empty() {
                let index = self.next_index - 1;
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                ));
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.stop_reason = stop_reason(Some(finish));
        }
        out
    }

    /// The stream completed.
    pub fn done(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.start("", None, &mut out);
        self.close_block(&mut out);
        let usage = match &self.usage {
            Some(u) => usage_from_openai(u),
            None => json!({"output_tokens": 0}),
        };
        out.push(event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                   "usage": usage}),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    /// The stream failed; `body` is an OpenAI error body.
    pub fn error(&mut self, body: &str) -> Vec<Event> {
        vec![event("error", error::stream_from_openai(body))]
    }
}
