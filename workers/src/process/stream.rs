//! Streamed completions: provider events are forwarded to the caller's reply partition as
//! they arrive, in order; the result and usage follow. Usage is produced however the stream
//! ends (done, provider error, broken connection, caller gone), estimated when the provider
//! never reported it.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Map, Value};
use sluice_schemas::openai::{CompletionUsage, ErrorBody};
use sluice_schemas::{encode, Attempt, Request, Status, StreamChunk};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::attempts::Ended;
use super::chain::{Attempted, Call, Chain, Leg, Tally};
use super::outcome::Outcome;
use super::Processor;
use crate::error::ProviderError;
use crate::providers::Provider;
use crate::routing::stats::Kind;
use crate::routing::Target;

/// How a started stream ended.
enum End {
    Done,
    /// The provider sent an error event (its JSON), which becomes the caller's error event.
    ProviderError(String),
    Broken(ProviderError),
    IdleTimeout(Duration),
    CallerGone,
    /// A per-chunk post hook refused the stream (crate::hooks).
    Refused(crate::hooks::Refusal),
}

/// What the stream produced so far.
#[derive(Default)]
struct Collected {
    id: Option<String>,
    model: Option<String>,
    created: Option<i64>,
    text: String,
    /// Tool calls assembled from their deltas, by position.
    tool_calls: Vec<Value>,
    finish_reason: Option<String>,
    usage: Option<CompletionUsage>,
}

impl Collected {
    fn absorb(&mut self, chunk: &Value) {
        if self.id.is_none() {
            self.id = chunk["id"].as_str().map(str::to_string);
            self.model = chunk["model"].as_str().map(str::to_string);
            self.created = chunk["created"].as_i64();
        }
        if let Some(choice) = chunk["choices"].get(0) {
            if let Some(text) = choice["delta"]["content"].as_str() {
                self.text.push_str(text);
            }
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
            {
                let position = call["index"].as_u64().unwrap_or(0) as usize;
                while self.tool_calls.len() <= position {
                    self.tool_calls.push(json!({"id": "", "type": "function",
                        "function": {"name": "", "arguments": ""}}));
                }
                let entry = &mut self.tool_calls[position];
                if let Some(id) = call["id"].as_str() {
                    entry["id"] = json!(id);
                }
                for key in ["name", "arguments"] {
                    if let Some(part) = call["function"][key].as_str() {
                        let joined =
                            format!("{}{part}", entry["function"][key].as_str().unwrap_or(""));
                        entry["function"][key] = json!(joined);
                    }
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(reason.to_string());
            }
        }
        if chunk["usage"].is_object() {
            self.usage = serde_json::from_value(chunk["usage"].clone()).ok();
        }
    }

    /// The whole completion, as a non-streaming call would have returned it.
    fn completion(&self, usage: CompletionUsage) -> String {
        let mut message = json!({"role": "assistant", "content": self.text});
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = json!(self.tool_calls);
            if self.text.is_empty() {
                message["content"] = Value::Null;
            }
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "finish_reason": self.finish_reason,
            }],
            "usage": usage,
        })
        .to_string()
    }
}

/// Token counts to bill: the provider's, or a tiktoken estimate of what was generated.
fn usage_or_estimate(request: &Request, collected: &Collected) -> (CompletionUsage, bool) {
    if let Some(usage) = collected.usage {
        return (usage, false);
    }
    let bpe = tiktoken_rs::bpe_for_model(&request.model)
        .unwrap_or_else(|_| tiktoken_rs::cl100k_base_singleton());
    let prompt = request.prompt();
    let completion = bpe.encode_ordinary(&collected.text).len() as u32;
    let usage = CompletionUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: None,
    };
    (usage, true)
}

/// A streamed call of the chain: stopped when the caller goes away; once events flow,
/// the caller has them, so whatever follows is its outcome (no retry, no splice).
struct Stream<'a> {
    cancel: &'a CancellationToken,
    caller_wants_usage: bool,
}

impl Leg for Stream<'_> {
    fn cancel(&self) -> Option<&CancellationToken> {
        Some(self.cancel)
    }

    async fn call(
        &self,
        processor: &Processor,
        call: Call<'_>,
        log: &mut Vec<Attempt>,
    ) -> Attempted {
        let (request, target) = (call.request, call.target);
        let cancel = self.cancel;
        let called = std::time::Instant::now();
        let started = tokio::select! {
            s = target.client.stream(call.body.clone(), call.timeout) => s,
            _ = cancel.cancelled() => {
                log.push(processor.attempt_ended(request, call.attempt, Ended::Abandoned));
                return Attempted::Abandoned;
            }
        };
        let events = match started {
            Ok(events) => {
                super::metrics::first_token(&call.attempt);
                let now = std::time::Instant::now();
                target.stats.observe(Kind::FirstToken, now - called, now);
                events
            }
            Err(error) => {
                log.push(processor.attempt_ended(request, call.attempt, Ended::Failed(&error)));
                return Attempted::Failed(error);
            }
        };
        // Events flow: from here on there is no retry, the caller has them.
        let forwarded = processor
            .forward(request, events, target, self.caller_wants_usage, cancel)
            .await;
        match &forwarded.end {
            End::Done => target.breaker.success(),
            End::CallerGone | End::ProviderError(_) => {}
            End::Refused(_) => target.breaker.success(),
            End::Broken(_) | End::IdleTimeout(_) => {
                target.breaker.failure(std::time::Instant::now());
            }
        }
        let outcome = forwarded.into_outcome(request, target, call.tally, call.started_at_ms);
        target
            .throttle
            .settle(call.estimate, u64::from(outcome.usage.total_tokens));
        log.push(processor.attempt_ended(
            request,
            call.attempt,
            Ended::Usage {
                usage: outcome.usage,
                estimated: outcome.estimated,
                outcome: outcome.error_kind.unwrap_or("completed"),
            },
        ));
        Attempted::Answered(outcome)
    }
}

