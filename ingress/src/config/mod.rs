//! Ingress configuration: a TOML file, then `SLUICE_<SECTION>_<KEY>` environment overrides.
//!
//! Plain data, one file per group of sections; it imports only leaf types (schemas,
//! [`ConfigError`]). A room that checks its own section (patterns compile, secrets resolve)
//! implements [`Section`] beside its code, so config never names a room.

mod audit;
mod batch;
mod budget;
mod cache;
mod clickhouse;
mod console;
pub mod guard;
mod idempotency;
mod kafka;
mod keys;
mod replay;
mod requests;
mod server;
mod webhooks;

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::error::ConfigError;

pub use audit::AuditConfig;
pub use batch::BatchLimits;
pub use budget::{BudgetConfig, BudgetSettings, Period, Scope};
pub use cache::{CacheBackend, CacheConfig, TeamCache};
pub use clickhouse::{ClickHouseConfig, RetentionConfig};
pub use console::ConsoleConfig;
pub use guard::{GuardConfig, PiiAction, PiiConfig};
pub use idempotency::IdempotencyConfig;
pub use kafka::KafkaConfig;
pub use keys::{AdminConfig, KeyConfig};
pub use replay::{ReplayConfig, ShadowConfig};
pub use requests::{BillingConfig, DeadlineConfig, ModelConfig, RoutingConfig};
pub use server::{ListenerConfig, ServerConfig};
pub use webhooks::{TeamWebhooks, WebhooksConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// The ops listener: `/metrics`, `/healthz`, `/readyz` (docs/operations.md).
    #[serde(default)]
    pub ops: sluice_schemas::ops::OpsConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    #[serde(default)]
    pub deadlines: DeadlineConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    /// API keys; plaintext never appears here, only its SHA-256.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Models callers may ask for (the workers map them to deployments).
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// The admin API (`/admin/keys`, docs/keys.md); off without an admin key.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Guardrails: PII, prompt guard, moderation, templates, decorators (docs/security.md).
    #[serde(default)]
    pub guard: GuardConfig,
    /// Model prices, USD per million tokens (the workers' `[[prices]]`): budgets reserve a
    /// request's worst-case cost with them (docs/budgets.md).
    #[serde(default)]
    pub prices: Vec<sluice_schemas::pricing::Price>,
    /// Spend limits per team or key, per UTC day or month (docs/budgets.md).
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    /// How budget reservations are made and held.
    #[serde(default)]
    pub budget: BudgetSettings,
    /// What audit events keep of prompts and completions, per team (docs/analytics.md).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Batch and async-request webhooks: allowed destinations and each team's signing
    /// secret (docs/batch.md#webhooks).
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// How long uploaded batch content is kept (docs/security.md).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The batch APIs' caps and quotas (docs/batch.md).
    #[serde(default)]
    pub batch: BatchLimits,
    /// Bounds on what one request may make a provider bill (`n`, docs/budgets.md).
    #[serde(default)]
    pub billing: BillingConfig,
    /// Connection cap and read timeouts of the HTTP listener (docs/security.md).
    #[serde(default)]
    pub listener: ListenerConfig,
    /// `Idempotency-Key`s: the shared store and how long keys are kept (docs/idempotency.md).
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// The exact response cache: backend, bounds, teams that use it (docs/cache.md).
    #[serde(default)]
    pub cache: CacheConfig,
    /// `[log] format = "text" | "json"` (sluice_schemas::logging).
    #[serde(default)]
    pub log: sluice_schemas::logging::LogConfig,
    /// `[trace]`: OTLP span export, off unless `otlp_endpoint` is set (sluice_schemas::trace).
    #[serde(default)]
    pub trace: sluice_schemas::trace::TraceConfig,
    /// `[console]`: the operators' web console, off unless `listen` is set (docs/console.md).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// `[replay]`: bounds of every replay and shadow (docs/replay.md).
    #[serde(default)]
    pub replay: ReplayConfig,
    /// `[[shadows]]`: live traffic mirrored to candidate models (docs/replay.md).
    #[serde(default)]
    pub shadows: Vec<ShadowConfig>,
}

