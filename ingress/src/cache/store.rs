//! Where cached answers live: this replica's memory (moka, bounded by bytes, each entry
//! with its own TTL) or the Redis every replica shares (`SET .. PX`, bounded by Redis's
//! `maxmemory`). A Redis that fails or is slower than `timeout_ms` is a miss: the request
//! goes to a provider as if there were no cache, and `sluice_cache_errors_total` says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sluice_schemas::{now_ms, Result as ResultRecord, Status};

use super::Plan;
use crate::config::{CacheBackend, CacheConfig};

/// A stored answer: the completed result's body as its provider gave it (before output
/// guardrails and PII restoration, which run again for every caller) and its counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) body: String,
    pub(crate) deployment: String,
    pub(crate) prompt_tokens: i32,
    pub(crate) completion_tokens: i32,
    /// The request that paid for the answer.
    pub(crate) source_request_id: String,
    pub(crate) expires_at_ms: i64,
    /// How long it was stored for (the memory backend's per-entry TTL).
    ttl_ms: u64,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Arc<Entry>),
    Miss,
    /// The store failed or was too slow: treated as a miss.
    Unavailable,
}

/// Each entry expires after its own TTL.
struct PerEntry;

impl moka::Expiry<String, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _: &String, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(Duration::from_millis(entry.ttl_ms))
    }
}

#[derive(Clone)]
enum Backend {
    Memory(moka::sync::Cache<String, Arc<Entry>>),
    /// `None`: the URL did not parse (config validation refuses that; every lookup misses).
    Redis(Option<ConnectionManager>),
}

/// The cache of this replica (cheap to clone: handles only).
#[derive(Clone)]
pub(crate) struct Cache {
    backend: Backend,
    max_entry_bytes: usize,
    timeout: Duration,
}

impl Cache {
    pub(crate) fn new(config: &CacheConfig) -> Cache {
        let backend = match config.backend {
            CacheBackend::Memory => Backend::Memory(
                moka::sync::Cache::builder()
                    .max_capacity(config.max_bytes)
                    .weigher(|key: &String, entry: &Arc<Entry>| {
                        (key.len() + entry.body.len() + 128).min(u32::MAX as usize) as u32
                    })
                    .expire_after(PerEntry)
                    .build(),
            ),
            CacheBackend::Redis => Backend::Redis(
                config
                    .redis_url
                    .as_deref()
                    .and_then(|url| connect(url, config.timeout_ms).ok()),
            ),
        };
        Cache {
            backend,
            max_entry_bytes: config.max_entry_bytes,
            timeout: config.timeout_ms,
        }
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// The answer stored under `plan`'s key, if any (never waits past the timeout).
    pub(crate) async fn get(&self, plan: &Plan) -> Lookup {
        let found = match &self.backend {
            Backend::Memory(cache) => Ok(cache.get(&plan.key)),
            Backend::Redis(conn) => self.redis_get(conn.as_ref(), &plan.key).await,
        };
        let lookup = match found {
            Ok(Some(entry)) if entry.expires_at_ms > now_ms() => Lookup::Hit(entry),
            Ok(_) => Lookup::Miss,
            Err(reason) => {
                self.failed("get", &reason);
                Lookup::Unavailable
            }
        };
        let outcome = match lookup {
            Lookup::Hit(_) => "hit",
            Lookup::Miss => "miss",
            Lookup::Unavailable => "error",
        };
        counter!("sluice_cache_lookups_total", "backend" => self.backend_name(), "outcome" => outcome)
            .increment(1);
        lookup
    }

    /// Keeps `result` under `plan`'s key if it is a completed answer small enough (Redis:
    /// in the background; a failure is only counted).
    pub(crate) fn put(&self, plan: &Plan, result: &ResultRecord) {
        if result.status != Status::Completed || result.http_status != 200 {
            return;
        }
        let outcome = if result.body.len() > self.max_entry_bytes {
            "too_large"
        } else {
            let ttl_ms = plan.ttl.as_millis() as u64;
            let entry = Arc::new(Entry {
                body: result.body.clone(),
                deployment: result.deployment.clone(),
                prompt_tokens: result.prompt_tokens,
                completion_tokens: result.completion_tokens,
                source_request_id: result.request_id.clone(),
                expires_at_ms: now_ms() + ttl_ms as i64,
                ttl_ms,
            });
            match &self.backend {
                Backend::Memory(cache) => cache.insert(plan.key.clone(), entry),
                Backend::Redis(conn) => {
                    let (cache, conn, key) = (self.clone(), conn.clone(), plan.key.clone());
                    tokio::spawn(async move {
                        if let Err(reason) = cache.redis_set(conn.as_ref(), &key, &entry).await {
                            cache.failed("set", &reason);
                        }
                    });
                }
            }
            "stored"
        };
        counter!("sluice_cache_stores_total", "backend" => self.backend_name(), "outcome" => outcome)
            .increment(1);
    }

    fn failed(&self, op: &'static str, reason: &str) {
        tracing::warn!(op, reason, "response cache unavailable: served as a miss");
        counter!("sluice_cache_errors_total", "backend" => self.backend_name(), "op" => op)
            .increment(1);
    }

    async fn redis_get(
        &self,
        conn: Option<&ConnectionManager>,
        key: &str,
    ) -> Result<Option<Arc<Entry>>, String> {
        let mut conn = conn.ok_or("no Redis configured")?.clone();
        let mut get = redis::cmd("GET");
        get.arg(redis_key(key));
        let stored: Option<String> = self.bounded(get.query_async(&mut conn)).await?;
        // An entry this build cannot read (another version's) is a miss.
        Ok(stored.and_then(|s| serde_json::from_str::<Entry>(&s).ok().map(Arc::new)))
    }

    async fn redis_set(
        &self,
        conn: Option<&ConnectionManager>,
        key: &str,
        entry: &Entry,
    ) -> Result<(), String> {
        let mut conn = conn.ok_or("no Redis configured")?.clone();
        let value = serde_json::to_string(entry).map_err(|e| e.to_string())?;
        let mut set = redis::cmd("SET");
        set.arg(redis_key(key))
            .arg(value)
            .arg("PX")
            .arg(entry.ttl_ms.max(1));
        self.bounded(set.query_async::<()>(&mut conn)).await
    }

    async fn bounded<T>(
        &self,
        query: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer in {} ms", self.timeout.as_millis())),
        }
    }
}

/// The Redis key of a cache key (`<team>:<sha256>`).
fn redis_key(key: &str) -> String {
    format!("sluice:cache:{key}")
}

fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, settings)
}

impl crate::config::Section for CacheConfig {
    fn check(&self, _: &crate::config::Config) -> Result<(), crate::error::ConfigError> {
        let field = |field: &str, problem| {
            Err(crate::error::ConfigError::Field {
                field: field.into(),
                problem,
            })
        };
        if self.backend == CacheBackend::Redis
            && self
                .redis_url
                .as_deref()
                .is_none_or(|url| redis::Client::open(url).is_err())
        {
            return field(
                "cache.redis_url",
                "the redis backend needs a redis:// or unix:// URL",
            );
        }
        if self.max_ttl_s == 0 || self.timeout_ms.is_zero() || self.max_entry_bytes == 0 {
            return field(
                "cache.max_ttl_s/timeout_ms/max_entry_bytes",
                "must be more than 0",
            );
        }
        for team in &self.teams {
            if team.ttl_s == 0 || team.ttl_s > self.max_ttl_s {
                return field(
                    &format!("cache.teams[{}].ttl_s", team.team),
                    "must be from 1 to cache.max_ttl_s",
                );
            }
        }
        Ok(())
    }
}
