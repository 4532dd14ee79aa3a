//! API keys: callers present `Authorization: Bearer <key>`; we keep only SHA-256 digests.
//!
//! The store is live: `[[keys]]` from the config are seeded at start-up, and keys made
//! through the admin API arrive from the compacted keys topic (`key_sync`), on every
//! replica, in the topic's order.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use sluice_schemas::{now_ms, ApiKey};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::config::KeyConfig;
use crate::error::ApiError;

/// Prefix of every secret the admin API makes.
pub const SECRET_PREFIX: &str = "sk-sluice-";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub team: String,
}

/// Where a key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `[[keys]]` in the ingress config: changed by editing the config, not the admin API.
    Config,
    /// The admin API (the keys topic).
    Admin,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Config => "config",
            KeySource::Admin => "admin",
        }
    }
}

/// A key's current state, as the admin API shows it (no secret: the record holds only its
/// digest and hint).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub record: ApiKey,
    pub source: KeySource,
}

impl StoredKey {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.record.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// Why the key may not be used now (revoked or expired), if it may not.
    pub fn refusal(&self, now_ms: i64) -> Option<ApiError> {
        if self.record.revoked {
            Some(ApiError::KeyRevoked)
        } else if self.expired(now_ms) {
            Some(ApiError::KeyExpired)
        } else {
            None
        }
    }
}

struct Entry {
    key: StoredKey,
    digest: [u8; 32],
    /// Offset of the keys-topic record applied last (-1: from the config).
    offset: i64,
    limiter: Option<(NonZeroU32, Arc<DefaultDirectRateLimiter>)>,
}

#[derive(Default)]
struct Keys {
    /// Digest -> (digest, key id).
    by_digest: HashMap<[u8; 32], ([u8; 32], String)>,
    by_id: HashMap<String, Entry>,
}

struct Inner {
    keys: RwLock<Keys>,
    /// Offset of the next keys-topic record to apply: everything before it is applied.
    applied: watch::Sender<i64>,
}

/// Keys by digest, shared by every handler and the keys-topic reader.
///
/// Timing: the presented key is hashed first, and only its SHA-256 is looked up, so any
/// timing difference in the lookup (SipHash with a per-process random key picks the
/// bucket; the bucket's entries are compared with an early-exit `memcmp`) depends on the
/// digest, which an attacker cannot steer byte by byte towards a stored one without
/// SHA-256 preimages. The final equality is checked again in constant time
/// (`subtle::ConstantTimeEq`) so the property holds even if the map implementation
/// changes.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<Inner>,
}

impl Default for KeyStore {
    fn default() -> Self {
        KeyStore {
            inner: Arc::new(Inner {
                keys: RwLock::new(Keys::default()),
                applied: watch::channel(0).0,
            }),
        }
    }
}

fn limiter_for(rpm: Option<NonZeroU32>) -> Option<(NonZeroU32, Arc<DefaultDirectRateLimiter>)> {
    rpm.map(|n| (n, Arc::new(RateLimiter::direct(Quota::per_minute(n)))))
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    hex::decode(hex_digest).ok()?.try_into().ok()
}

impl KeyStore {
    /// The static `[[keys]]` of the config (entries with a malformed digest are skipped;
    /// `Config::validate` refuses them).
    pub fn from_config(keys: &[KeyConfig]) -> KeyStore {
        let store = KeyStore::default();
        if let Ok(mut map) = store.inner.keys.write() {
            for k in keys {
                let Some(digest) = parse_digest(&k.sha256) else {
                    continue;
                };
                let record = ApiKey {
                    key_id: k.id.clone(),
                    team: k.team.clone(),
                    label: None,
                    sha256: k.sha256.to_ascii_lowercase(),
                    hint: String::new(),
                    allowed_models: Vec::new(),
                    requests_per_minute: k
                        .requests_per_minute
                        .map(|n| n.get().min(i32::MAX as u32) as i32),
                    expires_at_ms: None,
                    revoked: false,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                };
                map.by_digest.insert(digest, (digest, k.id.clone()));
                map.by_id.insert(
                    k.id.clone(),
                    Entry {
                        key: StoredKey {
                            record,
                            source: KeySource::Config,
                        },
                        digest,
                        offset: -1,
                        limiter: limiter_for(k.requests_per_minute),
                    },
                );
            }
        }
        store
    }