impl Config {
    /// The prices budgets reserve with and `/v1/models` shows: `[[prices]]`, then for a
    /// model of `[[models]]` without one, the built-in catalogue's price of that name (the
    /// workers bill a deployment the catalogue prices by what it sends its provider).
    pub fn resolved_prices(&self) -> Vec<sluice_schemas::pricing::Price> {
        let catalogue = sluice_schemas::pricing::Catalogue::builtin();
        let listed = self
            .models
            .iter()
            .filter(|m| !self.prices.iter().any(|p| p.model == m.id))
            .filter_map(|m| catalogue.price(&m.id, &m.id));
        self.prices.iter().cloned().chain(listed).collect()
    }

    /// Loads `path` (if given) and then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(env_overrides())
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section: plain fields here, a room's section by the room
    /// ([`Section`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retention.conversation_days == 0 {
            return Err(ConfigError::Field {
                field: "retention.conversation_days".into(),
                problem: "must be at least 1",
            });
        }
        if let Some(bad) = self
            .retention
            .conversation_teams
            .iter()
            .find(|t| !sluice_schemas::topics::is_valid_team_name(t))
        {
            return Err(ConfigError::Field {
                field: format!("retention.conversation_teams ({bad})"),
                problem: "team names use letters, digits, '-' and '_' (at most 64)",
            });
        }
        if self.retention.file_days == 0 {
            return Err(ConfigError::Field {
                field: "retention.file_days".into(),
                problem: "must be at least 1 (a batch may run for a day)",
            });
        }
        self.webhooks.check(self)?;
        self.server.check(self)?;
        for key in &self.keys {
            if key.sha256.len() != 64 || hex::decode(&key.sha256).is_err() {
                return Err(ConfigError::Field {
                    field: format!("keys[{}].sha256", key.id),
                    problem: "must be 64 hex characters (SHA-256 of the key)",
                });
            }
            if !sluice_schemas::topics::is_valid_team_name(&key.team) {
                return Err(ConfigError::Field {
                    field: format!("keys[{}].team", key.id),
                    problem: "team names use letters, digits, '-' and '_' (at most 64)",
                });
            }
        }
        for (field, digest) in [
            ("admin.key_sha256", &self.admin.key_sha256),
            ("console.key_sha256", &self.console.key_sha256),
        ] {
            if let Some(digest) = digest {
                if digest.len() != 64 || hex::decode(digest).is_err() {
                    return Err(ConfigError::Field {
                        field: field.into(),
                        problem: "must be 64 hex characters (SHA-256 of the key)",
                    });
                }
            }
        }
        if self.console.max_sessions == 0 || self.console.session_ttl_ms.is_zero() {
            return Err(ConfigError::Field {
                field: "console.max_sessions/session_ttl_ms".into(),
                problem: "must be more than 0",
            });
        }
        for team in &self.routing.team_topics {
            if !sluice_schemas::topics::is_valid_team_name(team) {
                return Err(ConfigError::Field {
                    field: "routing.team_topics".into(),
                    problem: "team names use letters, digits, '-' and '_' (at most 64)",
                });
            }
        }
        if self.routing.partitions_per_team == 0 {
            return Err(ConfigError::Field {
                field: "routing.partitions_per_team".into(),
                problem: "must be at least 1",
            });
        }
        self.models.check(self)?;
        if self.billing.max_n == 0 {
            return Err(ConfigError::Field {
                field: "billing.max_n".into(),
                problem: "must be at least 1",
            });
        }
        if self.kafka.max_message_bytes < 64 * 1024 || self.kafka.max_message_bytes > 1_000_000_000
        {
            return Err(ConfigError::Field {
                field: "kafka.max_message_bytes".into(),
                problem: "must be between 64 KiB and 1000000000 (librdkafka's maximum)",
            });
        }
        if self.server.max_header_count == 0 || self.server.max_header_bytes == 0 {
            return Err(ConfigError::Field {
                field: "server.max_header_count/max_header_bytes".into(),
                problem: "must be more than 0",
            });
        }
        self.listener.check(self)?;
        self.guard.check(self)?;
        self.budget.check(self)?;
        self.audit.check(self)?;
        self.idempotency.check(self)?;
        self.cache.check(self)?;
        self.replay.validate(self)?;
        if self.models.is_empty() {
            return Err(ConfigError::Field {
                field: "models".into(),
                problem: "at least one model must be configured",
            });
        }
        Ok(())
    }
}

