//! `POST /v1/requests/{id}/cancel` and `POST /v1/responses/{id}/cancel`: a request cancelled
//! before a worker reaches it never reaches the provider and costs nothing; one that ended
//! is answered as it is; another team's request cannot be cancelled or even seen.

use serde_json::{json, Value};

use crate::common::*;
use crate::WAIT;

async fn status_of(stack: &Stack, path: &str, want: &str) -> Value {
    eventually(WAIT, || async {
        let (_, body) = stack.get(path, KEY_A).await;
        (body["status"] == want).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("{path} never reached {want}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_cancelled_while_queued_is_skipped_and_costs_nothing() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await;
    let ids = stack.submit_many(2, KEY_A).await;
    let (status, queued) = stack
        .post(
            "/v1/responses",
            KEY_A,
            json!({"model": MODEL, "input": "Name a river", "background": true}),
        )
        .await;
    assert_eq!((status, &queued["status"]), (200, &json!("queued")));
    let response_id = queued["id"].as_str().unwrap().to_string();

    // Another team's request is not found, and stays uncancelled.
    let (status, body) = stack
        .post(&format!("/v1/requests/{}/cancel", ids[0]), KEY_B, json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = stack
        .post(
            &format!("/v1/responses/{response_id}/cancel"),
            KEY_B,
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    for unknown in [
        "/v1/requests/req_nope/cancel",
        "/v1/responses/resp_nope/cancel",
        "/v1/responses/not-an-id/cancel",
    ] {
        let (status, body) = stack.post(unknown, KEY_A, json!({})).await;
        assert_eq!(status, 404, "{unknown}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }

    // No worker runs yet: the cancel is recorded, the request still queued.
    let (status, body) = stack
        .post(&format!("/v1/requests/{}/cancel", ids[0]), KEY_A, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["cancel_requested"], true);
    let (status, body) = stack
        .post(
            &format!("/v1/responses/{response_id}/cancel"),
            KEY_A,
            json!({}),
        )
        .await;
    assert_eq!((status, &body["status"]), (200, &json!("queued")), "{body}");

    // A worker that starts now reads the cancels from the topic and skips both; the
    // request not cancelled runs.
    stack.add_worker("w-late");
    let cancelled = status_of(&stack, &format!("/v1/requests/{}", ids[0]), "cancelled").await;
    assert_eq!(cancelled["http_status"], 499);
    assert_eq!(cancelled["error"]["code"], "request_cancelled");
    let response = status_of(&stack, &format!("/v1/responses/{response_id}"), "cancelled").await;
    assert_eq!(response["object"], "response");
    assert_eq!(response["error"], Value::Null);
    status_of(&stack, &format!("/v1/requests/{}", ids[1]), "completed").await;
    let prompts: Vec<String> = stack
        .mock
        .calls()
        .iter()
        .map(|c| c.body.as_ref().unwrap()["messages"][0]["content"].to_string())
        .collect();
    assert_eq!(
        prompts,
        [json!("question 1").to_string()],
        "only the uncancelled one was sent"
    );
    let request_of_response = response_id.replacen("resp_", "req_", 1);
    for id in [&ids[0], &request_of_response] {
        assert_eq!(
            stack.result_row(id, "status, error_kind").await,
            "failed\trequest_cancelled"
        );
        let billed = stack
            .ch(&format!("SELECT count() FROM {{db}}.usage WHERE request_id = '{id}' AND (cost_nanos > 0 OR prompt_tokens > 0)"))
            .await;
        assert_eq!(billed.trim(), "0", "nothing billed for {id}");
    }

    // Cancelling what ended changes nothing.
    let (status, body) = stack
        .post(&format!("/v1/requests/{}/cancel", ids[1]), KEY_A, json!({}))
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("completed")),
        "{body}"
    );
    assert!(body["response"]["choices"][0]["message"]["content"].is_string());
    let (_, again) = stack
        .post(
            &format!("/v1/responses/{response_id}/cancel"),
            KEY_A,
            json!({}),
        )
        .await;
    assert_eq!(again["status"], "cancelled");
    stack.stop().await;
}
