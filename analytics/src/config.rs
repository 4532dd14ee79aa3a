//! Analytics configuration: a TOML file, then `SLUICE_<SECTION>_<KEY>` environment overrides
//! (`SLUICE_KAFKA_TOPIC_PREFIX` -> `kafka.topic_prefix`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sluice_schemas::config::{env_overrides, millis, ENV_PREFIX};

use crate::error::Error;

/// The sections this service reads. Environment variables of other sections (another
/// service's `SLUICE_INGRESS_*`, or `SLUICE_STATE` of the service scripts) are not ours and
/// must not trip `deny_unknown_fields`.
const SECTIONS: [&str; 8] = [
    "trace",
    "kafka",
    "clickhouse",
    "sink",
    "webhooks",
    "retention",
    "log",
    "ops",
];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    /// The ops listener: `/metrics`, `/healthz`, `/readyz` (docs/operations.md).
    #[serde(default)]
    pub ops: sluice_schemas::ops::OpsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Webhooks for budget alerts, per team or key (docs/budgets.md).
    #[serde(default)]
    pub alert_webhooks: Vec<AlertWebhook>,
    /// Where alert webhooks may go: `allowed_hosts` opens exact loopback or private
    /// destinations (`host:port`), `https_only` refuses `http://` (docs/budgets.md).
    #[serde(default)]
    pub webhooks: sluice_schemas::outbound::OutboundConfig,
    /// `[log] format = "text" | "json"` (sluice_schemas::logging).
    #[serde(default)]
    pub log: sluice_schemas::logging::LogConfig,
    /// `[trace]`: OTLP span export, off unless `otlp_endpoint` is set (sluice_schemas::trace).
    #[serde(default)]
    pub trace: sluice_schemas::trace::TraceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap: String,
    #[serde(deserialize_with = "text::string")]
    pub topic_prefix: String,
    #[serde(deserialize_with = "text::string")]
    pub group_id: String,
    /// librdkafka settings passed through to the consumer and the dead-letter producer.
    /// Applied before the settings the sink's correctness depends on, which win.
    #[serde(deserialize_with = "text::map")]
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:19092".into(),
            topic_prefix: "sluice".into(),
            group_id: "sluice-analytics".into(),
            options: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    pub url: String,
    /// Database holding Sluice's tables; created by the migrations.
    pub database: String,
    #[serde(deserialize_with = "text::option")]
    pub user: Option<String>,
    #[serde(deserialize_with = "text::option")]
    pub password: Option<String>,
    /// The user for DDL: migrations and the retention job's partition drops. Unset: `user`.
    /// Give the sink's `user` only inserts and reads (docs/security.md) and this one DDL.
    #[serde(deserialize_with = "text::option")]
    pub migrator_user: Option<String>,
    #[serde(deserialize_with = "text::option")]
    pub migrator_password: Option<String>,
    /// Compression of inserted data. `lz4` saves bandwidth to a remote server; on loopback
    /// `none` is faster (measured: 10k-row insert ~12 ms vs ~50 ms with lz4).
    pub compression: Compression,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Lz4,
    None,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:18123".into(),
            database: "sluice".into(),
            user: None,
            password: None,
            migrator_user: None,
            migrator_password: None,
            compression: Compression::default(),
        }
    }
}

impl fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("migrator_user", &self.migrator_user)
            .field(
                "migrator_password",
                &self.migrator_password.as_ref().map(|_| "<redacted>"),
            )
            .field("compression", &self.compression)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Flush when this many messages are buffered.
    pub max_batch_rows: usize,
    /// Flush at the latest this long after the first buffered message.
    #[serde(with = "millis")]
    pub flush_interval_ms: Duration,
    /// Time limit of one ClickHouse insert (then it is retried).
    #[serde(with = "millis")]
    pub insert_timeout_ms: Duration,
    /// Retries of a failed insert or dead-letter produce back off up to this.
    #[serde(with = "millis")]
    pub retry_max_backoff_ms: Duration,
    /// After the shutdown signal, how long the last flush may keep retrying. What it cannot
    /// write is not committed, so it is consumed again on the next start.
    #[serde(with = "millis")]
    pub shutdown_timeout_ms: Duration,
    /// A consumer that receives nothing for this long while the group has records to read
    /// and none of its offsets moves is replaced by a new one (sink/stall.rs); each
    /// replacement in a row doubles the wait, up to 16 times. 0: never.
    #[serde(with = "millis")]
    pub stall_timeout_ms: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            max_batch_rows: 10_000,
            flush_interval_ms: Duration::from_secs(1),
            insert_timeout_ms: Duration::from_secs(30),
            retry_max_backoff_ms: Duration::from_secs(5),
            shutdown_timeout_ms: Duration::from_secs(10),
            stall_timeout_ms: Duration::from_secs(60),
        }
    }
}

