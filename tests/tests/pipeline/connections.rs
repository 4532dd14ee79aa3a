//! The HTTP listener under attack (issue #14): slow-loris connections, stalled bodies and
//! unauthenticated large bodies, against a real ingress on the real Kafka.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::limits::{line, prompt_of, upload};

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);

fn short_timeouts(config: &mut sluice_ingress::Config) {
    config.listener.header_read_timeout_ms = HEADER_TIMEOUT;
    config.listener.body_read_timeout_ms = BODY_TIMEOUT;
}

/// Long enough for 2,000 connections to be open at once on a slow test machine.
const SLOW_LORIS_TIMEOUT: Duration = Duration::from_secs(10);

fn slow_loris_timeouts(config: &mut sluice_ingress::Config) {
    config.listener.header_read_timeout_ms = SLOW_LORIS_TIMEOUT;
    config.listener.body_read_timeout_ms = SLOW_LORIS_TIMEOUT;
}

fn addr(stack: &Stack) -> String {
    stack.base.trim_start_matches("http://").to_string()
}

/// Opens a connection and sends `bytes`, then leaves it open.
async fn open_and_send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(bytes).await.expect("writes");
    s
}

/// Reads until the server closes the connection (or `limit`): what it sent, and whether it
/// closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_half_open_connections_do_not_stop_other_callers() {
    // 2,000 client sockets plus the ingress's 2,000 in this one process: well within the
    // file-descriptor limit checked here.
    let limit = rlimit_nofile();
    assert!(
        limit >= 5_000,
        "ulimit -n is {limit}: too low for this test"
    );
    let stack = Stack::start(StackOptions {
        ingress_config: Some(slow_loris_timeouts),
        ..StackOptions::default()
    })
    .await;
    let addr = addr(&stack);
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("warm up"))
        .await;
    assert_eq!(status, 200, "{body}");
    let rss_before = rss_kib();
    let fds_before = open_files();

    // 1,000 connections stop halfway through their headers; 1,000 send a whole
    // authenticated head announcing 100 kB and then 10 bytes of it.
    let partial_head =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer ";
    let slow_body = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {KEY_A}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"model\":"
    );
    let opened_at = Instant::now();
    let mut heads = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..10 {
        heads.extend(
            futures::future::join_all((0..100).map(|_| open_and_send(&addr, partial_head))).await,
        );
        bodies.extend(
            futures::future::join_all((0..100).map(|_| open_and_send(&addr, slow_body.as_bytes())))
                .await,
        );
    }
    let opened = opened_at.elapsed();
    assert_eq!(heads.len() + bodies.len(), 2_000);

    // A normal caller, while all of them hang: answers, and /healthz stays fast.
    let mut health = Vec::new();
    let mut chats = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let response = stack
            .http
            .get(format!("{}/healthz", stack.base))
            .send()
            .await
            .expect("healthz answers");
        assert_eq!(response.status(), 200);
        health.push(t.elapsed());
        let t = Instant::now();
        let (status, body) = stack
            .post("/v1/chat/completions", KEY_A, chat(&format!("during {i}")))
            .await;
        assert_eq!(status, 200, "{body}");
        chats.push(t.elapsed());
    }
    let rss_during = rss_kib();
    let fds_during = open_files();
    let slowest_health = health.iter().max().copied().unwrap_or_default();
    let slowest_chat = chats.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slow-loris: 2000 sockets opened in {opened:?}; healthz max {slowest_health:?}, chat max {slowest_chat:?}; \
         RSS {rss_before} -> {rss_during} KiB; fds {fds_before} -> {fds_during}"
    );
    assert!(
        fds_during >= fds_before + 3_900,
        "both ends of the 2,000 connections are open: {fds_before} -> {fds_during}"
    );
    assert!(
        slowest_health < Duration::from_secs(1),
        "healthz {health:?}"
    );
    assert!(slowest_chat < Duration::from_secs(5), "chat {chats:?}");

    // Every half-open connection is closed by the ingress after its timeout; stalled
    // bodies get a 408 first.
    assert!(
        opened_at.elapsed() < SLOW_LORIS_TIMEOUT,
        "the normal caller was measured while all 2,000 were open"
    );
    let wait = SLOW_LORIS_TIMEOUT * 2 + Duration::from_secs(10);
    let closed_heads = futures::future::join_all(
        heads
            .iter_mut()
            .map(|s| async move { read_until_closed(s, wait).await.1 }),
    )
    .await;
    assert!(
        closed_heads.iter().all(|c| *c),
        "{} of 1000 half-sent heads still open",
        closed_heads.iter().filter(|c| !**c).count()
    );
    let bodies_closed = futures::future::join_all(
        bodies
            .iter_mut()
            .map(|s| async move { read_until_closed(s, wait).await }),
    )
    .await;
    for (text, closed) in &bodies_closed {
        assert!(closed, "a stalled body's connection is still open");
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("request_timeout"), "{text}");
    }
    assert!(
        opened_at.elapsed() >= SLOW_LORIS_TIMEOUT,
        "closed by the timeout, not at once"
    );
    // And the ingress still serves.
    let (status, body) = stack
        .post("/v1/chat/completions", KEY_A, chat("after"))
        .await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;
}

