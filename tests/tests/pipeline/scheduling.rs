//! Throttling, priorities and fairness as callers see them.

use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_over_its_rate_gets_429_with_retry_after_while_async_work_queues() {
    let stack = Stack::start(StackOptions::default()).await;
    let url = format!("{}/v1/chat/completions", stack.base);
    for _ in 0..2 {
        let (status, body) = stack
            .post("/v1/chat/completions", KEY_LIMITED, chat("hi"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let response = stack
        .http
        .post(&url)
        .bearer_auth(KEY_LIMITED)
        .json(&chat("one too many"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "retry-after {retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(
        stack.mock.call_count(),
        2,
        "the rejected call never reached a provider"
    );

    // Async submissions with the same key are not refused: they wait in Kafka.
    let ids = stack.submit_many(5, KEY_LIMITED).await;
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.results FINAL",
            2 + ids.len() as u64,
            WAIT,
        )
        .await;
    assert_eq!(n, 7);
    // Other keys of the same team are not affected.
    let (status, _) = stack.post("/v1/chat/completions", KEY_A, chat("hi")).await;
    assert_eq!(status, 200);
    stack.stop().await;
}
