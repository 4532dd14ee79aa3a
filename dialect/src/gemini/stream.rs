//! Streams: Gemini's server-sent events (each a whole `GenerateContentResponse`) as OpenAI
//! `chat.completion.chunk`s ([`ToOpenAi`]). A stream has no end marker: it is complete when
//! a chunk carried a `finishReason`.

use serde_json::Value;
use sluice_schemas::openai::CompletionUsage;

use super::error::error_body;
use super::response::{call_id, finish_reason, part_call, part_text, Response};
use crate::openai::{self, Chunks, StreamItem, StreamToOpenAi};

/// Gemini's stream as OpenAI chunks.
pub struct ToOpenAi {
    model: String,
    chunks: Option<Chunks>,
    usage: Option<CompletionUsage>,
    /// Tool calls so far (their positions), per candidate index.
    calls: std::collections::HashMap<u32, u32>,
    finished: bool,
}

impl ToOpenAi {
    pub fn new(model: &str) -> ToOpenAi {
        ToOpenAi {
            model: model.to_string(),
            chunks: None,
            usage: None,
            calls: std::collections::HashMap::new(),
            finished: false,
        }
    }
}

impl StreamToOpenAi for ToOpenAi {
    fn event(&mut self, data: &str, out: &mut Vec<StreamItem>) -> Result<(), serde_json::Error> {
        let value: Value = serde_json::from_str(data)?;
        if let Some(error) = value.get("error") {
            out.push(StreamItem::Error(error_body(error)));
            return Ok(());
        }
        let response: Response = serde_json::from_value(value)?;
        let chunks = match &self.chunks {
            Some(chunks) => chunks.clone(),
            None => {
                let chunks = Chunks {
                    id: response
                        .response_id
                        .clone()
                        .unwrap_or_else(|| openai::generated_id("gen-")),
                    created: openai::unix_now(),
                    model: response
                        .model_version
                        .clone()
                        .unwrap_or_else(|| self.model.clone()),
                };
                out.push(StreamItem::Chunk(chunks.role(0)));
                self.chunks = Some(chunks.clone());
                chunks
            }
        };
        for (i, candidate) in response.candidates.iter().enumerate() {
            let index = candidate.index.unwrap_or(i as u32);
            for part in candidate.parts() {
                if let Some(text) = part_text(part) {
                    if !text.is_empty() {
                        out.push(StreamItem::Chunk(chunks.text(index, text)));
                    }
                }
                if let Some((id, name, arguments)) = part_call(part) {
                    let position = self.calls.entry(index).or_insert(0);
                    let id = call_id(id, *position as usize);
                    out.push(StreamItem::Chunk(
                        chunks.tool_start(index, *position, &id, name),
                    ));
                    out.push(StreamItem::Chunk(
                        chunks.tool_arguments(index, *position, &arguments),
                    ));
                    *position += 1;
                }
            }
            if let Some(reason) = &candidate.finish_reason {
                let called = self.calls.get(&index).is_some_and(|n| *n > 0);
                out.push(StreamItem::Chunk(
                    chunks.finish(index, finish_reason(reason, called)),
                ));
                self.finished = true;
            }
        }
        if let Some(usage) = response.usage_metadata {
            self.usage = Some(usage.openai());
        }
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<StreamItem>) {
        if !self.finished {
            // Cut before the last chunk: no end, so the worker sees a broken stream.
            return;
        }
        if let (Some(chunks), Some(usage)) = (&self.chunks, &self.usage) {
            out.push(StreamItem::Chunk(chunks.usage(usage)));
        }
        out.push(StreamItem::Done);
    }
}
