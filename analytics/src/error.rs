use std::path::PathBuf;

use rdkafka::error::KafkaError;
use sluice_schemas::config::ConfigError;
use thiserror::Error;

/// Everything that can go wrong in the analytics service.
#[derive(Debug, Error)]
pub enum Error {
    #[error("configuration file {path} does not exist")]
    ConfigMissing { path: PathBuf },
    #[error("configuration is invalid")]
    Config(#[source] Box<figment::Error>),
    #[error("configuration field {field} {problem}")]
    ConfigField {
        field: String,
        problem: &'static str,
    },
    #[error("migration file {file} is malformed: {problem}")]
    MigrationFile {
        file: &'static str,
        problem: &'static str,
    },
    #[error("migration {version:04} ({name}) failed at statement {statement}")]
    Migration {
        version: u32,
        name: &'static str,
        /// 1-based index of the statement within the file.
        statement: usize,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse {operation} failed")]
    ClickHouse {
        operation: &'static str,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("Kafka {operation} failed")]
    Kafka {
        operation: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("the Kafka client could not be created")]
    KafkaClient(#[source] KafkaError),
    #[error(transparent)]
    Ops(#[from] sluice_schemas::ops::OpsError),
}

/// The shared loader's errors, in this service's words.
impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Error {
        match error {
            ConfigError::Missing(path) => Error::ConfigMissing { path },
            ConfigError::Invalid(source) => Error::Config(source),
            ConfigError::Field { field, problem } => Error::ConfigField { field, problem },
        }
    }
}

impl Error {
    pub(crate) fn clickhouse(
        operation: &'static str,
    ) -> impl FnOnce(clickhouse::error::Error) -> Error {
        move |source| Error::ClickHouse { operation, source }
    }

    pub(crate) fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> Error {
        move |source| Error::Kafka { operation, source }
    }
}
