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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_waits_for_deployment_capacity_instead_of_calling_into_a_429() {
    let stack = Stack::start(StackOptions {
        extra_worker_toml: r#"
[[deployments]]
name = "tight"
model = "tight-model"
provider = { type = "openai", base_url = "{origin}/v1" }
limits = { requests_per_minute = 2 }

[pricing]
free_models = ["tight-model"]
"#
        .into(),
        extra_models: vec!["tight-model".into()],
        // The provider enforces the same quota: a call beyond it would get a 429.
        behaviour: sluice_tests::mock::Behaviour {
            requests_per_minute: std::num::NonZeroU32::new(2),
            ..Default::default()
        },
        ..StackOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut body = chat(&format!("tight {i}"));
        body["model"] = "tight-model".into();
        let (status, accepted) = stack.post("/v1/requests", KEY_A, body).await;
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["id"].as_str().unwrap().to_string());
    }
    let n = stack
        .wait_count("SELECT count() FROM {db}.results FINAL", 2, WAIT)
        .await;
    assert_eq!(n, 2, "two fit in the deployment's minute");
    // The third waits for capacity (30 s at 2 a minute) rather than being sent now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.mock.call_count(), 2);
    assert!(
        stack.mock.calls().iter().all(|c| c.status == Some(200)),
        "no call was answered 429"
    );
    let results = stack.ch("SELECT count() FROM {db}.results FINAL").await;
    assert_eq!(results.trim(), "2");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interactive_work_overtakes_a_batch_backlog_which_still_progresses() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        max_in_flight: 1,
        behaviour: sluice_tests::mock::Behaviour {
            latency: sluice_tests::mock::Latency::Fixed(Duration::from_millis(150)),
            ..Default::default()
        },
        ..StackOptions::default()
    })
    .await;
    let submit = |priority: &'static str, n: usize| {
        let stack = &stack;
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let mut body = chat(&format!("{priority} {i}"));
                body["sluice"] = serde_json::json!({ "priority": priority });
                let (status, accepted) = stack.post("/v1/requests", KEY_A, body).await;
                assert_eq!(status, 202, "{accepted}");
                ids.push(accepted["id"].as_str().unwrap().to_string());
            }
            ids
        }
    };
    let batch = submit("batch", 40).await;
    let interactive = submit("interactive", 8).await;
    // One worker running one request at a time: the order of service is the scheduler's.
    stack.add_worker("solo");
    let total = (batch.len() + interactive.len()) as u64;
    let n = stack
        .wait_count("SELECT count() FROM {db}.results FINAL", total, WAIT * 2)
        .await;
    assert_eq!(n, total);
    let order = stack
        .ch("SELECT priority FROM {db}.results FINAL ORDER BY started_at_ms")
        .await;
    let order: Vec<&str> = order.lines().collect();
    let last_interactive = order.iter().rposition(|p| *p == "interactive").unwrap();
    eprintln!("service order: {order:?}");
    // Interactive requests all ran early, though submitted after 40 batch ones (a few
    // batch requests may start before the interactive consumer has joined its group).
    assert!(
        last_interactive < 20,
        "last interactive ran at position {last_interactive}: {order:?}"
    );
    // And the batch backlog was never starved meanwhile: it kept its minimum share.
    assert!(order[..=last_interactive].contains(&"batch"), "{order:?}");
    stack.stop().await;
}
