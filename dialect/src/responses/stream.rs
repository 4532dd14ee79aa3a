//! OpenAI `chat.completion.chunk`s as the Responses API's typed events: `response.created`,
//! `response.in_progress`, then per output item `response.output_item.added`, its deltas
//! (`response.output_text.delta` in a `content_part`, or
//! `response.function_call_arguments.delta`) and its `.done` events, and last
//! `response.completed` (or `response.incomplete`) with the whole response and its usage;
//! a failure is an `error` event and `response.failed`. Every event has a
//! `sequence_number`. [`ToOpenAi`] is the inverse, for the workers: a provider's
//! Responses events as the internal chunks.

use std::collections::HashMap;

use serde_json::{json, Value};
use sluice_schemas::openai::ErrorBody;

pub use crate::anthropic::stream::Event;
use crate::openai::{self, Chunks, StreamItem, StreamToOpenAi};

use super::response::{
    chat_usage, finish_reason, function_item, message_item, object, response_id, status, usage,
};

/// The output item being streamed.
#[derive(Debug)]
enum Item {
    Message {
        id: String,
        text: String,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Turns the OpenAI chunks of one stream into Responses events.
#[derive(Debug)]
pub struct FromOpenAi {
    id: String,
    model: String,
    created_at: u64,
    sequence: u64,
    started: bool,
    open: Option<Item>,
    /// Items finished, as they appear in the response's `output`.
    output: Vec<Value>,
    /// The chat tool-call index of the open call.
    call_index: Option<u64>,
    finish: Option<String>,
    usage: Value,
}

impl FromOpenAi {
    pub fn new(request_id: &str, model: &str, created_at: u64) -> FromOpenAi {
        FromOpenAi {
            id: response_id(request_id),
            model: model.to_string(),
            created_at,
            sequence: 0,
            started: false,
            open: None,
            output: Vec::new(),
            call_index: None,
            finish: None,
            usage: Value::Null,
        }
    }

    fn event(&mut self, name: &'static str, mut data: Value, out: &mut Vec<Event>) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push(Event {
            name,
            data: data.to_string(),
        });
    }

    fn response(&self, status: &str, incomplete: Value, usage: Value) -> Value {
        object(
            &self.id,
            self.created_at,
            &self.model,
            status,
            incomplete,
            self.output.clone(),
            usage,
        )
    }

    fn start(&mut self, out: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.response("in_progress", Value::Null, Value::Null);
        self.event("response.created", json!({"response": response}), out);
        let response = self.response("in_progress", Value::Null, Value::Null);
        self.event("response.in_progress", json!({"response": response}), out);
    }

    /// Ends the open item with its `.done` events.
    fn close(&mut self, out: &mut Vec<Event>) {
        let index = self.output.len();
        let item = match self.open.take() {
            None => return,
            Some(Item::Message { id, text }) => {
                let common = json!({"item_id": id, "output_index": index, "content_index": 0});
                let mut done = common.clone();
                done["text"] = json!(text);
                self.event("response.output_text.done", done, out);
                let mut part = common;
                part["part"] = json!({"type": "output_text", "text": text, "annotations": []});
                self.event("response.content_part.done", part, out);
                message_item(&id, &text, "completed")
            }
            Some(Item::Call {
                call_id,
                name,
                arguments,
            }) => {
                let item = function_item(&call_id, &name, &arguments, "completed");
                self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": item["id"], "output_index": index, "arguments": arguments}),
                    out,
                );
                item
            }
        };
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
            out,
        );
        self.output.push(item);
        self.call_index = None;
    }

    fn text(&mut self, delta: &str, out: &mut Vec<Event>) {
        let index = self.output.len();
        if !matches!(self.open, Some(Item::Message { .. })) {
            self.close(out);
            let id = format!("msg_{}_{index}", &self.id[5..]);
            self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {"type": "message", "id": id,
                       "status": "in_progress", "role": "assistant", "content": []}}),
                out,
            );
            self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
                out,
            );
            self.open = Some(Item::Message {
                id,
                text: String::new(),
            });
        }
        if let Some(Item::Message { id, text }) = &mut self.open {
            text.push_str(delta);
            let data =
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta});
            self.event("response.output_text.delta", data, out);
        }
    }

    fn call(&mut self, call: &Value, out: &mut Vec<Event>) {
        let chat_index = call["index"].as_u64().unwrap_or(0);
        if self.call_index != Some(chat_index) {
            self.close(out);
            let call_id = call["id"].as_str().unwrap_or_default().to_string();
            let name = call["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let item = function_item(&call_id, &name, "", "in_progress");
            let index = self.output.len();
            self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
                out,
            );
            self.open = Some(Item::Call {
                call_id,
                name,
                arguments: String::new(),
            });
            self.call_index = Some(chat_index);
        }
        let delta = call["function"]["arguments"].as_str().unwrap_or_default();
        let index = self.output.len();
        if let (
            Some(Item::Call {
                call_id, arguments, ..
            }),
            false,
        ) = (&mut self.open, delta.is_empty())
        {
            arguments.push_str(delta);
            let data =
                json!({"item_id": format!("fc_{call_id}"), "output_index": index, "delta": delta});
            self.event("response.function_call_arguments.delta", data, out);
        }
    }

    /// One OpenAI chunk (JSON text).
    pub fn chunk(&mut self, data: &str) -> Vec<Event> {
        let mut out = Vec::new();
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if let Some(model) = chunk["model"].as_str() {
            if !self.started {
                self.model = model.to_string();
            }
        }
        self.start(&mut out);
        if let Some(choice) = chunk["choices"].get(0) {
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                self.text(text, &mut out);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                self.call(call, &mut out);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish = Some(reason.to_string());
            }
        }
        if chunk["usage"].is_object() {
            self.usage = usage(&chunk["usage"]);
        }
        out
    }

    /// The stream completed: the open item ends, then `response.completed` (or
    /// `response.incomplete`) with the whole response.
    pub fn done(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close(&mut out);
        let (status, incomplete) = status(self.finish.as_deref());
        let response = self.response(status, incomplete, self.usage.clone());
        let name = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(name, json!({"response": response}), &mut out);
        out
    }

    /// The stream failed; `body` is an OpenAI error body: an `error` event, then
    /// `response.failed`.
    pub fn error(&mut self, body: &str) -> Vec<Event> {
        let mut out = Vec::new();
        self.start(&mut out);
        let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let error = &parsed["error"];
        let code = error["code"]
            .as_str()
            .or(error["type"].as_str())
            .unwrap_or("server_error");
        let message = error["message"].as_str().unwrap_or("The request failed.");
        self.event(
            "error",
            json!({"code": code, "message": message, "param": error["param"]}),
            &mut out,
        );
        let mut response = self.response("failed", Value::Null, self.usage.clone());
        response["error"] = json!({"code": code, "message": message});
        self.event("response.failed", json!({"response": response}), &mut out);
        out
    }
}