/// How long content is kept (docs/security.md): completions in the private
/// `result_bodies` (the async and batch APIs' answers) and accepted-request markers. The
/// ingress sets its own for uploaded files (`[retention] file_days`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a completion is kept after its request was accepted (whole days: tables are
    /// partitioned by the day rows expire). Applies to rows written from now on.
    pub completion_days: u32,
    /// How often the retention job drops partitions whose day has passed (ClickHouse
    /// 18.16 has no TTL; on current servers TTL deletes too and this is a backstop).
    /// 0: never (run `sluice-analytics retention` from cron instead).
    #[serde(with = "millis")]
    pub interval_ms: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            completion_days: 7,
            interval_ms: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// Reads `path` (if given), then `SLUICE_*` environment overrides, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        Config::load_with_env_prefix(path, ENV_PREFIX)
    }

    /// [`Config::load`] with another environment prefix (tests use their own).
    pub fn load_with_env_prefix(path: Option<&Path>, env_prefix: &str) -> Result<Config, Error> {
        let config: Config =
            sluice_schemas::config::load(path, env_overrides(env_prefix, &SECTIONS))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without environment overrides.
    pub fn from_toml_str(toml: &str) -> Result<Config, Error> {
        let config: Config = sluice_schemas::config::from_toml_str(toml)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if !is_valid_identifier(&self.clickhouse.database) {
            // The name is spliced into SQL text (`{db}`), so it must be a plain identifier.
            return Err(Error::ConfigField {
                field: "clickhouse.database".into(),
                problem: "must be letters, digits and '_', not starting with a digit",
            });
        }
        if self.kafka.topic_prefix.is_empty() {
            return Err(Error::ConfigField {
                field: "kafka.topic_prefix".into(),
                problem: "must not be empty",
            });
        }
        if self.sink.max_batch_rows == 0 {
            return Err(Error::ConfigField {
                field: "sink.max_batch_rows".into(),
                problem: "must be at least 1",
            });
        }
        Ok(())
    }
}

