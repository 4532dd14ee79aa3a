//! Streaming through Kafka: SSE exactly as OpenAI sends it, errors mid-stream, and callers
//! that go away (the provider call stops, the partial usage is billed).

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::mock::{Behaviour, Failure};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

fn stream_request(text: &str, include_usage: bool) -> Value {
    let mut body = chat(text);
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Posts a streamed chat completion of `text` (usage asked for) as team A.
async fn post_stream(stack: &Stack, text: &str) -> reqwest::Response {
    stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request(text, true))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_arrives_as_openai_sends_it_and_is_billed() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 12,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("stream me a story", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    let call = &stack.mock.calls()[0];
    assert_eq!(
        text, call.content,
        "the caller got exactly what the provider sent"
    );
    let finish = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["finish_reason"].as_str())
        .collect::<Vec<_>>();
    assert_eq!(finish, vec!["stop"]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!(usage["completion_tokens"], call.completion_tokens);

    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let row = stack
        .ch("SELECT status, prompt_tokens, completion_tokens, estimated FROM {db}.usage FINAL")
        .await;
    assert_eq!(
        row.trim(),
        format!(
            "completed\t{}\t{}\t0",
            call.prompt_tokens, call.completion_tokens
        )
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_is_billed_even_when_the_caller_did_not_ask_for_it() {
    let stack = Stack::start(StackOptions::default()).await;
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("no usage for me", false))
        .send()
        .await
        .unwrap();
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert!(
            chunk.get("usage").is_none_or(Value::is_null),
            "no usage chunk: {d}"
        );
    }
    // Sluice asked the provider for usage anyway: it is the bill.
    let call = &stack.mock.calls()[0];
    assert!(call.usage_reported);
    let n = stack
        .wait_count(
            "SELECT count() FROM {db}.usage FINAL WHERE estimated = 0",
            1,
            WAIT,
        )
        .await;
    assert_eq!(n, 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_failure_mid_stream_reaches_the_caller_and_is_billed() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 20,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    stack.mock.fail_next([Failure::MidStreamError {
        after_chunks: 5,
        error: None,
    }]);
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("this will break", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the stream had started");
    let data = sse_data(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"].is_string(),
        "ends with an error event: {last}"
    );
    assert!(!data.iter().any(|d| d == "[DONE]"));

    // The broken connection variant: the provider just hangs up.
    stack
        .mock
        .fail_next([Failure::MidStreamBreak { after_chunks: 4 }]);
    let response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("this will hang up", false))
        .send()
        .await
        .unwrap();
    let data = sse_data(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_broken", "{last}");

    // Both are billed for what was generated, estimated since no usage chunk came.
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 2, WAIT)
        .await;
    assert_eq!(n, 2);
    let rows = stack
        .ch("SELECT status, estimated, completion_tokens > 0, prompt_tokens > 0 FROM {db}.usage FINAL")
        .await;
    assert_eq!(rows.lines().collect::<Vec<_>>(), vec!["failed\t1\t1\t1"; 2]);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_that_disconnects_stops_the_provider_and_leaves_a_partial_bill() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 200,
            stream_chunk_delay: Duration::from_millis(50),
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let mut response = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_A)
        .json(&stream_request("a long story", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = String::new();
    while sse_data(&received).len() < 5 {
        let bytes = response.chunk().await.unwrap().expect("more events");
        received.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    drop(response);

    // The provider call is stopped well before its 200 tokens (10 s of chunks).
    let call = eventually(WAIT, || async {
        let call = stack.mock.calls().into_iter().next()?;
        call.ended_at.is_some().then_some(call)
    })
    .await
    .expect("the provider stream ended");
    assert!(call.client_gone, "Sluice hung up on the provider");
    assert!(call.finish_reason.is_none());
    assert!(
        call.completion_tokens < 200,
        "stopped early: {}",
        call.completion_tokens
    );
    assert_eq!(stack.mock.call_count(), 1, "not retried");
    let n = stack
        .wait_count("SELECT count() FROM {db}.results FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let result = stack
        .ch("SELECT status, error_kind, http_status FROM {db}.results FINAL")
        .await;
    assert_eq!(result.trim(), "failed\tclient_disconnected\t499");
    let n = stack
        .wait_count("SELECT count() FROM {db}.usage FINAL", 1, WAIT)
        .await;
    assert_eq!(n, 1);
    let usage = stack
        .ch("SELECT estimated, completion_tokens FROM {db}.usage FINAL")
        .await;
    let cols: Vec<&str> = usage.trim().split('\t').collect();
    assert_eq!(cols[0], "1", "estimated: the provider never sent usage");
    let billed: u32 = cols[1].parse().unwrap();
    assert!(
        billed > 0 && billed < 200,
        "partial tokens billed: {billed}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_misuse_is_rejected_up_front() {
    let stack = Stack::start(StackOptions::default()).await;
    let (status, body) = stack
        .post(
            "/v1/requests",
            KEY_A,
            stream_request("async stream?", false),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "stream");
    let mut request = chat("options without a stream");
    request["stream_options"] = json!({"include_usage": true});
    let (status, body) = stack.post("/v1/chat/completions", KEY_A, request).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "stream_options");
    // A provider error before the first chunk is a plain JSON error with its status.
    stack.mock.fail_next([Failure::status(400)]);
    let (status, body) = stack
        .post(
            "/v1/chat/completions",
            KEY_A,
            stream_request("rejected", true),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].is_string());
    stack.stop().await;
}

/// The chunk records of `request_id` on the stack's reply topic: the events each holds.
async fn reply_records(stack: &Stack, request_id: &str) -> Vec<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    use sluice_schemas::{Topic, Topics};
    let topic = Topics::new(stack.prefix.clone()).name(&Topic::Replies);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("group.id", unique("reply-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..Topic::Replies.partitions() {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let mut at_end = 0;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while at_end < Topic::Replies.partitions() && std::time::Instant::now() < until {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mine = m.key() == Some(request_id.as_bytes());
                if let Some(Ok(chunk)) = m
                    .payload()
                    .filter(|_| mine)
                    .map(sluice_schemas::decode::<sluice_schemas::StreamChunk>)
                {
                    records.push(1 + chunk.more.len());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end += 1,
            _ => {}
        }
    }
    records
}

/// Events of a fast provider share records; a slow provider's go one by one, as they come;
/// the caller gets every event in order either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_providers_events_share_reply_records_and_a_slow_ones_do_not_wait() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 45,
            ..Behaviour::default()
        },
        ..StackOptions::default()
    })
    .await;
    let stream = |text: &'static str| {
        let stack = &stack;
        async move {
            let response = post_stream(stack, text).await;
            let id = response.headers()["x-sluice-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            (id, sse_data(&response.text().await.unwrap()))
        }
    };
    let (fast_id, fast) = stream("a fast stream").await;
    let expected =
        sluice_tests::mock::openai::expected_reply(&stream_request("a fast stream", true), 45);
    assert_eq!(content(&fast[..fast.len() - 1]), expected.content);
    // role + 45 content + finish + usage events, without [DONE].
    let events = fast.len() - 1;
    assert_eq!(events, 48);
    let records = reply_records(&stack, &fast_id).await;
    assert_eq!(records.iter().sum::<usize>(), events, "every event, once");
    assert!(
        records.len() < events / 3,
        "an instant provider's {events} events in {} records: {records:?}",
        records.len()
    );
    assert_eq!(records[0], 1, "the first event is sent alone, at once");
    assert_eq!(
        records[1], 1,
        "the first token is sent at once, not held for the window: {records:?}"
    );

    // 25 ms between chunks, more than the 5 ms window: one record per event.
    stack.mock.set_behaviour(Behaviour {
        completion_tokens: 6,
        stream_chunk_delay: Duration::from_millis(25),
        ..Behaviour::default()
    });
    let (slow_id, slow) = stream("a slow stream").await;
    let records = reply_records(&stack, &slow_id).await;
    let content_records = &records[1..records.len() - 2];
    assert!(
        content_records.iter().all(|&n| n == 1),
        "paced events are not held: {records:?}"
    );
    assert_eq!(records.iter().sum::<usize>(), slow.len() - 1);
    stack.stop().await;
}

