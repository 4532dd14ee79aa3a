//! Batch ids and times: row versions, line request ids and their range, Anthropic's
//! timestamps.

use std::sync::atomic::{AtomicU64, Ordering};

/// Row versions for ReplacingMergeTree: microseconds, strictly increasing in this process.
pub(crate) fn next_version() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = (sluice_schemas::now_ms().max(0) as u64) * 1000;
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// The request id of line `line_no` of a batch. Deterministic: a driver that publishes a
/// line again after a crash reuses it, so results and usage collapse on it.
pub(crate) fn line_request_id(batch_id: &str, line_no: u32) -> String {
    format!("{batch_id}-{line_no}")
}

/// The request-id range `[from, to)` holding every line of a batch (`-` sorts just before
/// `.`), a primary-key range of `results`.
pub(crate) fn request_id_range(batch_id: &str) -> (String, String) {
    (format!("{batch_id}-"), format!("{batch_id}."))
}

/// Unix milliseconds as RFC 3339 with milliseconds (`2024-09-24T18:37:24.100Z`), for
/// Anthropic's timestamps.
pub(crate) fn rfc3339(ms: u64) -> String {
    sluice_schemas::rfc3339(ms.min(i64::MAX as u64) as i64, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_ranges() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_727_203_044_100), "2024-09-24T18:37:24.100Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        let (from, to) = request_id_range("batch_1");
        let id = line_request_id("batch_1", 99_999);
        assert!(from.as_str() <= id.as_str() && id.as_str() < to.as_str());
        assert!(!("batch_10-1" >= from.as_str() && "batch_10-1" < to.as_str()));
        let a = next_version();
        assert!(next_version() > a);
    }
}
