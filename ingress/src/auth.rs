//! API keys: callers present `Authorization: Bearer <key>`; we keep only SHA-256 digests.

use std::collections::HashMap;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::KeyConfig;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub team: String,
}

/// Keys by digest. Looking up a digest does not leak the key through timing: an attacker
/// controls the key, not its digest.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], Caller>,
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
                    Caller {
                        key_id: k.id.clone(),
                        team: k.team.clone(),
                    },
                ))
            })
            .collect();
        KeyStore { by_digest }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::MissingKey)?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::MissingKey)?;
        self.by_digest
            .get(&digest(key))
            .cloned()
            .ok_or(ApiError::InvalidKey)
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
    fn bearer_keys() {
        let store = KeyStore::from_config(&[KeyConfig {
            id: "k1".into(),
            team: "acme".into(),
            sha256: hex_digest("sk-test"),
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
