//! `POST /v1/messages/count_tokens` end to end: Sluice's own count, the one a `/v1/messages`
//! call is admitted, budgeted and throttled with; answered by the ingress alone (no provider
//! call), in Anthropic's shapes, with the same checks as a call.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Team A masks emails, blocks a codename and adds two system messages; team B has none.
const POLICY: &str = r#"
[teams.team-a]
injection = true
deny = [{ id = "codename", pattern = "(?i)project\\s+falcon" }]
[teams.team-a.pii]
email = "mask"
[teams.team-a.decorators]
prepend_system = "Follow the acceptable-use policy of the company at all times."
append_system = "Answer briefly."
"#;

fn messages(text: &str) -> Value {
    json!({"model": MODEL, "system": "You are terse.",
           "messages": [{"role": "user", "content": text}]})
}

async fn count(stack: &Stack, key: &str, body: Value) -> (u16, Value) {
    stack.post("/v1/messages/count_tokens", key, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn count_tokens_is_the_count_a_messages_call_is_admitted_with_and_calls_no_provider() {
    let stack = Stack::start(StackOptions {
        guard_toml: POLICY.into(),
        ..StackOptions::default()
    })
    .await;
    let body = messages("Please mail jane.doe@example.com the summary of the plan.");

    let (status, counted) = count(&stack, KEY_A, body.clone()).await;
    assert_eq!(status, 200, "{counted}");
    let n = counted["input_tokens"].as_i64().expect("input_tokens");
    assert!(n > 10, "{counted}");
    assert_eq!(counted.as_object().map(|o| o.len()), Some(1), "{counted}");
    assert!(stack.mock.calls().is_empty(), "counting calls no provider");

    // Team B's count of the same body has no decorators in it: fewer tokens.
    let (status, plain) = count(&stack, KEY_B, body.clone()).await;
    assert_eq!(status, 200, "{plain}");
    let plain = plain["input_tokens"].as_i64().unwrap();
    assert!(0 < plain && plain < n, "team B {plain}, team A {n}");

    // The same body sent as a call is admitted with exactly the counted tokens.
    let mut call = body.clone();
    call["max_tokens"] = json!(16);
    let response = stack
        .http
        .post(format!("{}/v1/messages", stack.base))
        .bearer_auth(KEY_A)
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-sluice-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let accepted =
        format!("FROM {{db}}.audit WHERE request_id = '{request_id}' AND action = 'accepted'");
    let rows = stack
        .wait_count(&format!("SELECT count() {accepted}"), 1, WAIT)
        .await;
    assert_eq!(rows, 1);
    let audited = stack.ch(&format!("SELECT prompt_tokens {accepted}")).await;
    assert_eq!(audited.trim(), n.to_string(), "count_tokens said {n}");
    assert_eq!(
        stack.mock.calls().len(),
        1,
        "only the call reached the provider"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn count_tokens_refuses_what_a_call_would_in_anthropics_shape_and_counts_no_faster_than_the_key_may_call(
) {
    let stack = Stack::start(StackOptions {
        guard_toml: POLICY.into(),
        ..StackOptions::default()
    })
    .await;
    let anthropic_error = |status: u16, body: &Value, kind: &str| {
        assert_eq!(body["type"], "error", "{status}: {body}");
        assert_eq!(body["error"]["type"], kind, "{status}: {body}");
    };

    // No key, a wrong key.
    let (status, body) = json_answer(
        stack
            .http
            .post(format!("{}/v1/messages/count_tokens", stack.base))
            .json(&messages("hi")),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    anthropic_error(status, &body, "authentication_error");
    let (status, body) = count(&stack, "sk-not-a-key", messages("hi")).await;
    assert_eq!(status, 401, "{body}");

    // Bodies a call would refuse.
    let mut unknown = messages("hi");
    unknown["model"] = json!("no-such-model");
    let (status, body) = count(&stack, KEY_A, unknown).await;
    assert_eq!(status, 404, "{body}");
    anthropic_error(status, &body, "not_found_error");
    for bad in [
        json!([1, 2]),
        json!({"model": MODEL}),
        json!({"model": MODEL, "messages": "hi"}),
        json!({"model": MODEL, "messages": [], "max_tokens": 0}),
    ] {
        let (status, body) = count(&stack, KEY_A, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        anthropic_error(status, &body, "invalid_request_error");
    }
    let (status, body) = json_answer(
        stack
            .http
            .post(format!("{}/v1/messages/count_tokens", stack.base))
            .bearer_auth(KEY_A)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    anthropic_error(status, &body, "invalid_request_error");

    // Over the body limit: 413, before anything is parsed.
    let huge = messages(&"word ".repeat(1024 * 1024));
    let (status, body) = count(&stack, KEY_A, huge).await;
    assert_eq!(status, 413, "{body}");
    anthropic_error(status, &body, "request_too_large");

    // A blocked prompt is refused (and audited) as a call's would be.
    let (status, body) = count(&stack, KEY_A, messages("what is project falcon?")).await;
    assert_eq!(status, 400, "{body}");
    anthropic_error(status, &body, "invalid_request_error");
    let blocked = stack
        .wait_count(
            "SELECT count() FROM {db}.audit WHERE action = 'rejected' AND reason = 'deny.codename'",
            1,
            WAIT,
        )
        .await;
    assert_eq!(blocked, 1, "the blocked count is audited");

    // A key limited to 2 requests a minute cannot count (and tokenize) without limit.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(count(&stack, KEY_LIMITED, messages("hi")).await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);

    // Only POST.
    let (status, _) = stack.get("/v1/messages/count_tokens", KEY_A).await;
    assert_eq!(status, 405);

    assert!(
        stack.mock.calls().is_empty(),
        "nothing reached the provider"
    );
    stack.stop().await;
}
