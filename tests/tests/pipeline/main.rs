//! End-to-end tests of the pipeline on the real Kafka and ClickHouse:
//! ingress -> Kafka -> workers -> mock provider -> Kafka -> analytics -> ClickHouse.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail loudly"
)]

mod batch;
mod batch_limits;
mod budgets;
mod cache;
mod cancel;
#[path = "../common/mod.rs"]
mod common;
mod connections;
mod console;
mod count_tokens;
mod embeddings;
mod governance;
mod guardrails;
mod hooks;
mod idempotency;
mod keys;
mod limits;
mod metrics;
mod money;
mod native_responses;
mod privileges;
mod providers;
mod replay;
mod residency;
mod responses;
mod routing;
mod scheduling;
mod streaming;
mod webhooks;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sluice_tests::mock::Behaviour;

const WAIT: Duration = Duration::from_secs(60);

/// A caller's `traceparent` with tracing off: a well-formed one reaches the provider as sent;
/// an 8 KB junk one is no error and goes nowhere (not to the provider; nor, by
/// sluice_schemas::trace::well_formed, onto a Kafka header).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callers_traceparent_goes_on_only_when_well_formed() {
    let stack = Stack::start(StackOptions::default()).await;
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let junk = format!("00-{}", "z".repeat(8_000));
    for (header, text) in [(good, "traced call"), (junk.as_str(), "junk traceparent")] {
        let (status, body) = json_answer(
            stack
                .http
                .post(format!("{}/v1/chat/completions", stack.base))
                .bearer_auth(KEY_A)
                .header("traceparent", header)
                .json(&chat(text)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let calls = stack.mock.calls();
    let sent = |text: &str| {
        let call = calls
            .iter()
            .find(|c| {
                c.body
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains(text))
            })
            .expect("the call reached the provider");
        call.header("traceparent").map(str::to_string)
    };
    assert_eq!(sent("traced call").as_deref(), Some(good));
    assert_eq!(sent("junk traceparent"), None);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_call_returns_the_provider_answer_and_bills_what_it_reported() {
    let stack = Stack::start(StackOptions::default()).await;
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("What is Kafka?"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let calls = stack.mock.calls();
    assert_eq!(calls.len(), 1, "exactly one provider call");
    let call = &calls[0];
    assert_eq!(
        body["choices"][0]["message"]["content"],
        call.content.as_str()
    );
    assert_eq!(body["usage"]["prompt_tokens"], call.prompt_tokens);
    assert_eq!(body["usage"]["completion_tokens"], call.completion_tokens);
    // The provider never sees Sluice's own fields.
    assert_eq!(
        call.body.as_ref().unwrap()["messages"][0]["content"],
        "What is Kafka?"
    );

    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let row = stack
        .ch("SELECT team, key_id, model, prompt_tokens, completion_tokens, cost_nanos, status FROM {db}.usage FINAL")
        .await;
    let cols: Vec<&str> = row.trim().split('\t').collect();
    let (p, c) = (call.prompt_tokens as i64, call.completion_tokens as i64);
    let expected_cost = p * (PRICE_IN * 1000.0) as i64 + c * (PRICE_OUT * 1000.0) as i64;
    assert_eq!(
        cols,
        vec![
            "team-a",
            "key_a",
            MODEL,
            &p.to_string(),
            &c.to_string(),
            &expected_cost.to_string(),
            "completed"
        ]
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_submit_then_poll_and_other_teams_cannot_read_it() {
    let stack = Stack::start(StackOptions::default()).await;
    let (status, accepted) = stack
        .post("/v1/requests", KEY_A, chat("summarise this"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    let id = accepted["id"].as_str().unwrap().to_string();

    let done = eventually(WAIT, || async {
        let (status, body) = stack.get(&format!("/v1/requests/{id}"), KEY_A).await;
        assert_eq!(status, 200, "{body}");
        (body["status"] == "completed").then_some(body)
    })
    .await
    .expect("request completes");
    let call = &stack.mock.calls()[0];
    assert_eq!(
        done["response"]["choices"][0]["message"]["content"],
        call.content.as_str()
    );
    assert_eq!(
        done["response"]["usage"]["prompt_tokens"],
        call.prompt_tokens
    );

    // Another team's key sees nothing, not even that the request exists.
    let (status, body) = stack.get(&format!("/v1/requests/{id}"), KEY_B).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = stack.get("/v1/requests/req_doesnotexist", KEY_A).await;
    assert_eq!(status, 404);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_errors_reach_the_caller_in_openai_shape() {
    use sluice_tests::mock::Failure;
    let stack = Stack::start(StackOptions::default()).await;
    // A non-retriable 400 from the provider is passed through, not retried.
    stack.mock.fail_next([Failure::status(400)]);
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("bad for the provider"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(stack.mock.call_count(), 1, "4xx is not retried");
    // Two 500s then success: retried and answered.
    stack
        .mock
        .fail_next([Failure::server_error(), Failure::server_error()]);
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("flaky provider"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.mock.call_count(), 4);
    let n = stack
        .wait_count("SELECT count() FROM {db}.results FINAL", 2, WAIT)
        .await;
    assert_eq!(n, 2);
    let rows = stack
        .ch("SELECT status, http_status, attempts FROM {db}.results FINAL ORDER BY created_at, attempts")
        .await;
    let mut rows: Vec<&str> = rows.lines().collect();
    rows.sort();
    assert_eq!(rows, vec!["completed\t200\t3", "failed\t400\t1"]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_past_its_deadline_never_reaches_the_provider() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await;
    let mut request = chat("too late");
    request["sluice"] = json!({"timeout_ms": 1});
    let (status, body) = stack.post("/v1/requests", KEY_A, request).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stack.add_worker("late-worker");
    let done = eventually(WAIT, || async {
        let (_, body) = stack.get(&format!("/v1/requests/{id}"), KEY_A).await;
        (body["status"] == "expired").then_some(body)
    })
    .await
    .expect("expired result");
    assert_eq!(done["error"]["code"], "deadline_exceeded");
    assert_eq!(stack.mock.call_count(), 0);
    // The usage row comes through its own topic: it may land a flush after the result.
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let usage = stack
        .ch("SELECT status, prompt_tokens, cost_nanos FROM {db}.usage FINAL")
        .await;
    assert_eq!(usage.trim(), "expired\t0\t0");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_openai_error_and_nothing_is_published() {
    let stack = Stack::start(StackOptions::default()).await;
    let url = format!("{}/v1/chat/completions", stack.base);
    let raw = |body: &'static str, key: Option<&'static str>| {
        let mut r = stack
            .http
            .post(&url)
            .body(body)
            .header("content-type", "application/json");
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("JSON error body");
            (status, body)
        }
    };
    let cases: Vec<(&str, u16, &str, Option<&str>, &str)> = vec![
        // (body, status, code, key, what)
        (
            r#"{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"hi"}]}"#,
            401,
            "invalid_api_key",
            None,
            "missing key",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"hi"}]}"#,
            401,
            "invalid_api_key",
            Some("sk-wrong"),
            "wrong key",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": ["#,
            400,
            "invalid_json",
            Some(KEY_A),
            "malformed JSON",
        ),
        (
            r#"{"model": 42, "messages": []}"#,
            400,
            "invalid_json",
            Some(KEY_A),
            "wrong type",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": "hi"}"#,
            400,
            "invalid_json",
            Some(KEY_A),
            "messages not a list",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [{"role":"wizard","content":"hi"}]}"#,
            400,
            "invalid_json",
            Some(KEY_A),
            "unknown role",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [], "max_tokens": -1}"#,
            400,
            "invalid_json",
            Some(KEY_A),
            "negative max_tokens",
        ),
        (
            r#"{"model": "gpt-4o-mini"}"#,
            400,
            "invalid_json",
            Some(KEY_A),
            "no messages",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": []}"#,
            400,
            "invalid_value",
            Some(KEY_A),
            "empty messages",
        ),
        (
            r#"{"model": "", "messages": [{"role":"user","content":"hi"}]}"#,
            400,
            "invalid_value",
            Some(KEY_A),
            "empty model",
        ),
        (
            r#"{"model": "gpt-9", "messages": [{"role":"user","content":"hi"}]}"#,
            404,
            "model_not_found",
            Some(KEY_A),
            "unknown model",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"hi"}], "sluice": {"priority": "urgent"}}"#,
            400,
            "invalid_value",
            Some(KEY_A),
            "bad priority",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"hi"}], "sluice": {"timeout_ms": 0}}"#,
            400,
            "invalid_value",
            Some(KEY_A),
            "zero timeout",
        ),
        (
            r#"{"model": "gpt-4o-mini", "messages": [{"role":"user","content":"hi"}], "sluice": {"colour": "red"}}"#,
            400,
            "invalid_value",
            Some(KEY_A),
            "unknown sluice option",
        ),
        (
            r#"[1, 2, 3]"#,
            400,
            "invalid_json",
            Some(KEY_A),
            "not an object",
        ),
        ("", 400, "invalid_json", Some(KEY_A), "empty body"),
    ];
    for (body, status, code, key, what) in cases {
        let (got, err) = raw(body, key).await;
        assert_eq!(got, status, "{what}: {err}");
        assert_eq!(err["error"]["code"], code, "{what}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert!(err["error"]["type"].is_string(), "{what}");
    }
    // Bad priority header.
    let resp = stack
        .http
        .post(&url)
        .bearer_auth(KEY_A)
        .header("x-sluice-priority", "now!")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Unknown route and wrong method, in the same shape.
    let (status, body) = stack.get("/v1/nothing-here", KEY_A).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_url"))
    );
    let (status, body) = stack.get("/v1/chat/completions", KEY_A).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );

    // Oversized body.
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    // Its own client: the server closes a connection whose body it refused to read.
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(KEY_A)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "request_too_large");
    // None of it reached a provider; the one valid request after it still works.
    assert_eq!(stack.mock.call_count(), 0);
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("fine"))
        .await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_load_and_every_request_is_billed_once() {
    let mut stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: sluice_tests::mock::Latency::Fixed(Duration::from_millis(50)),
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    stack.add_worker("w2");
    // Keep the load coming until the group has rebalanced onto both members (how long
    // that takes depends on the broker, not on us), then check every request was billed
    // exactly once across both.
    let mut ids = Vec::new();
    let started = std::time::Instant::now();
    let mut workers = String::new();
    while started.elapsed() < WAIT {
        ids.extend(stack.submit_many(40, KEY_A).await);
        let n = stack
            .wait_count(
                "SELECT count() FROM {db}.usage FINAL",
                ids.len() as u64,
                WAIT,
            )
            .await;
        assert_eq!(n, ids.len() as u64);
        workers = stack
            .ch("SELECT uniqExact(worker) FROM {db}.results FINAL")
            .await;
        if workers.trim() == "2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(workers.trim(), "2", "both workers processed requests");
    let billed = stack
        .ch("SELECT uniqExact(request_id), count() FROM {db}.usage FINAL")
        .await;
    assert_eq!(billed.trim(), format!("{0}\t{0}", ids.len()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_loses_nothing_and_bills_nothing_twice() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        behaviour: Behaviour {
            latency: sluice_tests::mock::Latency::Fixed(Duration::from_millis(1500)),
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let config = std::env::temp_dir().join(format!("{}-worker.toml", stack.prefix));
    std::fs::write(&config, stack.worker_toml("doomed")).unwrap();
    let mut doomed = std::process::Command::new(workspace_bin("sluice-worker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let ids = stack.submit_many(30, KEY_A).await;
    // Kill it while requests are in flight at the provider.
    let in_flight = eventually(WAIT, || async {
        (stack.mock.call_count() >= 10).then_some(())
    })
    .await;
    assert!(
        in_flight.is_some(),
        "the doomed worker started calling the provider"
    );
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let answered_before_kill = stack.ch("SELECT count() FROM {db}.results FINAL").await;
    assert!(
        answered_before_kill.trim().parse::<usize>().unwrap() < ids.len(),
        "the kill happened mid-flight"
    );

    stack.add_worker("survivor");
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL",
            ids.len() as u64,
            WAIT * 2,
        )
        .await;
    assert_eq!(n, ids.len() as u64, "every accepted request finished");
    let summary = stack
        .ch("SELECT uniqExact(request_id), count(), sum(prompt_tokens) > 0 FROM {db}.usage FINAL")
        .await;
    assert_eq!(
        summary.trim(),
        format!("{0}\t{0}\t1", ids.len()),
        "billed once each"
    );
    // The provider did see some requests twice (at-least-once); billing did not.
    let calls = stack.mock.call_count();
    assert!(calls as usize > ids.len(), "{calls} calls");
    // But every call is an attempt row, the killed worker's cut-off ones included (left
    // `started`, billed `unknown`): what the provider may bill is on record. At least one row
    // per call, not exactly one: a worker killed after its `started` record was acked but
    // before the HTTP request reached the provider leaves a row for a call that never
    // happened (billed `unknown`, the safe side; seen once in CI: 60 calls, 61 rows).
    let attempts = || async {
        stack
            .ch("SELECT count() FROM {db}.attempts FINAL")
            .await
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let recorded = eventually(WAIT, || async {
        let n = attempts().await;
        (n >= calls).then_some(n)
    })
    .await;
    assert!(
        recorded.is_some(),
        "one attempt row per provider call at least: {} rows for {calls} calls",
        attempts().await
    );
    let cut = stack
        .ch("SELECT count(), countIf(billed = 'unknown') FROM {db}.attempts FINAL WHERE worker = 'doomed' AND outcome = 'started'")
        .await;
    let cut: Vec<u64> = cut.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert!(cut[0] > 0 && cut[0] == cut[1], "cut-off calls: {cut:?}");
    let _ = std::fs::remove_file(config);
    stack.stop().await;
}

/// A worker joining moves partitions away from a worker with requests in flight at the
/// provider: the old owner finishes and commits them before it lets the partitions go, so
/// the new owner does not read them again and the provider sees each request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_with_requests_in_flight_calls_the_provider_once_per_request() {
    let mut stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: sluice_tests::mock::Latency::Fixed(Duration::from_millis(3000)),
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let ids = stack.submit_many(30, KEY_A).await;
    let in_flight = eventually(WAIT, || async {
        (stack.mock.call_count() >= 20).then_some(())
    })
    .await;
    assert!(in_flight.is_some(), "w1 started calling the provider");
    // Joins while w1's calls are running: cooperative rebalancing revokes some of w1's
    // partitions mid-flight.
    stack.add_worker("w2");
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL",
            ids.len() as u64,
            WAIT * 2,
        )
        .await;
    assert_eq!(n, ids.len() as u64, "every accepted request finished");
    // Both own partitions now: more requests go to both.
    let more = stack.submit_many(24, KEY_A).await;
    let total = (ids.len() + more.len()) as u64;
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", total, WAIT * 2)
        .await;
    assert_eq!(n, total);
    let workers = stack
        .ch("SELECT uniqExact(worker) FROM {db}.results FINAL")
        .await;
    assert_eq!(workers.trim(), "2", "the partitions moved");
    // Late second calls would show up as more calls than requests.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        stack.mock.call_count() as u64,
        total,
        "one provider call per request"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_down_gives_503_not_a_hang() {
    let stack = Stack::start(StackOptions {
        clickhouse_url: "http://127.0.0.1:9".into(),
        ..StackOptions::default()
    })
    .await;
    let (status, body) = stack.post("/v1/requests", KEY_A, chat("hello")).await;
    assert_eq!(status, 202, "accepting needs only Kafka: {body}");
    let (status, body) = stack.get("/v1/requests/req_x", KEY_A).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "service_unavailable");
    stack.stop().await;
}

/// The records on the stack's results topic (the sum of its partitions' high watermarks).
fn results_on_topic(stack: &Stack) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use sluice_schemas::{Topic, Topics};
    let topic = Topics::new(stack.prefix.clone()).name(&Topic::Results);
    let consumer: BaseConsumer = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .create()
    {
        Ok(c) => c,
        Err(e) => return format!("unknown ({e})"),
    };
    let mut total = 0;
    for partition in 0..Topic::Results.partitions() {
        match consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)) {
            Ok((low, high)) => total += high - low,
            Err(e) => return format!("unknown ({e})"),
        }
    }
    total.to_string()
}

#[test]
fn kafka_down_gives_503_and_a_broker_restart_loses_nothing_accepted() {
    with_private_broker(|broker| async move {
        let mut stack = Stack::start(StackOptions {
            bootstrap: broker.bootstrap.clone(),
            worker: false,
            produce_timeout: Duration::from_secs(2),
            ..StackOptions::default()
        })
        .await;
        let before = stack.submit_many(20, KEY_A).await;

        broker.services("stop-kafka");
        let started = std::time::Instant::now();
        let (status, body) = stack.post("/v1/requests", KEY_A, chat("nobody home")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "service_unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "answered instead of hanging"
        );

        broker.services("start-kafka");
        // The producer reconnects on its own; accepted again once the broker is back.
        let after = eventually(WAIT, || async {
            let (status, body) = stack.post("/v1/requests", KEY_A, chat("back again")).await;
            (status == 202).then(|| body["id"].as_str().unwrap().to_string())
        })
        .await
        .expect("accepting again after the restart");

        stack.add_worker("after-restart");
        // Wait for these ids, not for a count: a post of the retry loop above that timed out
        // (503) while the broker was coming back may still have been written (a produce
        // timeout is an unknown outcome, not a refusal), and would run too.
        let wanted: Vec<&String> = before.iter().chain([&after]).collect();
        let missing = eventually(WAIT * 2, || async {
            let ids = stack.ch("SELECT request_id FROM {db}.usage FINAL").await;
            let missing: Vec<&String> = wanted
                .iter()
                .copied()
                .filter(|id| !ids.contains(id.as_str()))
                .collect();
            missing.is_empty().then_some(())
        })
        .await;
        if missing.is_none() {
            // Which stage stalled (this test failed 1 run in 6 under CI load once): the
            // provider calls, the results the sink stored, the usage rows.
            let results = stack.ch("SELECT count() FROM {db}.results FINAL").await;
            let usage = stack.ch("SELECT count() FROM {db}.usage FINAL").await;
            // Records on the results topic tell the worker's part from the sink's.
            let on_topic = tokio::task::block_in_place(|| results_on_topic(&stack));
            panic!(
                "not every request accepted before and after the restart was processed: \
                 {} wanted, {} provider calls, {on_topic} records on the results topic, \
                 {} results rows, {} usage rows",
                wanted.len(),
                stack.mock.calls().len(),
                results.trim(),
                usage.trim()
            );
        }
        let billed = stack
            .ch("SELECT uniqExact(request_id) = count() FROM {db}.usage FINAL")
            .await;
        assert_eq!(billed.trim(), "1", "billed once each");
        // The request refused while the broker was down (nothing could reach it) never ran.
        let ran_refused = stack.mock.calls().iter().any(|c| {
            c.body
                .as_ref()
                .is_some_and(|b| b.to_string().contains("nobody home"))
        });
        assert!(!ran_refused, "the 503'd request reached the provider");
        stack.stop().await;
    });
}
