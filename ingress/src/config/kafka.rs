//! `[kafka]`: the broker, topics and producer limits.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::millis;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap: String,
    pub topic_prefix: String,
    /// How long a produce may wait for the broker's acks before the caller gets 503.
    #[serde(with = "millis")]
    pub produce_timeout_ms: Duration,
    /// Create missing topics at start-up.
    pub create_topics: bool,
    /// librdkafka settings passed through (applied before the ones correctness depends on).
    pub options: BTreeMap<String, String>,
    /// Largest message produced: the topics' `max.message.bytes` when the ingress creates
    /// them and the producer's `message.max.bytes`. A request (or batch line) whose encoded
    /// record is larger gets 413 `request_too_large` up front; so does one the broker refuses
    /// as too large (a topic created before with a smaller limit). Keep it above
    /// `[server] max_body_bytes` plus the envelope and the audit copy of the prompt
    /// (8 MiB for the default 4 MiB body); the workers' `[kafka] max_message_bytes` matches.
    pub max_message_bytes: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:19092".into(),
            topic_prefix: "sluice".into(),
            produce_timeout_ms: Duration::from_secs(5),
            create_topics: true,
            options: BTreeMap::new(),
            max_message_bytes: sluice_schemas::topics::MAX_MESSAGE_BYTES,
        }
    }
}