impl Processor {
    pub(super) async fn run_stream(
        &self,
        request: &Request,
        mut body: Map<String, Value>,
        chain: Chain,
        cancel: &CancellationToken,
        started_at_ms: i64,
    ) -> Outcome {
        let caller_wants_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        body.insert("stream".into(), Value::Bool(true));
        // Always ask for usage: it is the bill. Forwarded only if the caller asked for it.
        let mut options = body
            .get("stream_options")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        options.insert("include_usage".into(), Value::Bool(true));
        body.insert("stream_options".into(), Value::Object(options));

        let leg = Stream {
            cancel,
            caller_wants_usage,
        };
        self.run_chain(request, &body, chain, &leg, started_at_ms)
            .await
    }

    /// Forwards events to the reply partition until the stream ends.
    async fn forward(
        &self,
        request: &Request,
        mut events: crate::providers::EventStream,
        target: &Target,
        caller_wants_usage: bool,
        cancel: &CancellationToken,
    ) -> Forwarded {
        let live = self.lanes.start();
        let lane = live.lane;
        let mut collected = Collected::default();
        let mut deliveries = Vec::new();
        // Events forwarded, and of those, sent in records.
        let mut seq = 0;
        let mut sent = 0;
        let mut coalescer = super::coalesce::Coalescer::new(&self.streaming);
        let hooked = self.hooks.has_chunk(request);
        let mut decisions: Vec<String> = Vec::new();
        let idle = target.deployment.timeout_ms;
        let end = loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break End::CallerGone,
                () = super::coalesce::until(coalescer.due()) => {
                    let held = coalescer.take(tokio::time::Instant::now());
                    deliveries.push(self.send_chunk(request, lane, &mut sent, held));
                    continue;
                }
                e = tokio::time::timeout(idle, events.next()) => e,
            };
            let data = match event {
                Err(_) => break End::IdleTimeout(idle),
                // The connection ended without [DONE].
                Ok(None) => break End::Broken(ProviderError::StreamBroken),
                Ok(Some(Err(error))) => break End::Broken(error),
                Ok(Some(Ok(data))) => data,
            };
            if data.trim() == "[DONE]" {
                break End::Done;
            }
            let Ok(mut chunk) = serde_json::from_str::<Value>(&data) else {
                break End::Broken(ProviderError::StreamBroken);
            };
            if chunk.get("error").is_some() {
                break End::ProviderError(data);
            }
            let mut data = data;
            if hooked && chunk["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                match self.hooks.chunk(request, &mut chunk).await {
                    Ok(said) => {
                        for decision in said {
                            if !decisions.contains(&decision) {
                                decisions.push(decision);
                            }
                        }
                        data = chunk.to_string();
                    }
                    Err(refusal) => break End::Refused(refusal),
                }
            }
            collected.absorb(&chunk);
            let usage_only = chunk["choices"].as_array().is_some_and(Vec::is_empty)
                && chunk["usage"].is_object();
            if !usage_only || caller_wants_usage {
                let now = tokio::time::Instant::now();
                // The first token goes out at once (coalesce.rs).
                if let Some(events) = coalescer.push_chunk(&chunk, data, now) {
                    deliveries.push(self.send_chunk(request, lane, &mut sent, events));
                }
                seq += 1;
            }
        };
        let held = coalescer.take(tokio::time::Instant::now());
        if !held.is_empty() {
            deliveries.push(self.send_chunk(request, lane, &mut sent, held));
        }
        // The end follows every chunk without waiting for their acks: the reply goes to the
        // same partition from the same idempotent producer (events.rs), which Kafka keeps in
        // order, and is itself awaited before the request is committed. Waiting added a
        // broker round trip to the end of every stream. The acks are only watched; a lost
        // chunk shows at the ingress as a seq gap, which ends the stream with an error.
        tokio::spawn(
            async move {
                for delivery in deliveries {
                    if let Err(error) = delivery.await {
                        tracing::warn!(%error, "stream chunk not delivered");
                    }
                }
            }
            .instrument(tracing::Span::current()),
        );
        Forwarded {
            end,
            collected,
            chunks: seq,
            decisions,
            lane,
        }
    }

    /// Sends `events` (at least one) as one record, numbered from `sent`, the count of
    /// events sent before them.
    fn send_chunk(
        &self,
        request: &Request,
        lane: super::processor::Lane,
        sent: &mut i32,
        events: Vec<String>,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let seq = *sent;
        *sent += i32::try_from(events.len()).unwrap_or(i32::MAX);
        let Some(reply) = &request.reply else {
            return Box::pin(async { Ok(()) });
        };
        let mut events = events.into_iter();
        let Some(data) = events.next() else {
            return Box::pin(async { Ok(()) });
        };
        super::metrics::stream_record(events.len(), lane);
        let chunk = StreamChunk {
            request_id: request.request_id.clone(),
            attempt: self.worker_id.clone(),
            seq,
            data,
            more: events.collect(),
        };
        let payload = match encode(&chunk) {
            Ok(p) => p,
            Err(e) => return Box::pin(async move { Err(e.to_string()) }),
        };
        let headers = OwnedHeaders::new().insert(Header {
            key: sluice_schemas::REPLY_KIND_HEADER,
            value: Some(sluice_schemas::REPLY_KIND_CHUNK),
        });
        let record = FutureRecord::to(&reply.topic)
            .partition(reply.partition)
            .key(&request.request_id)
            .payload(&payload)
            .headers(headers);
        // Enqueued now, in order; the idempotent producer keeps that order per partition.
        match self.reply_producer(lane).send_result(record) {
            Ok(delivery) => Box::pin(async move {
                match delivery.await {
                    Ok(OwnedDeliveryResult::Ok(_)) => Ok(()),
                    Ok(OwnedDeliveryResult::Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("producer dropped".into()),
                }
            }),
            Err((e, _)) => Box::pin(async move { Err(e.to_string()) }),
        }
    }
}

