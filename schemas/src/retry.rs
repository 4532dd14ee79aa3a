//! The one retry policy of every Sluice loop that retries, on [`backon`]. A loop picks how
//! long to wait ([`doubling`] up to a cap, [`steady`], or [`bounded`] tries) and says when to
//! stop (backon's `when`, a deadline it checks); backon runs the attempts and the waits.
//! [`until_ok`] is the consumer loops' case: pause after an error, never give up.
//!
//! A loop that must do more between tries than `Retry` allows (change what it sends, stop
//! only while it waits) takes its waits from the same builders with `build()`.

use std::future::Future;
use std::time::Duration;

pub use backon::{
    Backoff, BackoffBuilder, ConstantBuilder, ExponentialBuilder, Retryable, RetryableWithContext,
};

/// `first`, then twice the previous wait up to `cap`, for as long as the caller retries.
pub fn doubling(first: Duration, cap: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_factor(2.0)
        .with_max_delay(cap)
        .without_max_times()
}

/// The same `pause` after every failure, for as long as the caller retries.
pub fn steady(pause: Duration) -> ConstantBuilder {
    ConstantBuilder::new().with_delay(pause).without_max_times()
}

/// `pause` between tries, `retries` times at most (`retries + 1` attempts in all).
pub fn bounded(pause: Duration, retries: usize) -> ConstantBuilder {
    ConstantBuilder::new()
        .with_delay(pause)
        .with_max_times(retries)
}

/// Runs `attempt` until it succeeds, pausing `pause` after each error, which `on_error`
/// reports first. A consumer's loop: it stops by being dropped (shutdown in a `select!`).
pub async fn until_ok<T, E, F, Fut>(
    mut attempt: F,
    pause: Duration,
    mut on_error: impl FnMut(&E),
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        // `steady` never runs out, so this returns on the first success; the loop only
        // spells that out for the type checker.
        if let Ok(value) = (&mut attempt)
            .retry(steady(pause))
            .notify(|error, _| on_error(error))
            .await
        {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    fn millis(waits: impl Iterator<Item = Duration>) -> Vec<u128> {
        // backon multiplies in f32: compare whole milliseconds.
        waits
            .map(|d| (d.as_secs_f64() * 1000.0).round() as u128)
            .collect()
    }

    #[test]
    fn doubling_grows_to_its_cap_and_never_runs_out() {
        let waits = doubling(Duration::from_millis(200), Duration::from_secs(10)).build();
        assert_eq!(
            millis(waits.take(9)),
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        let waits = doubling(Duration::from_millis(100), Duration::from_secs(2)).build();
        assert_eq!(waits.take(10_000).count(), 10_000);
    }

    #[test]
    fn steady_repeats_and_bounded_stops() {
        let waits = steady(Duration::from_millis(100)).build();
        assert!(millis(waits.take(1000)).iter().all(|&ms| ms == 100));
        let waits = bounded(Duration::from_millis(200), 50).build();
        let waits = millis(waits);
        assert_eq!(waits.len(), 50);
        assert!(waits.iter().all(|&ms| ms == 200));
    }

    #[tokio::test]
    async fn until_ok_retries_every_error_and_returns_the_value() {
        let calls = AtomicUsize::new(0);
        let mut reported = 0;
        let value = until_ok(
            || async {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    n if n < 5 => Err(n),
                    n => Ok(n),
                }
            },
            Duration::from_millis(1),
            |_| reported += 1,
        )
        .await;
        assert_eq!(value, 5);
        assert_eq!(reported, 5);
        assert_eq!(calls.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn bounded_gives_up_after_its_retries() {
        let calls = AtomicUsize::new(0);
        let waited = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&waited);
        let result: Result<(), usize> = (|| async { Err(calls.fetch_add(1, Ordering::Relaxed)) })
            .retry(bounded(Duration::from_millis(200), 50))
            // Records the waits instead of sleeping them.
            .sleep(move |wait| {
                log.lock().unwrap().push(wait);
                async {}
            })
            .await;
        assert_eq!(result, Err(50));
        assert_eq!(calls.load(Ordering::Relaxed), 51);
        let waited = waited.lock().unwrap();
        assert_eq!(waited.len(), 50);
        assert!(waited.iter().all(|w| *w == Duration::from_millis(200)));
    }
}
