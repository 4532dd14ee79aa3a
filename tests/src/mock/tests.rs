//! The mock over real HTTP, asserting the exact wire shapes a client of OpenAI sees.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

async fn mock(behaviour: Behaviour) -> MockProvider {
    MockProvider::start(behaviour).await.unwrap()
}

fn words(completion_tokens: u32) -> Behaviour {
    Behaviour {
        completion_tokens,
        ..Behaviour::default()
    }
}

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
}

fn streaming(prompt: &str, include_usage: Option<bool>) -> Value {
    let mut body = chat(prompt);
    body["stream"] = json!(true);
    if let Some(include_usage) = include_usage {
        body["stream_options"] = json!({"include_usage": include_usage});
    }
    body
}

async fn post(mock: &MockProvider, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body)
}

/// The `data:` payloads of an SSE body, checking every event is `data: ...\n\n`.
fn sse_data(body: &str) -> Vec<&str> {
    assert!(body.ends_with("\n\n"), "unterminated event in {body:?}");
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| event.strip_prefix("data: ").unwrap())
        .collect()
}

/// Parsed chunks, checking they share one id, `created` and model; returns them without those.
fn chunks(data: &[&str]) -> Vec<Value> {
    let parsed: Vec<Value> = data
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect();
    let id = parsed[0]["id"].clone();
    let id = id.as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    parsed
        .into_iter()
        .map(|mut chunk| {
            let fields = chunk.as_object_mut().unwrap();
            assert_eq!(fields.remove("id").unwrap(), id);
            assert!(fields.remove("created").unwrap().as_u64().unwrap() > 1_700_000_000);
            chunk
        })
        .collect()
}

/// The fields every chunk carries besides id and created.
fn chunk(choices: Value) -> Value {
    json!({
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
        "choices": choices,
    })
}

fn role_chunk() -> Value {
    chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                  "logprobs": null, "finish_reason": null}]),
    )
}

fn content_chunk(text: &str) -> Value {
    chunk(
        json!([{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]),
    )
}

fn finish_chunk(reason: &str) -> Value {
    chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}]))
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

/// A chunk as sent with `include_usage`: `"usage": null` added.
fn with_null_usage(mut chunk: Value) -> Value {
    chunk["usage"] = Value::Null;
    chunk
}

/// Reads a body until the connection breaks; returns what arrived and whether it broke.
async fn read_until_break(mut response: reqwest::Response) -> (String, bool) {
    let mut received = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => return (String::from_utf8(received).unwrap(), false),
            Err(_) => return (String::from_utf8(received).unwrap(), true),
        }
    }
}