struct Forwarded {
    end: End,
    collected: Collected,
    chunks: i32,
    /// Per-chunk hooks' decisions, each once.
    decisions: Vec<String>,
    /// The producer its chunks went on, which its end takes too.
    lane: super::processor::Lane,
}

impl Forwarded {
    fn into_outcome(
        mut self,
        request: &Request,
        target: &Target,
        tally: &Tally,
        started_at_ms: i64,
    ) -> Outcome {
        let deployment = &target.deployment;
        let (usage, estimated) = usage_or_estimate(request, &self.collected);
        let (status, http_status, error_kind, body) = match self.end {
            End::Done => (
                Status::Completed,
                200,
                None,
                self.collected.completion(usage),
            ),
            End::ProviderError(data) => (
                Status::Failed,
                502,
                Some("upstream_error"),
                match serde_json::from_str::<ErrorBody>(&data) {
                    Ok(provider_error) => provider_error.to_json(),
                    Err(_) => ErrorBody::new(
                        "upstream_error",
                        Some("stream_error"),
                        "The provider reported an error mid-stream.",
                    )
                    .to_json(),
                },
            ),
            End::Broken(error) => (
                Status::Failed,
                502,
                Some("stream_broken"),
                ErrorBody::new(
                    "upstream_error",
                    Some("stream_broken"),
                    format!(
                        "The provider stream broke after {} chunks: {error}",
                        self.chunks
                    ),
                )
                .to_json(),
            ),
            End::IdleTimeout(idle) => (
                Status::Failed,
                504,
                Some("timeout"),
                ErrorBody::new(
                    "timeout",
                    Some("stream_idle_timeout"),
                    format!("The provider sent nothing for {} ms.", idle.as_millis()),
                )
                .to_json(),
            ),
            End::CallerGone => (
                Status::Failed,
                499,
                Some("client_disconnected"),
                ErrorBody::new(
                    "invalid_request_error",
                    Some("client_disconnected"),
                    "The caller disconnected; the provider call was stopped.",
                )
                .to_json(),
            ),
            End::Refused(refusal) => {
                self.decisions.push(refusal.decision);
                (
                    Status::Failed,
                    refusal.status,
                    Some("hook_refused"),
                    ErrorBody::new("invalid_request_error", Some(refusal.code), refusal.message)
                        .to_json(),
                )
            }
        };
        tracing::debug!(
            chunks = self.chunks,
            estimated,
            status = status.as_str(),
            "stream ended"
        );
        Outcome {
            status,
            http_status,
            body,
            error_kind,
            provider: deployment.provider.kind().into(),
            deployment: deployment.name.clone(),
            served_model: deployment.model.clone(),
            attempts: tally.attempts,
            fallbacks: tally.fallbacks,
            usage,
            estimated,
            started_at_ms,
            attempt_log: Vec::new(),
            routing_reason: None,
            decisions: self.decisions,
            lane: self.lane,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_tool_call_is_assembled_for_the_result() {
        let mut collected = Collected::default();
        for chunk in [
            json!({"id": "c1", "model": "m", "created": 1, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ] {
            collected.absorb(&chunk);
        }
        let body: Value =
            serde_json::from_str(&collected.completion(CompletionUsage::default())).unwrap();
        assert_eq!(
            body["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]})
        );
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    }
}
