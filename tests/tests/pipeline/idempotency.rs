//! `Idempotency-Key` (docs/idempotency.md): a retry gets the first request's id and answer,
//! from any replica, with one provider call and one usage row; a key reused for another
//! request, a bad key and a missing store are refused in the API's own error shape.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Latency};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);
const REPLAYED: &str = "x-sluice-idempotent-replayed";

/// One keyed call: (status, request id, replayed?, body text).
struct Answer {
    status: u16,
    id: String,
    replayed: bool,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
    fn content(&self) -> String {
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content: {}", self.text))
            .to_string()
    }
}

async fn keyed(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    idempotency_key: &str,
    body: &Value,
) -> Answer {
    let response = http
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .expect("ingress answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let id = header("x-sluice-request-id").unwrap_or_default();
    let replayed = header(REPLAYED).as_deref() == Some("true");
    Answer {
        status: response.status().as_u16(),
        id,
        replayed,
        text: response.text().await.unwrap(),
    }
}

/// An idempotency key unique to `stack`: Redis outlives the stacks, and every stack's
/// teams have the same names.
fn ik(stack: &Stack, name: &str) -> String {
    format!("{}-{name}", stack.prefix)
}

/// [`keyed`] on the stack's own ingress, with its key `name` ([`ik`]).
async fn send(stack: &Stack, path: &str, key: &str, name: &str, body: &Value) -> Answer {
    keyed(&stack.http, &stack.base, path, key, &ik(stack, name), body).await
}

/// The number of usage rows, once the sink wrote `want`, and a little later (a second row
/// would be a double bill).
async fn usage_rows(stack: &Stack, want: u64) -> u64 {
    let sql = "SELECT count() FROM {db}.usage FINAL";
    stack.wait_count(sql, want, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.ch(sql).await.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_call_gets_the_first_answer_and_is_billed_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = chat("what is an idempotency key?");
    let first = send(&stack, "/v1/chat/completions", KEY_A, "k-1", &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(!first.replayed);
    let retry = send(&stack, "/v1/chat/completions", KEY_A, "k-1", &body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert!(retry.replayed, "the retry says it is a replay");
    assert_eq!(retry.id, first.id, "the retry names the first request");
    assert_eq!(retry.content(), first.content());
    assert_eq!(retry.json()["usage"], first.json()["usage"]);
    assert_eq!(retry.json()["id"], first.json()["id"]);
    assert_eq!(stack.mock.call_count(), 1, "one provider call");

    // Another body under the same key is another request: refused, not answered.
    let mut other = body.clone();
    other["max_tokens"] = json!(7);
    let reused = send(&stack, "/v1/chat/completions", KEY_A, "k-1", &other).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    assert_eq!(reused.json()["error"]["code"], "idempotency_key_reused");
    assert_eq!(reused.json()["error"]["type"], "invalid_request_error");
    // The same request on another endpoint is another request.
    let async_reuse = send(&stack, "/v1/requests", KEY_A, "k-1", &body).await;
    assert_eq!(async_reuse.status, 422, "{}", async_reuse.text);

    // Keys are per team: team B's "k-1" is its own, and never sees team A's answer.
    let b = send(&stack, "/v1/chat/completions", KEY_B, "k-1", &body).await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert!(!b.replayed, "another team's key is not a retry");
    assert_ne!(b.id, first.id);
    // A new key is a new request.
    let fresh = send(&stack, "/v1/chat/completions", KEY_A, "k-2", &body).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert!(!fresh.replayed);
    assert_eq!(stack.mock.call_count(), 3);
    assert_eq!(usage_rows(&stack, 3).await, 3, "billed once per request");
    let billed = stack
        .ch(&format!(
            "SELECT count() FROM {{db}}.usage FINAL WHERE request_id = '{}'",
            first.id
        ))
        .await;
    assert_eq!(billed.trim(), "1");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_on_two_replicas_make_one_provider_call() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(1500)),
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let replica = stack.start_ingress_replica(1).await;
    let body = chat("one answer for everyone");
    let bases = [
        stack.base.clone(),
        replica.base.clone(),
        stack.base.clone(),
        replica.base.clone(),
    ];
    let key = ik(&stack, "same-key");
    let answers = futures::future::join_all(bases.iter().map(|base| {
        keyed(
            &stack.http,
            base,
            "/v1/chat/completions",
            KEY_A,
            &key,
            &body,
        )
    }))
    .await;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text);
    }
    assert_eq!(stack.mock.call_count(), 1, "one provider call for four");
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    let first = answers.iter().find(|a| !a.replayed).unwrap();
    for a in &answers {
        assert_eq!(a.id, first.id);
        assert_eq!(a.content(), first.content());
    }

    // The replica that answered first goes away; a later retry elsewhere still gets it.
    replica.stop().await;
    let later = send(&stack, "/v1/chat/completions", KEY_A, "same-key", &body).await;
    assert_eq!(later.status, 200, "{}", later.text);
    assert!(later.replayed);
    assert_eq!(later.content(), first.content());
    assert_eq!(stack.mock.call_count(), 1);
    assert_eq!(usage_rows(&stack, 1).await, 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_retry_gets_the_first_id_and_runs_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = chat("queue me once");
    let first = send(&stack, "/v1/requests", KEY_A, "async-1", &body).await;
    assert_eq!(first.status, 202, "{}", first.text);
    let id = first.json()["id"].as_str().unwrap().to_string();
    let retry = send(&stack, "/v1/requests", KEY_A, "async-1", &body).await;
    assert_eq!(retry.status, 202, "{}", retry.text);
    assert_eq!(
        retry.json()["id"],
        id.as_str(),
        "the retry names the first request"
    );
    assert!(retry.replayed);
    stack.result_row(&id, "status").await;
    // Once done, a retry still points at it (and `GET /v1/requests/{id}` has the result).
    let done = send(&stack, "/v1/requests", KEY_A, "async-1", &body).await;
    assert_eq!(done.status, 202, "{}", done.text);
    assert_eq!(done.json()["id"], id.as_str());
    let (status, got) = stack.get(&format!("/v1/requests/{id}"), KEY_A).await;
    assert_eq!(status, 200, "{got}");
    // Team B cannot reach team A's request through a key.
    let b = send(&stack, "/v1/requests", KEY_B, "async-1", &body).await;
    assert_eq!(b.status, 202, "{}", b.text);
    assert_ne!(b.json()["id"], id.as_str());
    assert_eq!(usage_rows(&stack, 2).await, 2);
    assert_eq!(stack.mock.call_count(), 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_retry_replays_the_stream() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 9,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let mut body = chat("stream it twice");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text_of = |a: &Answer| -> (String, Value) {
        let data = sse_data(&a.text);
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "{}",
            a.text
        );
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        let text = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
            .collect();
        (text, chunks.last().unwrap()["usage"].clone())
    };
    let first = send(&stack, "/v1/chat/completions", KEY_A, "s-1", &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let (text, usage) = text_of(&first);
    assert_eq!(usage["completion_tokens"], 9);
    let retry = send(&stack, "/v1/chat/completions", KEY_A, "s-1", &body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert!(retry.replayed);
    assert_eq!(retry.id, first.id);
    let (replayed_text, replayed_usage) = text_of(&retry);
    assert_eq!(replayed_text, text);
    // The counts, as billed (the provider's detail fields are not stored).
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(replayed_usage[field], usage[field], "{field}");
    }
    assert_eq!(replayed_usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(text, stack.mock.calls()[0].content);
    assert_eq!(stack.mock.call_count(), 1);
    assert_eq!(usage_rows(&stack, 1).await, 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_keys_are_refused_in_each_dialect_and_nothing_runs() {
    let stack = Stack::start(StackOptions::default()).await;
    let long = "k".repeat(256);
    for bad in ["", " ", "two words", long.as_str(), "tab\tkey"] {
        let a = keyed(
            &stack.http,
            &stack.base,
            "/v1/chat/completions",
            KEY_A,
            bad,
            &chat("x"),
        )
        .await;
        assert_eq!(a.status, 400, "{bad:?}: {}", a.text);
        assert_eq!(
            a.json()["error"]["code"],
            "invalid_idempotency_key",
            "{bad:?}"
        );
        let a = keyed(
            &stack.http,
            &stack.base,
            "/v1/requests",
            KEY_A,
            bad,
            &chat("x"),
        )
        .await;
        assert_eq!(a.status, 400, "{bad:?}: {}", a.text);
    }
    let anthropic = json!({
        "model": MODEL, "max_tokens": 16,
        "messages": [{"role": "user", "content": "x"}],
    });
    let a = keyed(
        &stack.http,
        &stack.base,
        "/v1/messages",
        KEY_A,
        &long,
        &anthropic,
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(
        a.json()["type"],
        "error",
        "Anthropic's error shape: {}",
        a.text
    );
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    // A non-ASCII key (an HTTP header may carry any byte but control characters).
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        )
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // No key is checked before the caller is: an unknown key gets 401, not a key error.
    let a = keyed(
        &stack.http,
        &stack.base,
        "/v1/chat/completions",
        "sk-nobody",
        &long,
        &chat("x"),
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.text);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.mock.call_count(), 0, "nothing was queued");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_store_a_keyed_request_is_refused_and_others_run() {
    // No Redis configured: the ingress cannot keep the promise, so it says so.
    let stack = Stack::start(StackOptions {
        ingress_config: Some(|c| c.idempotency.redis_url = None),
        ..StackOptions::default()
    })
    .await;
    let a = send(&stack, "/v1/chat/completions", KEY_A, "k", &chat("x")).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.json()["error"]["code"], "invalid_idempotency_key");
    let (status, body, _) = stack.chat_with_id(KEY_A, &chat("no key")).await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;

    // A Redis that is down: 503 within the store's timeout, nothing published; requests
    // without a key do not need it.
    let stack = Stack::start(StackOptions {
        ingress_config: Some(|c| {
            c.idempotency.redis_url = Some(format!("redis://127.0.0.1:{}", free_port()));
        }),
        ..StackOptions::default()
    })
    .await;
    let started = std::time::Instant::now();
    let a = send(&stack, "/v1/chat/completions", KEY_A, "k", &chat("down")).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.json()["error"]["code"], "idempotency_store_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered, not hung"
    );
    let a = send(&stack, "/v1/requests", KEY_A, "k", &chat("down")).await;
    assert_eq!(a.status, 503, "{}", a.text);
    let (status, body, _) = stack.chat_with_id(KEY_A, &chat("no key")).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.mock.call_count(), 1, "only the unkeyed request ran");
    stack.stop().await;
}

/// A produce that timed out (the broker was down) is an unknown outcome: the key stays
/// claimed, and a retry is told it is in use. Once `takeover_after_ms` has passed and
/// ClickHouse shows the request was never accepted, a retry takes the key over and runs: one
/// provider call, one usage row.
#[test]
fn a_retry_takes_over_a_key_whose_request_never_reached_kafka() {
    with_private_broker(|broker| async move {
        let stack = Stack::start(StackOptions {
            bootstrap: broker.bootstrap.clone(),
            produce_timeout: Duration::from_secs(2),
            ingress_config: Some(|c| {
                c.idempotency.takeover_after_ms = Duration::from_secs(12);
            }),
            ..StackOptions::default()
        })
        .await;
        let body = chat("lost in the outage");
        broker.services("stop-kafka");
        let first = send(&stack, "/v1/requests", KEY_A, "outage-1", &body).await;
        assert_eq!(first.status, 503, "{}", first.text);
        assert_eq!(first.json()["error"]["code"], "service_unavailable");
        broker.services("start-kafka");

        // Kafka is back, but the first request's fate is unknown for a while: 409.
        let early = send(&stack, "/v1/requests", KEY_A, "outage-1", &body).await;
        assert_eq!(early.status, 409, "{}", early.text);
        assert_eq!(early.json()["error"]["code"], "idempotency_key_in_use");
        let retry = eventually(WAIT, || async {
            let a = send(&stack, "/v1/requests", KEY_A, "outage-1", &body).await;
            assert!(
                a.status == 202 || a.status == 409,
                "{}: {}",
                a.status,
                a.text
            );
            (a.status == 202).then_some(a)
        })
        .await
        .expect("a retry runs once the claim is stale");
        assert!(!retry.replayed, "the first request never ran");
        let id = retry.json()["id"].as_str().unwrap().to_string();
        stack.result_row(&id, "status").await;
        let again = send(&stack, "/v1/requests", KEY_A, "outage-1", &body).await;
        assert_eq!(again.status, 202, "{}", again.text);
        assert_eq!(
            again.json()["id"],
            id.as_str(),
            "the key now names the retry"
        );
        assert_eq!(usage_rows(&stack, 1).await, 1);
        let calls = stack
            .mock
            .calls()
            .iter()
            .filter(|c| {
                c.body
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains("lost in the outage"))
            })
            .count();
        assert_eq!(calls, 1, "one provider call");
        stack.stop().await;
    });
}

/// Batch creation takes a key too: a retry gets the same batch, not a second run of every
/// line (and bill); the same key with another body is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_batch_creation_makes_one_batch() {
    use crate::batch::{batch_reaching, line, upload};
    let stack = Stack::start(StackOptions::default()).await;
    let lines = [line("a", "first"), line("b", "second")];
    let (status, file) = upload(&stack, KEY_A, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"});
    let first = send(&stack, "/v1/batches", KEY_A, "batch", &create).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(!first.replayed);
    let id = first.json()["id"].as_str().unwrap().to_string();
    let again = send(&stack, "/v1/batches", KEY_A, "batch", &create).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert!(again.replayed, "{}", again.text);
    assert_eq!(again.json()["id"], id.as_str(), "the same batch");

    let mut other = create.clone();
    other["metadata"] = json!({"run": "2"});
    let reused = send(&stack, "/v1/batches", KEY_A, "batch", &other).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    assert_eq!(reused.json()["error"]["code"], "idempotency_key_reused");
    // Another team's same key is its own.
    let theirs = keyed(
        &stack.http,
        &stack.base,
        "/v1/batches",
        KEY_B,
        &ik(&stack, "batch"),
        &create,
    )
    .await;
    assert_eq!(
        theirs.status, 404,
        "team B cannot see team A's file: {}",
        theirs.text
    );

    batch_reaching(&stack, &id, "completed").await;
    let done = send(&stack, "/v1/batches", KEY_A, "batch", &create).await;
    assert_eq!(
        done.json()["status"],
        "completed",
        "a replay shows the batch as it is now"
    );
    let (_, list) = stack.get("/v1/batches", KEY_A).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(stack.mock.call_count(), 2, "each line ran once");
    stack.stop().await;
}

/// Anthropic's Message Batches take a key too, though the body streams into storage as it
/// arrives: its digest is the fingerprint, and a retry's stored lines are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_message_batch_creation_makes_one_batch() {
    use crate::batch::message_batch_ended;
    let stack = Stack::start(StackOptions::default()).await;
    let body = |text: &str| {
        json!({"requests": [
            {"custom_id": "m-1", "params": {"model": MODEL, "max_tokens": 16,
             "messages": [{"role": "user", "content": text}]}}]})
    };
    let create = |body: Value| {
        let http = stack.http.clone();
        let url = format!("{}/v1/messages/batches", stack.base);
        let key = ik(&stack, "msgbatch");
        async move {
            let response = http
                .post(url)
                .header("x-api-key", KEY_A)
                .header("anthropic-version", "2023-06-01")
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let replayed = response
                .headers()
                .get(REPLAYED)
                .is_some_and(|v| v == "true");
            (
                response.status().as_u16(),
                replayed,
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, replayed, first) = create(body("hello")).await;
    assert_eq!(status, 200, "{first}");
    assert!(!replayed);
    let (status, replayed, again) = create(body("hello")).await;
    assert_eq!(status, 200, "{again}");
    assert!(replayed);
    assert_eq!(again["id"], first["id"]);
    let (status, _, reused) = create(body("another body")).await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["type"], "error", "Anthropic's shape: {reused}");

    let id = first["id"].as_str().unwrap();
    message_batch_ended(&stack, id).await;
    assert_eq!(stack.mock.call_count(), 1, "the line ran once");
    // The retries' stored lines are dropped (a ClickHouse mutation, applied in the
    // background): only the batch's input file is left.
    let left = eventually(WAIT, || async {
        let files = stack
            .ch("SELECT uniqExact(file_id) FROM {db}_private.batch_file_lines")
            .await;
        (files.trim() == "1").then_some(())
    })
    .await;
    assert!(left.is_some(), "the retries' lines were not dropped");
    stack.stop().await;
}
