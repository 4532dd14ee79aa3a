//! Sizes that hold end to end (issue #14), written as the attacks: requests, batch lines and
//! completions larger than what Kafka accepts are refused for good with a clear error, never
//! a 503 to retry or a publish retried forever.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::Behaviour;

use crate::common::*;

/// Kafka's own default `message.max.bytes` (broker and topics created without a setting).
const KAFKA_DEFAULT_LIMIT: usize = 1_048_588;

/// A user prompt of about `bytes` bytes, of short distinct words (cheap to tokenize).
pub(crate) fn prompt_of(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    let mut i = 0u64;
    while s.len() < bytes {
        s.push_str(&format!("w{i} "));
        i += 1;
    }
    s
}

async fn post_raw(stack: &Stack, base: &str, path: &str, body: String) -> (u16, Value) {
    let request = stack
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(KEY_A)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(body);
    json_answer(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_2mb_request_is_served_end_to_end_and_a_body_over_the_limit_gets_413() {
    let stack = Stack::start(StackOptions::default()).await;
    // Within the limits (4 MiB body, 8 MiB Kafka messages): served, not a 503 from Kafka's
    // 1 MB default.
    let big = prompt_of(2_000_000);
    let (status, body) = stack.post("/v1/chat/completions", KEY_A, chat(&big)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let calls = stack.mock.calls();
    assert_eq!(calls.len(), 1);
    let sent = calls[0].body.as_ref().unwrap()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(sent, big.len(), "the provider got the whole prompt");

    // Over `[server] max_body_bytes`: 413 in each API's own error shape, nothing accepted.
    let huge = prompt_of(5 * 1024 * 1024);
    let (status, body) = post_raw(
        &stack,
        &stack.base,
        "/v1/chat/completions",
        chat(&huge).to_string(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let anthropic = json!({"model": MODEL, "max_tokens": 16,
                           "messages": [{"role": "user", "content": huge}]});
    let (status, body) = post_raw(&stack, &stack.base, "/v1/messages", anthropic.to_string()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "request_too_large", "{body}");
    assert_eq!(
        stack.mock.calls().len(),
        1,
        "nothing more reached the provider"
    );
    stack.stop().await;
}

pub(crate) use crate::batch::line;

pub(crate) async fn upload(stack: &Stack, content: &str) -> Value {
    let (status, file) = crate::batch::upload(stack, KEY_A, "batch", content).await;
    assert_eq!(status, 200, "{file}");
    file
}

/// A deployment whose Kafka topics have Kafka's default 1 MB limit: the ingress knows it
/// (`[kafka] max_message_bytes`), a second ingress replica and the workers do not (they meet
/// the broker's refusal). Every oversized message ends with a clear, final error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_larger_than_kafka_accepts_are_refused_for_good() {
    let stack = Stack::start(StackOptions {
        topic_max_message_bytes: Some(KAFKA_DEFAULT_LIMIT),
        ..StackOptions::default()
    })
    .await;
    let two_mb = prompt_of(2_000_000);

    // A 2 MB request: 413 up front (within the 4 MiB body limit, over Kafka's).
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat(&two_mb))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    let (status, body) = stack.post("/v1/requests", KEY_A, chat(&two_mb)).await;
    assert_eq!(status, 413, "{body}");

    // A replica that believes in 8 MiB: the broker refuses; still a final 413, not a 503.
    let mut config = stack.ingress_config.clone();
    config.kafka.max_message_bytes = sluice_schemas::topics::MAX_MESSAGE_BYTES;
    config.server.reply_partition = 1;
    let shutdown = stack.shutdown.child_token();
    let replica = sluice_ingress::start(config, shutdown.clone())
        .await
        .expect("replica starts");
    let replica_base = format!("http://{}", replica.addr);
    let (status, body) = post_raw(
        &stack,
        &replica_base,
        "/v1/chat/completions",
        chat(&two_mb).to_string(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    let (status, body) = post_raw(
        &stack,
        &replica_base,
        "/v1/chat/completions",
        chat("small").to_string(),
    )
    .await;
    assert_eq!(status, 200, "the replica still serves: {body}");
    shutdown.cancel();
    assert_eq!(stack.mock.calls().len(), 1, "only the small request ran");

    // A batch with a 2 MB line: that line's `request_too_large`, the others complete.
    let lines = [
        line("small-1", "first"),
        line("big", &two_mb),
        line("small-2", "second"),
    ];
    let file = upload(&stack, &lines.join("\n")).await;
    let (status, batch) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let batch = eventually(Duration::from_secs(90), || async {
        let (_, b) = stack.get(&format!("/v1/batches/{id}"), KEY_A).await;
        (b["status"] == "completed").then_some(b)
    })
    .await
    .expect("the batch completes (its driver is not stuck retrying the big line)");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1}),
        "{batch}"
    );
    let (_, errors) = crate::batch::jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["error_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "big");
    assert_eq!(
        errors[0]["error"]["code"], "request_too_large",
        "{errors:?}"
    );

    // A 2.2 MB completion, too large for the 1 MB topics (the mock echoes the prompt's
    // words; the workers believe in 8 MiB, so the broker refuses it): the caller
    // gets a failed result at once, the provider is called once, nothing is retried.
    let calls_before = stack.mock.calls().len();
    stack.mock.set_behaviour(Behaviour {
        completion_tokens: 60_000,
        ..Behaviour::default()
    });
    let started = std::time::Instant::now();
    // A cap of its own: without one the ingress forwards [budget] default_completion_tokens.
    let mut long = chat("abcdefghijklmnopqrstuvwxyz0123456789");
    long["max_tokens"] = json!(60_000);
    let (status, body) = stack.post("/v1/chat/completions", KEY_A, long).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "result_too_large", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered, not timed out"
    );
    let rows = stack
        .wait_count(
            "SELECT count() FROM {db}.results FINAL WHERE status = 'failed' AND error_kind = 'result_too_large'",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(rows, 1, "the failure is the stored result");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.mock.calls().len(),
        calls_before + 1,
        "the provider was called once"
    );
    stack.stop().await;
}
