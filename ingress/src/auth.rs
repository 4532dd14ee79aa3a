//! API keys: callers present `Authorization: Bearer <key>`; we keep only SHA-256 digests.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::KeyConfig;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub team: String,
}

/// Keys by digest.
///
/// Timing: the presented key is hashed first, and only its SHA-256 is looked up, so any
/// timing difference in the lookup (SipHash with a per-process random key picks the
/// bucket; the bucket's entries are compared with an early-exit `memcmp`) depends on the
/// digest, which an attacker cannot steer byte by byte towards a stored one without
/// SHA-256 preimages. The final equality is checked again in constant time
/// (`subtle::ConstantTimeEq`) so the property holds even if the map implementation
/// changes.
#[derive(Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], ([u8; 32], Caller)>,
    /// Per-key limits on sync requests, by key id.
    limits: HashMap<String, DefaultDirectRateLimiter>,
}

impl KeyStore {
    pub fn from_config(keys: &[KeyConfig]) -> KeyStore {
        let by_digest = keys
            .iter()
            .filter_map(|k| {
                let bytes = hex::decode(&k.sha256).ok()?;
                let digest: [u8; 32] = bytes.try_into().ok()?;
                Some((
                    digest,
                    (
                        digest,
                        Caller {
                            key_id: k.id.clone(),
                            team: k.team.clone(),
                        },
                    ),
                ))
            })
            .collect();
        let limits = keys
            .iter()
            .filter_map(|k| {
                let rpm = k.requests_per_minute?;
                Some((k.id.clone(), RateLimiter::direct(Quota::per_minute(rpm))))
            })
            .collect();
        KeyStore { by_digest, limits }
    }

    /// Takes one sync request from the caller's allowance, or says how long to wait.
    pub fn check_rate(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(limiter) = self.limits.get(&caller.key_id) else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after: wait.max(Duration::from_millis(1)),
            }
        })
    }

    /// The key is `Authorization: Bearer <key>` (OpenAI's SDKs) or `x-api-key: <key>`
    /// (Anthropic's).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let key = bearer
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::MissingKey)?;
        let presented = digest(key);
        match self.by_digest.get(&presented) {
            Some((stored, caller)) if bool::from(stored.ct_eq(&presented)) => Ok(caller.clone()),
            _ => Err(ApiError::InvalidKey),
        }
    }
}

pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The hex digest to put in config for a plaintext key.
pub fn hex_digest(key: &str) -> String {
    hex::encode(digest(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_rate_limits() {
        let store = KeyStore::from_config(&[KeyConfig {
            id: "k1".into(),
            team: "acme".into(),
            sha256: hex_digest("sk-test"),
            requests_per_minute: std::num::NonZeroU32::new(2),
        }]);
        let caller = Caller {
            key_id: "k1".into(),
            team: "acme".into(),
        };
        assert!(store.check_rate(&caller).is_ok());
        assert!(store.check_rate(&caller).is_ok());
        match store.check_rate(&caller) {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(30))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        let other = Caller {
            key_id: "k2".into(),
            team: "acme".into(),
        };
        assert!(store.check_rate(&other).is_ok(), "keys without a limit");
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
}
