//! `[redelivery]`: where finished requests are looked up and how long a revoke waits.

use std::time::Duration;

use serde::Deserialize;

/// `[redelivery]`: where finished requests are looked up. Off without `clickhouse_url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedeliveryConfig {
    /// ClickHouse's HTTP interface, e.g. `http://127.0.0.1:18123`.
    pub clickhouse_url: Option<String>,
    pub database: String,
    /// A user that may read `results` and `usage`.
    pub user: Option<String>,
    /// Name of the environment variable holding that user's password.
    pub password_env: Option<String>,
    /// How long one (batched) lookup query may take before the provider is called anyway.
    #[serde(with = "crate::config::millis")]
    pub timeout_ms: Duration,
    /// How long a worker whose partitions are revoked waits for their running requests
    /// before it gives them up (their offsets are committed first, so the new owner does
    /// not call the provider for them again).
    #[serde(with = "crate::config::millis")]
    pub revoke_wait_ms: Duration,
    /// How many finished request ids a worker remembers (skipped when read again).
    pub remember: usize,
}

impl Default for RedeliveryConfig {
    fn default() -> Self {
        RedeliveryConfig {
            clickhouse_url: None,
            database: "sluice".into(),
            user: None,
            password_env: None,
            timeout_ms: Duration::from_millis(1000),
            revoke_wait_ms: Duration::from_millis(5000),
            remember: 100_000,
        }
    }
}

impl RedeliveryConfig {
    pub fn validate(&self) -> Result<(), &'static str> {
        if let Some(url) = &self.clickhouse_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err("clickhouse_url must start with http:// or https://");
            }
        }
        if !is_plain(&self.database) {
            return Err("database must be letters, digits and '_'");
        }
        if self.timeout_ms.is_zero() {
            return Err("timeout_ms must be at least 1");
        }
        if let Some(var) = &self.password_env {
            if std::env::var(var).is_err() {
                return Err("password_env names an environment variable that is not set");
            }
        }
        Ok(())
    }
}

fn is_plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
