//! Streaming through Kafka: SSE exactly as OpenAI sends it, errors mid-stream, and callers
//! that go away (the provider call stops, the partial usage is billed).

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Failure};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

fn stream_request(text: &str, include_usage: bool) -> Value {
    let mut body = chat(text);
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_arrives_as_openai_sends_it_and_is_billed() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 12,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("stream me a story", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    let call = &stack.mock.calls()[0];
    assert_eq!(
        text, call.content,
        "the caller got exactly what the provider sent"
    );
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["finish_reason"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(finish, vec!["stop"]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!(usage["completion_tokens"], call.completion_tokens);

    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let row = stack
        .ch("SELECT status, prompt_tokens, completion_tokens, estimated FROM {db}.usage FINAL")
        .await;
    assert_eq!(
        row.trim(),
        format!(
            "completed\t{}\t{}\t0",
            call.prompt_tokens, call.completion_tokens
        )
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_is_billed_even_when_the_caller_did_not_ask_for_it() {
    let stack = Stack::start(StackOptions::default()).await;
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("no usage for me", false))
        .send()
        .await
        .unwrap();
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert!(
            chunk.get("usage").is_none_or(Value::is_null),
            "no usage chunk: {d}"
        );
    }
    // Sluice asked the provider for usage anyway: it is the bill.
    let call = &stack.mock.calls()[0];
    assert!(call.usage_reported);
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL WHERE estimated = 0",
            1,
            WAIT,
        )
        .await;
    assert_eq!(n, 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_failure_mid_stream_reaches_the_caller_and_is_billed() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 20,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    stack.mock.fail_next([Failure::MidStreamError {
        after_chunks: 5,
        error: None,
    }]);
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("this will break", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the stream had started");
    let data = sse_data(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"].is_string(),
        "ends with an error event: {last}"
    );
    assert!(!data.iter().any(|d| d == "[DONE]"));

    // The broken connection variant: the provider just hangs up.
    stack
        .mock
        .fail_next([Failure::MidStreamBreak { after_chunks: 4 }]);
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("this will hang up", false))
        .send()
        .await
        .unwrap();
    let data = sse_data(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_broken", "{last}");

    // Both are billed for what was generated, estimated since no usage chunk came.
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 2, WAIT)
        .await;
    assert_eq!(n, 2);
    let rows = stack
        .ch("SELECT status, estimated, completion_tokens > 0, prompt_tokens > 0 FROM {db}.usage FINAL")
        .await;
    assert_eq!(rows.lines().collect::<Vec<_>>(), vec!["failed\t1\t1\t1"; 2]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_that_disconnects_stops_the_provider_and_leaves_a_partial_bill() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 200,
            stream_chunk_delay: Duration::from_millis(50),
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let mut response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("a long story", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = String::new();
    while sse_data(&received).len() < 5 {
        let bytes = response.chunk().await.unwrap().expect("more events");
        received.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    drop(response);

    // The provider call is stopped well before its 200 tokens (10 s of chunks).
    let call = eventually(WAIT, || async {
        let call = stack.mock.calls().into_iter().next()?;
        call.ended_at.is_some().then_some(call)
    })
    .await
    .expect("the provider stream ended");
    assert!(call.client_gone, "Sluice hung up on the provider");
    assert!(call.finish_reason.is_none());
    assert!(
        call.completion_tokens < 200,
        "stopped early: {}",
        call.completion_tokens
    );
    assert_eq!(stack.mock.call_count(), 1, "not retried");
    let n = stack
        .wait_count("SELECT count() FROM {db}.results FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let result = stack
        .ch("SELECT status, error_kind, http_status FROM {db}.results FINAL")
        .await;
    assert_eq!(result.trim(), "failed\tclient_disconnected\t499");
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let usage = stack
        .ch("SELECT estimated, completion_tokens FROM {db}.usage FINAL")
        .await;
    let cols: Vec<&str> = usage.trim().split('\t').collect();
    assert_eq!(cols[0], "1", "estimated: the provider never sent usage");
    let billed: u32 = cols[1].parse().unwrap();
    assert!(
        billed > 0 && billed < 200,
        "partial tokens billed: {billed}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_misuse_is_rejected_up_front() {
    let stack = Stack::start(StackOptions::default()).await;
    let (status, body) = stack
        .post(
            "/v1/requests",
            KEY_A,
            stream_request("async stream?", false),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "stream");
    let mut request = chat("options without a stream");
    request["stream_options"] = json!({"include_usage": true});
    let (status, body) = stack.post("/v1/chat/completions", KEY_A, request).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "stream_options");
    // A provider error before the first chunk is a plain JSON error with its status.
    stack.mock.fail_next([Failure::status(400)]);
    let (status, body) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            stream_request("rejected", true),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].is_string());
    stack.stop().await;
}