/// A section that a room checks (its patterns compile, its prices are sane, ...). The room
/// implements it beside its own code, so config names the section's data, never the
/// room's logic.
pub(crate) trait Section {
    fn check(&self, config: &Config) -> Result<(), ConfigError>;
}

/// Durations in config are plain milliseconds (`*_ms` keys).
/// The sections env vars may override. Other `SLUICE_*` variables (another service's, or
/// the scripts' `SLUICE_STATE`) are not ours and must not trip `deny_unknown_fields`.
const ENV_SECTIONS: [&str; 17] = [
    "cache",
    "replay",
    "console",
    "idempotency",
    "log",
    "trace",
    "server",
    "ops",
    "listener",
    "webhooks",
    "kafka",
    "clickhouse",
    "deadlines",
    "routing",
    "admin",
    "retention",
    "batch",
];

/// `SLUICE_KAFKA_BOOTSTRAP` -> `kafka.bootstrap`.
fn env_overrides() -> Env {
    Env::prefixed("SLUICE_")
        .filter(|k| {
            k.as_str().split_once('_').is_some_and(|(section, _)| {
                ENV_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
            })
        })
        .map(|k| k.as_str().replacen('_', ".", 1).into())
}

pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn shipped_config_loads_with_listener_limits_and_a_body_that_fits_kafka() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ingress.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.listener.max_connections, 4096);
        assert_eq!(
            config.listener.header_read_timeout_ms,
            Duration::from_secs(10)
        );
        assert!(sluice_schemas::topics::fits(
            config.kafka.max_message_bytes,
            64,
            // The body and the audit event's copy of it travel in separate messages; the
            // envelope is small next to either.
            config.server.max_body_bytes + 64 * 1024
        ));
    }

    #[test]
    fn admin_key_digest_from_file_or_env() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ingress.toml");
        std::fs::write(
            &file,
            "[admin]\nkey_sha256 = \"abc\"\n[[models]]\nid = \"m\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("admin.key_sha256"), "{err}");
        std::fs::write(&file, "[[models]]\nid = \"m\"\n").unwrap();
        assert!(Config::load(Some(&file))
            .unwrap()
            .admin
            .key_sha256
            .is_none());
        let digest = crate::auth::hex_digest("sk-admin");
        std::env::set_var("SLUICE_ADMIN_KEY_SHA256", &digest);
        let config = Config::load(Some(&file));
        std::env::remove_var("SLUICE_ADMIN_KEY_SHA256");
        assert_eq!(config.unwrap().admin.key_sha256, Some(digest));
    }

    #[test]
    fn retention_and_the_private_database() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-ret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ingress.toml");
        std::fs::write(&file, "[[models]]\nid = \"m\"\n").unwrap();
        assert_eq!(Config::load(Some(&file)).unwrap().retention.file_days, 7);
        std::fs::write(
            &file,
            "[retention]\nfile_days = 0\n[[models]]\nid = \"m\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("retention.file_days"), "{err}");
        // The ingress's client is bound to the private database, the only one its user has.
        let config = ClickHouseConfig::default();
        assert_eq!(config.database, "sluice");
        assert_eq!(config.client().database(), Some("sluice_private"));
    }

    #[test]
    fn env_overrides_sections_and_ignores_other_variables() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ingress.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1\"\n[[models]]\nid = \"m\"\n",
        )
        .unwrap();
        std::env::set_var("SLUICE_SERVER_REPLY_PARTITION", "4");
        std::env::set_var("SLUICE_STATE", "/tmp/not-a-config-key");
        let config = Config::load(Some(&file)).unwrap();
        std::env::remove_var("SLUICE_SERVER_REPLY_PARTITION");
        assert_eq!(config.server.reply_partition, 4);
        assert_eq!(config.server.listen, "127.0.0.1:1");

        std::fs::write(&file, "[server]\nlisten = 1\nbogus = true\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err();
        assert!(format!("{err:?}").contains("bogus"), "{err:?}");
        std::fs::write(&file, "[[models]]\nid = \"m\"\ntokenizer = \"x\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("models[m].tokenizer"), "{err}");
    }
}