/// Streams beyond `[streaming] prompt_streams` go on the batched producer, the first on the
/// prompt one (workers/src/process/processor.rs `Lanes`); in either lane a stream's end
/// follows all its chunks, so every caller gets its whole answer, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_in_both_producer_lanes_arrive_whole_and_in_order() {
    let stack = Stack::start(StackOptions {
        behaviour: Behaviour {
            completion_tokens: 20,
            // 20 chunks 10 ms apart: the six streams below are live at the worker together.
            stream_chunk_delay: Duration::from_millis(10),
            ..Behaviour::default()
        },
        // One record per event: the most records whose order each lane must keep.
        extra_worker_toml: "[streaming]\nprompt_streams = 1\ncoalesce_ms = 0\n".into(),
        ..StackOptions::default()
    })
    .await;
    let texts: Vec<String> = (0..6).map(|i| format!("stream number {i}")).collect();
    let streams = texts.iter().map(|text| {
        let stack = &stack;
        async move {
            let response = post_stream(stack, text).await;
            assert_eq!(response.status(), 200);
            sse_data(&response.text().await.unwrap())
        }
    });
    let answers = futures::future::join_all(streams).await;
    for (text, data) in texts.iter().zip(&answers) {
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "{text}: {data:?}"
        );
        let expected = sluice_tests::mock::openai::expected_reply(&stream_request(text, true), 20);
        assert_eq!(
            content(&data[..data.len() - 1]),
            expected.content,
            "{text}: every token, in order"
        );
        // role + 20 content + finish + usage events, then [DONE].
        assert_eq!(data.len(), 24, "{text}: {data:?}");
    }
    stack.stop().await;
}