/// A ClickHouse identifier we can splice into SQL without quoting.
pub fn is_valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Text settings that may look like numbers: figment parses `SLUICE_CLICKHOUSE_PASSWORD=1234`
/// (and TOML `"linger.ms" = 5`) as a number, which is still meant as text.
mod text {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Signed(i64),
        Unsigned(u64),
        Float(f64),
        Bool(bool),
    }

    impl From<Scalar> for String {
        fn from(scalar: Scalar) -> String {
            match scalar {
                Scalar::Text(s) => s,
                Scalar::Signed(n) => n.to_string(),
                Scalar::Unsigned(n) => n.to_string(),
                Scalar::Float(n) => n.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Scalar::deserialize(d).map(String::from)
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Option::<Scalar>::deserialize(d).map(|s| s.map(String::from))
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        let map = BTreeMap::<String, Scalar>::deserialize(d)?;
        Ok(map.into_iter().map(|(k, v)| (k, v.into())).collect())
    }
}

/// `[[alert_webhooks]]`: where the alerts of one budget subject go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhook {
    /// `team` or `key`, as in the ingress's `[[budgets]]`.
    pub scope: String,
    /// The team name or key id; `*` for every subject of the scope.
    pub subject: String,
    /// Absolute http(s) URL.
    pub url: String,
    /// Environment variable holding the signing secret (`whsec_<base64>`). Required:
    /// alerts are always signed (start-up fails without it).
    #[serde(default)]
    pub secret_env: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_file() {
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config.kafka.bootstrap, "127.0.0.1:19092");
        assert_eq!(config.kafka.topic_prefix, "sluice");
        assert_eq!(config.kafka.group_id, "sluice-analytics");
        assert_eq!(config.clickhouse.database, "sluice");
        assert_eq!(config.sink.max_batch_rows, 10_000);
        assert_eq!(config.sink.flush_interval_ms, Duration::from_secs(1));
    }

    #[test]
    fn toml_sections_and_unknown_keys() {
        let config = Config::from_toml_str(
            r#"
            [kafka]
            bootstrap = "k:9092"
            group_id = 42
            options = { "fetch.wait.max.ms" = 5, "client.id" = "x" }
            [clickhouse]
            compression = "none"
            [sink]
            flush_interval_ms = 250
            "#,
        )
        .unwrap();
        assert_eq!(config.kafka.bootstrap, "k:9092");
        assert_eq!(config.kafka.options["fetch.wait.max.ms"], "5");
        assert_eq!(config.kafka.options["client.id"], "x");
        assert_eq!(config.kafka.group_id, "42");
        assert_eq!(config.sink.flush_interval_ms, Duration::from_millis(250));
        assert_eq!(config.clickhouse.compression, Compression::None);
        assert!(Config::from_toml_str("[clickhouse]\ncompression = \"zstd\"\n").is_err());

        let err = Config::from_toml_str("[sink]\nmax_batch = 3\n").unwrap_err();
        assert!(format!("{:?}", err).contains("max_batch"), "{err:?}");
        assert!(Config::from_toml_str("[clickhouse]\ndatabase = \"a;b\"\n").is_err());
        assert!(Config::from_toml_str("[sink]\nmax_batch_rows = 0\n").is_err());
    }

    #[test]
    fn env_overrides_file() {
        // A prefix of this test's own, so no other test sees these variables.
        let prefix = "SLUICE_ANALYTICS_CFG_TEST_";
        let dir = std::env::temp_dir().join(format!("sluice-analytics-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("analytics.toml");
        std::fs::write(
            &file,
            "[kafka]\nbootstrap = \"file:1\"\ntopic_prefix = \"from-file\"\n[clickhouse]\npassword = \"hunter2\"\n",
        )
        .unwrap();
        std::env::set_var(format!("{prefix}KAFKA_BOOTSTRAP"), "env:2");
        std::env::set_var(format!("{prefix}CLICKHOUSE_URL"), "http://ch:8123");
        std::env::set_var(format!("{prefix}SINK_MAX_BATCH_ROWS"), "7");
        std::env::set_var(format!("{prefix}SINK_FLUSH_INTERVAL_MS"), "20");
        // Digits only: still a string where the field is one.
        std::env::set_var(format!("{prefix}CLICKHOUSE_PASSWORD"), "12345");
        // Not one of our sections: ignored, not an unknown-field error.
        std::env::set_var(format!("{prefix}STATE"), "/tmp/x");
        std::env::set_var(format!("{prefix}INGRESS_LISTEN"), "0.0.0.0:1");

        let config = Config::load_with_env_prefix(Some(&file), prefix).unwrap();
        assert_eq!(config.kafka.bootstrap, "env:2");
        assert_eq!(config.kafka.topic_prefix, "from-file");
        assert_eq!(config.clickhouse.url, "http://ch:8123");
        assert_eq!(config.sink.max_batch_rows, 7);
        assert_eq!(config.sink.flush_interval_ms, Duration::from_millis(20));
        assert_eq!(config.clickhouse.password.as_deref(), Some("12345"));

        let shown = format!("{config:?}");
        assert!(!shown.contains("12345"), "{shown}");
        assert!(shown.contains("<redacted>"));

        std::env::set_var(format!("{prefix}KAFKA_NO_SUCH_KEY"), "1");
        assert!(Config::load_with_env_prefix(Some(&file), prefix).is_err());
        assert!(matches!(
            Config::load_with_env_prefix(Some(&dir.join("missing.toml")), prefix),
            Err(Error::ConfigMissing { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn identifiers() {
        assert!(is_valid_identifier("sluice_test_1"));
        assert!(is_valid_identifier("_x"));
        assert!(!is_valid_identifier(""));
        assert!(!is_valid_identifier("1abc"));
        assert!(!is_valid_identifier("a-b"));
        assert!(!is_valid_identifier("a.b"));
    }
}
