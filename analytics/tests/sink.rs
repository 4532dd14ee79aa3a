//! The sink end to end against the real broker (SLUICE_KAFKA_BOOTSTRAP) and ClickHouse
//! (SLUICE_CLICKHOUSE_URL). Each test has its own topic prefix, consumer group and database.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on a broken fixture or an unreachable service"
)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_analytics::config::{ClickHouseConfig, KafkaConfig, SinkConfig};
use sluice_analytics::sink::{DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC};
use sluice_analytics::{apply_migrations, client, Config, Sink, SinkStats};
use sluice_schemas::{encode, Topic, Topics};
use support::*;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

fn sink_config(prefix: &str, clickhouse: ClickHouseConfig) -> Config {
    Config {
        kafka: KafkaConfig {
            bootstrap: kafka_bootstrap(),
            topic_prefix: prefix.to_owned(),
            group_id: unique("analytics-test"),
            options: BTreeMap::new(),
        },
        clickhouse,
        sink: SinkConfig {
            // Small batches and a short interval: several flushes and commits per test.
            max_batch_rows: 7,
            flush_interval_ms: Duration::from_millis(200),
            insert_timeout_ms: Duration::from_secs(10),
            retry_max_backoff_ms: Duration::from_millis(300),
            shutdown_timeout_ms: Duration::from_secs(5),
            stall_timeout_ms: Duration::from_secs(60),
        },
        retention: Default::default(),
        alert_webhooks: Vec::new(),
        webhooks: Default::default(),
        log: Default::default(),
        trace: Default::default(),
        ops: Default::default(),
    }
}

/// Creates this test's topics. Fails loudly when the broker is not running: CI starts it.
async fn create_topics(prefix: &str) -> Topics {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    if let Err(e) = admin.inner().fetch_metadata(None, KAFKA_TIMEOUT) {
        panic!(
            "Kafka is not reachable at {} ({e}); start it with `bash scripts/services.sh start` \
             or set SLUICE_KAFKA_BOOTSTRAP",
            kafka_bootstrap()
        );
    }
    let topics = Topics::new(prefix);
    let wanted = [
        Topic::Results,
        Topic::Usage,
        Topic::Audit,
        Topic::DeadLetter,
        Topic::ReplayResults,
        Topic::ReplayUsage,
        Topic::Attempts,
    ];
    let names: Vec<String> = wanted.iter().map(|t| topics.name(t)).collect();
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .zip(&names)
        .map(|(t, name)| NewTopic::new(name, t.partitions(), TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    topics
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

/// Deletes this test's topics (best effort: the broker is a scratch one).
async fn delete_topics(topics: &Topics) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let names: Vec<String> = [
        Topic::Results,
        Topic::Usage,
        Topic::Audit,
        Topic::DeadLetter,
        Topic::ReplayResults,
        Topic::ReplayUsage,
        Topic::Attempts,
    ]
    .iter()
    .map(|t| topics.name(t))
    .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    drop(admin.delete_topics(&names, &AdminOptions::new()).await);
}

/// Produces `payload` keyed by `key`; returns (partition, offset).
async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) -> (i32, i64) {
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            KAFKA_TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    (delivery.partition, delivery.offset)
}

/// Produces every fixture record (duplicates included) to its topic, keyed by team.
async fn produce_fixtures(producer: &FutureProducer, topics: &Topics) {
    let usage = topics.name(&Topic::Usage);
    for record in usage_records() {
        produce(producer, &usage, &record.team, &encode(&record).unwrap()).await;
    }
    let results = topics.name(&Topic::Results);
    for record in result_records() {
        produce(producer, &results, &record.team, &encode(&record).unwrap()).await;
    }
    let audit = topics.name(&Topic::Audit);
    for record in audit_records() {
        produce(producer, &audit, &record.team, &encode(&record).unwrap()).await;
    }
    let replays = topics.name(&Topic::ReplayResults);
    for record in replay_result_records() {
        produce(producer, &replays, &record.team, &encode(&record).unwrap()).await;
    }
    let replay_usage = topics.name(&Topic::ReplayUsage);
    for record in replay_usage_records() {
        produce(
            producer,
            &replay_usage,
            &record.team,
            &encode(&record).unwrap(),
        )
        .await;
    }
}

async fn wait_for_counts<const N: usize>(client: &Client, db: &str, want: [(&str, u64); N]) {
    let started = Instant::now();
    loop {
        let mut got = Vec::new();
        for (table, _) in want {
            // Errors until the sink has applied the migrations.
            let sql = format!("SELECT count() FROM {db}.{table} FINAL");
            got.push(client.query(&sql).fetch_one::<u64>().await.ok());
        }
        if want.iter().map(|(_, n)| Some(*n)).eq(got.iter().copied()) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "rows in ClickHouse: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Committed offset and high watermark of every partition of `topics`, for `group`.
fn committed_and_end(group: &str, topics: &[String]) -> Vec<(String, i32, Offset, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..6 {
            tpl.add_partition(topic, partition);
        }
    }
    let committed = consumer.committed_offsets(tpl, KAFKA_TIMEOUT).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), KAFKA_TIMEOUT)
                .unwrap();
            (e.topic().to_owned(), e.partition(), e.offset(), high)
        })
        .collect()
}

