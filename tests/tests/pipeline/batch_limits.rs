//! The batch APIs under attack (issue #14): bodies built to exhaust the ingress's memory,
//! batches and files past their caps and quotas, another team's file, uploads that fail
//! midway, drivers interrupted mid-publish, a duplicate custom_id 99,998 lines apart, and
//! completions a team's output moderation refuses. Real Kafka and ClickHouse.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Latency};
use tokio::io::AsyncWriteExt;

use crate::batch::{
    batch_file, batch_reaching, jsonl, line, message_batch_ended, paced_stack, upload,
};
use crate::common::*;

const WAIT: Duration = Duration::from_secs(120);

/// Polls until `count_sql` returns 0 (a ClickHouse mutation is asynchronous); returns the
/// last count.
async fn wait_zero(stack: &Stack, count_sql: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = stack.ch(count_sql).await.trim().parse().unwrap_or(u64::MAX);
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Peak and current resident memory of process `pid`, in bytes (`VmHWM`, `VmRSS`).
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("status field")
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A child process killed when dropped (also when a test panics).
struct Process(std::process::Child);

impl Process {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A separate `sluice-ingress` process on the stack's topics and database, answering on
/// the returned base URL.
async fn spawn_ingress(stack: &Stack, budget_usd: f64) -> (Process, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::env::temp_dir().join(format!("{}-{port}-ingress.toml", stack.prefix));
    std::fs::write(&config, ingress_toml(stack, port, budget_usd)).unwrap();
    let child = Process(
        std::process::Command::new(workspace_bin("sluice-ingress"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let up = eventually(WAIT, || async {
        stack
            .http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    assert!(up.is_some(), "the ingress process started");
    let _ = std::fs::remove_file(&config);
    (child, base)
}

async fn post_raw(
    stack: &Stack,
    base: &str,
    path: &str,
    key: &str,
    body: reqwest::Body,
) -> (u16, Value) {
    try_post_raw(stack, base, path, key, body)
        .await
        .expect("ingress answers")
}

/// As `post_raw`, or the transport error: a server that refuses a body early stops reading
/// it and closes the connection, which the client may see as a reset before the answer.
async fn try_post_raw(
    stack: &Stack,
    base: &str,
    path: &str,
    key: &str,
    body: reqwest::Body,
) -> Result<(u16, Value), reqwest::Error> {
    let response = stack
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// One Anthropic Message Batches request.
fn anthropic_request(custom_id: &str, text: &str) -> Value {
    json!({"custom_id": custom_id, "params": {"model": MODEL, "max_tokens": 16,
           "messages": [{"role": "user", "content": text}]}})
}

/// Uploads `lines` and creates a batch of them as team A; returns its id.
async fn batch_of(stack: &Stack, lines: &[String]) -> String {
    let (status, file) = upload(stack, KEY_A, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    let (status, batch) = create_from(stack, KEY_A, &file["id"]).await;
    assert_eq!(status, 200, "{batch}");
    batch["id"].as_str().unwrap().to_string()
}

async fn create_from(stack: &Stack, key: &str, file_id: &Value) -> (u16, Value) {
    stack
        .post(
            "/v1/batches",
            key,
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                   "completion_window": "24h"}),
        )
        .await
}

/// A batch row as a driver that stopped leaves it (`published_at_ms` 0), written straight
/// to ClickHouse: no driver runs for it until an ingress starts up.
async fn stage_batch(stack: &Stack, batch_id: &str, file_id: &str, total: u64, attempts: u32) {
    let now = sluice_schemas::now_ms();
    stack
        .ch(&format!(
            "INSERT INTO {{db}}_private.batches VALUES ('{batch_id}', 'team-a', 'key_a', 'openai', \
             '/v1/chat/completions', '{file_id}', '24h', 'in_progress', {total}, 0, {now}, {exp}, 0, \
             '{{}}', '', '', 1, {attempts})",
            exp = now + 86_400_000,
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inline_batch_of_deep_nesting_is_refused_at_once_and_memory_stays_bounded() {
    let stack = Stack::start(StackOptions::default()).await;
    // The attack goes to a separate ingress process, whose memory /proc shows alone.
    let (mut ingress, base) = spawn_ingress(&stack, 1000.0).await;
    // 64 MB of `[` inside `requests`, three at once: the old handler buffered each whole
    // body (and could hold up to 256 MB apiece) before parsing.
    const ATTACK: usize = 64 * 1024 * 1024;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let mut body = b"{\"requests\": [".to_vec();
        body.resize(ATTACK, b'[');
        bodies.push(axum::body::Bytes::from(body));
    }
    let (peak_before, rss_before) = rss_of(ingress.id());
    let started = Instant::now();
    let answers = futures::future::join_all(bodies.iter().map(|b| {
        try_post_raw(
            &stack,
            &base,
            "/v1/messages/batches",
            KEY_A,
            reqwest::Body::from(b.clone()),
        )
    }))
    .await;
    let took = started.elapsed();
    let (peak_after, rss_after) = rss_of(ingress.id());
    let growth = peak_after.saturating_sub(peak_before.max(rss_before));
    let mb = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "3 x {} MB nested-array bodies: refused in {took:?}; ingress RSS {:.1} MB before, \
         peak {:.1} MB during (+{:.1} MB), {:.1} MB after",
        ATTACK >> 20,
        mb(rss_before),
        mb(peak_after),
        mb(growth),
        mb(rss_after)
    );
    let mut answered = 0;
    for answer in &answers {
        let (status, body) = match answer {
            Ok(answer) => answer,
            // Cut off mid-body: refused without being read further.
            Err(e) => {
                eprintln!("attack body cut off: {e}");
                continue;
            }
        };
        answered += 1;
        assert_eq!(*status, 413, "{body}");
        assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
        assert_eq!(body["error"]["type"], "request_too_large", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Request 0"),
            "{body}"
        );
    }
    eprintln!("{answered} of 3 attack bodies answered 413 before the connection closed");
    assert!(took < Duration::from_secs(20), "refused quickly: {took:?}");
    assert!(
        growth < 64 * 1024 * 1024,
        "ingress peak RSS grew {growth} bytes for 192 MB of attack bodies"
    );

    // Deep but small: refused by the nesting bound, in Anthropic's shape.
    let deep = format!(
        "{{\"requests\": [{{\"custom_id\": \"a\", \"params\": {}1{}}}]}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let (status, body) = post_raw(&stack, &base, "/v1/messages/batches", KEY_A, deep.into()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nests deeper than 64"),
        "{body}"
    );
    // Nothing of the refused bodies was kept as a batch.
    let batches = stack
        .ch("SELECT count() FROM {db}_private.batches FORMAT TSV")
        .await;
    assert_eq!(batches.trim(), "0");
    // A normal inline batch still works.
    let (status, body) = post_raw(
        &stack,
        &base,
        "/v1/messages/batches",
        KEY_A,
        json!({"requests": [anthropic_request("ok-1", "hello")]})
            .to_string()
            .into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    ingress.kill();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_body_routes_admit_a_bounded_number_at_once() {
    let stack = Stack::start(StackOptions {
        batch_toml: "[batch]\nmax_concurrent_uploads = 1\n".into(),
        ..StackOptions::default()
    })
    .await;
    // An upload that trickles in and holds the one slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tx.send(Ok(b"{\"requests\": [".to_vec())).await.unwrap();
    let stream = tokio_stream_from(rx);
    let slow = {
        let http = stack.http.clone();
        let url = format!("{}/v1/messages/batches", stack.base);
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(KEY_A)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = stack
        .post(
            "/v1/messages/batches",
            KEY_B,
            json!({"requests": [anthropic_request("b-1", "hello")]}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    let (status, body) = upload(&stack, KEY_B, "batch", &line("b-1", "hello")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
    // The slot frees when the slow body ends.
    tx.send(Ok(
        serde_json::to_vec(&anthropic_request("a-1", "hi")).unwrap()
    ))
    .await
    .unwrap();
    tx.send(Ok(b"]}".to_vec())).await.unwrap();
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let (status, body) = upload(&stack, KEY_B, "batch", &line("b-1", "hello")).await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_past_the_line_file_and_open_batch_caps_are_refused() {
    let stack = Stack::start(StackOptions {
        batch_toml: "[batch]\nmax_lines_per_batch = 5\nmax_batches_per_file = 2\n\
                     max_open_batches_per_team = 3\n"
            .into(),
        ..StackOptions::default()
    })
    .await;
    // Six lines: over the cap, as a file and as an inline batch.
    let six: Vec<String> = (0..6).map(|i| line(&format!("l-{i}"), "hi")).collect();
    let (status, body) = upload(&stack, KEY_A, "batch", &six.join("\n")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "batch_too_large", "{body}");
    let requests: Vec<Value> = (0..6)
        .map(|i| anthropic_request(&format!("r-{i}"), "hi"))
        .collect();
    let (status, body) = stack
        .post(
            "/v1/messages/batches",
            KEY_A,
            json!({ "requests": requests }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 5 requests"),
        "{body}"
    );

    // Two batches from one file, not a third.
    let (status, file) = upload(&stack, KEY_A, "batch", &six[..3].join("\n")).await;
    assert_eq!(status, 200, "{file}");
    for _ in 0..2 {
        let (status, body) = create_from(&stack, KEY_A, &file["id"]).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = create_from(&stack, KEY_A, &file["id"]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_batches_for_file", "{body}");

    // Three batches still publishing: team A is at its cap, team B is not.
    let (status, other) = upload(&stack, KEY_A, "batch", &six[..2].join("\n")).await;
    assert_eq!(status, 200, "{other}");
    for i in 0..3 {
        stage_batch(&stack, &format!("batch_open{i}"), "file-gone", 2, 1).await;
    }
    let (status, body) = create_from(&stack, KEY_A, &other["id"]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_open_batches", "{body}");
    let (status, body) = stack
        .post(
            "/v1/messages/batches",
            KEY_A,
            json!({"requests": [anthropic_request("x", "hi")]}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    let (status, file_b) = upload(&stack, KEY_B, "batch", &six[..2].join("\n")).await;
    assert_eq!(status, 200, "{file_b}");
    let (status, body) = create_from(&stack, KEY_B, &file_b["id"]).await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_quotas_hold_and_only_the_owner_deletes_a_file() {
    let stack = Stack::start(StackOptions {
        batch_toml: "[batch]\nmax_file_bytes_per_team = 3000\n".into(),
        ..StackOptions::default()
    })
    .await;
    let lines: Vec<String> = (0..15).map(|i| line(&format!("q-{i}"), "hello")).collect();
    let content = lines.join("\n");
    assert!(content.len() > 1500 && content.len() < 3000);
    let (status, first) = upload(&stack, KEY_A, "batch", &content).await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = upload(&stack, KEY_A, "batch", &content).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "storage_quota_exceeded", "{body}");
    // The refused upload left no lines behind; team B has its own quota.
    let orphans = "SELECT count() FROM {db}_private.batch_file_lines \
                   WHERE file_id NOT IN (SELECT file_id FROM {db}_private.batch_files)";
    assert_eq!(wait_zero(&stack, orphans).await, 0);
    let (status, body) = upload(&stack, KEY_B, "batch", &content).await;
    assert_eq!(status, 200, "{body}");

    let id = first["id"].as_str().unwrap();
    let path = format!("/v1/files/{id}");
    // Another team cannot delete (or see) it.
    let (status, _) = stack.delete(&path, KEY_B).await;
    assert_eq!(status, 404);
    let (status, _) = stack.get(&format!("{path}/content"), KEY_A).await;
    assert_eq!(status, 200, "still there for its owner");

    // In use by a batch still being published: refused.
    stage_batch(&stack, "batch_inuse", id, 10, 1).await;
    let (status, body) = stack.delete(&path, KEY_A).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "file_in_use", "{body}");
    stack
        .ch("INSERT INTO {db}_private.batches (batch_id, team, status, input_file_id, published_at_ms, version) \
             VALUES ('batch_inuse', 'team-a', 'in_progress', 'x', 1, 2)")
        .await;

    let (status, body) = stack.delete(&path, KEY_A).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"id": id, "object": "file", "deleted": true}));
    let (status, _) = stack.get(&path, KEY_A).await;
    assert_eq!(status, 404);
    let (status, _) = stack.get(&format!("{path}/content"), KEY_A).await;
    assert_eq!(status, 404);
    let (status, body) = create_from(&stack, KEY_A, &first["id"]).await;
    assert_eq!(status, 404, "{body}");
    let gone =
        format!("SELECT count() FROM {{db}}_private.batch_file_lines WHERE file_id = '{id}'");
    assert_eq!(wait_zero(&stack, &gone).await, 0, "its lines removed");
    // Its bytes no longer count against the quota.
    let (status, body) = upload(&stack, KEY_A, "batch", &content).await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_that_fails_midway_leaves_no_rows() {
    let stack = Stack::start(StackOptions::default()).await;
    let orphans = "SELECT count() FROM {db}_private.batch_file_lines \
                   WHERE file_id NOT IN (SELECT file_id FROM {db}_private.batch_files)";
    let good: Vec<String> = (0..3_000).map(|i| line(&format!("u-{i}"), "hi")).collect();
    let good = good.join("\n");

    // A bad line after the first block (2,000 lines) was stored.
    let boundary = "b0undary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n\r\n{good}\n"
    )
    .into_bytes();
    body.extend_from_slice(b"\xff\xfe not utf-8\n");
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = stack
        .http
        .post(format!("{}/v1/files", stack.base))
        .bearer_auth(KEY_A)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        wait_zero(&stack, orphans).await,
        0,
        "the bad upload's lines are removed"
    );

    // A client that goes away mid-upload, after a block was stored.
    let addr = stack.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY_A}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000000\r\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n\r\n{good}\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    // The first block reaches ClickHouse, then the client vanishes.
    let stored = stack
        .wait_count(orphans, 2_000, Duration::from_secs(30))
        .await;
    assert!(stored >= 2_000, "a block was stored mid-upload: {stored}");
    drop(socket);

    assert_eq!(
        wait_zero(&stack, orphans).await,
        0,
        "no line of an abandoned upload is left"
    );

    // An inline Anthropic batch refused at request 2,101, after a block was stored.
    let mut requests: Vec<Value> = (0..2_100)
        .map(|i| anthropic_request(&format!("i-{i}"), "hi"))
        .collect();
    let mut deep = json!(1);
    for _ in 0..80 {
        deep = json!([deep]);
    }
    requests.push(json!({"custom_id": "deep", "params": {"x": deep}}));
    let (status, body) = stack
        .post(
            "/v1/messages/batches",
            KEY_A,
            json!({ "requests": requests }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Request 2100"),
        "{body}"
    );
    assert_eq!(
        wait_zero(&stack, orphans).await,
        0,
        "no line of a refused inline batch is left"
    );
    let files = stack
        .ch("SELECT count() FROM {db}_private.batch_files FORMAT TSV")
        .await;
    assert_eq!(files.trim(), "0");
    stack.stop().await;
}

/// `INSERT INTO {into} VALUES` one row per number in `0..n`.
async fn insert_rows(stack: &Stack, into: &str, n: u32, row: impl Fn(u32) -> String) {
    let rows: Vec<String> = (0..n).map(row).collect();
    stack
        .ch(&format!("INSERT INTO {into} VALUES {}", rows.join(",")))
        .await;
}

/// Writes what an earlier driver left of a batch's first lines: their records, their
/// results, usage and `accepted` audit rows (answered and billed before the crash).
async fn stage_published(stack: &Stack, batch_id: &str, published: u32, recorded: u32) {
    insert_rows(stack, "{db}_private.batch_lines", recorded, |i| {
        format!("('{batch_id}', {i}, 'd-{i}', '{batch_id}-{i}', '', '')")
    })
    .await;
    let now = sluice_schemas::now_ms();
    let body = json!({"id": "chatcmpl-staged", "object": "chat.completion", "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "staged answer"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    .to_string();
    // What the sink writes of a result: its row for analysts, its body in the private
    // database (where the ingress reads receipts and answers).
    insert_rows(
        stack,
        "{db}.results (request_id, team, key_id, priority, model, status, \
         http_status, created_at_ms, started_at_ms, finished_at_ms)",
        published,
        |i| {
            format!(
                "('{batch_id}-{i}', 'team-a', 'key_a', 'batch', '{MODEL}', 'completed', 200, \
                 {now}, {now}, {now})"
            )
        },
    )
    .await;
    insert_rows(
        stack,
        "{db}_private.result_bodies (request_id, team, status, http_status, \
         body, error_kind, model, created_at_ms, finished_at_ms, expires_at)",
        published,
        |i| {
            format!(
                "('{batch_id}-{i}', 'team-a', 'completed', 200, '{body}', '', '{MODEL}', \
                 {now}, {now}, toDateTime(intDiv({now}, 1000) + 86400))"
            )
        },
    )
    .await;
    insert_rows(
        stack,
        "{db}.usage (request_id, team, key_id, priority, model, status, \
         prompt_tokens, completion_tokens, cost_nanos, created_at_ms, occurred_at_ms)",
        published,
        |i| {
            format!(
                "('{batch_id}-{i}', 'team-a', 'key_a', 'batch', '{MODEL}', 'completed', 5, 2, 1000, {now}, {now})"
            )
        },
    )
    .await;
    insert_rows(
        stack,
        "{db}.audit (event_id, request_id, team, key_id, action, model, \
         priority, http_status, occurred_at_ms)",
        published,
        |i| {
            format!("('ev-{batch_id}-{i}', '{batch_id}-{i}', 'team-a', 'key_a', 'accepted', '{MODEL}', 'batch', 202, {now})")
        },
    )
    .await;
    insert_rows(
        stack,
        "{db}_private.accepted_requests (request_id, team, occurred_at_ms, expires_at)",
        published,
        |i| format!("('{batch_id}-{i}', 'team-a', {now}, toDateTime(intDiv({now}, 1000) + 86400))"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_driver_publishes_only_lines_without_a_receipt_and_gives_up_after_its_attempts() {
    let stack = Stack::start(StackOptions {
        batch_toml: "[batch]\nmax_publish_attempts = 3\n".into(),
        ..StackOptions::default()
    })
    .await;
    let total = 2_500u64;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("d-{i}"), "resume"))
        .collect();
    let (status, file) = upload(&stack, KEY_A, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    let file_id = file["id"].as_str().unwrap();

    // Batch R: its driver died mid-block on its first attempt, after 700 of the block's
    // 2,000 lines were published and answered.
    let resumed = format!("batch_{}", uuid::Uuid::now_v7().simple());
    stage_batch(&stack, &resumed, file_id, total, 1).await;
    stage_published(&stack, &resumed, 700, 2_000).await;
    // Batch X: its first block already interrupted three starts (the cap), 300 lines
    // published before.
    let exhausted = format!("batch_{}", uuid::Uuid::now_v7().simple());
    stage_batch(&stack, &exhausted, file_id, total, 3).await;
    stage_published(&stack, &exhausted, 300, 2_000).await;

    let replica = stack.start_ingress_replica(3).await;
    let batch = batch_reaching(&stack, &resumed, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": total, "completed": total, "failed": 0}),
        "{batch}"
    );
    let batch = batch_reaching(&stack, &exhausted, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": total, "completed": 300 + 500, "failed": 1_700}),
        "the first block's unpublished lines gave up, the next block ran: {batch}"
    );
    let errors = batch_file(&stack, &exhausted, "errors").await;
    assert_eq!(errors.len(), 1_700);
    assert!(errors
        .iter()
        .all(|e| e["error"]["code"] == "publish_attempts_exhausted"));
    assert_eq!(errors[0]["custom_id"], "d-300");

    // The provider saw only the lines without a receipt: R's 1,800, X's 500.
    let republished = (total - 700) + 500;
    let usage = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", total + 800, WAIT)
        .await;
    assert_eq!(usage, total + 800, "each answered line billed once");
    assert_eq!(stack.mock.call_count(), republished);
    let output = batch_file(&stack, &resumed, "output").await;
    assert_eq!(output.len() as u64, total);
    assert_eq!(
        output[0]["response"]["body"]["choices"][0]["message"]["content"], "staged answer",
        "a line with a receipt keeps its first answer"
    );
    let twice = stack
        .ch("SELECT count() FROM (SELECT request_id FROM {db}.usage FINAL GROUP BY request_id HAVING count() > 1) FORMAT TSV")
        .await;
    assert_eq!(twice.trim(), "0");
    replica.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_custom_id_is_caught_exactly_at_line_99_999_of_100_000() {
    let stack = Stack::start(StackOptions::default()).await;
    let total = 100_000usize;
    // An unknown model: every line is rejected after the duplicate check, so no provider
    // call is needed to drive 100,000 lines.
    let line = |id: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}})
        .to_string()
    };
    // Long custom_ids (150 characters): one block's ids are more than ClickHouse's
    // default max_query_size, so the per-block check must split its queries.
    let pad = "p".repeat(150);
    let mut lines: Vec<String> = (0..total).map(|i| line(&format!("c-{i}-{pad}"))).collect();
    // Line 1 and line 99,999 (1-based); a pair within one block; a pair across a block edge.
    lines[0] = line("dup-far");
    lines[99_998] = line("dup-far");
    lines[10] = line("dup-near");
    lines[12] = line("dup-near");
    lines[1_999] = line("dup-edge");
    lines[2_000] = line("dup-edge");
    let id = batch_of(&stack, &lines).await;
    let batch = batch_reaching(&stack, &id, "completed").await;
    assert_eq!(batch["request_counts"]["failed"], total, "{batch}");
    let dups = stack
        .ch(&format!(
            "SELECT line_no FROM {{db}}_private.batch_lines FINAL WHERE batch_id = '{id}' \
             AND error_code = 'duplicate_custom_id' ORDER BY line_no FORMAT TSV"
        ))
        .await;
    assert_eq!(
        dups, "12\n2000\n99998\n",
        "exactly the later line of each pair"
    );
    assert_eq!(stack.mock.call_count(), 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_outputs_and_anthropic_results_go_through_output_moderation() {
    let (url, _) = crate::guardrails::classifier().await;
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            latency: Latency::Fixed(Duration::from_millis(5)),
            ..Behaviour::default()
        },
        guard_toml: format!(
            "[teams.team-a.moderation]\nurl = \"{url}\"\ntimeout_ms = 2000\non_error = \"closed\"\n"
        ),
        ..StackOptions::default()
    })
    .await;
    // The mock repeats the prompt: "kill the process" passes the input check (one "kill")
    // and its answer fails the output check.
    let lines = [
        line("clean", "hello there"),
        line("flagged", "kill the process"),
    ];
    let id = batch_of(&stack, &lines).await;
    batch_reaching(&stack, &id, "completed").await;
    let output = batch_file(&stack, &id, "output").await;
    assert_eq!(output.len(), 1, "{output:?}");
    assert_eq!(output[0]["custom_id"], "clean");
    let errors = batch_file(&stack, &id, "errors").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "flagged");
    assert_eq!(errors[0]["response"]["status_code"], 422);
    assert_eq!(
        errors[0]["response"]["body"]["error"]["code"],
        "output_flagged"
    );
    assert!(
        !errors[0].to_string().contains("kill the process"),
        "the refused completion is not shown: {}",
        errors[0]
    );

    let (status, created) = stack
        .post(
            "/v1/messages/batches",
            KEY_A,
            json!({"requests": [anthropic_request("clean", "hello there"),
                                anthropic_request("flagged", "kill the process")]}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let mid = created["id"].as_str().unwrap().to_string();
    message_batch_ended(&stack, &mid).await;
    let (_, results) = jsonl(
        &stack,
        &format!("/v1/messages/batches/{mid}/results"),
        KEY_A,
    )
    .await;
    let by_id = |c: &str| {
        results
            .iter()
            .find(|r| r["custom_id"] == c)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_id("clean")["result"]["type"], "succeeded", "{results:?}");
    let flagged = by_id("flagged");
    assert_eq!(flagged["result"]["type"], "errored", "{flagged}");
    assert!(
        !flagged.to_string().contains("kill the process"),
        "{flagged}"
    );
    // Each refusal is audited like GET /v1/requests/{id}'s.
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.audit FINAL WHERE action = 'rejected' AND reason = 'moderation.output'",
            2,
            WAIT,
        )
        .await;
    assert!(n >= 2, "{n}");
    stack.stop().await;
}

/// The stack's ingress as a TOML file for a separate `sluice-ingress` process on `port`.
fn ingress_toml(stack: &Stack, port: u16, budget_usd: f64) -> String {
    let c = &stack.ingress_config;
    let keys: String = c
        .keys
        .iter()
        .map(|k| {
            format!(
                "[[keys]]\nid = \"{}\"\nteam = \"{}\"\nsha256 = \"{}\"\n",
                k.id, k.team, k.sha256
            )
        })
        .collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
reply_partition = 5
instance_id = "ingress-doomed"
[kafka]
bootstrap = "{bootstrap}"
topic_prefix = "{prefix}"
[clickhouse]
url = "{ch}"
database = "{db}"
{keys}
[[models]]
id = "{MODEL}"
owned_by = "openai"
[[prices]]
model = "{MODEL}"
input_per_million = {PRICE_IN}
output_per_million = {PRICE_OUT}
[[budgets]]
scope = "team"
subject = "team-a"
period = "month"
limit_usd = {budget_usd}
"#,
        bootstrap = stack.bootstrap,
        prefix = stack.prefix,
        ch = c.clickhouse.url,
        db = stack.database,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_ingress_process_mid_publish_is_resumed_without_publishing_answered_lines_again() {
    // A slow provider and a team budget with room for ~20 reservations pace the driver, so
    // the kill lands mid-block whatever the machine.
    let stack = paced_stack(300, 0.05).await;
    let (mut doomed, doomed_base) = spawn_ingress(&stack, 0.05).await;

    let total = 300u64;
    let lines: Vec<String> = (0..total)
        .map(|i| line(&format!("k-{i}"), "short"))
        .collect();
    // The file goes in through the stack's ingress (files live in ClickHouse); the batch
    // is created on the doomed one, whose driver then publishes its lines.
    let (status, file) = upload(&stack, KEY_A, "batch", &lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    let batch: Value = stack
        .http
        .post(format!("{doomed_base}/v1/batches"))
        .bearer_auth(KEY_A)
        .json(
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = batch["id"].as_str().expect("batch id").to_string();
    // Kill -9 once some lines are answered, most not yet published.
    let answered = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 60, WAIT)
        .await;
    doomed.kill();
    let accepted_at_kill: u64 = stack
        .ch("SELECT uniqExact(request_id) FROM {db}.audit WHERE action = 'accepted' FORMAT TSV")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        answered >= 60 && accepted_at_kill < total,
        "killed mid-publish: {answered} answered, {accepted_at_kill} published"
    );

    let replica = stack.start_ingress_replica(3).await;
    let batch = batch_reaching(&stack, &id, "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": total, "completed": total, "failed": 0}),
        "{batch}"
    );
    let usage = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", total, WAIT)
        .await;
    assert_eq!(usage, total, "every line billed exactly once");
    let calls = stack.mock.call_count();
    eprintln!(
        "killed after {answered} answered / {accepted_at_kill} published; provider calls {calls} for {total} lines"
    );
    // Lines published before the kill are not published again: at most the few whose
    // receipt had not reached ClickHouse yet (the old driver redid the whole block).
    assert!(
        calls < total + 25,
        "{calls} provider calls for {total} lines, {accepted_at_kill} published before the kill"
    );
    replica.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_batches_count_against_the_quota_until_their_team_deletes_them() {
    let stack = Stack::start(StackOptions {
        batch_toml: "[batch]\nmax_file_lines_per_team = 3\n".into(),
        ..StackOptions::default()
    })
    .await;
    let three: Vec<Value> = (0..3)
        .map(|i| anthropic_request(&format!("m-{i}"), "hi"))
        .collect();
    let (status, created) = stack
        .post("/v1/messages/batches", KEY_A, json!({ "requests": three }))
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let one = json!({"requests": [anthropic_request("m-4", "hi")]});
    let (status, body) = stack.post("/v1/messages/batches", KEY_A, one.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("quota of 3 lines"),
        "{body}"
    );
    message_batch_ended(&stack, &id).await;
    let path = format!("/v1/messages/batches/{id}");
    let (status, _) = stack.delete(&path, KEY_B).await;
    assert_eq!(status, 404, "not team B's");
    let (status, body) = stack.delete(&path, KEY_A).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"id": id, "type": "message_batch_deleted"}));
    let (status, _) = stack
        .get(&format!("/v1/messages/batches/{id}"), KEY_A)
        .await;
    assert_eq!(status, 404);
    let (status, body) = stack.post("/v1/messages/batches", KEY_A, one).await;
    assert_eq!(status, 200, "the quota was freed: {body}");
    stack.stop().await;
}