/// The request record the ingress published on one of the stack's request topics.
fn published_request(stack: &Stack) -> sluice_schemas::Request {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    use sluice_schemas::{Priority, Topic, Topics};
    let topics: Vec<String> = Priority::ALL
        .iter()
        .map(|p| Topics::new(stack.prefix.clone()).name(&Topic::Requests(*p)))
        .collect();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("group.id", unique("request-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).unwrap();
    let until = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            return sluice_schemas::decode(m.payload().unwrap()).unwrap();
        }
    }
    panic!("no request record was published");
}

/// The caller's SSE data lines for a stream whose reply records are written here as a
/// worker writes them (`(attempt, seq, text)`, one content event each), with no worker.
async fn stream_of_records(records: &[(&str, i32, &str)]) -> Vec<String> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await;
    let caller = {
        let request = stack
            .http
            .post(format!("{}/v1/chat/completions", stack.base))
            .bearer_auth(KEY_A)
            .json(&stream_request("a story", false));
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        })
    };
    let request = tokio::task::block_in_place(|| published_request(&stack));
    let reply = request.reply.clone().expect("a stream waits for its reply");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .create()
        .unwrap();
    let event = |text: &str| {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})
            .to_string()
    };
    for &(attempt, seq, text) in records {
        let chunk = sluice_schemas::StreamChunk {
            request_id: request.request_id.clone(),
            attempt: attempt.into(),
            seq,
            data: event(text),
            more: Vec::new(),
        };
        let payload = sluice_schemas::encode(&chunk).unwrap();
        let headers = OwnedHeaders::new().insert(Header {
            key: sluice_schemas::REPLY_KIND_HEADER,
            value: Some(sluice_schemas::REPLY_KIND_CHUNK),
        });
        let record = FutureRecord::to(&reply.topic)
            .partition(reply.partition)
            .key(&request.request_id)
            .payload(&payload)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("chunk record produced");
    }
    let body = tokio::time::timeout(WAIT, caller)
        .await
        .expect("the stream ends")
        .unwrap();
    stack.stop().await;
    sse_data(&body)
}

/// The text of a stream's content events.
fn content(data: &[String]) -> String {
    data.iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// A stream whose events arrive with one missing ends with an error event, not with [DONE]
/// as if the shortened answer were whole; duplicates and another attempt's events are
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_missing_an_event_ends_with_an_error_not_done() {
    // seq 0, its duplicate, another attempt's seq 1, seq 1, then seq 3: seq 2 is lost.
    let data = stream_of_records(&[
        ("w1", 0, "one "),
        ("w1", 0, "one again "),
        ("w2", 1, "spliced "),
        ("w1", 1, "two "),
        ("w1", 3, "four"),
    ])
    .await;
    assert_eq!(content(&data), "one two ", "{data:?}");
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_incomplete", "{data:?}");
}

/// A stream whose first event was lost does not start mid-answer: the caller gets the
/// error event and none of the later text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_whose_first_event_is_lost_ends_with_an_error() {
    let data = stream_of_records(&[("w1", 1, "two "), ("w1", 2, "three")]).await;
    assert_eq!(content(&data), "", "{data:?}");
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_incomplete", "{data:?}");
}
