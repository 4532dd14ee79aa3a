use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;

use super::ConfigError;

/// `<prefix><SECTION>_<KEY>` -> `section.key`, for `sections` only: other variables with
/// the prefix (another service's, or the scripts' `SLUICE_STATE`) are not this service's
/// and must not trip `deny_unknown_fields`.
pub fn env_overrides(prefix: &str, sections: &'static [&'static str]) -> Env {
    Env::prefixed(prefix)
        .filter(move |key| {
            key.as_str().split_once('_').is_some_and(|(section, _)| {
                sections.iter().any(|s| s.eq_ignore_ascii_case(section))
            })
        })
        .map(|key| key.as_str().replacen('_', ".", 1).into())
}

/// Reads `path` (when given; it must be a file), then `env` over it, into `T`. Validation
/// is the caller's.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, env: Env) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        figment = figment.merge(toml_file(path)?);
    }
    extract(figment.merge(env))
}

/// Reads one TOML file into `T`, without environment overrides (a file a config names).
pub fn from_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    extract(Figment::from(toml_file(path)?))
}

/// figment reads a missing file as empty: it must be there.
fn toml_file(path: &Path) -> Result<figment::providers::Data<Toml>, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::Missing(path.to_path_buf()));
    }
    Ok(Toml::file(path))
}

/// Parses TOML text, without environment overrides.
pub fn from_toml_str<T: DeserializeOwned>(toml: &str) -> Result<T, ConfigError> {
    extract(Figment::from(Toml::string(toml)))
}

fn extract<T: DeserializeOwned>(figment: Figment) -> Result<T, ConfigError> {
    figment
        .extract()
        .map_err(|e| ConfigError::Invalid(Box::new(e)))
}

/// A file a config names (`[pricing] file`), relative to the config file's directory;
/// without a config file (or for an absolute name), as written.
pub fn relative_to(config: Option<&Path>, file: &Path) -> PathBuf {
    match config.and_then(Path::parent) {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    }
}