fn rlimit_nofile() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unauthenticated_large_body_is_refused_before_it_is_read() {
    let stack = Stack::start(StackOptions {
        ingress_config: Some(short_timeouts),
        worker: false,
        ..StackOptions::default()
    })
    .await;
    let addr = addr(&stack);
    // Announces 4 MB and sends none of it: the answer comes from the headers alone.
    for (path, auth, want) in [
        ("/v1/chat/completions", "", "invalid_api_key"),
        (
            "/v1/chat/completions",
            "Authorization: Bearer sk-wrong\r\n",
            "invalid_api_key",
        ),
        ("/v1/requests", "", "invalid_api_key"),
        (
            "/v1/messages",
            "x-api-key: sk-wrong\r\n",
            "authentication_error",
        ),
        (
            "/admin/keys",
            "Authorization: Bearer sk-wrong\r\n",
            "invalid_api_key",
        ),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: sluice\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 4000000\r\n\r\n"
        );
        let started = Instant::now();
        let mut s = open_and_send(&addr, head.as_bytes()).await;
        let (text, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
        assert!(
            text.starts_with("HTTP/1.1 401") || text.starts_with("HTTP/1.1 403"),
            "{path}: {text}"
        );
        assert!(text.contains(want), "{path}: {text}");
        assert!(
            closed,
            "{path}: the connection is closed, the body never read"
        );
        assert!(started.elapsed() < BODY_TIMEOUT, "{path}: answered at once");
    }
    // A known caller's body that stalls: 408 after the body timeout, connection closed.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {KEY_A}\r\n\
         Content-Type: application/json\r\nContent-Length: 4000000\r\n\r\n{{"
    );
    let started = Instant::now();
    let mut s = open_and_send(&addr, head.as_bytes()).await;
    let (text, closed) = read_until_closed(&mut s, BODY_TIMEOUT * 3).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(closed);
    assert!(started.elapsed() >= BODY_TIMEOUT, "{:?}", started.elapsed());
    stack.stop().await;
}

/// Polls `/healthz` every 20 ms until `done`; returns the latencies.
async fn health_while(stack: &Stack, done: &tokio::sync::Notify) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let client = reqwest::Client::new();
    loop {
        let t = Instant::now();
        let response = client
            .get(format!("{}/healthz", stack.base))
            .send()
            .await
            .expect("healthz answers");
        assert_eq!(response.status(), 200);
        latencies.push(t.elapsed());
        tokio::select! {
            _ = done.notified() => return latencies,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_stays_fast_while_huge_requests_and_batch_lines_are_checked() {
    let stack = Stack::start(StackOptions::default()).await;
    let big = prompt_of(3_000_000);
    // A batch of 2 MB lines whose driver validates them meanwhile.
    let two_mb = prompt_of(2_000_000);
    let lines: Vec<String> = (0..4).map(|i| line(&format!("big-{i}"), &two_mb)).collect();
    let file = upload(&stack, &lines.join("\n")).await;
    let done = tokio::sync::Notify::new();
    let started = Instant::now();
    let (status, batch) = stack
        .post(
            "/v1/batches",
            KEY_A,
            serde_json::json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                               "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    // More huge bodies at once than the runtime has threads (4): parsing and counting
    // their tokens on those threads would leave none for anyone else.
    let work = async {
        let results = futures::future::join_all(
            (0..8).map(|_| stack.post("/v1/chat/completions", KEY_A, chat(&big))),
        )
        .await;
        done.notify_one();
        results
    };
    let (results, health) = tokio::join!(work, health_while(&stack, &done));
    let took = started.elapsed();
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let slowest = health.iter().max().copied().unwrap_or_default();
    eprintln!(
        "8 x 3 MB sync requests in {took:?}; {} healthz probes, slowest {slowest:?}",
        health.len()
    );
    assert!(health.len() >= 3, "probed while the work ran");
    // Measured alone: ~30 ms; with the checks on the runtime's threads: 5.5 s. The bound
    // leaves room for a machine shared with other tests.
    assert!(
        slowest < Duration::from_secs(1),
        "healthz waited {slowest:?} while huge bodies were checked (all took {took:?})"
    );
    let id = batch["id"].as_str().unwrap().to_string();
    let batch = eventually(Duration::from_secs(120), || async {
        let (_, b) = stack.get(&format!("/v1/batches/{id}"), KEY_A).await;
        (b["status"] == "completed").then_some(b)
    })
    .await
    .expect("the batch completes");
    assert_eq!(batch["request_counts"]["completed"], 4, "{batch}");
    stack.stop().await;
}
