//! Batch and async-request webhooks (`"sluice": {"webhook_url"}`): where they may go and
//! how each team's events are signed (docs/batch.md#webhooks, docs/security.md).
//!
//! - A destination goes through `sluice_schemas::outbound`: no loopback, private, link-local
//!   or mapped address, checked at submission (with a DNS lookup, for a clear 400) and again
//!   at delivery, where the client's resolver refuses such addresses at connect time.
//!   `[webhooks] allowed_hosts` opens exact `host:port` destinations (local demos, tests).
//! - Every event is signed with its team's own secret (`[webhooks.teams.<team>]`); a team
//!   without one cannot register a webhook, so no event goes out unsigned and no team can
//!   produce a signature another team's receiver accepts.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;
use sluice_schemas::outbound::{OutboundConfig, OutboundPolicy, Refused};
use sluice_schemas::webhook::{Delivered, RetryPolicy, Secret, Sender, WebhookError};

pub use crate::config::WebhooksConfig;
use crate::error::{ApiError, ConfigError};

/// Why a webhook is not registered or not sent.
#[derive(Debug, thiserror::Error)]
pub enum WebhookRefusal {
    #[error(
        "team `{0}` has no webhook signing secret; the operator sets one in [webhooks.teams.{0}]"
    )]
    NoSecret(String),
    #[error("{0}")]
    Destination(#[from] Refused),
    #[error("webhooks are unavailable on this ingress")]
    Unavailable,
}

impl From<WebhookRefusal> for ApiError {
    fn from(refusal: WebhookRefusal) -> ApiError {
        ApiError::WebhookRefused(Box::new(refusal))
    }
}

