//! Processing hooks end to end (workers/src/hooks.rs) with the example hook of the repo
//! (tests/src/hook.rs): a pre hook that changes the prompt (the provider gets the change), one
//! that refuses (no provider call), one that times out (closed: 503; open: passed); a post
//! hook that changes the answer; each decision in the audit row; other teams untouched.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::hook::{ExampleHook, HOUSE_STYLE};

use crate::common::*;

fn worker_toml(hook: &ExampleHook) -> String {
    format!(
        r#"
[hooks_outbound]
allowed_hosts = ["{host}"]

[[hooks]]
name = "house"
stage = "pre"
url = "{url}"
teams = ["team-a"]
models = ["{MODEL}"]
timeout_ms = 500

[[hooks]]
name = "review"
stage = "post"
url = "{url}"
teams = ["team-a"]
models = ["{MODEL}"]

[[hooks]]
name = "house-open"
stage = "pre"
url = "{url}"
models = ["open-m"]
timeout_ms = 300
on_error = "open"

[[hooks]]
name = "chunks"
stage = "post"
url = "{url}"
models = ["chunky"]
per_chunk = true

[[deployments]]
name = "chunky-1"
model = "chunky"
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "open-1"
model = "open-m"
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[pricing]
free_models = ["open-m", "chunky"]
"#,
        host = hook.host(),
        url = hook.url(),
    )
}

async fn ask(stack: &Stack, key: &str, model: &str, text: &str) -> (u16, Value, String) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    stack.chat_with_id(key, &body).await
}

/// The messages of the provider's last call.
fn last_messages(stack: &Stack) -> Value {
    let calls = stack.mock.calls();
    let last = calls.last().expect("the provider was called");
    last.body.as_ref().expect("a JSON body")["messages"].clone()
}

/// A streamed call by team A: the whole SSE text and the request id.
async fn streamed(stack: &Stack, text: &str) -> (String, String) {
    streamed_to(stack, MODEL, text).await
}

async fn streamed_to(stack: &Stack, model: &str, text: &str) -> (String, String) {
    let body =
        json!({"model": model, "stream": true, "messages": [{"role": "user", "content": text}]});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-sluice-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    (response.text().await.unwrap(), id)
}

async fn audit_policy(stack: &Stack, id: &str) -> String {
    let sql = format!(
        "SELECT policy FROM {{db}}.audit FINAL WHERE request_id = '{id}' AND action != 'accepted'"
    );
    eventually(Duration::from_secs(60), || async {
        Some(stack.ch(&sql).await.trim().to_string()).filter(|p| !p.is_empty())
    })
    .await
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hooks_change_refuse_and_time_out_as_configured_and_every_decision_is_audited() {
    let hook = ExampleHook::start().await.unwrap();
    let stack = Stack::start(StackOptions {
        extra_worker_toml: worker_toml(&hook),
        extra_models: vec!["open-m".into(), "chunky".into()],
        ..StackOptions::default()
    })
    .await;

    // Changed on the way in (the provider gets the house style and the redaction) and out.
    let (status, body, id) = ask(&stack, KEY_A, MODEL, "my account is ACCT-12345").await;
    assert_eq!(status, 200, "{body}");
    let messages = last_messages(&stack);
    assert_eq!(messages[0]["content"], HOUSE_STYLE, "{messages}");
    assert_eq!(messages[1]["content"], "my account is ACCT-[REDACTED]");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.ends_with(" [reviewed]"), "{text}");
    assert!(
        body["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert_eq!(
        audit_policy(&stack, &id).await,
        "hook:house:changed,hook:review:changed"
    );
    let seen = hook.received();
    assert_eq!(seen[0]["stage"], "pre");
    assert_eq!(seen[0]["team"], "team-a");
    assert_eq!(seen[1]["stage"], "post");

    // Refused: the caller is told why, the provider is never called.
    let calls = stack.mock.call_count();
    let (status, body, id) = ask(&stack, KEY_A, MODEL, "something forbidden").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "hook_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`house` pre hook: house rule"),
        "{message}"
    );
    assert_eq!(stack.mock.call_count(), calls);
    assert_eq!(
        stack.result_row(&id, "status, error_kind").await,
        "failed\thook_refused"
    );
    assert_eq!(audit_policy(&stack, &id).await, "hook:house:refused");

    // A hook slower than its timeout: closed is a 503, nothing called ...
    let (status, body, id) = ask(&stack, KEY_A, MODEL, "slow-hook please").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "hook_unavailable", "{body}");
    assert_eq!(stack.mock.call_count(), calls);
    assert_eq!(audit_policy(&stack, &id).await, "hook:house:unavailable");
    // ... open lets the request through, unchanged, and says so.
    let (status, body, id) = ask(&stack, KEY_B, "open-m", "slow-hook please").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(last_messages(&stack)[0]["content"], "slow-hook please");
    assert_eq!(
        audit_policy(&stack, &id).await,
        "hook:house-open:error-open"
    );

    // Another team's request is not hooked.
    let (status, body, _) = ask(&stack, KEY_B, MODEL, "my account is ACCT-12345").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        last_messages(&stack)[0]["content"],
        "my account is ACCT-12345"
    );
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.ends_with("[reviewed]"), "{text}");

    // A post refusal of a sync answer: 422, yet the provider's usage is billed.
    let (status, body, id) = ask(&stack, KEY_A, MODEL, "please withhold this").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "hook_refused_output", "{body}");
    let billed = stack.usage_row(&id, "status, completion_tokens > 0").await;
    assert_eq!(
        billed, "failed\t1",
        "the answer the provider made is billed"
    );

    // Streams: the pre change applies; the post hook sees the final text, its change cannot
    // apply to what was sent (audited as unapplied) ...
    let (text, id) = streamed(&stack, "stream ACCT-777").await;
    assert!(
        text.contains("[DONE]") && !text.contains("[reviewed]"),
        "{text}"
    );
    assert_eq!(
        last_messages(&stack)[1]["content"],
        "stream ACCT-[REDACTED]"
    );
    assert_eq!(
        audit_policy(&stack, &id).await,
        "hook:house:changed,hook:review:unapplied"
    );
    // ... and its refusal ends the stream with the error instead of [DONE].
    let (text, id) = streamed(&stack, "stream and withhold").await;
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.contains("hook_refused_output"), "{text}");
    assert_eq!(
        audit_policy(&stack, &id).await,
        "hook:house:changed,hook:review:refused"
    );

    // Per chunk: every delta is asked about before it is forwarded. The mock echoes the
    // prompt's words, so `secret` comes back, and is cut from every delta ...
    let (text, id) = streamed_to(&stack, "chunky", "a secret word").await;
    let deltas: String = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(text.contains("[DONE]"), "{text}");
    assert!(
        deltas.contains("[CUT]") && !deltas.contains("secret"),
        "{deltas}"
    );
    let stored = stack.result_row(&id, "status").await;
    assert_eq!(stored, "completed");
    assert!(
        audit_policy(&stack, &id)
            .await
            .contains("hook:chunks:changed"),
        "the per-chunk change is audited"
    );
    // ... and a delta with `stopword` ends the stream with the refusal.
    let (text, id) = streamed_to(&stack, "chunky", "say stopword now").await;
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.contains("hook_refused_output"), "{text}");
    assert_eq!(
        stack.result_row(&id, "status, error_kind").await,
        "failed\thook_refused"
    );
    stack.stop().await;
}