    /// Applies a keys-topic record read at `offset`, unless a later record of the same key
    /// was applied already (the admin API applies its own writes at once, before the
    /// reader sees them). Returns whether it changed the store.
    ///
    /// Revocation is final: a record that does not say `revoked` (a concurrent update
    /// made from a stale read) never brings a revoked key back.
    pub fn apply(&self, mut record: ApiKey, offset: i64) -> bool {
        let Some(digest) = parse_digest(&record.sha256) else {
            tracing::warn!(key_id = %record.key_id, offset, "key record with a malformed digest skipped");
            return false;
        };
        record.sha256 = record.sha256.to_ascii_lowercase();
        let Ok(mut keys) = self.inner.keys.write() else {
            return false;
        };
        let keys = &mut *keys;
        let rpm = record
            .requests_per_minute
            .and_then(|n| u32::try_from(n).ok())
            .and_then(NonZeroU32::new);
        let mut limiter = limiter_for(rpm);
        if let Some(old) = keys.by_id.get(&record.key_id) {
            if old.offset >= offset {
                return false;
            }
            if old.key.source == KeySource::Admin && old.key.record.revoked {
                record.revoked = true;
            }
            // Same limit: keep the allowance already used up this minute.
            if old.limiter.as_ref().map(|(n, _)| *n) == rpm {
                limiter = old.limiter.clone();
            }
            if old.digest != digest
                && keys
                    .by_digest
                    .get(&old.digest)
                    .is_some_and(|(_, id)| *id == record.key_id)
            {
                keys.by_digest.remove(&old.digest);
            }
        }
        keys.by_digest
            .insert(digest, (digest, record.key_id.clone()));
        keys.by_id.insert(
            record.key_id.clone(),
            Entry {
                key: StoredKey {
                    record,
                    source: KeySource::Admin,
                },
                digest,
                offset,
                limiter,
            },
        );
        true
    }

    /// Records that every keys-topic record before `next_offset` has been applied.
    pub fn mark_applied(&self, next_offset: i64) {
        self.inner.applied.send_if_modified(|applied| {
            let advanced = next_offset > *applied;
            if advanced {
                *applied = next_offset;
            }
            advanced
        });
    }

    /// Waits until every keys-topic record before `offset` has been applied.
    pub async fn wait_applied(&self, offset: i64, limit: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|applied| *applied >= offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn get(&self, key_id: &str) -> Option<StoredKey> {
        let keys = self.inner.keys.read().ok()?;
        keys.by_id.get(key_id).map(|e| e.key.clone())
    }

    /// Every key (of one team), oldest first.
    pub fn list(&self, team: Option<&str>) -> Vec<StoredKey> {
        let Ok(keys) = self.inner.keys.read() else {
            return Vec::new();
        };
        let mut list: Vec<StoredKey> = keys
            .by_id
            .values()
            .filter(|e| team.is_none_or(|t| e.key.record.team == t))
            .map(|e| e.key.clone())
            .collect();
        list.sort_by(|a, b| {
            (a.record.created_at_ms, &a.record.key_id)
                .cmp(&(b.record.created_at_ms, &b.record.key_id))
        });
        list
    }

    /// Takes one sync request from the caller's allowance, or says how long to wait.
    pub fn check_rate(&self, caller: &Caller) -> Result<(), ApiError> {
        let limiter = self.inner.keys.read().ok().and_then(|keys| {
            keys.by_id
                .get(&caller.key_id)
                .and_then(|e| e.limiter.as_ref().map(|(_, l)| Arc::clone(l)))
        });
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after: wait.max(Duration::from_millis(1)),
            }
        })
    }

    /// Whether the caller's key may use `model` (a key without a model list may use all).
    pub fn allows_model(&self, caller: &Caller, model: &str) -> bool {
        self.inner.keys.read().is_ok_and(|keys| {
            keys.by_id.get(&caller.key_id).is_none_or(|e| {
                let allowed = &e.key.record.allowed_models;
                allowed.is_empty() || allowed.iter().any(|m| m == model)
            })
        })
    }

    /// [`KeyStore::allows_model`] as the API's 403.
    pub fn check_model(&self, caller: &Caller, model: &str) -> Result<(), ApiError> {
        if self.allows_model(caller, model) {
            Ok(())
        } else {
            Err(ApiError::ModelNotAllowed(model.to_string()))
        }
    }

    /// The key is `Authorization: Bearer <key>` (OpenAI's SDKs) or `x-api-key: <key>`
    /// (Anthropic's). A revoked or expired key is refused, saying so.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let key = presented_key(headers).ok_or(ApiError::MissingKey)?;
        let presented = digest(key);
        let keys = self.inner.keys.read().map_err(|_| ApiError::InvalidKey)?;
        let entry = match keys.by_digest.get(&presented) {
            Some((stored, id)) if bool::from(stored.ct_eq(&presented)) => keys.by_id.get(id),
            _ => None,
        }
        .ok_or(ApiError::InvalidKey)?;
        if let Some(refusal) = entry.key.refusal(now_ms()) {
            return Err(refusal);
        }
        Ok(Caller {
            key_id: entry.key.record.key_id.clone(),
            team: entry.key.record.team.clone(),
        })
    }
}

