//! `[cache]`: the exact response cache (docs/cache.md): where entries live, their bounds,
//! and which teams use it by default.

use std::time::Duration;

use serde::Deserialize;

use super::millis;

/// Where cached answers are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// In this replica's memory (bounded by `max_bytes`).
    #[default]
    Memory,
    /// The Redis every replica shares (`redis_url`), bounded by Redis's own `maxmemory`.
    Redis,
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub backend: CacheBackend,
    /// The `redis` backend's server (`redis://host:port[/db]`).
    pub redis_url: Option<String>,
    /// The memory backend's bound: the bytes of all answers kept (least used go first).
    pub max_bytes: u64,
    /// A larger answer is not kept.
    pub max_entry_bytes: usize,
    /// The longest `ttl_s` a team or a request may ask for.
    pub max_ttl_s: u64,
    /// Longest wait for Redis (connecting included); past it the request is a miss and is
    /// served by a provider as if there were no cache.
    #[serde(with = "millis")]
    pub timeout_ms: Duration,
    /// Teams whose requests use the cache without asking (`[[cache.teams]]`); any team's
    /// request may still opt in with `"sluice": {"cache": {"ttl_s": N}}`.
    pub teams: Vec<TeamCache>,
}

/// `[[cache.teams]]`: a team's default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamCache {
    pub team: String,
    /// How long an answer is served again.
    pub ttl_s: u64,
    /// Cache every request of the team, not only those with `temperature` 0.
    #[serde(default)]
    pub any_temperature: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: CacheBackend::Memory,
            redis_url: None,
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            max_ttl_s: 24 * 3600,
            timeout_ms: Duration::from_millis(50),
            teams: Vec::new(),
        }
    }
}