fn run_sink(config: &Config) -> (CancellationToken, tokio::task::JoinHandle<SinkStats>) {
    let shutdown = CancellationToken::new();
    let sink = Sink::new(config).unwrap();
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { sink.run(shutdown).await.unwrap() }
    });
    (shutdown, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_lands_records_once_and_dead_letters_garbage() {
    let clickhouse = clickhouse_config().await;
    let prefix = unique("t");
    let topics = create_topics(&prefix).await;
    let config = sink_config(&prefix, clickhouse);
    let db = config.clickhouse.database.clone();
    let ch = client(&config.clickhouse);

    let producer = producer();
    produce_fixtures(&producer, &topics).await;
    let usage_topic = topics.name(&Topic::Usage);
    let garbage = produce(&producer, &usage_topic, "acme", b"definitely not avro").await;
    let mut truncated = encode(&result_records().remove(0)).unwrap();
    truncated.truncate(40);
    let results_topic = topics.name(&Topic::Results);
    let cut = produce(&producer, &results_topic, "globex", &truncated).await;
    // A live record on a replay topic is nobody's copy: dead-lettered, never a replay row.
    let replay_usage_topic = topics.name(&Topic::ReplayUsage);
    let live = encode(&usage_records().remove(0)).unwrap();
    let stray = produce(&producer, &replay_usage_topic, "acme", &live).await;

    // In process, as main does: migrate, then run until cancelled.
    let shutdown = CancellationToken::new();
    let sink = tokio::spawn(sluice_analytics::run(config.clone(), shutdown.clone()));
    wait_for_counts(
        &ch,
        &db,
        [
            ("usage", UNIQUE_USAGE),
            ("results", UNIQUE_RESULTS),
            ("audit", UNIQUE_AUDIT),
            ("replay_results", 5),
            ("replay_usage", 5),
        ],
    )
    .await;
    // The duplicate and the superseded result are absorbed: the views match the fixtures.
    assert_views_and_queries(&ch, &db).await;

    // The bad messages are in the dead-letter topic, with where they came from and why.
    let mut dead = read_dead_letters(&topics, 3).await;
    dead.sort();
    // Sorted by topic: `<p>.replay.usage` first.
    let stray_dead = dead.remove(0);
    assert_eq!(
        (stray_dead.0.as_str(), stray_dead.1, stray_dead.2),
        (replay_usage_topic.as_str(), stray.0, stray.1)
    );
    assert!(
        stray_dead.3.contains("`replay` field"),
        "reason: {}",
        stray_dead.3
    );
    assert_eq!(
        (dead[0].0.as_str(), dead[0].1, dead[0].2),
        (results_topic.as_str(), cut.0, cut.1)
    );
    assert_eq!(dead[0].4, truncated);
    assert!(dead[0].3.contains("Result"), "reason: {}", dead[0].3);
    assert_eq!(
        (dead[1].0.as_str(), dead[1].1, dead[1].2),
        (usage_topic.as_str(), garbage.0, garbage.1)
    );
    assert_eq!(dead[1].4, b"definitely not avro");
    assert!(dead[1].3.contains("marker"), "reason: {}", dead[1].3);

    shutdown.cancel();
    let stats = tokio::time::timeout(WAIT, sink)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.dead_lettered, stats.unwritten), (3, 0));
    assert_eq!(stats.replay_results, replay_result_records().len() as u64);
    assert_eq!(stats.usage, usage_records().len() as u64);
    assert!(stats.batches >= 2, "{stats:?}");

    // Everything consumed is committed, and nothing past it.
    for (topic, partition, committed, end) in committed_and_end(
        &config.kafka.group_id,
        &[usage_topic, results_topic, topics.name(&Topic::Audit)],
    ) {
        let want = if end == 0 {
            Offset::Invalid
        } else {
            Offset::Offset(end)
        };
        assert_eq!(committed, want, "{topic}[{partition}]");
    }
    drop_database(&ch, &db).await;
    delete_topics(&topics).await;
}

