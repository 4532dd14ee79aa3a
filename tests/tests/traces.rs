//! Distributed traces (issue 15): one request's spans from the ingress, a real worker process
//! and the analytics sink arrive at an OTLP receiver (sluice_tests::otlp, which decodes the
//! real protobuf) as one trace, with the parent links of the way it went, and the provider
//! call carries the attempt span as its `traceparent`.
//!
//! Its own test binary: it installs the process's global subscriber with the OTLP layer
//! (sluice_schemas::logging::init), which the ingress and sink of the in-process stack use.

#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail loudly"
)]

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    unused_imports,
    reason = "the shared stack helpers: this suite uses a few"
)]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sluice_schemas::logging::LogConfig;
use sluice_schemas::trace::TraceConfig;
use sluice_schemas::{Priority, Topic, Topics};
use sluice_tests::otlp::{Collector, ReceivedSpan};

/// The spans each request leaves, by service: the test process holds the ingress and sink.
/// The request span is named as OpenTelemetry's HTTP conventions name a server span.
const REQUEST: &str = "POST /v1/chat/completions";
const INGRESS_SPANS: [&str; 4] = [REQUEST, "admission", "produce", "reply"];
const WORKER_SPANS: [&str; 4] = ["queue", "process", "attempt", "publish"];
const SINK_SPANS: [&str; 1] = ["insert"];

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span in {spans:#?}");
    found[0]
}

fn has_all(spans: &[ReceivedSpan]) -> bool {
    INGRESS_SPANS
        .iter()
        .chain(&WORKER_SPANS)
        .chain(&SINK_SPANS)
        .all(|name| spans.iter().any(|s| s.name == *name))
}

fn assert_child(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "`{}` is a child of `{}`",
        child.name, parent.name
    );
}

