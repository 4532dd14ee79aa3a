//! The Files and Batch APIs end to end (docs/batch.md): OpenAI's batches and Anthropic's
//! Message Batches against the real broker and ClickHouse, the provider mocked.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Latency};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(90);

/// One OpenAI batch input line.
pub(crate) fn line(custom_id: &str, text: &str) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": MODEL, "messages": [{"role": "user", "content": text}]}})
    .to_string()
}

/// `POST /v1/files` as the SDKs send it: multipart with `purpose` then `file`.
pub(crate) async fn upload(stack: &Stack, key: &str, purpose: &str, content: &str) -> (u16, Value) {
    let boundary = "sluice-test-boundary-7d1f";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"input.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    let request = stack.http.post(format!("{}/v1/files", stack.base));
    json_answer(
        request
            .bearer_auth(key)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body),
    )
    .await
}

pub(crate) async fn create_batch(stack: &Stack, lines: &[String]) -> String {
    let (status, file) = upload(stack, KEY_A, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    let (status, batch) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h", "metadata": {"job": "test"}}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["object"], "batch");
    batch["id"].as_str().expect("batch id").to_string()
}

/// A stack whose provider answers after `latency_ms` and whose team A has a monthly budget
/// of `limit_usd`: a batch driver waits for its reservations to settle, so its lines are
/// published slowly, whatever the machine.
pub(crate) async fn paced_stack(latency_ms: u64, limit_usd: f64) -> Stack {
    Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(latency_ms)),
            ..Behaviour::default()
        },
        budget_toml: format!(
            "[[budgets]]\nscope = \"team\"\nsubject = \"team-a\"\nperiod = \"month\"\nlimit_usd = {limit_usd}\n"
        ),
        ..StackOptions::default()
    })
    .await
}

/// Polls the batch until `done` holds for it; returns it.
pub(crate) async fn wait_batch(stack: &Stack, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let (_, batch) = stack.get(path, KEY_A).await;
        if done(&batch) {
            return batch;
        }
        last = batch;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("batch did not reach the expected state: {last}");
}

/// Polls `/v1/batches/{id}` until its status is `status`; returns it.
pub(crate) async fn batch_reaching(stack: &Stack, id: &str, status: &str) -> Value {
    wait_batch(stack, &format!("/v1/batches/{id}"), |b| {
        b["status"] == status
    })
    .await
}

/// Polls the Message Batch `id` until its processing has ended; returns it.
pub(crate) async fn message_batch_ended(stack: &Stack, id: &str) -> Value {
    wait_batch(stack, &format!("/v1/messages/batches/{id}"), |b| {
        b["processing_status"] == "ended"
    })
    .await
}

/// The lines of batch `id`'s `output` or `errors` file, read as team A.
pub(crate) async fn batch_file(stack: &Stack, id: &str, which: &str) -> Vec<Value> {
    let (_, lines) = jsonl(
        stack,
        &format!("/v1/files/file-{id}-{which}/content"),
        KEY_A,
    )
    .await;
    lines
}