#[tokio::test]
async fn non_streaming_answer_is_openais_shape() {
    let mock = mock(words(5)).await;
    let response = post(&mock, &chat("ping 42")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let raw = response.text().await.unwrap();
    assert!(raw.starts_with(r#"{"id":"chatcmpl-"#), "{raw}");

    let mut body: Value = serde_json::from_str(&raw).unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    let fields = body.as_object_mut().unwrap();
    fields.remove("id");
    assert!(fields.remove("created").unwrap().as_u64().unwrap() > 1_700_000_000);
    assert_eq!(
        body,
        json!({
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "ping 42 ping 42 ping",
                            "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            // 3 + (3 + 2 words)
            "usage": usage(8, 5),
            "service_tier": "default",
            "system_fingerprint": "fp_mock"
        })
    );

    let calls = mock.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(call.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(call.body.as_ref(), Some(&chat("ping 42")));
    assert_eq!(call.status, Some(200));
    assert_eq!(call.response_id.as_deref(), Some(id.as_str()));
    assert_eq!((call.prompt_tokens, call.completion_tokens), (8, 5));
    assert_eq!(call.content, "ping 42 ping 42 ping");
    assert_eq!(call.finish_reason, Some(FinishReason::Stop));
    assert!(call.usage_reported && !call.stream && call.injected.is_none());
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn expected_reply_matches_what_is_sent() {
    let mock = mock(words(7)).await;
    let request = json!({"model": "m", "max_tokens": 6, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "one"}]}
    ]});
    let expected = openai::expected_reply(&request, 7);
    let body: Value = post(&mock, &request).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], expected.content);
    assert_eq!(expected.content, "second one second one second one");
    assert_eq!(body["usage"]["prompt_tokens"], expected.prompt_tokens);
    assert_eq!(
        expected.prompt_tokens,
        3 + (3 + 3) + (3 + 2) + (3 + 2) + (3 + 2)
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn a_prompt_cache_key_reports_half_the_prompt_cached() {
    let mock = mock(words(3)).await;
    let mut request = chat("cache this prompt please");
    let body: Value = post(&mock, &request).await.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    request["prompt_cache_key"] = json!("k");
    let expected = openai::expected_reply(&request, 3);
    assert_eq!(expected.cached_tokens, expected.prompt_tokens / 2);
    assert!(expected.cached_tokens > 0);
    let body: Value = post(&mock, &request).await.json().await.unwrap();
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        expected.cached_tokens
    );
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let text = post(&mock, &request).await.text().await.unwrap();
    let usage = format!("\"cached_tokens\":{}", expected.cached_tokens);
    assert!(text.contains(&usage), "{text}");
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn stream_without_usage() {
    let mock = mock(words(3)).await;
    let response = post(&mock, &streaming("ping 42", None)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last(), Some(&"[DONE]"));
    assert_eq!(
        chunks(&data[..data.len() - 1]),
        [
            role_chunk(),
            content_chunk("ping"),
            content_chunk(" 42"),
            content_chunk(" ping"),
            finish_chunk("stop"),
        ]
    );
    let call = &mock.calls()[0];
    assert!(call.stream);
    assert_eq!(call.content, "ping 42 ping");
    assert_eq!((call.prompt_tokens, call.completion_tokens), (8, 3));
    assert!(!call.usage_reported, "the client asked for no usage");
}

#[tokio::test]
async fn stream_with_usage_ends_with_a_usage_chunk() {
    let mock = mock(words(2)).await;
    let body = post(&mock, &streaming("hello", Some(true)))
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last(), Some(&"[DONE]"));
    let mut usage_chunk = chunk(json!([]));
    usage_chunk["usage"] = usage(7, 2);
    assert_eq!(
        chunks(&data[..data.len() - 1]),
        [
            with_null_usage(role_chunk()),
            with_null_usage(content_chunk("hello")),
            with_null_usage(content_chunk(" hello")),
            with_null_usage(finish_chunk("stop")),
            usage_chunk,
        ]
    );
    assert!(mock.calls()[0].usage_reported);

    // include_usage: false is the same as not asking.
    let body = post(&mock, &streaming("hello", Some(false)))
        .await
        .text()
        .await
        .unwrap();
    assert!(!body.contains("usage"), "{body}");
}

#[tokio::test]
async fn stream_chunks_group_words_and_are_paced() {
    let mock = mock(Behaviour {
        completion_tokens: 5,
        stream_chunks: NonZeroU32::new(2),
        stream_chunk_delay: Duration::from_millis(100),
        ..Behaviour::default()
    })
    .await;
    let started = Instant::now();
    let body = post(&mock, &streaming("a b c d e f", None))
        .await
        .text()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    let data = sse_data(&body);
    let chunks = chunks(&data[..data.len() - 1]);
    assert_eq!(chunks[1], content_chunk("a b"));
    assert_eq!(chunks[2], content_chunk(" c d e"));
    assert_eq!(chunks.len(), 4);
}

#[tokio::test]
async fn max_tokens_caps_and_finishes_with_length() {
    let mock = mock(words(10)).await;
    let mut request = chat("x y z");
    request["max_tokens"] = json!(4);
    let body: Value = post(&mock, &request).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "x y z x");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 4);

    let mut request = streaming("x y z", Some(true));
    request["max_completion_tokens"] = json!(2);
    let body = post(&mock, &request).await.text().await.unwrap();
    let data = sse_data(&body);
    let chunks = chunks(&data[..data.len() - 1]);
    assert_eq!(chunks[3], with_null_usage(finish_chunk("length")));
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
    // A cap above the configured length changes nothing.
    let mut request = chat("x");
    request["max_tokens"] = json!(50);
    let body: Value = post(&mock, &request).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let mock = mock(Behaviour {
        latency: Latency::Fixed(Duration::from_millis(150)),
        ..Behaviour::default()
    })
    .await;
    let started = Instant::now();
    let response = post(&mock, &chat("hi")).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(response.headers()["openai-processing-ms"], "150");
}

