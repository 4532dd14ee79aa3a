//! Providers, routing, fallbacks and retries through the whole stack: ingress -> Kafka ->
//! worker -> the mock speaking each provider's wire format -> back, as callers see it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Failure, MockProvider};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);
/// The key every mock deployment presents (read from this env var by the workers).
const PROVIDER_KEY_ENV: &str = "SLUICE_TEST_PROVIDER_KEY";
const PROVIDER_KEY: &str = "sk-mock-provider";

fn set_provider_key() {
    // Once per process, before the first worker reads it.
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| std::env::set_var(PROVIDER_KEY_ENV, PROVIDER_KEY));
}

/// One deployment of each provider type, all in front of the stack's mock.
const EVERY_PROVIDER: &str = r#"
[[deployments]]
name = "compat-llama"
model = "llama-local"
provider = { type = "openai_compatible", base_url = "{origin}/v1", api_key_env = "SLUICE_TEST_PROVIDER_KEY", model = "meta-llama/Llama-3.1-8B-Instruct" }

[[deployments]]
name = "azure-gpt-4o"
model = "azure-gpt-4o"
provider = { type = "azure", endpoint = "{origin}", deployment = "gpt-4o-prod", api_key_env = "SLUICE_TEST_PROVIDER_KEY" }

[[deployments]]
name = "anthropic-claude"
model = "claude"
provider = { type = "anthropic", base_url = "{origin}", api_key_env = "SLUICE_TEST_PROVIDER_KEY", model = "claude-sonnet-4-5" }

[[deployments]]
name = "gemini-flash"
model = "gemini"
provider = { type = "gemini", base_url = "{origin}/v1beta", api_key_env = "SLUICE_TEST_PROVIDER_KEY", model = "gemini-2.0-flash" }

[[routes]]
name = "smart"
models = ["claude", "gemini"]

[[prices]]
model = "claude"
input_per_million = 3.0
output_per_million = 15.0

[pricing]
free_models = ["llama-local", "azure-gpt-4o", "gemini"]
"#;

fn models(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn every_provider_stack(completion_tokens: u32) -> Stack {
    set_provider_key();
    Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens,
            api_key: Some(PROVIDER_KEY.into()),
            ..Behaviour::default()
        },
        extra_worker_toml: EVERY_PROVIDER.into(),
        extra_models: models(&["llama-local", "azure-gpt-4o", "claude", "gemini", "smart"]),
        ..StackOptions::default()
    })
    .await
}

fn chat_for(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": text}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_provider_type_answers_in_openai_shape_and_bills_what_it_reported() {
    let stack = every_provider_stack(5).await;
    // (model asked for, deployment, provider, path the mock saw, model the provider saw)
    let cases = [
        (
            "llama-local",
            "compat-llama",
            "openai_compatible",
            "/v1/chat/completions",
            "meta-llama/Llama-3.1-8B-Instruct",
        ),
        (
            "azure-gpt-4o",
            "azure-gpt-4o",
            "azure",
            "/openai/deployments/gpt-4o-prod/chat/completions",
            "azure-gpt-4o",
        ),
        (
            "claude",
            "anthropic-claude",
            "anthropic",
            "/v1/messages",
            "claude-sonnet-4-5",
        ),
        (
            "gemini",
            "gemini-flash",
            "gemini",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            "gemini-2.0-flash",
        ),
        // An alias: served by the first model of its route.
        (
            "smart",
            "anthropic-claude",
            "anthropic",
            "/v1/messages",
            "claude-sonnet-4-5",
        ),
    ];
    for (i, (model, _, _, path, upstream_model)) in cases.iter().enumerate() {
        stack.mock.clear_calls();
        let (status, body) = stack
            .post(
                "/v1/chat/completions",
                KEY_A,
                chat_for(model, &format!("question {i} for {model}")),
            )
            .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["object"], "chat.completion", "{model}: {body}");
        let calls = stack.mock.calls();
        assert_eq!(calls.len(), 1, "{model}: one provider call");
        let call = &calls[0];
        assert_eq!(call.path, *path, "{model}");
        assert_eq!(
            call.status,
            Some(200),
            "{model}: the key and headers were accepted"
        );
        assert_eq!(call.model.as_deref(), Some(*upstream_model), "{model}");
        let message = &body["choices"][0]["message"];
        assert_eq!(message["role"], "assistant", "{model}");
        assert_eq!(message["content"], call.content.as_str(), "{model}");
        assert!(
            call.content.contains(&format!("question {i}")),
            "{model}: {}",
            call.content
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{model}");
        assert_eq!(
            body["usage"]["prompt_tokens"], call.prompt_tokens,
            "{model}"
        );
        assert_eq!(
            body["usage"]["completion_tokens"], call.completion_tokens,
            "{model}"
        );
        assert_eq!(call.completion_tokens, 5, "{model}");
    }
    // Each provider's own auth and version headers.
    let calls = stack.mock.calls();
    assert_eq!(calls[0].header("x-api-key"), Some(PROVIDER_KEY));
    assert_eq!(calls[0].header("anthropic-version"), Some("2023-06-01"));
    let anthropic_body = calls[0].body.as_ref().unwrap();
    assert_eq!(anthropic_body["system"], "Answer briefly.");
    assert_eq!(
        anthropic_body["max_tokens"], 4096,
        "Anthropic's required cap, from config"
    );

    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL",
            cases.len() as u64,
            WAIT,
        )
        .await;
    assert_eq!(n, cases.len() as u64);
    let rows = stack
        .ch("SELECT model, provider, deployment, prompt_tokens > 0, completion_tokens, estimated FROM {db}.usage FINAL ORDER BY model")
        .await;
    let mut want: Vec<String> = cases
        .iter()
        .map(|(model, deployment, provider, ..)| {
            format!("{model}\t{provider}\t{deployment}\t1\t5\t0")
        })
        .collect();
    want.sort();
    assert_eq!(rows.lines().collect::<Vec<_>>(), want);
    // Claude's price applies to it, and to the alias it served.
    let costs = stack
        .ch("SELECT model, cost_nanos = prompt_tokens * 3000 + completion_tokens * 15000 FROM {db}.usage FINAL WHERE deployment = 'anthropic-claude' ORDER BY model")
        .await;
    assert_eq!(costs.trim(), "claude\t1\nsmart\t1");
    stack.stop().await;
}