/// The `traceparent` headers of the messages on `requests` (as `(topic, value)`) and on
/// `results` (as `("<topic>/<key>", value)`), read from the start of each.
fn traceparent_headers(
    bootstrap: &str,
    requests: &[String],
    results: &str,
) -> Vec<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("trace-headers"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topics: Vec<&str> = requests
        .iter()
        .map(String::as_str)
        .chain([results])
        .collect();
    consumer.subscribe(&topics).expect("subscribe");
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            // Both requests' messages and both results.
            if found.len() >= 4 {
                break;
            }
            continue;
        };
        let Some(value) = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
        else {
            continue;
        };
        let place = if message.topic() == results {
            let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
            format!("{results}/{}", key.unwrap_or_default())
        } else {
            message.topic().to_string()
        };
        found.push((place, value.to_string()));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_request_is_one_trace_across_the_ingress_kafka_the_worker_and_the_sink() {
    let collector = Collector::start().await.expect("OTLP receiver");
    let config = TraceConfig {
        otlp_endpoint: Some(collector.endpoint()),
        ..TraceConfig::default()
    };
    let tracing = sluice_schemas::logging::init(
        &LogConfig::default(),
        &config,
        "sluice-test-stack",
        "warn,rdkafka=off",
        std::io::stderr,
    )
    .expect("[trace] is valid")
    .expect("tracing is on");
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await;
    let worker_config = std::env::temp_dir().join(format!("{}-trace-worker.toml", stack.prefix));
    std::fs::write(&worker_config, stack.worker_toml("trace-w1")).expect("config");
    let _worker = Killed(
        Command::new(workspace_bin("sluice-worker"))
            .arg("--config")
            .arg(&worker_config)
            .env("SLUICE_TRACE_OTLP_ENDPOINT", collector.endpoint())
            // The batch exporter's interval: seconds by default, a test wants it now.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("worker starts"),
    );

    // A caller with a trace of its own: the request joins it.
    let caller_trace = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let (status, body) = json_answer(
        stack
            .http
            .post(format!("{}/v1/chat/completions", stack.base))
            .bearer_auth(KEY_A)
            .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
            .json(&chat("traced")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A malformed traceparent is no parent: the request starts a trace of its own.
    let (status, body) = json_answer(
        stack
            .http
            .post(format!("{}/v1/chat/completions", stack.base))
            .bearer_auth(KEY_A)
            .header("traceparent", "00-not-a-trace-01")
            .json(&chat("untraced caller")),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let spans = eventually(Duration::from_secs(30), || async {
        tracing.flush().await;
        let spans = collector.trace(&caller_trace);
        has_all(&spans).then_some(spans)
    })
    .await
    .unwrap_or_else(|| {
        let summary: Vec<_> = collector
            .spans()
            .into_iter()
            .map(|s| {
                format!(
                    "{} {} {} {}<-{}",
                    s.service, s.name, s.trace_id, s.span_id, s.parent_span_id
                )
            })
            .collect();
        panic!("the caller's trace {caller_trace} lacks spans; received: {summary:#?}")
    });

    // The ingress: the request span under the caller's, its steps under it.
    let request = one(&spans, REQUEST);
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(request.kind, 2, "server");
    assert_eq!(request.service, "sluice-test-stack");
    assert_eq!(request.attribute("team"), Some("team-a"));
    assert_eq!(request.attribute("http.response.status_code"), Some("200"));
    assert!(request
        .attribute("request_id")
        .is_some_and(|id| !id.is_empty()));
    for name in ["admission", "produce", "reply"] {
        assert_child(one(&spans, name), request);
    }
    let produce = one(&spans, "produce");
    assert_eq!(produce.kind, 4, "producer");

    // Across Kafka: the worker's spans hang off the produce span, in the worker's process.
    let queue = one(&spans, "queue");
    let process = one(&spans, "process");
    for span in [queue, process] {
        assert_child(span, produce);
        assert_eq!(span.service, "sluice-worker");
    }
    assert_eq!(process.kind, 5, "consumer");
    assert!(queue.start_unix_nano <= queue.end_unix_nano);
    assert!(queue.end_unix_nano <= process.end_unix_nano);
    assert_eq!(
        process.attribute("request_id"),
        request.attribute("request_id")
    );
    let attempt = one(&spans, "attempt");
    assert_child(attempt, process);
    assert_eq!(attempt.kind, 3, "client");
    assert!(attempt.attribute("deployment").is_some());
    assert!(!attempt.error);
    let publish = one(&spans, "publish");
    assert_child(publish, process);

    // Back across Kafka to the sink: the insert is a child of the worker's publish.
    let insert = one(&spans, "insert");
    assert_child(insert, publish);
    assert_eq!(insert.service, "sluice-test-stack");
    assert!(insert.end_unix_nano >= insert.start_unix_nano);

    // The provider was called with the attempt span as its parent.
    let calls = stack.mock.calls();
    let sent: Vec<_> = calls
        .iter()
        .filter_map(|c| c.header("traceparent"))
        .collect();
    assert!(
        sent.contains(&format!("00-{caller_trace}-{}-01", attempt.span_id).as_str()),
        "provider calls carried {sent:?}"
    );

    // The Kafka messages carry it too, as the `traceparent` header other consumers read: the
    // request under the ingress's produce span, the result under the worker's publish span.
    let requests: Vec<String> = Priority::ALL
        .iter()
        .map(|p| Topics::new(stack.prefix.as_str()).name(&Topic::Requests(*p)))
        .collect();
    let results = Topics::new(stack.prefix.as_str()).name(&Topic::Results);
    let headers = {
        let (bootstrap, requests, results) =
            (stack.bootstrap.clone(), requests.clone(), results.clone());
        tokio::task::spawn_blocking(move || traceparent_headers(&bootstrap, &requests, &results))
            .await
            .expect("headers read")
    };
    let request_id = request.attribute("request_id").expect("request id");
    let produced = format!("00-{caller_trace}-{}-01", produce.span_id);
    assert!(
        headers
            .iter()
            .any(|(topic, value)| requests.contains(topic) && *value == produced),
        "request message headers: {headers:?}"
    );
    assert!(
        headers.contains(&(
            format!("{results}/{request_id}"),
            format!("00-{caller_trace}-{}-01", publish.span_id)
        )),
        "result message headers: {headers:?}"
    );

    // The second request: a trace of its own, rooted at the ingress.
    let other = sent
        .iter()
        .find_map(|t| sluice_schemas::trace::trace_id(t).filter(|id| *id != caller_trace))
        .expect("the second request's provider call carries its own trace")
        .to_string();
    let spans = eventually(Duration::from_secs(30), || async {
        tracing.flush().await;
        let spans = collector.trace(&other);
        has_all(&spans).then_some(spans)
    })
    .await
    .expect("the second request's trace is whole");
    let root = one(&spans, REQUEST);
    assert_eq!(root.parent_span_id, "", "a new trace starts at the ingress");
    assert_child(one(&spans, "process"), one(&spans, "produce"));

    let _ = std::fs::remove_file(&worker_config);
    stack.stop().await;
    tracing.shutdown().await;
}
