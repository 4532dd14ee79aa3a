//! The wait before retrying a deployment.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use sluice_schemas::retry::{doubling, BackoffBuilder};

/// The first retry's base wait; it doubles each retry up to [`BASE_CAP`].
const FIRST: Duration = Duration::from_millis(200);
/// The base stops growing after six doublings (12.8 s).
const BASE_CAP: Duration = Duration::from_millis(200 * 64);
/// No wait is longer, whatever the provider asked for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter, at least what the provider asked for. The chain
/// compares it with the request's deadline: a wait past it falls back or stops instead.
pub(super) fn backoff(retry: u32, retry_after: Option<Duration>, seed: &str) -> Duration {
    // Past six doublings the base is the cap: no need to walk further.
    let base = doubling(FIRST, BASE_CAP)
        .build()
        .nth(retry.min(6) as usize)
        .unwrap_or(BASE_CAP);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(seed.as_bytes());
    hasher.write_u32(retry);
    let jittered = base.mul_f64((hasher.finish() % 1000) as f64 / 1000.0);
    match retry_after {
        Some(asked) => asked.max(jittered),
        None => jittered,
    }
    .min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest wait `backoff` can give for `retry` (the jitter is below 1).
    fn ceiling(retry: u32) -> Duration {
        doubling(FIRST, BASE_CAP)
            .build()
            .nth(retry as usize)
            .unwrap_or(BASE_CAP)
    }

    #[test]
    fn the_base_doubles_from_200_ms_and_stops_at_six_doublings() {
        let ms: Vec<u128> = (0..9)
            .map(|r| (ceiling(r).as_secs_f64() * 1000.0).round() as u128)
            .collect();
        assert_eq!(
            ms,
            [200, 400, 800, 1600, 3200, 6400, 12_800, 12_800, 12_800]
        );
    }

    #[test]
    fn waits_are_jittered_below_the_base() {
        for retry in 0..10 {
            for seed in ["a", "b", "req_1", "req_2"] {
                assert!(backoff(retry, None, seed) < ceiling(retry));
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_60_s_the_cap() {
        let asked = Duration::from_secs(30);
        assert!(backoff(0, Some(asked), "r") >= asked);
        assert_eq!(backoff(3, Some(Duration::from_secs(600)), "r"), MAX_WAIT);
        assert!(backoff(u32::MAX, None, "r") < BASE_CAP);
    }
}
