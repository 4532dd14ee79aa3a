//! `POST /v1/embeddings` end to end: OpenAI's request and answer (float or base64), through
//! Kafka to OpenAI, Azure and Gemini deployments (Anthropic has none: the chain falls back),
//! input tokens billed once, guardrails on the input, bad inputs refused before any call.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use sluice_tests::mock::embeddings::vector;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);
const EMBED: &str = "text-embedding-3-small";
/// USD per million input tokens: 20 nano-USD a token.
const EMBED_PRICE: f64 = 0.02;

/// Embeddings deployments of every provider type in front of the stack's mock.
const DEPLOYMENTS: &str = r#"
[[deployments]]
name = "openai-embed"
model = "text-embedding-3-small"
provider = { type = "openai", base_url = "{origin}/v1" }

[[deployments]]
name = "azure-embed"
model = "azure-embed"
provider = { type = "azure", endpoint = "{origin}", deployment = "embed-prod" }

[[deployments]]
name = "gemini-embed"
model = "gemini-embed"
provider = { type = "gemini", base_url = "{origin}/v1beta", model = "gemini-embedding-001" }

# Anthropic has no embeddings: its deployment comes first, OpenAI's serves.
[[deployments]]
name = "anthropic-first"
model = "claude-embed"
provider = { type = "anthropic", base_url = "{origin}", model = "claude-sonnet-4-5" }

[[deployments]]
name = "openai-after-anthropic"
model = "claude-embed"
weight = 0
provider = { type = "openai", base_url = "{origin}/v1", model = "text-embedding-3-small" }

[[deployments]]
name = "anthropic-only"
model = "claude-only"
provider = { type = "anthropic", base_url = "{origin}", model = "claude-sonnet-4-5" }

# No [[prices]]: the price catalogue prices each deployment by the model it sends (Azure's
# names none, so it is free here).
[pricing]
free_models = ["azure-embed"]
"#;

/// Team A masks emails and blocks a codename; team B has no rules.
const POLICY: &str = r#"
[teams.team-a]
deny = [{ id = "codename", pattern = "(?i)project\\s+falcon" }]
[teams.team-a.pii]
email = "mask"
"#;

async fn stack() -> Stack {
    Stack::start(StackOptions {
        extra_worker_toml: DEPLOYMENTS.into(),
        extra_models: [
            EMBED,
            "azure-embed",
            "gemini-embed",
            "claude-embed",
            "claude-only",
        ]
        .map(String::from)
        .to_vec(),
        guard_toml: POLICY.into(),
        ..StackOptions::default()
    })
    .await
}