async fn stream_text(stack: &Stack, path: &str, body: Value, anthropic: bool) -> (u16, String) {
    let mut request = stack.http.post(format!("{}{path}", stack.base)).json(&body);
    request = if anthropic {
        request
            .header("x-api-key", KEY_A)
            .header("anthropic-version", "2023-06-01")
    } else {
        request.bearer_auth(KEY_A)
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_through_anthropic_and_gemini_arrive_as_openai_chunks_and_are_billed() {
    let stack = every_provider_stack(7).await;
    for model in ["claude", "gemini"] {
        stack.mock.clear_calls();
        let mut body = chat_for(model, &format!("stream from {model} please"));
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let (status, text) = stream_text(&stack, "/v1/chat/completions", body, false).await;
        assert_eq!(status, 200, "{model}: {text}");
        let data: Vec<String> = sse_events(&text).into_iter().map(|(_, d)| d).collect();
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "{model}: {text}"
        );
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk"),
            "{model}"
        );
        assert_eq!(
            chunks[0]["choices"][0]["delta"]["role"], "assistant",
            "{model}"
        );
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
            .collect();
        let call = &stack.mock.calls()[0];
        assert!(call.stream, "{model}");
        assert_eq!(
            streamed, call.content,
            "{model}: the caller got what the provider sent"
        );
        let finish: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0)?["finish_reason"].as_str())
            .collect();
        assert_eq!(finish, ["stop"], "{model}");
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["prompt_tokens"], call.prompt_tokens, "{model}");
        assert_eq!(usage["completion_tokens"], 7, "{model}");
    }
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 2, WAIT)
        .await;
    assert_eq!(n, 2);
    let rows = stack
        .ch("SELECT provider, status, completion_tokens, estimated FROM {db}.usage FINAL ORDER BY provider")
        .await;
    assert_eq!(
        rows.trim(),
        "anthropic\tcompleted\t7\t0\ngemini\tcompleted\t7\t0"
    );
    stack.stop().await;
}

/// Deployments of one model: `primary` (the stack's mock, OpenAI format) always first,
/// `secondary` (a second mock, Anthropic format) only ever a fallback.
fn fallback_toml(secondary: &MockProvider, breaker: &str) -> String {
    format!(
        r#"
[[deployments]]
name = "primary"
model = "resilient"
max_retries = 1
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "secondary"
model = "resilient"
weight = 0
max_retries = 0
provider = {{ type = "anthropic", base_url = "{secondary}" }}

[pricing]
free_models = ["resilient"]

{breaker}
"#,
        secondary = secondary.origin(),
    )
}