/// A provider's Responses API events as OpenAI chunks (the workers' side of a deployment
/// that speaks it): `response.created` is the role chunk, text deltas are content chunks,
/// a function call's `output_item.added` and argument deltas are tool-call chunks, and
/// `response.completed` / `response.incomplete` the finish and usage chunks, then the end.
/// `response.failed` and `error` are the provider's error. Other events (reasoning,
/// `.done` repeats of what the deltas said) add nothing to a chat stream.
#[derive(Debug, Default)]
pub struct ToOpenAi {
    chunks: Option<Chunks>,
    /// Function-call items (by output index) and their position among tool calls.
    calls: HashMap<u64, u32>,
    /// An error was passed on: the `response.failed` after an `error` event is the same one.
    failed: bool,
}

impl ToOpenAi {
    pub fn new() -> ToOpenAi {
        ToOpenAi::default()
    }

    fn chunks(&mut self) -> &Chunks {
        self.chunks.get_or_insert_with(|| Chunks {
            id: openai::generated_id("resp_"),
            created: openai::unix_now(),
            model: String::new(),
        })
    }
}

/// OpenAI's error body of a Responses `error` object (`code`, `message`).
fn error_body(error: &Value) -> ErrorBody {
    let code = error["code"].as_str().unwrap_or("server_error");
    let message = error["message"]
        .as_str()
        .unwrap_or("The provider's response failed.");
    ErrorBody::new("upstream_error", Some(code), message)
}

impl StreamToOpenAi for ToOpenAi {
    fn event(&mut self, data: &str, out: &mut Vec<StreamItem>) -> Result<(), serde_json::Error> {
        let event: Value = serde_json::from_str(data)?;
        let index = event["output_index"].as_u64().unwrap_or(0);
        match event["type"].as_str().unwrap_or("") {
            "response.created" => {
                let response = &event["response"];
                self.chunks = Some(Chunks {
                    id: response["id"].as_str().unwrap_or_default().to_string(),
                    created: response["created_at"]
                        .as_i64()
                        .unwrap_or_else(openai::unix_now),
                    model: response["model"].as_str().unwrap_or_default().to_string(),
                });
                out.push(StreamItem::Chunk(self.chunks().role(0)));
            }
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                let item = &event["item"];
                let position = self.calls.len() as u32;
                self.calls.insert(index, position);
                let (id, name) = (
                    item["call_id"].as_str().unwrap_or_default(),
                    item["name"].as_str().unwrap_or_default(),
                );
                out.push(StreamItem::Chunk(
                    self.chunks().tool_start(0, position, id, name),
                ));
                if let Some(arguments) = item["arguments"].as_str().filter(|a| !a.is_empty()) {
                    out.push(StreamItem::Chunk(
                        self.chunks().tool_arguments(0, position, arguments),
                    ));
                }
            }
            "response.output_text.delta" => {
                let delta = event["delta"].as_str().unwrap_or_default();
                out.push(StreamItem::Chunk(self.chunks().text(0, delta)));
            }
            "response.function_call_arguments.delta" => {
                if let Some(position) = self.calls.get(&index).copied() {
                    let delta = event["delta"].as_str().unwrap_or_default();
                    out.push(StreamItem::Chunk(
                        self.chunks().tool_arguments(0, position, delta),
                    ));
                }
            }
            "response.completed" | "response.incomplete" => {
                let response = &event["response"];
                let reason = finish_reason(response, !self.calls.is_empty());
                let usage = chat_usage(&response["usage"]);
                out.push(StreamItem::Chunk(self.chunks().finish(0, reason)));
                out.push(StreamItem::Chunk(self.chunks().usage(&usage)));
                out.push(StreamItem::Done);
            }
            "response.failed" | "error" if !self.failed => {
                self.failed = true;
                let error = match event.get("response") {
                    Some(response) => &response["error"],
                    None => &event,
                };
                out.push(StreamItem::Error(error_body(error)));
            }
            _ => {}
        }
        Ok(())
    }
}