#[tokio::test]
async fn injected_statuses_use_openais_bodies_then_the_queue_drains() {
    let mock = mock(words(1)).await;
    mock.fail_next([
        Failure::rate_limited(Duration::from_millis(1500)),
        Failure::insufficient_quota(),
        Failure::server_error(),
        Failure::overloaded(),
        Failure::Status {
            status: 502,
            error: None,
            body: Some("<html>502 Bad Gateway</html>".to_owned()),
            retry_after: None,
        },
    ]);

    let response = post(&mock, &chat("hi")).await;
    let headers = response.headers().clone();
    assert_eq!(headers["retry-after"], "2", "whole seconds, rounded up");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-reset-requests"], "1.5s");
    let (status, body) = error_of(response).await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({"error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-mock on requests \
                        per min (RPM): Limit 500, Used 500, Requested 1. Please try again in \
                        1.5s. Visit https://platform.openai.com/account/rate-limits to learn more.",
            "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );

    let response = post(&mock, &chat("hi")).await;
    assert!(response.headers().get("retry-after").is_none());
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("insufficient_quota"))
    );

    let (status, body) = error_of(post(&mock, &chat("hi")).await).await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": null, "code": null}})
    );

    let (status, body) = error_of(post(&mock, &chat("hi")).await).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (503, &json!("server_error"))
    );

    let response = post(&mock, &chat("hi")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert_eq!(
        response.text().await.unwrap(),
        "<html>502 Bad Gateway</html>"
    );

    assert_eq!(post(&mock, &chat("hi")).await.status(), 200);
    let calls = mock.calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [
            Some(429),
            Some(429),
            Some(500),
            Some(503),
            Some(502),
            Some(200)
        ]
    );
    assert_eq!(
        calls[0].injected,
        Some(Failure::rate_limited(Duration::from_millis(1500)))
    );
    assert_eq!(calls[0].error.as_ref().unwrap().kind, "requests");
    assert!(mock.behaviour().fail_next.is_empty());
}