pub(crate) async fn jsonl(stack: &Stack, path: &str, key: &str) -> (u16, Vec<Value>) {
    let response = stack
        .http
        .get(format!("{}{path}", stack.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("ingress answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    (status, lines)
}

/// custom_id -> how many times it appears.
fn by_custom_id(lines: &[Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for l in lines {
        *seen
            .entry(l["custom_id"].as_str().unwrap_or("<null>").to_string())
            .or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_completes_every_line_once_and_bad_lines_go_to_the_error_file() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut lines: Vec<String> = (0..40)
        .map(|i| line(&format!("q-{i}"), &format!("question {i}")))
        .collect();
    lines.push("{not json".into());
    lines.push(
        json!({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}})
            .to_string(),
    );
    lines.push(json!({"method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL, "messages": []}}).to_string());
    lines.push(line("q-0", "a duplicate custom_id"));
    lines.push(json!({"custom_id": "no-model", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}}).to_string());
    let id = create_batch(&stack, &lines).await;

    let batch = batch_reaching(&stack, &id, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 45, "completed": 40, "failed": 5}),
        "{batch}"
    );
    assert_eq!(batch["metadata"], json!({"job": "test"}));
    assert!(batch["completed_at"].as_u64().is_some(), "{batch}");

    let (status, output) = jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["output_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    assert_eq!(status, 200);
    let counts = by_custom_id(&output);
    assert_eq!(counts.len(), 40, "{output:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "every custom_id exactly once: {counts:?}"
    );
    for o in &output {
        assert_eq!(o["response"]["status_code"], 200, "{o}");
        assert_eq!(o["response"]["body"]["object"], "chat.completion", "{o}");
        assert!(o["error"].is_null());
    }

    let (_, errors) = jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["error_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    let codes: HashSet<String> = errors
        .iter()
        .map(|e| e["error"]["code"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(errors.len(), 5, "{errors:?}");
    for code in [
        "invalid_json",
        "invalid_url",
        "missing_custom_id",
        "duplicate_custom_id",
        "model_not_found",
    ] {
        assert!(codes.contains(code), "{code} missing from {codes:?}");
    }
    // A line refused after its custom_id was read keeps it; one without has null.
    let custom_id_of = |code: &str| {
        let e = errors.iter().find(|e| e["error"]["code"] == code).unwrap();
        e["custom_id"].clone()
    };
    assert_eq!(custom_id_of("invalid_url"), json!("wrong-url"));
    assert_eq!(custom_id_of("model_not_found"), json!("no-model"));
    assert_eq!(custom_id_of("missing_custom_id"), Value::Null);
    // Nothing of the bad lines reached the provider; each good line once. The output file
    // is read from the result bodies; the `results` rows are another insert of the sink,
    // which may land a flush later: wait for 40, then check no more came.
    let results =
        format!("SELECT count() FROM {{db}}.results FINAL WHERE request_id LIKE '{id}-%'");
    assert_eq!(stack.wait_count(&results, 40, WAIT).await, 40);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.ch(&results).await.trim(), "40");

    // The input file reads back; the batch lists.
    let input = stack
        .http
        .get(format!(
            "{}/v1/files/{}/content",
            stack.base,
            batch["input_file_id"].as_str().unwrap()
        ))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        input,
        lines.join("\n") + "\n",
        "the input file reads back as uploaded"
    );
    let (status, list) = stack.get("/v1/batches?limit=5", KEY_A).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], id.as_str(), "{list}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_batch_input_gets_clear_errors_and_other_teams_see_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let expect_error = |status: u16, body: &Value, want: u16, code: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    };
    let (s, b) = upload(&stack, KEY_A, "fine-tune", &line("a", "x")).await;
    expect_error(s, &b, 400, "invalid_value");
    let (s, b) = upload(&stack, KEY_A, "batch", "this is not jsonl\nnor this").await;
    expect_error(s, &b, 400, "invalid_jsonl");
    let (s, b) = upload(&stack, KEY_A, "batch", "").await;
    expect_error(s, &b, 400, "invalid_jsonl");
    let (s, b) = stack
        .post("/v1/files", KEY_A, json!({"purpose": "batch"}))
        .await;
    expect_error(s, &b, 400, "invalid_file");

    let (s, b) = stack
        .post("/v1/batches", KEY_A, json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .await;
    expect_error(s, &b, 404, "not_found");
    let (_, file) = upload(&stack, KEY_A, "batch", &line("a", "x")).await;
    let (s, b) = stack
        .post("/v1/batches", KEY_A, json!({"input_file_id": file["id"], "endpoint": "/v1/responses", "completion_window": "24h"}))
        .await;
    expect_error(s, &b, 400, "invalid_value");
    assert_eq!(b["error"]["param"], "endpoint");
    let (s, b) = stack
        .post("/v1/batches", KEY_A, json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "forever"}))
        .await;
    expect_error(s, &b, 400, "invalid_value");
    let (s, b) = stack
        .post("/v1/batches", KEY_A, json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h", "colour": 1}))
        .await;
    expect_error(s, &b, 400, "invalid_json");

    // Another team's file and batch are indistinguishable from missing ones.
    let (s, b) = stack
        .get(
            &format!("/v1/files/{}", file["id"].as_str().unwrap()),
            KEY_B,
        )
        .await;
    expect_error(s, &b, 404, "not_found");
    let (s, b) = stack
        .post("/v1/batches", KEY_B, json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .await;
    expect_error(s, &b, 404, "not_found");
    let id = create_batch(&stack, &[line("a", "x")]).await;
    let (s, b) = stack.get(&format!("/v1/batches/{id}"), KEY_B).await;
    expect_error(s, &b, 404, "not_found");
    let (s, b) = stack
        .post(&format!("/v1/batches/{id}/cancel"), KEY_B, json!({}))
        .await;
    expect_error(s, &b, 404, "not_found");
    let (s, b) = stack
        .get(&format!("/v1/files/file-{id}-output/content"), KEY_B)
        .await;
    expect_error(s, &b, 404, "not_found");
    let (s, list) = stack.get("/v1/batches", KEY_B).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"], json!([]), "{list}");
    let (s, _) = stack.get("/v1/batches", "sk-wrong").await;
    assert_eq!(s, 401);

    // A finished batch cannot be cancelled.
    batch_reaching(&stack, &id, "completed").await;
    let (s, b) = stack
        .post(&format!("/v1/batches/{id}/cancel"), KEY_A, json!({}))
        .await;
    expect_error(s, &b, 409, "batch_not_cancellable");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_mid_batch_stops_the_unstarted_lines_and_the_counts_add_up() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(300)),
            ..Behaviour::default()
        },
        max_in_flight: 4,
        ..StackOptions::default()
    })
    .await;
    let total = 1_200;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("c-{i}"), "slow"))
        .collect();
    let id = create_batch(&stack, &lines).await;
    let started = stack
        .wait_count(
            &format!("SELECT count() FROM {{db}}.results WHERE request_id LIKE '{id}-%'"),
            8,
            WAIT,
        )
        .await;
    assert!(started >= 8);
    let (status, batch) = stack
        .post(&format!("/v1/batches/{id}/cancel"), KEY_A, json!({}))
        .await;
    assert_eq!(status, 200, "{batch}");
    assert!(
        batch["status"] == "cancelling" || batch["status"] == "cancelled",
        "{batch}"
    );
    let calls_at_cancel = stack.mock.call_count();

    let batch = batch_reaching(&stack, &id, "cancelled").await;
    let counts = &batch["request_counts"];
    let (completed, failed) = (
        counts["completed"].as_u64().unwrap(),
        counts["failed"].as_u64().unwrap(),
    );
    assert_eq!(counts["total"], total);
    assert_eq!(
        completed + failed,
        total,
        "every line accounted for: {batch}"
    );
    // At most what was running (4) plus what was already handed to the worker's provider
    // call when the cancel arrived reached the provider after it.
    let calls = stack.mock.call_count();
    assert!(
        calls <= calls_at_cancel + 8,
        "provider calls after cancel: {calls_at_cancel} -> {calls}"
    );
    assert!(completed < 200, "the cancel stopped most lines: {batch}");

    let output = batch_file(&stack, &id, "output").await;
    let (_, errors) = jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["error_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    assert_eq!(output.len() as u64, completed);
    assert_eq!(errors.len() as u64, failed);
    let mut all = by_custom_id(&output);
    for (k, v) in by_custom_id(&errors) {
        *all.entry(k).or_insert(0) += v;
    }
    assert_eq!(all.len(), total as usize);
    assert!(all.values().all(|&n| n == 1));
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled"),
        "{:?}",
        &errors[..3]
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_restart_mid_batch_loses_and_duplicates_no_line() {
    let mut stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(50)),
            ..Behaviour::default()
        },
        max_in_flight: 8,
        ..StackOptions::default()
    })
    .await;
    let total = 2_000;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("r-{i}"), &format!("q {i}")))
        .collect();
    let id = create_batch(&stack, &lines).await;
    stack
        .wait_count(
            &format!("SELECT count() FROM {{db}}.results WHERE request_id LIKE '{id}-%'"),
            60,
            WAIT,
        )
        .await;
    stack.stop_workers().await;
    let (_, mid) = stack.get(&format!("/v1/batches/{id}"), KEY_A).await;
    assert_eq!(
        mid["status"], "in_progress",
        "progress is visible while it runs: {mid}"
    );
    let done_mid = mid["request_counts"]["completed"].as_u64().unwrap();
    assert!(done_mid > 0 && done_mid < total, "{mid}");
    stack.add_worker("w2");

    let batch = batch_reaching(&stack, &id, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": total, "completed": total, "failed": 0}),
        "{batch}"
    );
    let (_, output) = jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["output_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    let counts = by_custom_id(&output);
    assert_eq!(output.len(), total as usize);
    assert_eq!(counts.len(), total as usize);
    assert!(batch["error_file_id"].is_null(), "{batch}");
    // Billed once per line, whatever was redelivered.
    assert_eq!(
        stack
            .ch(&format!(
                "SELECT count() FROM {{db}}.usage FINAL WHERE request_id LIKE '{id}-%'"
            ))
            .await
            .trim(),
        total.to_string()
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_message_batches_have_anthropics_shapes() {
    let stack = Stack::start(StackOptions::default()).await;
    let params = |text: &str| json!({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]});
    let requests: Vec<Value> = (0..5)
        .map(|i| json!({"custom_id": format!("m-{i}"), "params": params("hi")}))
        .chain([json!({"custom_id": "bad", "params": {"model": MODEL, "messages": "nope"}})])
        .collect();
    let response = stack
        .http
        .post(format!("{}/v1/messages/batches", stack.base))
        .header("x-api-key", KEY_A)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"requests": requests}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["type"], "message_batch");
    assert!(batch["id"].as_str().unwrap().starts_with("msgbatch_"));
    let id = batch["id"].as_str().unwrap().to_string();

    let path = format!("/v1/messages/batches/{id}");
    let ended = wait_batch(&stack, &path, |b| b["processing_status"] == "ended").await;
    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 5, "errored": 1, "canceled": 0, "expired": 0}),
        "{ended}"
    );
    assert_eq!(
        ended["results_url"],
        format!("{}/v1/messages/batches/{id}/results", stack.base),
        "the scheme and host the caller used"
    );
    // A caller's own X-Forwarded-Proto is not trusted unless the operator says a proxy
    // sets it ([server] trust_forwarded_proto).
    let spoofed: Value = stack
        .http
        .get(format!("{}{path}", stack.base))
        .bearer_auth(KEY_A)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spoofed["results_url"], ended["results_url"]);
    assert!(ended["ended_at"].as_str().unwrap().ends_with('Z'));
    let (status, results) = jsonl(&stack, &format!("{path}/results"), KEY_A).await;
    assert_eq!(status, 200);
    assert_eq!(results.len(), 6);
    for r in &results {
        if r["custom_id"] == "bad" {
            assert_eq!(r["result"]["type"], "errored", "{r}");
            assert_eq!(
                r["result"]["error"]["error"]["type"], "invalid_request_error",
                "{r}"
            );
        } else {
            assert_eq!(r["result"]["type"], "succeeded", "{r}");
            assert_eq!(r["result"]["message"]["type"], "message", "{r}");
            assert_eq!(r["result"]["message"]["role"], "assistant", "{r}");
        }
    }
    // Anthropic's error shape, and no OpenAI batch under this id.
    let (status, error) = stack.get("/v1/messages/batches/msgbatch_nope", KEY_A).await;
    assert_eq!(status, 404);
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "not_found_error");
    let (status, _) = stack.get(&format!("/v1/batches/{id}"), KEY_A).await;
    assert_eq!(status, 404);
    let (status, error) = stack
        .post("/v1/messages/batches", KEY_A, json!({"requests": []}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    let (status, list) = stack.get("/v1/messages/batches", KEY_A).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], id.as_str());
    stack.stop().await;
}

