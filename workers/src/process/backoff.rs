//! The wait before retrying a deployment.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff with full jitter, at least what the provider asked for.
pub(super) fn backoff(retry: u32, retry_after: Option<Duration>, seed: &str) -> Duration {
    let base = Duration::from_millis(200) * 2u32.saturating_pow(retry.min(6));
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(seed.as_bytes());
    hasher.write_u32(retry);
    let jittered = base.mul_f64((hasher.finish() % 1000) as f64 / 1000.0);
    match retry_after {
        Some(asked) => asked.max(jittered),
        None => jittered,
    }
    .min(Duration::from_secs(60))
}
