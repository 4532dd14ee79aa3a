use std::path::PathBuf;

use thiserror::Error;

/// Why a configuration was refused. The wording is the ingress's and the workers' (their
/// tests and docs quote it).
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration")]
    Invalid(#[source] Box<figment::Error>),
    #[error("invalid configuration: `{field}` {problem}")]
    Field {
        field: String,
        problem: &'static str,
    },
}

impl ConfigError {
    /// A field's value is wrong: `field` names it as the file spells it.
    pub fn field(field: impl Into<String>, problem: &'static str) -> ConfigError {
        ConfigError::Field {
            field: field.into(),
            problem,
        }
    }
}
