//! Loading a service's configuration (feature `config`), the one way all three services
//! do it: a TOML file, then `<PREFIX><SECTION>_<KEY>` environment overrides for the
//! sections the service names (`SLUICE_KAFKA_BOOTSTRAP` -> `kafka.bootstrap`), then the
//! service's own `validate`.
//!
//! Durations in config are integer milliseconds (`*_ms` keys): [`millis`].

mod error;
mod load;
pub mod millis;

pub use error::ConfigError;
pub use load::{env_overrides, from_file, from_toml_str, load, relative_to};

/// The prefix of every service's environment overrides.
pub const ENV_PREFIX: &str = "SLUICE_";

#[cfg(test)]
mod tests;
