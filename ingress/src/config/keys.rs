//! `[[keys]]` and `[admin]`: API keys and the admin key, as SHA-256 digests only.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Public identifier of the key (appears in usage and audit).
    pub id: String,
    pub team: String,
    /// Hex SHA-256 of the key's plaintext.
    pub sha256: String,
    /// Sync requests (chat completions) this key may make per minute; async submissions are
    /// not limited here, they wait in Kafka.
    #[serde(default)]
    pub requests_per_minute: Option<std::num::NonZeroU32>,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("id", &self.id)
            .field("team", &self.team)
            .finish_non_exhaustive()
    }
}

/// The admin API's credentials: the SHA-256 of the admin key, never the key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Hex SHA-256 of the admin key (`sluice-ingress --hash-key <key>`); none: the admin
    /// API answers 403.
    pub key_sha256: Option<String>,
}
