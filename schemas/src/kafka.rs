//! Kafka client set-up every service shares (feature `kafka`): the order in which settings
//! apply, the reliable producer behind every guarantee, and how to recognise a message Kafka
//! will never take; [`send`], one message produced and acknowledged; [`when_ready`], the
//! wait for a topic just created.
//!
//! Settings apply in one order everywhere: the service's defaults for its hot path, then the
//! bootstrap servers, then the operator's passthrough `[kafka] options`, then (by
//! [`reliable_producer`] or the caller) the settings correctness depends on, which win.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// Defaults, then `bootstrap.servers`, then the passthrough options.
pub fn client_config(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (key, value) in defaults {
        cc.set(*key, *value);
    }
    cc.set("bootstrap.servers", bootstrap);
    for (key, value) in options {
        cc.set(key, value);
    }
    cc
}

/// What a producer whose writes callers rely on needs.
pub struct ProducerSettings<'a> {
    pub bootstrap: &'a str,
    pub options: &'a BTreeMap<String, String>,
    /// The hot path's `linger.ms` (a default: passthrough options may change it).
    pub linger_ms: u32,
    /// How long a produce may wait for the broker's acks.
    pub message_timeout: Duration,
    /// The topics' `max.message.bytes`.
    pub max_message_bytes: usize,
}

/// A producer whose acknowledged writes are on every in-sync replica, once (`acks=all`,
/// idempotence). These settings come after, and override, the passthrough options.
pub fn reliable_producer(settings: &ProducerSettings<'_>) -> Result<FutureProducer, KafkaError> {
    let linger = settings.linger_ms.to_string();
    let mut cc = client_config(
        settings.bootstrap,
        settings.options,
        &[("linger.ms", linger.as_str())],
    );
    cc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            settings.message_timeout.as_millis().to_string(),
        )
        .set("message.max.bytes", settings.max_message_bytes.to_string());
    cc.create()
}

/// Kafka refused the message as too large (librdkafka before sending, or the broker for a
/// topic with a smaller `max.message.bytes`): final, sending it again cannot succeed.
pub fn too_large(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
}

/// One message to produce.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    pub partition: Option<i32>,
    pub headers: Option<OwnedHeaders>,
}

/// The W3C trace context header of a message, as OpenTelemetry's Kafka instrumentations
/// read it. The record's `traceparent` field is what Sluice's own consumers follow; the
/// header lets any other consumer of the topic join the trace.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// `headers` (or new ones) with the `traceparent` header when there is one.
pub fn with_traceparent(
    headers: Option<OwnedHeaders>,
    traceparent: Option<&str>,
) -> Option<OwnedHeaders> {
    match traceparent {
        Some(value) => Some(headers.unwrap_or_default().insert(Header {
            key: TRACEPARENT_HEADER,
            value: Some(value),
        })),
        None => headers,
    }
}

/// Produces one message and waits for its acknowledgement.
pub async fn send(producer: &FutureProducer, m: Outgoing<'_>) -> Result<(), KafkaError> {
    let mut record = FutureRecord::to(m.topic).key(m.key).payload(m.payload);
    if let Some(p) = m.partition {
        record = record.partition(p);
    }
    if let Some(h) = m.headers {
        record = record.headers(h);
    }
    // The queue wait is bounded by message.timeout.ms, which also bounds delivery.
    let started = std::time::Instant::now();
    let sent = producer
        .send(record, Duration::from_secs(0))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e);
    record_produce(m.topic, started.elapsed(), sent.as_ref().err());
    sent
}

/// `sluice_kafka_produce_duration_seconds{topic}` and `sluice_kafka_produce_errors_total
/// {topic, kind}` (no-ops without an installed recorder).
fn record_produce(topic: &str, took: Duration, error: Option<&KafkaError>) {
    let topic = logical_topic(topic);
    metrics::histogram!("sluice_kafka_produce_duration_seconds", "topic" => topic)
        .record(took.as_secs_f64());
    if let Some(error) = error {
        let kind = if too_large(error) {
            "too_large"
        } else if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
            "timeout"
        } else {
            "other"
        };
        metrics::counter!("sluice_kafka_produce_errors_total", "topic" => topic, "kind" => kind)
            .increment(1);
    }
}

/// The catalog's `topic` label of a Kafka topic name: `requests` for every request topic
/// (shared or a team's), else the name's last segment (`results`, `usage`, `dead-letter`,
/// ...), `other` for anything else: bounded whatever the prefix.
pub fn logical_topic(name: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "results",
        "usage",
        "attempts",
        "audit",
        "replies",
        "dead-letter",
        "cancels",
        "budget-alerts",
        "keys",
    ];
    if name.contains(".requests.") || name.starts_with("requests.") {
        return "requests";
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    KNOWN
        .iter()
        .find(|k| **k == last)
        .copied()
        .unwrap_or("other")
}

/// Runs `attempt` until it succeeds, for up to ~10 s (50 retries 200 ms apart): right after
/// topic creation a topic may be missing from metadata, or its partitions may have no
/// leader yet.
pub async fn when_ready<T, F, Fut>(what: &str, attempt: F) -> Result<T, KafkaError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KafkaError>>,
{
    use crate::retry::{bounded, Retryable};
    attempt
        .retry(bounded(Duration::from_millis(200), 50))
        .notify(|error, _| tracing::debug!(%error, what, "not ready yet"))
        .await
}