/// The key a request presents: `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The hex digest to put in config for a plaintext key.
pub fn hex_digest(key: &str) -> String {
    hex::encode(digest(key))
}

/// A new secret: `sk-sluice-` and 256 bits from the operating system's CSPRNG, in hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(bytes)))
}

/// What lists show of a secret: enough to recognise it, far too little to use it.
pub fn hint(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{SECRET_PREFIX}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, secret: &str) -> ApiKey {
        ApiKey {
            key_id: id.into(),
            team: "acme".into(),
            label: None,
            sha256: hex_digest(secret),
            hint: hint(secret),
            allowed_models: Vec::new(),
            requests_per_minute: None,
            expires_at_ms: None,
            revoked: false,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        h
    }

    fn caller(id: &str) -> Caller {
        Caller {
            key_id: id.into(),
            team: "acme".into(),
        }
    }

    #[test]
    fn per_key_rate_limits() {
        let store = KeyStore::from_config(&[KeyConfig {
            id: "k1".into(),
            team: "acme".into(),
            sha256: hex_digest("sk-test"),
            requests_per_minute: std::num::NonZeroU32::new(2),
        }]);
        assert!(store.check_rate(&caller("k1")).is_ok());
        assert!(store.check_rate(&caller("k1")).is_ok());
        match store.check_rate(&caller("k1")) {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(30))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(
            store.check_rate(&caller("k2")).is_ok(),
            "keys without a limit"
        );
    }

    #[test]
    fn bearer_keys() {
        let store = KeyStore::from_config(&[KeyConfig {
            id: "k1".into(),
            team: "acme".into(),
            sha256: hex_digest("sk-test"),
            requests_per_minute: None,
        }]);
        let mut h = HeaderMap::new();
        assert!(matches!(store.authenticate(&h), Err(ApiError::MissingKey)));
        h.insert("authorization", "Bearer sk-wrong".parse().unwrap());
        assert!(matches!(store.authenticate(&h), Err(ApiError::InvalidKey)));
        h.insert("authorization", "Bearer sk-test".parse().unwrap());
        assert_eq!(store.authenticate(&h).unwrap().team, "acme");
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(store.authenticate(&h), Err(ApiError::MissingKey)));
    }

    #[test]
    fn topic_keys_are_added_rotated_and_revoked_for_good() {
        let store = KeyStore::default();
        assert!(store.apply(record("k1", "sk-one"), 0));
        assert_eq!(store.authenticate(&bearer("sk-one")).unwrap(), caller("k1"));

        // Rotation: same id, new digest; the old secret is unknown at once.
        let mut rotated = record("k1", "sk-two");
        rotated.updated_at_ms = 2;
        assert!(store.apply(rotated.clone(), 1));
        assert!(matches!(
            store.authenticate(&bearer("sk-one")),
            Err(ApiError::InvalidKey)
        ));
        assert_eq!(store.authenticate(&bearer("sk-two")).unwrap(), caller("k1"));

        // A record already applied (the replica's own write, read back) changes nothing,
        // and neither does an older one.
        assert!(!store.apply(rotated.clone(), 1));
        assert!(!store.apply(record("k1", "sk-one"), 0));
        assert!(store.authenticate(&bearer("sk-one")).is_err());

        let mut revoked = rotated.clone();
        revoked.revoked = true;
        assert!(store.apply(revoked, 2));
        assert!(matches!(
            store.authenticate(&bearer("sk-two")),
            Err(ApiError::KeyRevoked)
        ));
        // A later update made from a stale read does not bring it back.
        let mut stale = rotated;
        stale.label = Some("renamed".into());
        assert!(store.apply(stale, 3));
        let stored = store.get("k1").unwrap();
        assert!(stored.record.revoked);
        assert_eq!(stored.record.label.as_deref(), Some("renamed"));
        assert_eq!(stored.source, KeySource::Admin);
        assert!(matches!(
            store.authenticate(&bearer("sk-two")),
            Err(ApiError::KeyRevoked)
        ));
    }

    #[test]
    fn expiry_models_and_limits_of_topic_keys() {
        let store = KeyStore::default();
        let mut k = record("k1", "sk-one");
        k.expires_at_ms = Some(now_ms() - 1);
        store.apply(k.clone(), 0);
        assert!(matches!(
            store.authenticate(&bearer("sk-one")),
            Err(ApiError::KeyExpired)
        ));
        assert_eq!(
            ApiError::KeyExpired.body().error.code.as_deref(),
            Some("invalid_api_key")
        );

        k.expires_at_ms = Some(now_ms() + 60_000);
        k.allowed_models = vec!["m1".into()];
        k.requests_per_minute = Some(1);
        store.apply(k.clone(), 1);
        let c = store.authenticate(&bearer("sk-one")).unwrap();
        assert!(store.check_model(&c, "m1").is_ok());
        let err = store.check_model(&c, "m2").unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::FORBIDDEN);
        assert_eq!(err.body().error.code.as_deref(), Some("model_not_allowed"));

        assert!(store.check_rate(&c).is_ok());
        assert!(store.check_rate(&c).is_err(), "1 a minute");
        // Another change with the same limit keeps the used allowance ...
        k.label = Some("x".into());
        store.apply(k.clone(), 2);
        assert!(store.check_rate(&c).is_err());
        // ... a new limit replaces the limiter.
        k.requests_per_minute = Some(5);
        store.apply(k.clone(), 3);
        assert!(store.check_rate(&c).is_ok());
        k.requests_per_minute = None;
        store.apply(k, 4);
        for _ in 0..10 {
            assert!(store.check_rate(&c).is_ok(), "no limit");
        }
    }

    #[test]
    fn list_filters_by_team_and_shows_config_keys() {
        let store = KeyStore::from_config(&[KeyConfig {
            id: "static".into(),
            team: "acme".into(),
            sha256: hex_digest("sk-static"),
            requests_per_minute: None,
        }]);
        let mut other = record("k2", "sk-two");
        other.team = "other".into();
        store.apply(other, 0);
        store.apply(record("k1", "sk-one"), 1);
        let all: Vec<String> = store
            .list(None)
            .into_iter()
            .map(|k| k.record.key_id)
            .collect();
        assert_eq!(all, ["static", "k1", "k2"]);
        let acme = store.list(Some("acme"));
        assert_eq!(acme.len(), 2);
        assert_eq!(acme[0].source, KeySource::Config);
        assert!(store.list(Some("nobody")).is_empty());
    }

    #[tokio::test]
    async fn waits_for_the_reader_to_catch_up() {
        let store = KeyStore::default();
        assert!(store.wait_applied(0, Duration::ZERO).await, "empty topic");
        assert!(!store.wait_applied(3, Duration::from_millis(20)).await);
        let s = store.clone();
        let waiter = tokio::spawn(async move { s.wait_applied(3, Duration::from_secs(10)).await });
        store.mark_applied(2);
        store.mark_applied(1); // never goes back
        store.mark_applied(3);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn secrets_are_random_and_hinted() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 64, "256 bits in hex");
        let h = hint(&a);
        assert!(h.ends_with(&a[a.len() - 4..]));
        assert!(h.len() < 20, "{h}");
    }
}
