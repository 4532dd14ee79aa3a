//! Idempotency keys (`Idempotency-Key`, Stripe's convention): a retry of a keyed request
//! gets the first request's id and answer instead of a second provider call
//! (docs/idempotency.md).
//!
//! Each key is claimed once, per team, in the Redis every ingress replica shares: a `SET NX`
//! of the request id and a fingerprint of what was asked (endpoint, body, the headers that
//! change the request), kept for `window_s`. The claim is *pending* until Kafka acked the
//! request, then *accepted*. A retry that finds the claim waits for (or points at) that
//! request; one whose fingerprint differs is refused. A claim that stayed pending (the
//! ingress stopped, or the produce timed out: outcome unknown) goes to a retry after
//! `takeover_after_ms`, once ClickHouse shows the request was never accepted.
//!
//! A leaf: it knows the config and the error type, nothing of routes or admission.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::HeaderMap;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_schemas::now_ms;

use crate::config::IdempotencyConfig;
use crate::error::{ApiError, ConfigError};

/// The request header (case-insensitive, as every header).
pub(crate) const HEADER: &str = "idempotency-key";
/// Set on an answer given again (`true`).
pub(crate) const REPLAYED_HEADER: &str = "x-sluice-idempotent-replayed";

/// Marks an answer given again ([`REPLAYED_HEADER`]).
pub(crate) fn replayed(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        REPLAYED_HEADER,
        axum::http::HeaderValue::from_static("true"),
    );
    response
}
/// Stripe's limit; a key is an opaque token (a UUID is 36).
const MAX_KEY_BYTES: usize = 255;

/// Compare-and-set: the claim changes only if it is still the one read. With a TTL
/// (ARGV[3], a take-over starts a new window) it is renewed, else kept.
static SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  end
  return 1
end
return 0",
    )
});
/// Compare-and-delete.
static FORGET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// One keyed request: where its claim lives, and what a retry must repeat.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    redis_key: String,
    fingerprint: String,
}

impl Scope {
    /// The caller's key, if it sent one, scoped to `team`. `parts` are what makes the
    /// request this request (the endpoint, the body, the headers that change it); a retry
    /// must send the same.
    pub(crate) fn of(
        headers: &HeaderMap,
        team: &str,
        parts: &[&[u8]],
    ) -> Result<Option<Scope>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value.as_bytes();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(ApiError::IdempotencyKeyInvalid(
                "it must be 1 to 255 characters",
            ));
        }
        if !key.iter().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::IdempotencyKeyInvalid(
                "it must be printable ASCII without spaces (a UUID, for example)",
            ));
        }
        let mut fingerprint = Sha256::new();
        for part in parts {
            // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
            fingerprint.update((part.len() as u64).to_be_bytes());
            fingerprint.update(part);
        }
        Ok(Some(Scope {
            // Hashed: the caller's bytes never become a Redis key as they are.
            redis_key: format!(
                "sluice:idempotency:{team}:{}",
                hex::encode(Sha256::digest(key))
            ),
            fingerprint: hex::encode(fingerprint.finalize()),
        }))
    }
}

/// What the store keeps per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    request_id: String,
    fingerprint: String,
    /// Kafka acked the request (else the claim is pending).
    accepted: bool,
    /// When the claim was made (or taken over).
    at_ms: i64,
}

/// A claim this request holds: it goes on to publish.
#[derive(Debug)]
pub(crate) struct Ticket {
    redis_key: String,
    /// The stored value, for compare-and-set.
    value: String,
}

/// A claim another request holds.
#[derive(Debug, Clone)]
pub(crate) struct Existing {
    pub(crate) request_id: String,
    pub(crate) accepted: bool,
    pub(crate) at_ms: i64,
    value: String,
}

#[derive(Debug)]
pub(crate) enum Claim {
    Won(Ticket),
    Taken(Existing),
}

/// The shared store; without `redis_url` every keyed request is refused.
pub(crate) struct Store {
    conn: Option<ConnectionManager>,
    window: Duration,
    timeout: Duration,
    takeover_after: Duration,
    /// How often a waiting retry looks for the first request's result.
    pub(crate) poll: Duration,
}