#[tokio::test]
async fn timeout_never_answers() {
    let mock = mock(Behaviour::default()).await;
    mock.fail_next([Failure::Timeout]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = client
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&chat("hi"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(mock.calls()[0].status, None);
    assert_eq!(post(&mock, &chat("hi")).await.status(), 200);
}

#[tokio::test]
async fn disconnect_closes_without_a_response() {
    let mock = mock(Behaviour::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", mock.base_url());
    // Warm a keep-alive connection first: the cut must not leave a broken one for later calls.
    assert_eq!(
        client
            .post(&url)
            .json(&chat("a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    mock.fail_next([Failure::Disconnect]);
    let error = client
        .post(&url)
        .json(&chat("hi"))
        .send()
        .await
        .unwrap_err();
    assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
    assert_eq!(
        client
            .post(&url)
            .json(&chat("a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let statuses: Vec<_> = mock.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Some(200), None, Some(200)]);
}

#[tokio::test]
async fn mid_stream_break_cuts_after_n_events() {
    let mock = mock(words(4)).await;
    mock.fail_next([Failure::MidStreamBreak { after_chunks: 3 }]);
    let response = post(&mock, &streaming("one two", Some(true))).await;
    assert_eq!(response.status(), 200);
    let (received, broke) = read_until_break(response).await;
    assert!(broke, "the stream ended cleanly: {received:?}");
    assert!(!received.contains("[DONE]"));
    let data = sse_data(&received);
    assert_eq!(
        chunks(&data),
        [
            with_null_usage(role_chunk()),
            with_null_usage(content_chunk("one")),
            with_null_usage(content_chunk(" two"))
        ]
    );
    let call = &mock.calls()[0];
    assert_eq!((call.status, call.content.as_str()), (Some(200), "one two"));
    assert_eq!(call.completion_tokens, 2);
    assert!(call.finish_reason.is_none() && !call.usage_reported);
}

#[tokio::test]
async fn mid_stream_break_on_a_json_answer_truncates_the_body() {
    let mock = mock(Behaviour::default()).await;
    mock.fail_next([Failure::MidStreamBreak { after_chunks: 0 }]);
    let response = post(&mock, &chat("hi")).await;
    assert_eq!(response.status(), 200);
    let (received, broke) = read_until_break(response).await;
    assert!(broke);
    assert!(received.starts_with(r#"{"id":"chatcmpl-"#), "{received}");
    assert!(serde_json::from_str::<Value>(&received).is_err());
}

#[tokio::test]
async fn mid_stream_error_sends_an_error_event() {
    let mock = mock(words(3)).await;
    mock.fail_next([Failure::MidStreamError {
        after_chunks: 2,
        error: None,
    }]);
    let (received, broke) = read_until_break(post(&mock, &streaming("go", None)).await).await;
    assert!(!broke, "an error event ends the stream cleanly");
    let data = sse_data(&received);
    assert_eq!(data.len(), 3);
    assert_eq!(chunks(&data[..2]), [role_chunk(), content_chunk("go")]);
    assert_eq!(
        serde_json::from_str::<Value>(data[2]).unwrap(),
        json!({"error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": null, "code": null}})
    );
    let call = &mock.calls()[0];
    assert_eq!(call.content, "go");
    assert_eq!(call.error.as_ref().unwrap().kind, "server_error");

    // Without a stream the same failure is a plain 500.
    mock.fail_next([Failure::MidStreamError {
        after_chunks: 2,
        error: None,
    }]);
    let (status, body) = error_of(post(&mock, &chat("go")).await).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (500, &json!("server_error"))
    );
}

#[tokio::test]
async fn api_key_is_enforced_with_openais_401s() {
    let mock = mock(Behaviour {
        api_key: Some("sk-test-1234567890".to_owned()),
        ..Behaviour::default()
    })
    .await;
    let url = format!("{}/chat/completions", mock.base_url());
    let client = reqwest::Client::new();

    let (status, body) = error_of(client.post(&url).json(&chat("hi")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], Value::Null);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("You didn't provide an API key."));

    let wrong = client
        .post(&url)
        .bearer_auth("sk-wrong-key-000000")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(wrong).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": {
            "message": "Incorrect API key provided: sk-************0000. You can find your API \
                        key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
    );

    let right = client
        .post(&url)
        .bearer_auth("sk-test-1234567890")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        mock.calls()[2].authorization(),
        Some("Bearer sk-test-1234567890")
    );

    let models = client
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
}

#[tokio::test]
async fn malformed_and_invalid_requests_get_openais_400s() {
    let mock = mock(Behaviour::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", mock.base_url());

    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"model\": \"gpt-4o-mini\", \"messages\": [")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        (&body["error"]["param"], &body["error"]["code"]),
        (&Value::Null, &Value::Null)
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("We could not parse the JSON body of your request."));
    let call = &mock.calls()[0];
    assert!(call.body.is_none());
    assert_eq!(
        call.raw_body,
        "{\"model\": \"gpt-4o-mini\", \"messages\": ["
    );

    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"message": "you must provide a model parameter", "type": "invalid_request_error",
                "param": null, "code": null}),
        ),
        (
            json!({"model": "m"}),
            json!({"message": "Missing required parameter: 'messages'.", "type": "invalid_request_error",
                "param": "messages", "code": "missing_required_parameter"}),
        ),
        (
            json!({"model": "m", "messages": []}),
            json!({"message": "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                "type": "invalid_request_error", "param": "messages", "code": "empty_array"}),
        ),
        (
            json!({"model": "m", "messages": "hi"}),
            json!({"message": "Invalid type for 'messages': expected an array, but got a string instead.",
                "type": "invalid_request_error", "param": "messages", "code": "invalid_type"}),
        ),
        (
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
            json!({"message": "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.",
                "type": "invalid_request_error", "param": "messages[0].role", "code": "invalid_value"}),
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            json!({"message": "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead.",
                "type": "invalid_request_error", "param": "max_tokens", "code": "integer_below_min_value"}),
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}),
            json!({"message": "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "type": "invalid_request_error", "param": "stream_options", "code": null}),
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            json!({"message": "Invalid type for 'stream': expected a boolean, but got a string instead.",
                "type": "invalid_request_error", "param": "stream", "code": "invalid_type"}),
        ),
    ];
    for (request, error) in cases {
        let (status, body) = error_of(post(&mock, &request).await).await;
        assert_eq!(
            (status, body),
            (400, json!({ "error": error })),
            "{request}"
        );
    }
}

#[tokio::test]
async fn models_are_listed_and_unknown_ones_are_404() {
    let mock = mock(Behaviour {
        models: vec!["gpt-4o".to_owned(), "gpt-4o-mini".to_owned()],
        ..Behaviour::default()
    })
    .await;
    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list,
        json!({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "created": 1_700_000_000, "owned_by": "system"},
            {"id": "gpt-4o-mini", "object": "model", "created": 1_700_000_000, "owned_by": "system"}
        ]})
    );
    let one = client
        .get(format!("{}/models/gpt-4o", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);

    let mut request = chat("hi");
    request["model"] = json!("gpt-5-nonexistent");
    let (status, body) = error_of(post(&mock, &request).await).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {
            "message": "The model `gpt-5-nonexistent` does not exist or you do not have access to it.",
            "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
    );
    assert_eq!(post(&mock, &chat("hi")).await.status(), 200);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let mock = mock(Behaviour::default()).await;
    let client = reqwest::Client::new();
    let (status, body) = error_of(
        client
            .post(format!("{}/completions/legacy", mock.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"]["message"],
        "Invalid URL (POST /v1/completions/legacy)"
    );
    let (status, body) = error_of(
        client
            .get(format!("{}/chat/completions", mock.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(mock.calls().len(), 2, "every request is recorded");
}

#[tokio::test]
async fn recording_is_bounded_and_optional() {
    let mock = mock(Behaviour {
        max_recorded_calls: 3,
        ..Behaviour::default()
    })
    .await;
    for i in 0..5 {
        post(&mock, &chat(&format!("call {i}"))).await;
    }
    let seqs: Vec<u64> = mock.calls().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(mock.call_count(), 5);

    mock.clear_calls();
    mock.set_behaviour(Behaviour {
        record_calls: false,
        ..Behaviour::default()
    });
    post(&mock, &chat("unrecorded")).await;
    assert!(mock.calls().is_empty());
    assert_eq!(mock.call_count(), 6);
}

#[tokio::test]
async fn behaviour_changes_at_runtime() {
    let mock = mock(words(1)).await;
    let body: Value = post(&mock, &chat("a")).await.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 1);
    mock.set_behaviour(words(3));
    let body: Value = post(&mock, &chat("a")).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "a a a");
}

#[tokio::test]
async fn concurrent_callers_get_their_own_replies() {
    let mock = mock(Behaviour {
        completion_tokens: 2,
        latency: Latency::Uniform {
            min: Duration::ZERO,
            max: Duration::from_millis(20),
        },
        ..Behaviour::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", mock.base_url());
    let calls = (0..50).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let body: Value = client
                .post(url)
                .json(&chat(&format!("caller-{i}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                i,
                body["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
    });
    for call in calls.collect::<Vec<_>>() {
        let (i, content) = call.await.unwrap();
        assert_eq!(content, format!("caller-{i} caller-{i}"));
    }
}

#[tokio::test]
async fn shutdown_ends_hanging_calls_and_frees_the_port() {
    let mock = mock(Behaviour::default()).await;
    mock.fail_next([Failure::Timeout]);
    let url = format!("{}/chat/completions", mock.base_url());
    let hanging = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&chat("hi"))
            .send()
            .await
    });
    while mock.call_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let base_url = mock.base_url();
    let started = Instant::now();
    mock.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        hanging.await.unwrap().is_err(),
        "the hanging call got no answer"
    );
    assert!(reqwest::get(format!("{base_url}/models")).await.is_err());
}

#[tokio::test]
async fn its_own_rate_limit_answers_429_with_retry_after() {
    let mock = mock(Behaviour {
        requests_per_minute: std::num::NonZeroU32::new(2),
        ..Behaviour::default()
    })
    .await;
    for _ in 0..2 {
        assert_eq!(post(&mock, &chat("hi")).await.status(), 200);
    }
    let response = post(&mock, &chat("hi")).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let (status, body) = error_of(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

async fn moderate(mock: &MockProvider, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/moderations", mock.base_url()))
        .json(body)
        .send()
        .await
        .unwrap();
    error_of(response).await
}

#[tokio::test]
async fn moderations_flag_the_marker_word_in_openais_shape() {
    let mock = mock(Behaviour::default()).await;
    let (status, body) = moderate(
        &mock,
        &json!({"input": ["How do I KILL a stuck process?", "Hello there"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("modr-"), "{body}");
    assert_eq!(body["model"], "omni-moderation-latest");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["flagged"], true);
    assert_eq!(results[0]["categories"]["violence"], true);
    assert_eq!(results[0]["categories"]["hate"], false);
    assert_eq!(
        results[0]["category_applied_input_types"]["violence"],
        json!(["text"])
    );
    assert!(results[0]["category_scores"]["violence"].as_f64().unwrap() > 0.5);
    assert_eq!(results[1]["flagged"], false);
    assert_eq!(results[1]["categories"].as_object().unwrap().len(), 13);
    // "skill" contains the marker but is not the word.
    let (_, body) = moderate(&mock, &json!({"input": "a skillful answer", "model": "m"})).await;
    assert_eq!(body["model"], "m");
    assert_eq!(body["results"][0]["flagged"], false);
    // Content parts: text is classified, images never flagged.
    let (_, body) = moderate(
        &mock,
        &json!({"input": [{"type": "text", "text": "kill"}, {"type": "image_url", "image_url": {"url": "x"}}]}),
    )
    .await;
    assert_eq!(body["results"][0]["flagged"], true);
    assert_eq!(body["results"][1]["flagged"], false);
    assert_eq!(mock.moderation_count(), 3);
    assert_eq!(
        mock.call_count(),
        0,
        "moderation calls are not generation calls"
    );
}

#[tokio::test]
async fn moderations_validate_input_check_the_key_and_can_fail() {
    let mock = mock(Behaviour {
        api_key: Some("sk-right".into()),
        ..Behaviour::default()
    })
    .await;
    let (status, body) = moderate(&mock, &json!({"input": "hi"})).await;
    assert_eq!(status, 401, "{body}");
    let response = reqwest::Client::new()
        .post(format!("{}/moderations", mock.base_url()))
        .bearer_auth("sk-right")
        .json(&json!({"model": "x"}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "input");
    assert_eq!(body["error"]["code"], "missing_required_parameter");

    mock.set_behaviour(Behaviour {
        moderation_fails: true,
        ..Behaviour::default()
    });
    let (status, body) = moderate(&mock, &json!({"input": "hi"})).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["type"], "server_error");
}

fn weather_tools(prompt: &str, tool_choice: Value) -> Value {
    let mut body = chat(prompt);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    body["tool_choice"] = tool_choice;
    body
}

#[tokio::test]
async fn a_forced_tool_choice_is_answered_with_a_call() {
    let mock = mock(words(5)).await;
    let body: Value = post(&mock, &weather_tools("Paris today", json!("required")))
        .await
        .json()
        .await
        .unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments = call["function"]["arguments"].as_str().unwrap();
    assert_eq!(arguments, r#"{"city":"Paris today"}"#);
    assert_eq!(
        body["usage"]["completion_tokens"], 2,
        "words of the arguments"
    );

    // Named, and streamed: id and name first, then the arguments.
    let mut request = weather_tools(
        "Oslo",
        json!({"type": "function", "function": {"name": "get_weather"}}),
    );
    request["stream"] = json!(true);
    let text = post(&mock, &request).await.text().await.unwrap();
    let data = sse_data(&text);
    let parsed: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = parsed.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(
        deltas[1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(deltas[1]["tool_calls"][0]["function"]["arguments"], "");
    assert_eq!(
        deltas[2]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Oslo"}"#
    );
    assert_eq!(parsed[3]["choices"][0]["finish_reason"], "tool_calls");

    // "auto", or a tool result last: text.
    let auto: Value = post(&mock, &weather_tools("Rome", json!("auto")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        auto["choices"][0]["message"]["content"],
        "Rome Rome Rome Rome Rome"
    );
    let mut answered = weather_tools("Rome", json!("required"));
    answered["messages"] = json!([{"role": "user", "content": "Rome"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]);
    let after: Value = post(&mock, &answered).await.json().await.unwrap();
    assert_eq!(after["choices"][0]["finish_reason"], "stop");
}
