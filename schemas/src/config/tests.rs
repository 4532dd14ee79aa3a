use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Demo {
    kafka: Kafka,
    sink: Sink,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Kafka {
    bootstrap: String,
    topic_prefix: String,
    options: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Sink {
    #[serde(with = "millis")]
    flush_interval_ms: Duration,
}

const SECTIONS: &[&str] = &["kafka", "sink"];

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sluice-schemas-cfg-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("service.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn file_then_env_for_the_named_sections_only() {
    // A prefix of this test's own, so no other test sees these variables.
    let prefix = "SLUICE_SCHEMAS_CFG_TEST_";
    let file = temp_file(
        "env",
        "[kafka]\nbootstrap = \"file:1\"\ntopic_prefix = \"from-file\"\n[sink]\nflush_interval_ms = 250\n",
    );
    std::env::set_var(format!("{prefix}KAFKA_BOOTSTRAP"), "env:2");
    std::env::set_var(format!("{prefix}SINK_FLUSH_INTERVAL_MS"), "20");
    // Not our sections, or no section at all: ignored, not unknown fields.
    std::env::set_var(format!("{prefix}STATE"), "/tmp/x");
    std::env::set_var(format!("{prefix}INGRESS_LISTEN"), "0.0.0.0:1");

    let demo: Demo = load(Some(&file), env_overrides(prefix, SECTIONS)).unwrap();
    assert_eq!(demo.kafka.bootstrap, "env:2");
    assert_eq!(demo.kafka.topic_prefix, "from-file");
    assert_eq!(demo.sink.flush_interval_ms, Duration::from_millis(20));

    // A key the section does not have is refused, naming it.
    std::env::set_var(format!("{prefix}KAFKA_NO_SUCH_KEY"), "1");
    let err = load::<Demo>(Some(&file), env_overrides(prefix, SECTIONS)).unwrap_err();
    assert!(format!("{err:?}").contains("no_such_key"), "{err:?}");
    assert_eq!(err.to_string(), "invalid configuration");
    std::env::remove_var(format!("{prefix}KAFKA_NO_SUCH_KEY"));
    std::fs::remove_dir_all(file.parent().unwrap()).ok();
}

#[test]
fn a_missing_file_or_a_directory_is_named() {
    let env = || env_overrides("SLUICE_SCHEMAS_CFG_NONE_", SECTIONS);
    let missing = Path::new("/nonexistent/sluice.toml");
    let err = load::<Demo>(Some(missing), env()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Missing(p) if p == missing),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "config file /nonexistent/sluice.toml does not exist"
    );
    let dir = std::env::temp_dir();
    assert!(matches!(
        load::<Demo>(Some(&dir), env()),
        Err(ConfigError::Missing(_))
    ));
    // No file: defaults.
    let demo: Demo = load(None, env()).unwrap();
    assert_eq!(demo.kafka.bootstrap, "");
}

#[test]
fn text_unknown_keys_and_field_errors() {
    let demo: Demo = from_toml_str("[kafka]\noptions = { \"client.id\" = \"x\" }\n").unwrap();
    assert_eq!(demo.kafka.options["client.id"], "x");
    let err = from_toml_str::<Demo>("[sink]\nflush = 1\n").unwrap_err();
    assert!(format!("{err:?}").contains("flush"), "{err:?}");
    assert!(from_toml_str::<Demo>("[sink]\nflush_interval_ms = -1\n").is_err());
    assert_eq!(
        ConfigError::field("sink.max_batch_rows", "must be at least 1").to_string(),
        "invalid configuration: `sink.max_batch_rows` must be at least 1"
    );
}

#[test]
fn named_files_are_relative_to_the_config() {
    let config = Path::new("/etc/sluice/worker.toml");
    assert_eq!(
        relative_to(Some(config), Path::new("prices.toml")),
        Path::new("/etc/sluice/prices.toml")
    );
    assert_eq!(
        relative_to(Some(config), Path::new("/srv/prices.toml")),
        Path::new("/srv/prices.toml")
    );
    assert_eq!(
        relative_to(None, Path::new("prices.toml")),
        Path::new("prices.toml")
    );
    assert_eq!(
        relative_to(Some(Path::new("worker.toml")), Path::new("prices.toml")),
        Path::new("prices.toml")
    );
}