async fn embed(stack: &Stack, key: &str, body: Value) -> (u16, Value, String) {
    let response = stack
        .http
        .post(format!("{}/v1/embeddings", stack.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("ingress answers");
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-sluice-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, response.json().await.expect("JSON"), id)
}

/// The vectors of an answer, decoded from base64 (little-endian f32) where they are strings.
fn vectors(answer: &Value) -> Vec<Vec<f32>> {
    answer["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| match &item["embedding"] {
            Value::String(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64")
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Value::Array(values) => values.iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            other => panic!("not an embedding: {other}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embeddings_answer_in_openais_shape_and_bill_the_input_once() {
    let stack = stack().await;
    let texts = ["the quick brown fox", "jumps"];
    let (status, answer, id) = embed(
        &stack,
        KEY_B,
        json!({"model": EMBED, "input": texts, "dimensions": 8, "user": "u-1"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "list", "{answer}");
    assert_eq!(answer["data"][1]["index"], 1, "{answer}");
    assert_eq!(answer["data"][0]["object"], "embedding", "{answer}");
    assert_eq!(
        vectors(&answer),
        texts.map(|t| vector(t, 8)).to_vec(),
        "the provider's vectors, in order"
    );
    // The mock counts words: 4 + 1.
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );
    let calls = stack.mock.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/v1/embeddings");
    let sent = calls[0].body.as_ref().unwrap();
    assert_eq!(
        sent,
        &json!({"model": EMBED, "input": texts, "dimensions": 8, "user": "u-1"}),
        "sent as the caller wrote it, nothing of Sluice's"
    );

    // Billed: the provider's 5 input tokens at 20 nano-USD, no output, not estimated, once.
    let expected_cost = (5.0 * EMBED_PRICE * 1000.0).round() as i64;
    assert_eq!(
        stack
            .usage_row(
                &id,
                "status, prompt_tokens, completion_tokens, cost_nanos, estimated, deployment"
            )
            .await,
        format!("completed\t5\t0\t{expected_cost}\t0\topenai-embed")
    );
    let once = format!("SELECT count() FROM {{db}}.usage FINAL WHERE request_id = '{id}'");
    assert_eq!(stack.ch(&once).await.trim(), "1");

    // base64, as the OpenAI SDKs ask by default: the same vectors.
    let (status, answer, _) = embed(
        &stack,
        KEY_B,
        json!({"model": EMBED, "input": "jumps", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["data"][0]["embedding"].is_string(), "{answer}");
    assert_eq!(vectors(&answer), vec![vector("jumps", 16)]);

    // Token arrays pass to OpenAI as they are, for a team without input rules.
    let (status, answer, _) = embed(
        &stack,
        KEY_B,
        json!({"model": EMBED, "input": [[1, 2, 3], [4]]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], 4, "{answer}");
    assert_eq!(
        stack.mock.calls().last().unwrap().body.as_ref().unwrap()["input"],
        json!([[1, 2, 3], [4]])
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gemini_and_azure_embed_and_anthropic_falls_back() {
    let stack = stack().await;

    // Gemini: several texts are one batchEmbedContents call, one text an embedContent.
    let (status, answer, id) = embed(
        &stack,
        KEY_B,
        json!({"model": "gemini-embed", "input": ["a b", "c"], "dimensions": 4}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(vectors(&answer), vec![vector("a b", 4), vector("c", 4)]);
    let call = stack.mock.calls().pop().unwrap();
    assert_eq!(
        call.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(call.body.unwrap()["requests"][0]["outputDimensionality"], 4);
    // Gemini reports no usage: the ingress's count, marked estimated.
    let prompt = answer["usage"]["prompt_tokens"].as_i64().unwrap();
    assert!(prompt >= 3, "{answer}");
    assert_eq!(
        stack.result_row(&id, "status").await,
        "completed",
        "the result landed"
    );
    // Billed at the catalogue's gemini-embedding-001 price (0.15 USD per million: 150
    // nano-USD a token), the model that deployment sends.
    assert_eq!(
        stack
            .usage_row(&id, "prompt_tokens, estimated, cost_nanos")
            .await,
        format!("{prompt}\t1\t{}", prompt * 150)
    );
    let (status, answer, _) = embed(
        &stack,
        KEY_B,
        json!({"model": "gemini-embed", "input": "one", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(vectors(&answer), vec![vector("one", 16)]);
    assert!(stack
        .mock
        .calls()
        .last()
        .unwrap()
        .path
        .ends_with(":embedContent"));

    // Gemini has no token-array form: a 400 that says so, and no call.
    let before = stack.mock.call_count();
    let (status, answer, _) = embed(
        &stack,
        KEY_B,
        json!({"model": "gemini-embed", "input": [1, 2]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "unsupported_model", "{answer}");
    assert_eq!(stack.mock.call_count(), before);

    // Azure: the deployment's embeddings path.
    let (status, answer, _) = embed(
        &stack,
        KEY_B,
        json!({"model": "azure-embed", "input": "x y"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(vectors(&answer), vec![vector("x y", 16)]);
    assert_eq!(
        stack.mock.calls().last().unwrap().path,
        "/openai/deployments/embed-prod/embeddings"
    );

    // Anthropic first: no call to it, OpenAI's deployment answers.
    stack.mock.clear_calls();
    let (status, answer, id) = embed(
        &stack,
        KEY_B,
        json!({"model": "claude-embed", "input": "z"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let paths: Vec<String> = stack.mock.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(paths, ["/v1/embeddings"]);
    assert_eq!(
        stack.result_row(&id, "deployment, fallbacks").await,
        "openai-after-anthropic\t1"
    );
    // Billed at the price of the deployment that answered (text-embedding-3-small's, from
    // the catalogue), not the Anthropic model's the chain began with: 1 token, 20 nano-USD.
    assert_eq!(
        stack.usage_row(&id, "prompt_tokens, cost_nanos").await,
        "1\t20"
    );
    // Anthropic alone: a 400 in OpenAI's shape, nothing called.
    let (status, answer, _) =
        embed(&stack, KEY_B, json!({"model": "claude-only", "input": "z"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
    assert_eq!(stack.mock.calls().len(), 1);
    stack.stop().await;
}

/// The PII rules hold on embeddings: emails are masked before the provider sees them, a
/// denied text is refused, and token arrays (which no rule can read) are refused for a
/// team with input rules instead of slipping past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guardrails_screen_embeddings_and_token_arrays_cannot_slip_past_them() {
    let stack = stack().await;
    let (status, answer, _) = embed(
        &stack,
        KEY_A,
        json!({"model": EMBED, "input": ["mail jane.doe@example.com today", "plain"]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let sent = stack.mock.calls().pop().unwrap().body.unwrap();
    let first = sent["input"][0].as_str().unwrap();
    assert!(!first.contains("jane.doe@example.com"), "{sent}");
    assert!(first.contains("[EMAIL_1]"), "{sent}");
    assert_eq!(sent["input"][1], "plain");

    let before = stack.mock.call_count();
    let (status, answer, _) = embed(
        &stack,
        KEY_A,
        json!({"model": EMBED, "input": ["fine", "all about Project Falcon"]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    // The attack: the same email as token ids would reach the provider unscreened.
    for input in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
        let (status, answer, _) =
            embed(&stack, KEY_A, json!({"model": EMBED, "input": input})).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], "input", "{answer}");
    }
    assert_eq!(stack.mock.call_count(), before, "nothing refused was sent");

    // A chat caller cannot make its record read as an embeddings one.
    let mut body = chat("hello");
    body["sluice"] = json!({"attributes": {"sluice.endpoint": "embeddings"}});
    let (status, answer) = stack.post("/v1/chat/completions", KEY_B, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_embeddings_requests_get_openais_errors_and_no_call() {
    let stack = stack().await;
    let many: Vec<String> = (0..2049).map(|i| format!("t{i}")).collect();
    // 2048 vectors of 3072 floats (~125 MB as JSON) cannot come back in one Kafka record.
    let huge: Vec<String> = (0..2048).map(|i| format!("t{i}")).collect();
    let cases = [
        (json!({"model": EMBED}), "input"),
        (json!({"model": EMBED, "input": []}), "input"),
        (json!({"model": EMBED, "input": [""]}), "input"),
        (json!({"model": EMBED, "input": ""}), "input"),
        (json!({"model": EMBED, "input": [[]]}), "input"),
        (json!({"model": EMBED, "input": many}), "input"),
        (
            json!({"model": EMBED, "input": huge.clone(), "dimensions": 3072}),
            "input",
        ),
        (json!({"model": EMBED, "input": 42}), "input"),
        (json!({"model": EMBED, "input": [[1, "a"]]}), "input"),
        (
            json!({"model": EMBED, "input": "a", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": EMBED, "input": "a", "dimensions": 20000}),
            "dimensions",
        ),
        (
            json!({"model": EMBED, "input": "a", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (
            json!({"model": EMBED, "input": "a", "temperature": 1}),
            "temperature",
        ),
        (
            json!({"model": EMBED, "input": "a", "sluice": {"template": "t"}}),
            "sluice",
        ),
        (json!({"input": "a"}), "model"),
    ];
    for (body, param) in cases {
        let (status, answer, _) = embed(&stack, KEY_B, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(
            answer["error"]["type"], "invalid_request_error",
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            answer["error"]["param"] == param || message.contains(param),
            "{body}: {answer} should name {param}"
        );
    }
    let (status, answer, _) = embed(
        &stack,
        KEY_B,
        json!({"model": "no-such-model", "input": "a"}),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    let response = stack
        .http
        .post(format!("{}/v1/embeddings", stack.base))
        .bearer_auth(KEY_B)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, _, _) = embed(&stack, "sk-wrong", json!({"model": EMBED, "input": "a"})).await;
    assert_eq!(status, 401);
    assert_eq!(
        stack.mock.call_count(),
        0,
        "nothing bad reached the provider"
    );
    stack.stop().await;
}

/// A retry with the same Idempotency-Key gets the first answer and no second bill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_retry_of_embeddings_is_answered_once_and_billed_once() {
    let stack = stack().await;
    let key = format!("{}-embed", stack.prefix);
    let body = json!({"model": EMBED, "input": ["retry me"]});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = stack
            .http
            .post(format!("{}/v1/embeddings", stack.base))
            .bearer_auth(KEY_B)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let replayed = response
            .headers()
            .get("x-sluice-idempotent-replayed")
            .is_some_and(|v| v == "true");
        let id = response.headers()["x-sluice-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let answer: Value = response.json().await.unwrap();
        answers.push((id, replayed, answer));
    }
    assert!(!answers[0].1 && answers[1].1, "the second is a replay");
    assert_eq!(answers[0].0, answers[1].0, "the same request id");
    assert_eq!(answers[0].2, answers[1].2, "the same answer");
    assert_eq!(stack.mock.call_count(), 1);
    let id = &answers[0].0;
    stack
        .wait_count(
            &format!("SELECT count() FROM {{db}}.usage FINAL WHERE request_id = '{id}'"),
            1,
            WAIT,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack
            .ch("SELECT count() FROM {db}.usage FINAL")
            .await
            .trim(),
        "1"
    );
    stack.stop().await;
}

/// `/v1/embeddings` as a batch endpoint: the lines are embedded at batch priority, each
/// line is checked like a sync call (team A's rules refuse token arrays), and the output
/// file holds OpenAI's embeddings answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embeddings_batch_answers_each_line_in_openais_shape() {
    use crate::batch::{batch_file, batch_reaching, upload};
    let stack = stack().await;
    let line = |id: &str, url: &str, body: Value| {
        json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
    };
    let lines = [
        line(
            "texts",
            "/v1/embeddings",
            json!({"model": EMBED, "input": ["alpha beta", "gamma"], "dimensions": 4}),
        ),
        line(
            "b64",
            "/v1/embeddings",
            json!({"model": EMBED, "input": "delta", "encoding_format": "base64"}),
        ),
        line(
            "tokens",
            "/v1/embeddings",
            json!({"model": EMBED, "input": [1, 2]}),
        ),
        line("chat", "/v1/chat/completions", chat("hi")),
    ];
    let (status, file) = upload(&stack, KEY_A, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    let (status, batch) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                   "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["endpoint"], "/v1/embeddings", "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let done = batch_reaching(&stack, &id, "completed").await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2}),
        "{done}"
    );
    let output = batch_file(&stack, &id, "output").await;
    let answer = |custom_id: &str| {
        let line = output
            .iter()
            .find(|l| l["custom_id"] == custom_id)
            .unwrap_or_else(|| panic!("{custom_id} in {output:?}"));
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        line["response"]["body"].clone()
    };
    assert_eq!(
        vectors(&answer("texts")),
        vec![vector("alpha beta", 4), vector("gamma", 4)]
    );
    assert_eq!(vectors(&answer("b64")), vec![vector("delta", 16)]);
    let errors = batch_file(&stack, &id, "errors").await;
    // A refused line keeps the custom_id it had (a line without one has its line number).
    let mut failed: Vec<String> = errors
        .iter()
        .map(|l| match l["custom_id"].as_str() {
            Some(id) => format!("{id}: {}", l["error"]["code"]),
            None => format!("line {}: {}", l["error"]["line"], l["error"]["code"]),
        })
        .collect();
    failed.sort_unstable();
    assert_eq!(
        failed,
        ["chat: \"invalid_url\"", "tokens: \"invalid_value\""],
        "{errors:?}"
    );
    let paths: Vec<String> = stack.mock.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(paths, ["/v1/embeddings", "/v1/embeddings"]);
    let rows = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL WHERE priority = 'batch' AND status = 'completed'",
            2,
            WAIT,
        )
        .await;
    assert_eq!(rows, 2);

    // Only the two endpoints: anything else is a 400 naming it.
    let (status, refused) = stack
        .post(
            "/v1/batches",
            KEY_A,
            json!({"input_file_id": file["id"], "endpoint": "/v1/completions",
                   "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "endpoint", "{refused}");
    stack.stop().await;
}