async fn result_row(stack: &Stack, request_id: &str) -> String {
    stack
        .result_row(
            request_id,
            "status, http_status, provider, deployment, attempts, fallbacks",
        )
        .await
}

/// A sync call returning (status, body, request id).
async fn call(stack: &Stack, model: &str, text: &str) -> (u16, Value, String) {
    stack.chat_with_id(KEY_A, &chat_for(model, text)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_and_throttling_fall_back_to_the_next_deployment() {
    let secondary = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = Stack::start(StackOptions {
        extra_worker_toml: fallback_toml(&secondary, ""),
        extra_models: models(&["resilient"]),
        ..StackOptions::default()
    })
    .await;

    // Two 500s: the primary is retried once, then the secondary serves.
    stack
        .mock
        .fail_next([Failure::server_error(), Failure::server_error()]);
    let (status, body, id) = call(&stack, "resilient", "survive this").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        secondary.calls()[0].content.as_str()
    );
    assert_eq!(stack.mock.call_count(), 2);
    assert_eq!(
        result_row(&stack, &id).await,
        "completed\t200\tanthropic\tsecondary\t3\t1"
    );

    // Throttled with a fallback left: straight to the secondary, no 30 s wait.
    stack
        .mock
        .fail_next([Failure::rate_limited(Duration::from_secs(30))]);
    let started = Instant::now();
    let (status, body, id) = call(&stack, "resilient", "throttled").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "did not wait out the Retry-After"
    );
    assert_eq!(
        result_row(&stack, &id).await,
        "completed\t200\tanthropic\tsecondary\t2\t1"
    );

    // A request the provider rejects (400) would fail anywhere: no retry, no fallback.
    let before = secondary.call_count();
    stack.mock.fail_next([Failure::status(400)]);
    let (status, body, id) = call(&stack, "resilient", "bad request").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(secondary.call_count(), before);
    assert_eq!(
        result_row(&stack, &id).await,
        "failed\t400\topenai\tprimary\t1\t0"
    );

    // Both fail: the caller gets the last deployment's error, in OpenAI's shape.
    stack
        .mock
        .fail_next([Failure::server_error(), Failure::server_error()]);
    secondary.fail_next([Failure::status(529)]);
    let (status, body, id) = call(&stack, "resilient", "nothing works").await;
    assert_eq!(status, 529, "{body}");
    assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
    assert_eq!(
        result_row(&stack, &id).await,
        "failed\t529\tanthropic\tsecondary\t3\t1"
    );
    stack.stop().await;
    secondary.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_honoured_from_a_header_and_from_geminis_retry_info() {
    set_provider_key();
    let stack = Stack::start(StackOptions {
        extra_worker_toml: r#"
[[deployments]]
name = "gemini-flash"
model = "gemini"
provider = { type = "gemini", base_url = "{origin}/v1beta", model = "gemini-2.0-flash" }

[pricing]
free_models = ["gemini"]
"#
        .into(),
        extra_models: models(&["gemini"]),
        ..StackOptions::default()
    })
    .await;
    for (model, format) in [
        (MODEL, "Retry-After header"),
        ("gemini", "RetryInfo.retryDelay"),
    ] {
        stack.mock.clear_calls();
        stack
            .mock
            .fail_next([Failure::rate_limited(Duration::from_secs(2))]);
        let (status, body, _) = call(&stack, model, "patience").await;
        assert_eq!(status, 200, "{format}: {body}");
        let calls = stack.mock.calls();
        assert_eq!(calls.len(), 2, "{format}: one 429, one retry");
        assert_eq!(calls[0].status, Some(429));
        let waited = calls[1]
            .received_at
            .duration_since(calls[0].received_at)
            .unwrap();
        assert!(
            waited >= Duration::from_secs(2),
            "{format}: the retry came {waited:?} after the 429 that asked for 2 s"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_circuit_breaker_takes_a_failing_deployment_out_and_probes_it_back() {
    let secondary = MockProvider::start(Behaviour::default()).await.unwrap();
    let cooldown = Duration::from_millis(1500);
    let stack = Stack::start(StackOptions {
        extra_worker_toml: fallback_toml(
            &secondary,
            &format!(
                "[circuit_breaker]\nfailure_threshold = 2\ncooldown_ms = {}\n",
                cooldown.as_millis()
            ),
        )
        .replace("max_retries = 1", "max_retries = 0"),
        extra_models: models(&["resilient"]),
        ..StackOptions::default()
    })
    .await;
    stack
        .mock
        .fail_next([Failure::server_error(), Failure::server_error()]);
    // Two failures (each request falls back) open the primary's circuit.
    for text in ["one", "two"] {
        let (status, body, id) = call(&stack, "resilient", text).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            result_row(&stack, &id).await,
            "completed\t200\tanthropic\tsecondary\t2\t1"
        );
    }
    // Open: the primary is skipped without a call.
    let (status, _, id) = call(&stack, "resilient", "three").await;
    assert_eq!(status, 200);
    assert_eq!(
        stack.mock.call_count(),
        2,
        "the open circuit was not called"
    );
    assert_eq!(
        result_row(&stack, &id).await,
        "completed\t200\tanthropic\tsecondary\t1\t1"
    );
    // After the cool-down one request probes it; it is healthy again, so it serves, and
    // the circuit is closed for the next.
    tokio::time::sleep(cooldown + Duration::from_millis(200)).await;
    for text in ["four", "five"] {
        let (status, _, id) = call(&stack, "resilient", text).await;
        assert_eq!(status, 200);
        assert_eq!(
            result_row(&stack, &id).await,
            "completed\t200\topenai\tprimary\t1\t0"
        );
    }
    assert_eq!(stack.mock.call_count(), 4);
    assert_eq!(secondary.call_count(), 3);
    stack.stop().await;
    secondary.shutdown().await.unwrap();
}

async fn messages(stack: &Stack, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = stack
        .http
        .post(format!("{}/v1/messages", stack.base))
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_messages_endpoint_serves_any_model_sync_and_streaming() {
    let stack = every_provider_stack(4).await;
    // Sync, in front of an OpenAI-format model and an Anthropic one.
    for model in [MODEL, "claude"] {
        stack.mock.clear_calls();
        if model == MODEL {
            // The default deployment presents no key; this mock wants one.
            stack.mock.set_behaviour(Behaviour {
                completion_tokens: 4,
                ..Behaviour::default()
            });
        } else {
            stack.mock.set_behaviour(Behaviour {
                completion_tokens: 4,
                api_key: Some(PROVIDER_KEY.into()),
                ..Behaviour::default()
            });
        }
        let (status, body) = messages(
            &stack,
            Some(KEY_A),
            json!({"model": model, "max_tokens": 64, "system": "Be terse.",
                   "messages": [{"role": "user", "content": format!("hello from {model}")}]}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        let call = &stack.mock.calls()[0];
        assert_eq!(body["type"], "message", "{model}");
        assert_eq!(body["role"], "assistant", "{model}");
        assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{model}");
        assert_eq!(
            body["content"],
            json!([{"type": "text", "text": call.content}]),
            "{model}"
        );
        assert_eq!(body["stop_reason"], "end_turn", "{model}");
        assert_eq!(body["usage"]["input_tokens"], call.prompt_tokens, "{model}");
        assert_eq!(body["usage"]["output_tokens"], 4, "{model}");
        // The cap reached the provider, whatever its format.
        let sent = call.body.as_ref().unwrap();
        assert_eq!(sent["max_tokens"], 64, "{model}");
    }

    // Streaming: Anthropic's events, whatever the provider behind.
    stack.mock.set_behaviour(Behaviour {
        completion_tokens: 3,
        ..Behaviour::default()
    });
    stack.mock.clear_calls();
    let (status, text) = stream_text(
        &stack,
        "/v1/messages",
        json!({"model": MODEL, "max_tokens": 64, "stream": true,
               "messages": [{"role": "user", "content": "stream it"}]}),
        true,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "message_start", "{text}");
    assert_eq!(names[1], "content_block_start", "{text}");
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{text}"
    );
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap())
        .collect();
    let call = &stack.mock.calls()[0];
    assert_eq!(streamed, call.content);
    let delta = &data[data.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 3);
    assert_eq!(delta["usage"]["input_tokens"], call.prompt_tokens);

    // Errors in Anthropic's shape.
    let hello = |model: &str| json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = messages(&stack, None, hello(MODEL)).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (401, &json!("authentication_error")),
        "{body}"
    );
    assert_eq!(body["type"], "error");
    let (status, body) = messages(&stack, Some(KEY_A), hello("claude-9")).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (404, &json!("not_found_error")),
        "{body}"
    );
    let (status, body) = messages(
        &stack,
        Some(KEY_A),
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (400, &json!("invalid_request_error")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{body}"
    );
    stack.mock.fail_next([Failure::status(400)]);
    let (status, body) = messages(&stack, Some(KEY_A), hello(MODEL)).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (400, &json!("invalid_request_error")),
        "{body}"
    );
    stack.stop().await;
}