/// A receiver that fails its first delivery (503) to make the sender retry.
async fn webhook_receiver_failing_once(secret: &str) -> (String, Deliveries) {
    webhook_receiver(secret, |n, _| {
        if n == 1 {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            axum::http::StatusCode::NO_CONTENT
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_announce_an_ended_batch_and_an_async_result_signed_and_retried() {
    const SECRET: &str = "whsec_c2x1aWNlLXRlc3Qtc2VjcmV0";
    let (url, received) = webhook_receiver_failing_once(SECRET).await;
    let stack = Stack::start(StackOptions {
        // The receiver is local: the operator opens exactly its port.
        webhooks_toml: format!(
            "allowed_hosts = [\"{}\"]\n[teams.team-a]\nsecret = \"{SECRET}\"\n",
            host_port(&url)
        ),
        ..StackOptions::default()
    })
    .await;
    let (_, file) = upload(
        &stack,
        KEY_A,
        "batch",
        &[line("w-1", "a"), line("w-2", "b")].join("\n"),
    )
    .await;
    let (status, batch) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h", "sluice": {"webhook_url": url}}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let mut async_request = chat("hello");
    async_request["sluice"] = json!({"webhook_url": url});
    let (status, accepted) = stack.post("/v1/requests", KEY_A, async_request).await;
    assert_eq!(status, 202, "{accepted}");
    let mut sync_request = chat("hello");
    sync_request["sluice"] = json!({"webhook_url": url});
    let (status, refused) = stack
        .post("/v1/chat/completions", KEY_A, sync_request)
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "sluice.webhook_url");

    // Two events, each retried once after the 503: at least 3 deliveries, 2 distinct ids.
    let deliveries = eventually(WAIT, || async {
        let all = received.lock().unwrap().clone();
        let ids: HashSet<String> = all
            .iter()
            .map(|d| d.headers["webhook-id"].to_str().unwrap().to_string())
            .collect();
        (ids.len() == 2 && all.len() >= 3).then_some(all)
    })
    .await
    .expect("both webhooks delivered");
    let secret = sluice_schemas::webhook::Secret::parse(SECRET).unwrap();
    let mut kinds = HashSet::new();
    for Delivery { headers, body, .. } in &deliveries {
        let id = headers["webhook-id"].to_str().unwrap();
        let ts: i64 = headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let signature = headers["webhook-signature"].to_str().unwrap();
        assert!(
            sluice_schemas::webhook::verify(&secret, id, ts, body.as_bytes(), signature),
            "signature of {id}"
        );
        let event: Value = serde_json::from_str(body).unwrap();
        kinds.insert(event["type"].as_str().unwrap().to_string());
        match event["type"].as_str().unwrap() {
            "batch.completed" => {
                assert_eq!(event["data"]["id"], batch["id"]);
                assert_eq!(event["data"]["request_counts"]["completed"], 2);
            }
            "request.completed" => assert_eq!(event["data"]["id"], accepted["id"]),
            other => panic!("unexpected event {other}: {event}"),
        }
    }
    assert_eq!(
        kinds,
        HashSet::from([
            "batch.completed".to_string(),
            "request.completed".to_string()
        ])
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_starting_up_resumes_a_batch_whose_driver_died() {
    let stack = Stack::start(StackOptions::default()).await;
    let total = 1_200;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("d-{i}"), "resume"))
        .collect();
    let (status, file) = upload(&stack, KEY_A, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    // What an ingress that died mid-block leaves: the batch in progress at checkpoint 0, and
    // the first block's line records written but (some of) its lines never published.
    let batch_id = format!("batch_{}", uuid::Uuid::now_v7().simple());
    let now = sluice_schemas::now_ms();
    stack
        .ch(&format!(
            "INSERT INTO {{db}}_private.batches VALUES ('{batch_id}', 'team-a', 'key_a', 'openai', \
             '/v1/chat/completions', '{file}', '24h', 'in_progress', {total}, 0, {now}, {exp}, 0, \
             '{{}}', '', '', 1, 0)",
            file = file["id"].as_str().unwrap(),
            exp = now + 86_400_000,
        ))
        .await;
    stack
        .ch(&format!(
            "INSERT INTO {{db}}_private.batch_lines VALUES ('{batch_id}', 0, 'd-0', '{batch_id}-0', '', ''), \
             ('{batch_id}', 1, 'd-1', '{batch_id}-1', '', '')"
        ))
        .await;
    let replica = stack.start_ingress_replica(3).await;

    let batch = batch_reaching(&stack, &batch_id, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": total, "completed": total, "failed": 0}),
        "no line lost, none rejected as its own duplicate: {batch}"
    );
    let output = batch_file(&stack, &batch_id, "output").await;
    assert_eq!(by_custom_id(&output).len(), total as usize);
    assert_eq!(output.len(), total as usize);
    replica.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interactive_call_is_served_while_a_batch_backlog_waits() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(50)),
            ..Behaviour::default()
        },
        max_in_flight: 4,
        ..StackOptions::default()
    })
    .await;
    let total = 800;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("p-{i}"), "backlog"))
        .collect();
    let id = create_batch(&stack, &lines).await;
    stack
        .wait_count(
            &format!("SELECT count() FROM {{db}}.results WHERE request_id LIKE '{id}-%'"),
            20,
            WAIT,
        )
        .await;
    let mut request = chat("urgent");
    request["sluice"] = json!({"priority": "interactive"});
    let (status, body) = stack.post("/v1/chat/completions", KEY_A, request).await;
    assert_eq!(status, 200, "{body}");
    let (_, batch) = stack.get(&format!("/v1/batches/{id}"), KEY_A).await;
    assert_eq!(batch["status"], "in_progress", "{batch}");
    let done = batch["request_counts"]["completed"].as_u64().unwrap();
    assert!(
        done < total / 2,
        "the interactive call did not wait for the batch: {batch}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_left_when_the_window_ends_expire_without_reaching_the_provider() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(200)),
            ..Behaviour::default()
        },
        max_in_flight: 2,
        ..StackOptions::default()
    })
    .await;
    let total = 100;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("e-{i}"), "late"))
        .collect();
    let (_, file) = upload(&stack, KEY_A, "batch", &lines.join("\n")).await;
    let (status, batch) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "2s"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let batch = batch_reaching(&stack, &id, "expired").await;
    let counts = &batch["request_counts"];
    let (completed, failed) = (
        counts["completed"].as_u64().unwrap(),
        counts["failed"].as_u64().unwrap(),
    );
    assert_eq!(completed + failed, total, "{batch}");
    assert!(completed < total / 2 && failed > 0, "{batch}");
    assert!(batch["expired_at"].as_u64().is_some(), "{batch}");
    let (_, errors) = jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["error_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    assert_eq!(errors.len() as u64, failed);
    // Queued lines expire unsent; the calls running when the window ended (at most
    // max_in_flight) are cut short and answer the provider timeout.
    let expired = errors
        .iter()
        .filter(|e| e["error"]["code"] == "batch_expired")
        .count() as u64;
    let cut_short: Vec<&Value> = errors
        .iter()
        .filter(|e| e["error"]["code"] != "batch_expired")
        .collect();
    assert!(cut_short.len() <= 2, "{cut_short:?}");
    assert!(expired >= failed - 2, "{errors:?}");
    let calls = stack.mock.call_count();
    assert!(
        calls <= completed + 2,
        "expired lines never reached the provider: {calls} calls, {completed} completed"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_mid_batch_stops_its_unpublished_lines() {
    // A slow provider and a team budget with room for ~8 reservations ($0.0025 each) pace the driver
    // (it waits for reservations to settle), so the revocation lands while most lines are
    // still unpublished, however fast the machine.
    let stack = paced_stack(200, 0.02).await;
    let (status, created) = stack
        .post("/admin/keys", ADMIN_KEY, json!({"team": "team-a"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("plaintext key").to_string();
    let key_id = created["id"].as_str().expect("key id").to_string();
    let total = 3_000u64;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("k-{i}"), "short"))
        .collect();
    let (status, file) = upload(&stack, &key, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    let (status, batch) = stack
        .post(
            "/v1/batches",
            &key,
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().expect("batch id").to_string();
    let (status, revoked) = stack
        .post(
            &format!("/admin/keys/{key_id}/revoke"),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");

    let batch = batch_reaching(&stack, &id, "completed").await;
    let counts = &batch["request_counts"];
    let (completed, failed) = (
        counts["completed"].as_u64().unwrap(),
        counts["failed"].as_u64().unwrap(),
    );
    assert_eq!(
        completed + failed,
        total,
        "every line accounted for: {batch}"
    );
    assert!(
        failed >= 2_000,
        "at least the last block was stopped: {batch}"
    );
    let (_, errors) = jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["error_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    assert_eq!(errors.len() as u64, failed);
    assert!(
        errors.iter().all(|e| e["error"]["code"] == "key_revoked"),
        "{:?}",
        &errors[..3]
    );
    // Only the lines published before the revocation reached the provider.
    let usage = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", completed, WAIT)
        .await;
    assert_eq!(usage, completed);
    assert_eq!(stack.mock.call_count() as u64, completed);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_lines_cannot_bypass_the_cost_bounds() {
    let stack = Stack::start(StackOptions::default()).await;
    let with = |custom_id: &str, extra: Value| {
        let mut body =
            json!({"model": MODEL, "messages": [{"role": "user", "content": custom_id}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
            .to_string()
    };
    let lines = [
        with("many", json!({"n": 128})),
        with("priority", json!({"service_tier": "priority"})),
        with("search", json!({"web_search_options": {}})),
        with("uncapped", json!({})),
    ];
    let id = create_batch(&stack, &lines).await;
    let batch = batch_reaching(&stack, &id, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 1, "failed": 3}),
        "{batch}"
    );
    let (_, errors) = jsonl(
        &stack,
        &format!(
            "/v1/files/{}/content",
            batch["error_file_id"].as_str().unwrap()
        ),
        KEY_A,
    )
    .await;
    // Batch error lines carry a code and a message (no param), as OpenAI's do.
    let codes: HashMap<String, (String, String)> = errors
        .iter()
        .map(|e| {
            (
                e["custom_id"].as_str().unwrap_or("").to_string(),
                (
                    e["error"]["code"].as_str().unwrap_or("").to_string(),
                    e["error"]["message"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect();
    for (custom_id, code, named) in [
        ("many", "invalid_value", "`n`"),
        ("priority", "unsupported_parameter", "`service_tier`"),
        ("search", "unsupported_parameter", "`web_search_options`"),
    ] {
        let (got, message) = &codes[custom_id];
        assert_eq!(got, code, "{errors:?}");
        assert!(message.contains(named), "{message}");
    }
    // Only the good line reached the provider, capped at the reserved completion tokens.
    let calls = stack.mock.calls();
    assert_eq!(calls.len(), 1);
    let sent = calls[0].body.as_ref().unwrap();
    assert_eq!(sent["messages"][0]["content"], "uncapped");
    assert_eq!(sent["max_completion_tokens"], 4096, "{sent}");
    stack.stop().await;
}
