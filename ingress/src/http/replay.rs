//! An answer given again (an idempotent retry): the stored result, as JSON or as a stream
//! of OpenAI (or, on `/v1/messages`, Anthropic) events made from the completion, through
//! the same output guardrails as a live answer.

use serde_json::{json, Value};
use sluice_schemas::{Request, Result as ResultRecord, Status, StreamChunk};

use crate::lookup::StoredResult;
use crate::replies::ReplyEvent;

/// The attempt a replayed stream's chunks and result carry.
const REPLAY_ATTEMPT: &str = "replay";

/// The stored result of `request_id` as a result record, for the caller of `request` (a
/// retry of it).
pub(super) fn record(stored: StoredResult, request_id: String, request: &Request) -> ResultRecord {
    ResultRecord {
        request_id,
        team: request.team.clone(),
        key_id: request.key_id.clone(),
        priority: request.priority,
        model: stored.model,
        traceparent: None,
        status: Status::parse(&stored.status).unwrap_or(Status::Failed),
        http_status: stored.http_status,
        body: stored.body,
        error_kind: None,
        provider: String::new(),
        deployment: String::new(),
        attempts: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        created_at_ms: request.created_at_ms,
        started_at_ms: 0,
        finished_at_ms: stored.finished_at_ms,
        worker: REPLAY_ATTEMPT.into(),
        fallbacks: 0,
        routing_reason: None,
        location: None,
        replay: None,
        audit: None,
        calls: Vec::new(),
    }
}

/// The events of a stream that gives `result` again: its completion as chunks, then the
/// result; a failure is the result alone (answered as JSON with its status).
pub(super) fn stream_events(result: ResultRecord, include_usage: bool) -> Vec<ReplyEvent> {
    let chunks = if result.status == Status::Completed {
        completion_chunks(&result.body, include_usage)
    } else {
        Vec::new()
    };
    let mut events: Vec<ReplyEvent> = chunks
        .into_iter()
        .enumerate()
        .map(|(seq, data)| {
            ReplyEvent::Chunk(StreamChunk {
                request_id: result.request_id.clone(),
                // The result's own attempt: the stream ends as that attempt's.
                attempt: result.worker.clone(),
                seq: seq as i32,
                data,
                more: Vec::new(),
            })
        })
        .collect();
    events.push(ReplyEvent::End(Box::new(result)));
    events
}

/// Whether the request body asks for the usage chunk (`stream_options.include_usage`).
pub(super) fn wants_usage(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|b| b.pointer("/stream_options/include_usage").cloned())
        == Some(Value::Bool(true))
}

/// A `chat.completion` as the `chat.completion.chunk`s a provider would have streamed: per
/// choice, one delta with the whole message (role, content, refusal, tool calls) and one
/// with its finish reason; then the usage chunk if asked for. Empty if it does not parse.
fn completion_chunks(body: &str, include_usage: bool) -> Vec<String> {
    let Ok(completion) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let chunk = |choices: Value| {
        json!({
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
            "choices": choices,
        })
        .to_string()
    };
    let mut chunks = Vec::new();
    for choice in completion["choices"].as_array().into_iter().flatten() {
        let index = &choice["index"];
        let message = &choice["message"];
        let mut delta = json!({"role": "assistant"});
        for field in ["content", "refusal"] {
            if message[field].is_string() {
                delta[field] = message[field].clone();
            }
        }
        if let Some(calls) = message["tool_calls"].as_array() {
            let indexed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(i);
                    call
                })
                .collect();
            delta["tool_calls"] = Value::Array(indexed);
        }
        chunks.push(chunk(
            json!([{"index": index, "delta": delta, "finish_reason": null}]),
        ));
        chunks.push(chunk(
            json!([{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]),
        ));
    }
    if include_usage && !completion["usage"].is_null() {
        let mut last: Value = serde_json::from_str(&chunk(json!([]))).unwrap_or_default();
        last["usage"] = completion["usage"].clone();
        chunks.push(last.to_string());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_streams_as_the_chunks_it_was_made_of() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "hi",
                "tool_calls": [{"id": "c1", "type": "function",
                                "function": {"name": "f", "arguments": "{\"x\":1}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        })
        .to_string();
        let chunks: Vec<Value> = completion_chunks(&body, true)
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        assert_eq!(chunks.len(), 3);
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["id"], "chatcmpl-1");
        }
        let delta = &chunks[0]["choices"][0]["delta"];
        assert_eq!(delta["content"], "hi");
        assert_eq!(delta["tool_calls"][0]["index"], 0);
        assert_eq!(delta["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[2]["choices"], json!([]));
        assert_eq!(chunks[2]["usage"]["total_tokens"], 5);
        assert_eq!(
            completion_chunks(&body, false).len(),
            2,
            "no usage unless asked"
        );
        assert!(completion_chunks("not json", true).is_empty());
    }

    #[test]
    fn usage_is_wanted_only_when_asked_for() {
        assert!(wants_usage(r#"{"stream_options":{"include_usage":true}}"#));
        assert!(!wants_usage(
            r#"{"stream_options":{"include_usage":false}}"#
        ));
        assert!(!wants_usage("{}"));
    }
}
