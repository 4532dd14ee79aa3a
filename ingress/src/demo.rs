//! The demo's secrets are published (README, config/ingress.toml, scripts/run.sh), so anyone
//! could use them: an ingress refuses to start with one configured unless it is told, with
//! `--demo`, that it runs a local demo.

use sha2::{Digest, Sha256};

use crate::Config;

/// The plaintext keys the repository publishes for the local demo.
pub const DEMO_KEYS: [&str; 4] = [
    "sk-sluice-demo",
    "sk-sluice-team-b",
    "sk-sluice-admin",
    "sk-sluice-console",
];

#[derive(Debug, thiserror::Error)]
#[error(
    "`{field}` is the digest of the published demo key `{key}`, which anyone can use; \
     configure your own keys (`sluice-ingress --hash-key <key>`), or pass --demo for a local demo"
)]
pub struct DemoSecret {
    pub field: String,
    pub key: &'static str,
}

/// The first configured digest that belongs to a published demo key.
pub fn refuse_demo_secrets(config: &Config) -> Result<(), DemoSecret> {
    let configured = config
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("keys[{i}].sha256"), k.sha256.as_str()))
        .chain(
            config
                .admin
                .key_sha256
                .as_deref()
                .map(|d| ("admin.key_sha256".to_string(), d)),
        )
        .chain(
            config
                .console
                .key_sha256
                .as_deref()
                .map(|d| ("console.key_sha256".to_string(), d)),
        );
    for (field, digest) in configured {
        if let Some(key) = DEMO_KEYS
            .into_iter()
            .find(|key| hex::encode(Sha256::digest(key)).eq_ignore_ascii_case(digest.trim()))
        {
            return Err(DemoSecret { field, key });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_demo_config_is_refused_and_own_keys_pass() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/ingress.toml");
        let config = Config::load(Some(std::path::Path::new(path))).unwrap();
        let err = refuse_demo_secrets(&config).unwrap_err();
        assert_eq!(err.field, "keys[0].sha256");
        assert_eq!(err.key, "sk-sluice-demo");

        let mut own = config.clone();
        own.keys.clear();
        let err = refuse_demo_secrets(&own).unwrap_err();
        assert_eq!(err.field, "admin.key_sha256");
        own.admin.key_sha256 = Some(hex::encode(Sha256::digest("a key of my own")));
        let err = refuse_demo_secrets(&own).unwrap_err();
        assert_eq!(err.field, "console.key_sha256");
        assert_eq!(err.key, "sk-sluice-console");
        own.console.key_sha256 = Some(hex::encode(Sha256::digest("a console key of my own")));
        assert!(refuse_demo_secrets(&own).is_ok());
    }

    #[test]
    fn the_compose_config_ships_no_key_and_no_admin_key() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/ingress.compose.toml"
        );
        let config = Config::load(Some(std::path::Path::new(path))).unwrap();
        assert!(config.keys.is_empty());
        assert_eq!(config.admin.key_sha256, None);
        assert!(refuse_demo_secrets(&config).is_ok());
    }

    /// docker-compose.yml: every secret is required from the environment (no default), and
    /// every published port binds to loopback unless the operator says otherwise.
    #[test]
    fn compose_has_no_default_secret_and_publishes_on_loopback() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
        let compose = std::fs::read_to_string(path).unwrap();
        for line in compose.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if line.contains("PASSWORD") || line.contains("SHA256") {
                assert!(!line.contains(":-"), "a default secret: {line}");
            }
        }
        let ports: Vec<&str> = compose
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("- \"") && l.matches(':').count() >= 2)
            .filter(|l| !l.contains("/etc/") && !l.contains("/var/"))
            .collect();
        assert!(ports.len() >= 5, "{ports:?}");
        for port in ports {
            assert!(
                port.starts_with("- \"${SLUICE_BIND_ADDRESS:-127.0.0.1}:"),
                "published beyond loopback: {port}"
            );
        }
        assert!(compose.contains("/etc/sluice/ingress.compose.toml"));
    }
}
