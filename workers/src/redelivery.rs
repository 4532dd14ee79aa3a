//! A worker does not call a provider again for a request that already has a result.
//!
//! At-least-once delivery: after a worker crash or a rebalance, the new owner of a partition
//! reads again every record after the last committed offset, including requests the old
//! owner finished (result and usage published) but had not committed yet. Calling the
//! provider for those again is billed twice by the provider (the team is charged once;
//! usage is deduplicated), so before calling, a worker looks such a request up in
//! ClickHouse and skips it when its result and usage are both there.
//!
//! Cheap on the hot path: only records that may be redeliveries are looked up, i.e. those
//! below the partition's high watermark when it was assigned (a record produced after the
//! assignment cannot have been read by an earlier owner). The lookup has a timeout and fails
//! open: when ClickHouse cannot answer in time, the provider is called, as before. A result
//! the analytics sink has not written yet (it flushes about every second) is not seen either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use sluice_schemas::Request;

use crate::offsets::PartitionKey;

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
    /// How long a lookup may take before the provider is called anyway.
    #[serde(with = "crate::config::millis")]
    pub timeout_ms: Duration,
}

impl Default for RedeliveryConfig {
    fn default() -> Self {
        RedeliveryConfig {
            clickhouse_url: None,
            database: "sluice".into(),
            user: None,
            password_env: None,
            timeout_ms: Duration::from_millis(500),
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

/// Ids that go into SQL unescaped must be made of these characters only (ClickHouse 18.16
/// has no query parameters); anything else is not looked up.
fn is_safe_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// The high watermark of each assigned partition when it was assigned: offsets below it
/// may have been processed by an earlier owner.
#[derive(Debug, Clone, Default)]
pub struct Horizons(Arc<Mutex<HashMap<PartitionKey, i64>>>);

impl Horizons {
    pub fn assign(&self, key: PartitionKey, high_watermark: i64) {
        if let Ok(mut h) = self.0.lock() {
            h.insert(key, high_watermark);
        }
    }

    pub fn revoke(&self, key: &PartitionKey) {
        if let Ok(mut h) = self.0.lock() {
            h.remove(key);
        }
    }

    /// Whether the record at `offset` may have been delivered before.
    pub fn maybe_redelivered(&self, key: &PartitionKey, offset: i64) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|h| h.get(key).copied())
            .is_some_and(|horizon| offset < horizon)
    }
}

/// Looks finished requests up in ClickHouse.
pub struct Lookup {
    url: String,
    database: String,
    user: Option<String>,
    password: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
}

impl Lookup {
    /// None when `[redelivery]` has no `clickhouse_url`: nothing is looked up.
    pub fn new(config: &RedeliveryConfig, http: reqwest::Client) -> Option<Lookup> {
        let url = config.clickhouse_url.clone()?;
        Some(Lookup {
            url,
            database: config.database.clone(),
            user: config.user.clone(),
            password: config
                .password_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok()),
            timeout: config.timeout_ms,
            http,
        })
    }

    /// Whether `request` already has its result and its usage. False when unsure (a
    /// timeout, an error, an id that cannot be looked up): then the provider is called.
    pub async fn already_done(&self, request: &Request) -> bool {
        if !is_safe_id(&request.request_id) || !is_safe_id(&request.team) {
            return false;
        }
        let (db, id, team) = (&self.database, &request.request_id, &request.team);
        // `usage` is sorted by (team, request_id), `results` by request_id: two index reads.
        let sql = format!(
            "SELECT (SELECT count() FROM {db}.results WHERE request_id = '{id}') > 0 \
             AND (SELECT count() FROM {db}.usage WHERE team = '{team}' AND request_id = '{id}') > 0"
        );
        let mut call = self.http.post(&self.url).body(sql).timeout(self.timeout);
        if let Some(user) = &self.user {
            call = call.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            call = call.header("X-ClickHouse-Key", password);
        }
        let answer = async {
            let response = call.send().await?.error_for_status()?;
            response.text().await
        };
        match answer.await {
            Ok(text) => text.trim() == "1",
            Err(error) => {
                tracing::warn!(%error, "redelivery lookup failed; calling the provider");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_looked_up_and_only_below_the_horizon() {
        assert!(is_safe_id("req_0192abcdef"));
        assert!(is_safe_id("batch_abc-line-7"));
        for bad in [
            "",
            "x' OR 1=1 --",
            "a b",
            "a\\b",
            "x;DROP",
            &"a".repeat(257),
        ] {
            assert!(!is_safe_id(bad), "{bad}");
        }
        let horizons = Horizons::default();
        let key = PartitionKey {
            topic: "t".into(),
            partition: 0,
        };
        assert!(!horizons.maybe_redelivered(&key, 0), "unassigned: no check");
        horizons.assign(key.clone(), 10);
        assert!(horizons.maybe_redelivered(&key, 9));
        assert!(!horizons.maybe_redelivered(&key, 10));
        horizons.revoke(&key);
        assert!(!horizons.maybe_redelivered(&key, 9));
        assert!(RedeliveryConfig {
            database: "x;y".into(),
            ..RedeliveryConfig::default()
        }
        .validate()
        .is_err());
        assert!(RedeliveryConfig::default().validate().is_ok());
    }
}
