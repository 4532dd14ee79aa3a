//! Money cannot be bypassed (issue #14), written as the attacks: a tenant asking for many
//! completions, for no cap, or for fields billed at prices Sluice does not know, against a
//! small budget; an operator starting a worker with an unpriced model.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Failure, MockProvider};

const WAIT: Duration = Duration::from_secs(60);

use crate::common::*;

/// Team A's daily budget, nano-USD: a 100-token answer (60,000) fits, eight do not.
const LIMIT_USD: f64 = 0.0003;
/// Completion tokens reserved (and forwarded) for a request without a cap.
const DEFAULT_CAP: u32 = 256;

fn budget_toml(limit_usd: f64) -> String {
    format!(
        r#"
[[budgets]]
scope = "team"
subject = "team-a"
period = "day"
limit_usd = {limit_usd}

[budget]
default_completion_tokens = {DEFAULT_CAP}
"#
    )
}

fn with(extra: Value) -> Value {
    let mut body = chat("How much will this cost?");
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_completions_cannot_spend_past_a_budget() {
    let stack = Stack::start(StackOptions {
        budget_toml: budget_toml(LIMIT_USD),
        behaviour: Behaviour {
            completion_tokens: 100,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    // n: 128 is over the cap: a 400 in OpenAI's shape, on every path.
    for path in ["/v1/chat/completions", "/v1/requests"] {
        let (status, body) = stack
            .post(path, KEY_A, with(json!({"n": 128, "max_tokens": 100})))
            .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["param"], "n", "{body}");
        assert_eq!(body["error"]["code"], "invalid_value", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1 to 8"),
            "{body}"
        );
    }
    // n: 8 is allowed, but 8 answers of 100 tokens (480,000 nano-USD) do not fit the
    // budget, though one does: the reservation counts every completion.
    let (status, body) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            with(json!({"n": 8, "max_tokens": 100})),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    // Without a cap, n x the default cap is reserved (8 x 256 tokens): refused too.
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, with(json!({"n": 8})))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        stack.mock.call_count(),
        0,
        "no provider call for any of them"
    );
    // One completion fits and is served.
    let (status, body) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            with(json!({"n": 1, "max_tokens": 100})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.mock.call_count(), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_without_a_cap_reaches_the_provider_with_the_reserved_cap() {
    let stack = Stack::start(StackOptions {
        budget_toml: budget_toml(0.01),
        behaviour: Behaviour {
            // Longer than the reserved cap: the provider must stop at it.
            completion_tokens: 1000,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("Write a long essay."))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], DEFAULT_CAP, "{body}");
    // Streamed too.
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&with(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let _ = response.text().await.unwrap();
    // A caller's own cap is forwarded as given.
    let (status, body) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            with(json!({"max_tokens": 10})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let calls = stack.mock.calls();
    assert_eq!(calls.len(), 3);
    for call in &calls[..2] {
        let sent = call.body.as_ref().unwrap();
        assert_eq!(sent["max_completion_tokens"], DEFAULT_CAP, "{sent}");
        assert!(sent.get("max_tokens").is_none(), "{sent}");
    }
    let sent = calls[2].body.as_ref().unwrap();
    assert_eq!(sent["max_tokens"], 10, "{sent}");
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billable_pass_through_fields_are_refused_before_anything_is_published() {
    let stack = Stack::start(StackOptions {
        budget_toml: budget_toml(LIMIT_USD),
        ..StackOptions::default()
    })
    .await;
    let attacks = [
        (json!({"service_tier": "priority"}), "service_tier"),
        (json!({"service_tier": "flex"}), "service_tier"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (
            json!({"audio": {"voice": "alloy", "format": "wav"}}),
            "audio",
        ),
        (json!({"web_search_options": {}}), "web_search_options"),
        (
            json!({"prediction": {"type": "content", "content": "x"}}),
            "prediction",
        ),
        (
            json!({"tools": [{"type": "web_search_preview"}]}),
            "tools[0].type",
        ),
        (
            json!({"a_future_paid_option": true}),
            "a_future_paid_option",
        ),
    ];
    for (extra, param) in attacks {
        for path in ["/v1/chat/completions", "/v1/requests"] {
            let (status, body) = stack.post(path, KEY_A, with(extra.clone())).await;
            assert_eq!(status, 400, "{path} {extra}: {body}");
            assert_eq!(body["error"]["param"], param, "{body}");
            assert_eq!(body["error"]["code"], "unsupported_parameter", "{body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        }
    }
    // The project's default tier is the operator's choice: it passes.
    let (status, body) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            with(json!({"service_tier": "auto", "max_tokens": 5})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stack.mock.call_count(),
        1,
        "only the allowed request was sent"
    );
    assert_eq!(
        stack.mock.calls()[0].body.as_ref().unwrap()["service_tier"],
        "auto"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_with_an_unpriced_model_refuses_to_start() {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await;
    let unpriced = format!(
        "{}\n[[deployments]]\nname = \"pricey\"\nmodel = \"house-model\"\nprovider = {{ type = \"openai\", base_url = \"{}\" }}\n",
        stack.worker_toml("unpriced"),
        stack.mock.base_url()
    );
    let config = std::env::temp_dir().join(format!("{}-unpriced.toml", stack.prefix));
    std::fs::write(&config, &unpriced).unwrap();
    let spawn = |stderr: std::process::Stdio| {
        std::process::Command::new(workspace_bin("sluice-worker"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    // Polls for the child's exit, for at most `limit`.
    async fn exited(
        child: &mut std::process::Child,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
    let mut child = spawn(std::process::Stdio::piped());
    let status = exited(&mut child, Duration::from_secs(30)).await;
    if status.is_none() {
        // Still serving: stop it, or reading its stderr would wait for ever.
        let _ = child.kill();
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        pipe.read_to_string(&mut stderr).unwrap();
    }
    let status = status.expect("the worker exits instead of serving");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("`deployments[1].model = \"house-model\"` has no price"),
        "{stderr}"
    );
    assert!(stderr.contains("free_models"), "{stderr}");
    // Listed as free on purpose, it starts (and keeps running until stopped).
    std::fs::write(
        &config,
        format!("{unpriced}\n[pricing]\nfree_models = [\"house-model\"]\n"),
    )
    .unwrap();
    let mut child = spawn(std::process::Stdio::null());
    let early = exited(&mut child, Duration::from_secs(3)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        early.is_none(),
        "a priced-or-free config keeps running: {early:?}"
    );
    let _ = std::fs::remove_file(config);
    stack.stop().await;
}

/// One deployment that times out (the stack's mock, OpenAI format, 1 s per attempt, no
/// retry) and its fallback (a second mock, Anthropic format), both of one priced model.
fn timeout_fallback_toml(secondary: &MockProvider) -> String {
    format!(
        r#"
[[deployments]]
name = "primary"
model = "resilient"
timeout_ms = 1000
max_retries = 0
provider = {{ type = "openai", base_url = "{{origin}}/v1" }}

[[deployments]]
name = "secondary"
model = "resilient"
weight = 0
max_retries = 0
provider = {{ type = "anthropic", base_url = "{secondary}" }}

[[prices]]
model = "resilient"
input_per_million = 2.0
output_per_million = 8.0
"#,
        secondary = secondary.origin(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fallback_after_a_provider_timeout_leaves_two_attempts_and_one_charge() {
    let secondary = MockProvider::start(Behaviour::default()).await.unwrap();
    let stack = Stack::start(StackOptions {
        extra_worker_toml: timeout_fallback_toml(&secondary),
        extra_models: vec!["resilient".into()],
        ..StackOptions::default()
    })
    .await;
    // The primary holds the call past the attempt's timeout: it may still bill for it.
    stack.mock.fail_next([Failure::Timeout]);
    let mut body = chat("Are you there?");
    body["model"] = json!("resilient");
    body["max_tokens"] = json!(50);
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let id = response.headers()["x-sluice-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(stack.mock.call_count(), 1, "the primary was called");
    let served = &secondary.calls()[0];
    // nano-USD per token: $2 / $8 per million.
    let served_cost =
        i64::from(served.prompt_tokens) * 2_000 + i64::from(served.completion_tokens) * 8_000;

    let attempts = format!(
        "SELECT attempt, deployment, outcome, billed, estimated, prompt_tokens > 0, completion_tokens, cost_nanos, max_cost_nanos >= cost_nanos, finished_at_ms > 0 FROM {{db}}.attempts FINAL WHERE request_id = '{id}' ORDER BY attempt"
    );
    let rows = eventually(WAIT, || async {
        let rows = stack.ch(&attempts).await;
        let ended = rows.lines().filter(|l| l.ends_with("\t1")).count();
        (rows.lines().count() == 2 && ended == 2).then_some(rows)
    })
    .await
    .expect("both attempts recorded");
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    // The timed-out call: tokens unknown, estimated from the counted prompt, costed.
    assert_eq!(
        rows[0][..5],
        ["1", "primary", "timeout", "unknown", "1"],
        "{rows:?}"
    );
    assert_eq!(rows[0][5], "1", "estimated prompt tokens");
    assert!(rows[0][7].parse::<i64>().unwrap() > 0, "{rows:?}");
    assert_eq!(rows[0][8], "1");
    // The fallback that answered: what it reported.
    assert_eq!(
        rows[1],
        [
            "2",
            "secondary",
            "completed",
            "reported",
            "0",
            "1",
            &served.completion_tokens.to_string(),
            &served_cost.to_string(),
            "1",
            "1"
        ],
        "{rows:?}"
    );
    // The team is charged once, for the answer it got.
    let usage = format!(
        "SELECT count(), sum(cost_nanos), any(deployment) FROM {{db}}.usage FINAL WHERE request_id = '{id}'"
    );
    assert_eq!(
        stack
            .wait_count(
                &format!("SELECT count() FROM {{db}}.usage FINAL WHERE request_id = '{id}'"),
                1,
                WAIT
            )
            .await,
        1
    );
    assert_eq!(
        stack.ch(&usage).await.trim(),
        format!("1\t{served_cost}\tsecondary")
    );
    // Reconciliation: the primary's attempt was charged to no one.
    let view = stack
        .ch("SELECT deployment, attempts, reported_attempts, unknown_attempts, charged_requests, charged_cost_nanos, unbilled_cost_nanos = attempt_cost_nanos, unknown_max_cost_nanos > 0 FROM {db}.reconciliation_by_deployment_day ORDER BY deployment")
        .await;
    assert_eq!(
        view,
        format!("primary\t1\t0\t1\t0\t0\t1\t1\nsecondary\t1\t1\t0\t1\t{served_cost}\t0\t0\n")
    );
    stack.stop().await;
    secondary.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_request_that_has_a_result_is_not_sent_to_the_provider_again() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await;
    // A worker that finishes requests but never commits their offsets before it dies: every
    // one of them is redelivered to the next owner of the partition.
    let toml = stack.worker_toml("doomed").replace(
        "\"heartbeat.interval.ms\" = \"500\"",
        "\"heartbeat.interval.ms\" = \"500\", \"auto.commit.interval.ms\" = \"600000\"",
    );
    assert!(toml.contains("auto.commit.interval.ms"));
    let config = std::env::temp_dir().join(format!("{}-doomed.toml", stack.prefix));
    std::fs::write(&config, toml).unwrap();
    let mut doomed = std::process::Command::new(workspace_bin("sluice-worker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    const N: usize = 10;
    for i in 0..N {
        let (status, body) = stack
            .post("/v1/requests", KEY_A, chat(&format!("redelivered {i}")))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // Every result and usage row is in ClickHouse: the doomed worker finished them all.
    for table in ["results", "usage"] {
        let n = stack
            .wait_count(
                &format!("SELECT count() FROM {{db}}.{table} FINAL"),
                N as u64,
                WAIT,
            )
            .await;
        assert_eq!(n, N as u64, "{table}");
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    assert_eq!(stack.mock.call_count(), N as u64);

    stack.add_worker("survivor");
    // One more request of the same team (the same partition, behind the redelivered ones):
    // once it is answered, the survivor has been through the partition's backlog.
    let (status, body) = stack
        .post("/v1/requests", KEY_A, chat("after the kill"))
        .await;
    assert_eq!(status, 202, "{body}");
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL",
            N as u64 + 1,
            WAIT * 2,
        )
        .await;
    assert_eq!(n, N as u64 + 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = stack.mock.calls();
    for i in 0..N {
        let text = format!("redelivered {i}");
        let count = calls
            .iter()
            .filter(|c| {
                c.body
                    .as_ref()
                    .is_some_and(|b| b["messages"][0]["content"] == text.as_str())
            })
            .count();
        assert_eq!(count, 1, "{text} was sent to the provider once");
    }
    assert_eq!(stack.mock.call_count(), N as u64 + 1);
    // Billed once each, as before.
    assert_eq!(
        stack
            .ch("SELECT uniqExact(request_id), count() FROM {db}.usage FINAL")
            .await
            .trim(),
        format!("{0}\t{0}", N + 1)
    );
    let _ = std::fs::remove_file(config);
    stack.stop().await;
}
