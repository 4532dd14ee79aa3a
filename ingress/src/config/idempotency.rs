//! `[idempotency]`: where `Idempotency-Key`s are remembered (docs/idempotency.md).

use std::time::Duration;

use serde::Deserialize;

use super::millis;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// The Redis every ingress replica shares (`redis://host:port[/db]`). Unset: a request
    /// with an `Idempotency-Key` is refused (400), since no replica could keep the promise.
    pub redis_url: Option<String>,
    /// How long a key is remembered after its first use.
    pub window_s: u64,
    /// Longest wait for one Redis command (connecting included); past it the keyed request
    /// gets a 503 and nothing is published.
    #[serde(with = "millis")]
    pub timeout_ms: Duration,
    /// A key whose first request never reached Kafka (the ingress stopped, or the produce
    /// timed out) is given to a retry after this long, once ClickHouse shows no trace of
    /// that request; until then a retry gets 409. Longer than the produce timeout plus the
    /// analytics sink's lag.
    #[serde(with = "millis")]
    pub takeover_after_ms: Duration,
    /// How often a retry that waits for the first request's answer looks for it.
    #[serde(with = "millis")]
    pub poll_ms: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            redis_url: None,
            window_s: 24 * 3600,
            timeout_ms: Duration::from_millis(500),
            takeover_after_ms: Duration::from_secs(5 * 60),
            poll_ms: Duration::from_millis(200),
        }
    }
}
