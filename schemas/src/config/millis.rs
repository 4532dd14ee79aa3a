//! Durations are written as integer milliseconds (`flush_interval_ms = 1000`):
//! `#[serde(with = "sluice_schemas::config::millis")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}