/// Why a delivery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("webhook not sent: {0}")]
    Refused(#[from] WebhookRefusal),
    #[error(transparent)]
    Send(#[from] WebhookError),
}

/// The ingress's webhook sender and the teams' secrets.
pub struct Webhooks {
    /// None if the HTTP client could not be built: every webhook is refused.
    sender: Option<Sender>,
    secrets: HashMap<String, Secret>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("teams", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The allow-list and every team's secret must be usable.
impl crate::config::Section for WebhooksConfig {
    fn check(&self, _: &crate::config::Config) -> Result<(), ConfigError> {
        Webhooks::from_config(self).map(drop)
    }
}

impl Webhooks {
    /// Checks the allow-list and every team's secret (env variables included).
    pub fn from_config(config: &WebhooksConfig) -> Result<Webhooks, ConfigError> {
        let field = |field: String, problem: &'static str| ConfigError::Field { field, problem };
        let outbound = OutboundPolicy::new(&OutboundConfig {
            allowed_hosts: config.allowed_hosts.clone(),
            https_only: config.https_only,
        })
        .map_err(|_| {
            field(
                "webhooks.allowed_hosts".into(),
                "entries must be host:port (e.g. \"127.0.0.1:9999\") or a host name",
            )
        })?;
        let mut secrets = HashMap::new();
        for (team, t) in &config.teams {
            let name = format!("webhooks.teams.{team}");
            if !sluice_schemas::topics::is_valid_team_name(team) {
                return Err(field(
                    name,
                    "team names use letters, digits, '-' and '_' (at most 64)",
                ));
            }
            let text = match (&t.secret, &t.secret_env) {
                (Some(s), None) => s.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    field(
                        name.clone(),
                        "secret_env names an environment variable that is not set",
                    )
                })?,
                _ => return Err(field(name, "needs exactly one of secret and secret_env")),
            };
            let secret = Secret::parse(&text).map_err(|_| {
                field(
                    name,
                    "secret must be `whsec_<base64>` or a non-empty string",
                )
            })?;
            secrets.insert(team.clone(), secret);
        }
        let sender = Sender::new(RetryPolicy::default(), outbound).ok();
        Ok(Webhooks { sender, secrets })
    }

    /// Refuses every webhook (the fallback if the configuration cannot be applied).
    pub fn disabled() -> Webhooks {
        Webhooks {
            sender: None,
            secrets: HashMap::new(),
        }
    }

    /// Whether `team` may register `url`, without DNS: it has a secret, and the URL is
    /// http(s) without userinfo, to an allow-listed destination or a host that is not a
    /// non-public IP literal.
    pub fn check_now(&self, team: &str, url: &str) -> Result<(), WebhookRefusal> {
        let sender = self.sender.as_ref().ok_or(WebhookRefusal::Unavailable)?;
        if !self.secrets.contains_key(team) {
            return Err(WebhookRefusal::NoSecret(team.to_string()));
        }
        sender.outbound().check(url)?;
        Ok(())
    }

    /// [`Self::check_now`], then resolves a host name, so `localhost` or a name pointing
    /// inside is refused at submission and not only at delivery.
    pub async fn check(&self, team: &str, url: &str) -> Result<(), WebhookRefusal> {
        self.check_now(team, url)?;
        if let Some(sender) = &self.sender {
            sender.outbound().check_resolved(url).await?;
        }
        Ok(())
    }

    /// Delivers one event of `team`, signed with that team's secret (`Sender::deliver`
    /// checks the destination again and its resolver at connect time).
    pub async fn deliver(
        &self,
        team: &str,
        url: &str,
        id: &str,
        kind: &str,
        data: &Value,
    ) -> Result<Delivered, DeliveryError> {
        let sender = self.sender.as_ref().ok_or(WebhookRefusal::Unavailable)?;
        let secret = self
            .secrets
            .get(team)
            .ok_or_else(|| WebhookRefusal::NoSecret(team.to_string()))?;
        Ok(sender.deliver(url, Some(secret), id, kind, data).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> WebhooksConfig {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .unwrap()
    }

    #[tokio::test]
    async fn a_team_needs_its_own_secret_and_a_public_or_allow_listed_destination() {
        let hooks = Webhooks::from_config(&config(
            "allowed_hosts = [\"127.0.0.1:9999\"]\n[teams.team-a]\nsecret = \"whsec_c2VjcmV0LWE=\"\n",
        ))
        .unwrap();
        assert!(hooks
            .check("team-a", "http://127.0.0.1:9999/hook")
            .await
            .is_ok());
        assert!(matches!(
            hooks.check("team-b", "http://127.0.0.1:9999/hook").await,
            Err(WebhookRefusal::NoSecret(_))
        ));
        for url in [
            "http://127.0.0.1:18123/?query=CREATE%20TABLE%20x",
            "http://localhost:9999/hook",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            assert!(
                matches!(
                    hooks.check("team-a", url).await,
                    Err(WebhookRefusal::Destination(_))
                ),
                "{url}"
            );
        }
        // Delivery refuses a team without a secret too (config changed since submission).
        assert!(matches!(
            hooks
                .deliver("team-b", "http://127.0.0.1:9999/", "e", "t", &Value::Null)
                .await,
            Err(DeliveryError::Refused(WebhookRefusal::NoSecret(_)))
        ));
    }

    #[test]
    fn secrets_come_from_the_config_or_the_environment_and_are_never_printed() {
        std::env::set_var("SLUICE_TEST_WEBHOOK_SECRET_B", "whsec_c2VjcmV0LWI=");
        let c = config(
            "[teams.team-a]\nsecret = \"whsec_c2VjcmV0LWE=\"\n[teams.team-b]\nsecret_env = \"SLUICE_TEST_WEBHOOK_SECRET_B\"\n",
        );
        assert!(!format!("{c:?}").contains("c2VjcmV0"));
        let hooks = Webhooks::from_config(&c).unwrap();
        assert_eq!(hooks.secrets.len(), 2);
        assert!(!format!("{hooks:?}").contains("c2VjcmV0"));
        for bad in [
            "[teams.x]\n",
            "[teams.x]\nsecret = \"\"\n",
            "[teams.x]\nsecret_env = \"SLUICE_TEST_UNSET_VAR_FOR_WEBHOOKS\"\n",
            "[teams.x]\nsecret = \"a\"\nsecret_env = \"B\"\n",
            "[teams.\"bad team\"]\nsecret = \"a\"\n",
            "allowed_hosts = [\"http://x/\"]\n",
        ] {
            assert!(Webhooks::from_config(&config(bad)).is_err(), "{bad}");
        }
    }
}
