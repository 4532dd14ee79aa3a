//! `[webhooks]`: allowed destinations and each team's signing secret.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// `[webhooks]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Exact destinations opened despite the address checks: `host:port` (`127.0.0.1:9999`)
    /// or `host` for the scheme's default port. Empty: only public addresses.
    pub allowed_hosts: Vec<String>,
    /// Refuse `http://` webhook URLs.
    pub https_only: bool,
    /// Each team's signing secret: `[webhooks.teams.<team>] secret = "whsec_..."` or
    /// `secret_env = "VAR"`. A team not listed cannot register webhooks.
    pub teams: BTreeMap<String, TeamWebhooks>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamWebhooks {
    /// `whsec_<base64>` (Standard Webhooks) or any non-empty string. Never printed.
    pub secret: Option<String>,
    /// An environment variable holding the secret (instead of `secret`).
    pub secret_env: Option<String>,
}

impl fmt::Debug for TeamWebhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeamWebhooks")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .finish()
    }
}