/// The first `n` messages of the dead-letter topic: (source topic, partition, offset,
/// reason, payload).
async fn read_dead_letters(topics: &Topics, n: usize) -> Vec<(String, i32, i64, String, Vec<u8>)> {
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&topics.name(&Topic::DeadLetter)]).unwrap();
    let mut dead = Vec::new();
    while dead.len() < n {
        let message = tokio::time::timeout(WAIT, dlq.recv())
            .await
            .unwrap()
            .unwrap();
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap_or_else(|| panic!("header {name} missing"))
        };
        dead.push((
            header(DLQ_TOPIC),
            header(DLQ_PARTITION).parse::<i32>().unwrap(),
            header(DLQ_OFFSET).parse::<i64>().unwrap(),
            header(DLQ_REASON),
            message.payload().unwrap().to_vec(),
        ));
    }
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_clickhouse_rejects_is_dead_lettered_and_the_rest_lands() {
    let clickhouse = clickhouse_config().await;
    let prefix = unique("t");
    let topics = create_topics(&prefix).await;
    let config = sink_config(&prefix, clickhouse);
    let db = config.clickhouse.database.clone();
    let ch = client(&config.clickhouse);
    let migrator = sluice_analytics::migrator_client(&config.clickhouse);
    apply_migrations(&migrator, &db).await.unwrap();
    // This test's own table refuses one model's rows, as the server refuses a value it
    // cannot take: the whole INSERT fails, with a data error (not a transient one).
    migrator
        .query_raw(&format!(
            "ALTER TABLE {db}.usage ADD COLUMN refused UInt8 MATERIALIZED throwIf(model = 'refused-model')"
        ))
        .execute()
        .await
        .unwrap();

    let producer = producer();
    let usage_topic = topics.name(&Topic::Usage);
    let mut records = usage_records();
    let mut bad = records[0].clone();
    bad.request_id = "req-refused".into();
    bad.model = "refused-model".into();
    let bad_payload = encode(&bad).unwrap();
    // Among the good ones, so the batch holding it has good rows too.
    let tail = records.split_off(records.len() / 2);
    for record in &records {
        produce(
            &producer,
            &usage_topic,
            &record.team,
            &encode(record).unwrap(),
        )
        .await;
    }
    let refused = produce(&producer, &usage_topic, &bad.team, &bad_payload).await;
    for record in &tail {
        produce(
            &producer,
            &usage_topic,
            &record.team,
            &encode(record).unwrap(),
        )
        .await;
    }

    let (shutdown, sink) = run_sink(&config);
    // Every good row lands; the refused one does not stall the rest.
    wait_for_counts(
        &ch,
        &db,
        [("usage", UNIQUE_USAGE), ("results", 0), ("audit", 0)],
    )
    .await;
    let dead = read_dead_letters(&topics, 1).await;
    let (topic, partition, offset, reason, payload) = &dead[0];
    assert_eq!(
        (topic.as_str(), *partition, *offset),
        (usage_topic.as_str(), refused.0, refused.1)
    );
    assert_eq!(payload, &bad_payload, "dead-lettered unchanged");
    assert!(
        reason.contains("ClickHouse insert failed") && reason.contains("throwIf"),
        "reason: {reason}"
    );
    let landed: u64 = ch
        .query(&format!(
            "SELECT count() FROM {db}.usage WHERE request_id = 'req-refused'"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(landed, 0);

    shutdown.cancel();
    let stats = tokio::time::timeout(WAIT, sink).await.unwrap().unwrap();
    assert_eq!((stats.dead_lettered, stats.unwritten), (1, 0), "{stats:?}");
    assert_eq!(stats.usage, usage_records().len() as u64);
    // Its offset moved on with the others: everything consumed is committed.
    for (topic, partition, committed, end) in
        committed_and_end(&config.kafka.group_id, &[usage_topic])
    {
        let want = if end == 0 {
            Offset::Invalid
        } else {
            Offset::Offset(end)
        };
        assert_eq!(committed, want, "{topic}[{partition}]");
    }
    drop_database(&ch, &db).await;
    delete_topics(&topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_wait_while_clickhouse_is_down() {
    let clickhouse = clickhouse_config().await;
    let prefix = unique("t");
    let topics = create_topics(&prefix).await;
    let good = sink_config(&prefix, clickhouse);
    let ch = client(&good.clickhouse);
    let db = good.clickhouse.database.clone();
    apply_migrations(&ch, &db).await.unwrap();

    let producer = producer();
    let usage_topic = topics.name(&Topic::Usage);
    let records = usage_records();
    for record in &records[..3] {
        produce(
            &producer,
            &usage_topic,
            &record.team,
            &encode(record).unwrap(),
        )
        .await;
    }

    // Same group, a ClickHouse that refuses connections (nothing listens on port 1).
    let mut down = good.clone();
    down.clickhouse.url = "http://127.0.0.1:1".into();
    down.sink.shutdown_timeout_ms = Duration::from_millis(500);
    let (shutdown, handle) = run_sink(&down);
    // Long enough for a first group join on a fresh broker (CI creates __consumer_offsets
    // while the tests start) and the fetch: the sink must have read all 3 before shutdown.
    tokio::time::sleep(Duration::from_secs(10)).await;
    shutdown.cancel();
    let stats = tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    assert_eq!(
        (stats.usage, stats.batches, stats.unwritten),
        (0, 0, 3),
        "{stats:?}"
    );
    for (topic, partition, committed, _) in
        committed_and_end(&good.kafka.group_id, std::slice::from_ref(&usage_topic))
    {
        assert_eq!(
            committed,
            Offset::Invalid,
            "{topic}[{partition}] committed without its rows"
        );
    }

    // ClickHouse back: the same group consumes the records again and lands them.
    let (shutdown, handle) = run_sink(&good);
    wait_for_counts(&ch, &db, [("usage", 3), ("results", 0), ("audit", 0)]).await;
    shutdown.cancel();
    let stats = tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    assert_eq!(stats.usage, 3);
    for (topic, partition, committed, end) in
        committed_and_end(&good.kafka.group_id, std::slice::from_ref(&usage_topic))
    {
        let want = if end == 0 {
            Offset::Invalid
        } else {
            Offset::Offset(end)
        };
        assert_eq!(committed, want, "{topic}[{partition}]");
    }
    drop(producer.flush(KAFKA_TIMEOUT));
    drop_database(&ch, &db).await;
    delete_topics(&topics).await;
}

/// Issue 14: a completion is kept for the async API only, in the private database; no
/// analyst-facing table holds its text (for a `hash` team the audit has only its SHA-256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_text_lands_only_in_the_private_database() {
    let clickhouse = clickhouse_config().await;
    let prefix = unique("t");
    let topics = create_topics(&prefix).await;
    let config = sink_config(&prefix, clickhouse);
    let db = config.clickhouse.database.clone();
    let private = sluice_schemas::tables::private_database(&db);
    let ch = client(&config.clickhouse);

    let marker = unique("completion-text-of-a-hash-team");
    let mut result = result_records().remove(0);
    result.body =
        format!(r#"{{"choices":[{{"message":{{"role":"assistant","content":"{marker}"}}}}]}}"#);
    let mut accepted = audit_records().remove(0);
    accepted.request_id = result.request_id.clone();
    accepted.team = result.team.clone();
    accepted.event_id = unique("ev");
    accepted.action = sluice_schemas::AuditAction::Accepted;
    accepted.completion_text = None;
    accepted.prompt_text = None;
    let mut completed = accepted.clone();
    completed.event_id = unique("ev");
    completed.action = sluice_schemas::AuditAction::Completed;
    completed.completion_sha256 = Some("ab".repeat(32));

    let producer = producer();
    let results_topic = topics.name(&Topic::Results);
    produce(
        &producer,
        &results_topic,
        &result.team,
        &encode(&result).unwrap(),
    )
    .await;
    let audit_topic = topics.name(&Topic::Audit);
    for event in [&accepted, &completed] {
        produce(
            &producer,
            &audit_topic,
            &event.team,
            &encode(event).unwrap(),
        )
        .await;
    }

    let shutdown = CancellationToken::new();
    let sink = tokio::spawn(sluice_analytics::run(config.clone(), shutdown.clone()));
    wait_for_counts(&ch, &db, [("results", 1), ("usage", 0), ("audit", 2)]).await;
    let body_sql = format!(
        "SELECT toUInt64(count()) FROM {private}.result_bodies FINAL \
         WHERE request_id = '{}' AND position(body, '{marker}') > 0",
        result.request_id
    );
    let started = Instant::now();
    while ch.query(&body_sql).fetch_one::<u64>().await.unwrap() != 1 {
        assert!(
            started.elapsed() < WAIT,
            "the body never reached result_bodies"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted_rows: u64 = ch
        .query(&format!(
            "SELECT toUInt64(count()) FROM {private}.accepted_requests FINAL WHERE request_id = ?"
        ))
        .bind(&result.request_id)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(accepted_rows, 1);

    // Every String column of every table in the analyst database, searched for the text.
    let columns: Vec<(String, String)> = ch
        .query(
            "SELECT c.table, c.name FROM system.columns AS c \
             ANY INNER JOIN (SELECT name AS table FROM system.tables \
                 WHERE database = ? AND engine LIKE '%MergeTree') AS t USING table \
             WHERE c.database = ? AND c.type = 'String'",
        )
        .bind(&db)
        .bind(&db)
        .fetch_all()
        .await
        .unwrap();
    assert!(
        columns
            .iter()
            .any(|(t, c)| t == "audit" && c == "completion_text"),
        "{columns:?}"
    );
    for (table, column) in &columns {
        let n: u64 = ch
            .query(&format!(
                "SELECT toUInt64(count()) FROM {db}.{table} WHERE position({column}, ?) > 0"
            ))
            .bind(&marker)
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(n, 0, "{db}.{table}.{column} holds the completion text");
    }
    shutdown.cancel();
    sink.await.unwrap().unwrap();
    drop_database(&ch, &db).await;
    delete_topics(&topics).await;
}

/// A v5 result carries its completed audit event, a v6 one its provider calls as they
/// ended: the sink writes those audit and attempts rows from it (once, however often the
/// result is delivered; an ended call replaces its `started` record), from live and replay
/// results alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_audit_and_attempt_rows_are_written_from_the_result() {
    let clickhouse = clickhouse_config().await;
    let prefix = unique("t");
    let topics = create_topics(&prefix).await;
    let config = sink_config(&prefix, clickhouse);
    let db = config.clickhouse.database.clone();
    let ch = client(&config.clickhouse);

    let mut live = result_records().remove(0);
    live.request_id = unique("req");
    live.status = sluice_schemas::Status::Completed;
    live.error_kind = None;
    live.body =
        r#"{"choices":[{"message":{"role":"assistant","content":"a full answer"}}]}"#.into();
    live.audit = Some(sluice_schemas::ResultAudit {
        completion_sha256: Some(sluice_schemas::audit_content::sha256_hex(b"a full answer")),
        keep_text: true,
        policy: Some("location:eu-west".into()),
    });
    let call = |finished_at_ms: i64, outcome: &str| sluice_schemas::Attempt {
        attempt_id: format!("{}-1", live.request_id),
        request_id: live.request_id.clone(),
        team: live.team.clone(),
        key_id: live.key_id.clone(),
        model: live.model.clone(),
        provider: "openai".into(),
        deployment: "d1".into(),
        served_model: live.model.clone(),
        attempt: 1,
        worker: "w1".into(),
        outcome: outcome.into(),
        billed: "reported".into(),
        http_status: 200,
        prompt_tokens: 7,
        completion_tokens: 3,
        cached_tokens: 0,
        cost_nanos: 1234,
        max_cost_nanos: 5000,
        estimated: false,
        created_at_ms: 1,
        started_at_ms: 2,
        finished_at_ms,
    };
    live.calls = vec![call(3, "completed")];
    let mut replayed = replay_result_records().remove(0);
    replayed.request_id = unique("req");
    replayed.audit = Some(sluice_schemas::ResultAudit {
        completion_sha256: None,
        keep_text: false,
        policy: Some("replay:r1".into()),
    });

    let producer = producer();
    // The call's `started` record, as the worker acks it before the call.
    let started = call(0, "started");
    let attempts_topic = topics.name(&Topic::Attempts);
    produce(
        &producer,
        &attempts_topic,
        &started.request_id,
        &encode(&started).unwrap(),
    )
    .await;
    let results_topic = topics.name(&Topic::Results);
    for _ in 0..2 {
        produce(
            &producer,
            &results_topic,
            &live.team,
            &encode(&live).unwrap(),
        )
        .await;
    }
    let replay_topic = topics.name(&Topic::ReplayResults);
    produce(
        &producer,
        &replay_topic,
        &replayed.team,
        &encode(&replayed).unwrap(),
    )
    .await;

    let shutdown = CancellationToken::new();
    let sink = tokio::spawn(sluice_analytics::run(config.clone(), shutdown.clone()));
    wait_for_counts(
        &ch,
        &db,
        [
            ("results", 1),
            ("replay_results", 1),
            ("audit", 2),
            ("attempts", 1),
        ],
    )
    .await;
    let attempts: Vec<(String, String, i64)> = ch
        .query(&format!(
            "SELECT attempt_id, outcome, cost_nanos FROM {db}.attempts FINAL WHERE request_id = ?"
        ))
        .bind(&live.request_id)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        attempts,
        [(
            format!("{}-1", live.request_id),
            "completed".to_string(),
            1234
        )]
    );
    let row = |id: String| {
        let ch = ch.clone();
        let db = db.clone();
        async move {
            ch.query(&format!(
                "SELECT event_id, action, http_status, completion_sha256, completion_text, policy \
                 FROM {db}.audit FINAL WHERE request_id = ?"
            ))
            .bind(id)
            .fetch_all::<(String, String, i32, String, String, String)>()
            .await
            .unwrap()
        }
    };
    assert_eq!(
        row(live.request_id.clone()).await,
        [(
            format!("{}-completed", live.request_id),
            "completed".to_string(),
            live.http_status,
            sluice_schemas::audit_content::sha256_hex(b"a full answer"),
            "a full answer".to_string(),
            "location:eu-west".to_string()
        )]
    );
    let replay_rows = row(replayed.request_id.clone()).await;
    assert_eq!(replay_rows.len(), 1, "{replay_rows:?}");
    assert_eq!(replay_rows[0].1, replayed.status.as_str());
    assert_eq!(
        (replay_rows[0].4.as_str(), replay_rows[0].5.as_str()),
        ("", "replay:r1")
    );
    shutdown.cancel();
    sink.await.unwrap().unwrap();
    drop_database(&ch, &db).await;
    delete_topics(&topics).await;
}

/// A consumer that stops fetching while its group has records to read (here its partitions
/// are paused, which is how a consumer stuck after a broker restart was seen to behave:
/// records on the topic, none received, nothing logged) is replaced by a new one, and the
/// records it left land, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_fetching_is_replaced_and_its_records_land() {
    let clickhouse = clickhouse_config().await;
    let prefix = unique("t");
    let topics = create_topics(&prefix).await;
    let mut config = sink_config(&prefix, clickhouse);
    config.sink.stall_timeout_ms = Duration::from_secs(5);
    let ch = client(&config.clickhouse);
    let db = config.clickhouse.database.clone();
    apply_migrations(&ch, &db).await.unwrap();

    let shutdown = CancellationToken::new();
    let sink = Sink::new(&config).unwrap();
    let stall = sink.stall_handle();
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { sink.run(shutdown).await.unwrap() }
    });
    // Joined before anything is produced: the group is not behind while it joins.
    let started = Instant::now();
    while stall.assigned() == 0 {
        assert!(started.elapsed() < WAIT, "the sink never joined its group");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer = producer();
    let usage_topic = topics.name(&Topic::Usage);
    let records = usage_records();
    let send = |record: &sluice_schemas::Usage| {
        let (producer, topic) = (&producer, &usage_topic);
        let payload = encode(record).unwrap();
        let team = record.team.clone();
        async move { produce(producer, topic, &team, &payload).await }
    };
    send(&records[0]).await;
    wait_for_counts(&ch, &db, [("usage", 1)]).await;

    assert!(stall.pause_assigned() > 0, "the consumer held partitions");
    for record in &records[1..4] {
        send(record).await;
    }
    wait_for_counts(&ch, &db, [("usage", 4)]).await;
    shutdown.cancel();
    let stats = tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    assert!(stats.consumer_replacements >= 1, "{stats:?}");
    let once = count(
        &ch,
        &format!("SELECT toUInt64(uniqExact(request_id) = count()) FROM {db}.usage FINAL"),
    )
    .await;
    assert_eq!(once, 1, "each usage row once");
    drop(producer.flush(KAFKA_TIMEOUT));
    drop_database(&ch, &db).await;
    delete_topics(&topics).await;
}