impl Store {
    /// Connects lazily: a Redis that is down at start-up fails keyed requests only.
    pub(crate) fn new(config: &IdempotencyConfig) -> Store {
        let conn = config.redis_url.as_deref().and_then(|url| {
            // `Config::validate` checked the URL; if it fails anyway, keys are refused.
            connect(url, config.timeout_ms)
                .inspect_err(|error| tracing::error!(%error, "idempotency store not usable"))
                .ok()
        });
        Store {
            conn,
            window: Duration::from_secs(config.window_s),
            timeout: config.timeout_ms,
            takeover_after: config.takeover_after_ms,
            poll: config.poll_ms,
        }
    }

    fn window_h(&self) -> u64 {
        self.window.as_secs().div_ceil(3600)
    }

    /// Runs one command, bounded by the timeout.
    async fn run<T: redis::FromRedisValue>(&self, command: CommandOf<'_>) -> Result<T, ApiError> {
        let Some(conn) = &self.conn else {
            return Err(ApiError::IdempotencyDisabled);
        };
        let mut conn = conn.clone();
        let query = async {
            match command {
                CommandOf::Cmd(cmd) => cmd.query_async(&mut conn).await,
                CommandOf::Script(invocation) => invocation.invoke_async(&mut conn).await,
            }
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => {
                tracing::warn!(%error, "idempotency store failed");
                crate::ops::idempotency("unavailable");
                Err(ApiError::IdempotencyUnavailable(error.to_string()))
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.timeout.as_millis(),
                    "idempotency store timed out"
                );
                crate::ops::idempotency("unavailable");
                Err(ApiError::IdempotencyUnavailable(format!(
                    "no answer in {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    /// Claims `scope` for `request_id`, or reports who holds it. A different fingerprint is
    /// refused: a key names one request.
    pub(crate) async fn claim(&self, scope: &Scope, request_id: &str) -> Result<Claim, ApiError> {
        let entry = Entry {
            request_id: request_id.to_string(),
            fingerprint: scope.fingerprint.clone(),
            accepted: false,
            at_ms: now_ms(),
        };
        let value = serde_json::to_string(&entry).unwrap_or_default();
        // The claim may expire between the SET and the GET: then claim again.
        for _ in 0..3 {
            let mut set = redis::cmd("SET");
            set.arg(&scope.redis_key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(self.window.as_millis() as u64);
            let won: Option<String> = self.run(CommandOf::Cmd(&set)).await?;
            if won.is_some() {
                return Ok(Claim::Won(Ticket {
                    redis_key: scope.redis_key.clone(),
                    value,
                }));
            }
            let mut get = redis::cmd("GET");
            get.arg(&scope.redis_key);
            let Some(stored) = self.run::<Option<String>>(CommandOf::Cmd(&get)).await? else {
                continue;
            };
            let Ok(held) = serde_json::from_str::<Entry>(&stored) else {
                // Not ours to read (an operator's key in the same namespace): refuse safely.
                return Err(ApiError::IdempotencyUnavailable(
                    "an unreadable entry holds this key".into(),
                ));
            };
            if held.fingerprint != scope.fingerprint {
                crate::ops::idempotency("mismatch");
                return Err(ApiError::IdempotencyKeyReused {
                    window_h: self.window_h(),
                });
            }
            return Ok(Claim::Taken(Existing {
                request_id: held.request_id,
                accepted: held.accepted,
                at_ms: held.at_ms,
                value: stored,
            }));
        }
        Err(ApiError::IdempotencyUnavailable(
            "the key's entry kept changing".into(),
        ))
    }

    /// Kafka acked the ticket's request: retries now wait for its result. Best effort: a
    /// claim left pending is only taken over once ClickHouse shows no trace of the request.
    pub(crate) async fn accepted(&self, ticket: &Ticket) {
        let Ok(mut entry) = serde_json::from_str::<Entry>(&ticket.value) else {
            return;
        };
        entry.accepted = true;
        let value = serde_json::to_string(&entry).unwrap_or_default();
        let mut swap = SWAP.key(&ticket.redis_key);
        swap.arg(&ticket.value).arg(&value);
        if let Err(error) = self.run::<i64>(CommandOf::Script(&swap)).await {
            tracing::warn!(%error, "idempotency claim not marked accepted");
        }
    }

    /// The ticket's request was refused before it reached Kafka (budget, size, a closed
    /// route): the key is free again, as if never used.
    pub(crate) async fn release(&self, ticket: &Ticket) {
        let mut forget = FORGET.key(&ticket.redis_key);
        forget.arg(&ticket.value);
        if let Err(error) = self.run::<i64>(CommandOf::Script(&forget)).await {
            tracing::warn!(%error, "idempotency claim not released");
        }
    }

    /// Whether a pending claim is old enough to be given to a retry (if ClickHouse agrees
    /// its request never arrived).
    pub(crate) fn may_take_over(&self, existing: &Existing) -> bool {
        !existing.accepted
            && now_ms().saturating_sub(existing.at_ms) >= self.takeover_after.as_millis() as i64
    }

    /// Replaces a stale claim with one for `request_id`; `None` if another retry changed it
    /// first.
    pub(crate) async fn take_over(
        &self,
        scope: &Scope,
        stale: &Existing,
        request_id: &str,
    ) -> Result<Option<Ticket>, ApiError> {
        let entry = Entry {
            request_id: request_id.to_string(),
            fingerprint: scope.fingerprint.clone(),
            accepted: false,
            at_ms: now_ms(),
        };
        let value = serde_json::to_string(&entry).unwrap_or_default();
        let window = self.window.as_millis() as u64;
        let mut swap = SWAP.key(&scope.redis_key);
        swap.arg(&stale.value).arg(&value).arg(window);
        let swapped: i64 = self.run(CommandOf::Script(&swap)).await?;
        if swapped == 1 {
            crate::ops::idempotency("taken_over");
            tracing::warn!(
                stale = %stale.request_id,
                request_id,
                "idempotency key taken over: its first request never reached the queue"
            );
        }
        Ok((swapped == 1).then(|| Ticket {
            redis_key: scope.redis_key.clone(),
            value,
        }))
    }

    /// Writes a raw entry (tests: a claim left behind by an ingress that stopped).
    #[cfg(test)]
    async fn put(&self, scope: &Scope, entry: &Entry) -> Result<(), ApiError> {
        let mut set = redis::cmd("SET");
        set.arg(&scope.redis_key)
            .arg(serde_json::to_string(entry).unwrap_or_default())
            .arg("PX")
            .arg(self.window.as_millis() as u64);
        self.run::<()>(CommandOf::Cmd(&set)).await
    }
}

fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client, settings)
}

impl crate::config::Section for IdempotencyConfig {
    fn check(&self, config: &crate::config::Config) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            if redis::Client::open(url.as_str()).is_err() {
                return Err(ConfigError::Field {
                    field: "idempotency.redis_url".into(),
                    problem: "must be a redis:// or unix:// URL (this build has no TLS client for rediss://)",
                });
            }
        }
        if self.window_s == 0 || self.timeout_ms.is_zero() || self.poll_ms.is_zero() {
            return Err(ConfigError::Field {
                field: "idempotency.window_s/timeout_ms/poll_ms".into(),
                problem: "must be more than 0",
            });
        }
        if self.takeover_after_ms < config.kafka.produce_timeout_ms + Duration::from_secs(10) {
            return Err(ConfigError::Field {
                field: "idempotency.takeover_after_ms".into(),
                problem: "must be at least kafka.produce_timeout_ms plus 10 s (the sink's lag): a claim is taken over only once its request can no longer arrive",
            });
        }
        Ok(())
    }
}

enum CommandOf<'a> {
    Cmd(&'a redis::Cmd),
    Script(&'a redis::ScriptInvocation<'a>),
}

#[cfg(test)]
mod tests;
