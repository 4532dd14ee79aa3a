//! Ingress configuration: a TOML file, then `SLUICE_<SECTION>_<KEY>` environment overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use sluice_schemas::Priority;

use crate::error::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
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
    pub guard: crate::guard::config::GuardConfig,
    /// Model prices, USD per million tokens (the workers' `[[prices]]`): budgets reserve a
    /// request's worst-case cost with them (docs/budgets.md).
    #[serde(default)]
    pub prices: Vec<sluice_schemas::pricing::Price>,
    /// Spend limits per team or key, per UTC day or month (docs/budgets.md).
    #[serde(default)]
    pub budgets: Vec<crate::budget::BudgetConfig>,
    /// How budget reservations are made and held.
    #[serde(default)]
    pub budget: crate::budget::BudgetSettings,
    /// What audit events keep of prompts and completions, per team (docs/analytics.md).
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Batch and async-request webhooks: allowed destinations and each team's signing
    /// secret (docs/batch.md#webhooks).
    #[serde(default)]
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// How long uploaded batch content is kept (docs/security.md).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The batch APIs' caps and quotas (docs/batch.md).
    #[serde(default)]
    pub batch: crate::batch::limits::BatchLimits,
    /// Bounds on what one request may make a provider bill (`n`, docs/budgets.md).
    #[serde(default)]
    pub billing: crate::billing::BillingConfig,
    /// Connection cap and read timeouts of the HTTP listener (docs/security.md).
    #[serde(default)]
    pub listener: crate::listener::ListenerConfig,
}

/// How long the ingress keeps what callers upload. Completions are kept by the analytics
/// sink (`[retention] completion_days` there); both go when their day has passed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days an uploaded batch input file (and its lines) is kept, at least 1.
    pub file_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { file_days: 7 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest accepted request body (413 beyond, before it is all read). Requests also
    /// have to fit `[kafka] max_message_bytes` once encoded.
    pub max_body_bytes: usize,
    /// How long a sync caller waits for its result before a 504 (the request still runs).
    #[serde(with = "millis")]
    pub sync_timeout_ms: Duration,
    /// The reply partition this replica listens on (give each replica its own).
    pub reply_partition: i32,
    /// Name of this replica in logs and audit.
    pub instance_id: String,
    /// Most request headers accepted (431 beyond). hyper refuses more than 100 before
    /// this check runs.
    pub max_header_count: usize,
    /// Largest total size of request header names and values (431 beyond). hyper refuses
    /// a request head over ~400 KiB before this check runs.
    pub max_header_bytes: usize,
    /// The ingress's address as callers see it (`https://api.example.com`), for absolute
    /// URLs it returns (Anthropic's `results_url`); none: from the `Host` header
    /// (src/public_url.rs).
    pub public_base_url: Option<String>,
    /// Take the scheme of returned URLs from `X-Forwarded-Proto` (only behind a proxy that
    /// sets it; otherwise a caller could name any scheme).
    pub trust_forwarded_proto: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            sync_timeout_ms: Duration::from_secs(120),
            reply_partition: 0,
            instance_id: "ingress-0".into(),
            max_header_count: 64,
            max_header_bytes: 16 * 1024,
            public_base_url: None,
            trust_forwarded_proto: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap: String,
    pub topic_prefix: String,
    /// How long a produce may wait for the broker's acks before the caller gets 503.
    #[serde(with = "millis")]
    pub produce_timeout_ms: Duration,
    /// Create missing topics at start-up.
    pub create_topics: bool,
    /// librdkafka settings passed through (applied before the ones correctness depends on).
    pub options: BTreeMap<String, String>,
    /// Largest message produced: the topics' `max.message.bytes` when the ingress creates
    /// them and the producer's `message.max.bytes`. A request (or batch line) whose encoded
    /// record is larger gets 413 `request_too_large` up front; so does one the broker refuses
    /// as too large (a topic created before with a smaller limit). Keep it above
    /// `[server] max_body_bytes` plus the envelope and the audit copy of the prompt
    /// (8 MiB for the default 4 MiB body); the workers' `[kafka] max_message_bytes` matches.
    pub max_message_bytes: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:19092".into(),
            topic_prefix: "sluice".into(),
            produce_timeout_ms: Duration::from_secs(5),
            create_topics: true,
            options: BTreeMap::new(),
            max_message_bytes: sluice_schemas::topics::MAX_MESSAGE_BYTES,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:18123".into(),
            database: "sluice".into(),
            user: None,
            password: None,
        }
    }
}

impl ClickHouseConfig {
    /// A client for the ingress's reads and small writes (lookups, batch files), bound to
    /// the private database: the only one the ingress's ClickHouse user may use
    /// (docs/security.md); `database` names the analyst one next to it.
    pub fn client(&self) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_database(sluice_schemas::tables::private_database(&self.database))
            // ClickHouse 18.16 (Debian) cannot validate row types; casts in the queries
            // pin the types instead.
            .with_validation(false)
            // Small requests: lz4 framing only adds a round of latency here.
            .with_compression(clickhouse::Compression::None);
        if let Some(user) = &self.user {
            client = client.with_user(user);
        }
        if let Some(password) = &self.password {
            client = client.with_password(password);
        }
        client
    }
}

impl fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Default time a request may wait before it must not reach a provider, per class.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadlineConfig {
    #[serde(with = "millis")]
    pub interactive_ms: Duration,
    #[serde(with = "millis")]
    pub standard_ms: Duration,
    #[serde(with = "millis")]
    pub batch_ms: Duration,
    /// Longest deadline a caller may ask for.
    #[serde(with = "millis")]
    pub max_ms: Duration,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        DeadlineConfig {
            interactive_ms: Duration::from_secs(120),
            standard_ms: Duration::from_secs(30 * 60),
            batch_ms: Duration::from_secs(24 * 3600),
            max_ms: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl DeadlineConfig {
    pub fn default_for(&self, priority: Priority) -> Duration {
        match priority {
            Priority::Interactive => self.interactive_ms,
            Priority::Standard => self.standard_ms,
            Priority::Batch => self.batch_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Teams whose requests go to dedicated topics (`<prefix>.requests.<class>.team.<team>`).
    pub team_topics: Vec<String>,
    /// A team's requests spread over this many consecutive partitions of a request topic
    /// (starting at a hash of the team): several workers can serve one team, while a
    /// flooding team never occupies every partition.
    pub partitions_per_team: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            team_topics: Vec::new(),
            partitions_per_team: 3,
        }
    }
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    #[serde(default = "default_owner")]
    pub owned_by: String,
    /// Tokenizer for prompt counting: "o200k_base" or "cl100k_base" (default: by model name).
    #[serde(default)]
    pub tokenizer: Option<String>,
}

fn default_owner() -> String {
    "sluice".into()
}

impl Config {
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
        if let Some(digest) = &self.admin.key_sha256 {
            if digest.len() != 64 || hex::decode(digest).is_err() {
                return Err(ConfigError::Field {
                    field: "admin.key_sha256".into(),
                    problem: "must be 64 hex characters (SHA-256 of the admin key)",
                });
            }
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
const ENV_SECTIONS: [&str; 10] = [
    "server",
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
