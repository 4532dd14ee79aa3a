//! What the latency and least-busy strategies know of a deployment: a peak-EWMA of its
//! latency (whole answers for sync calls, time to the first event for streams) and its calls
//! in flight from this worker.
//!
//! Peak-EWMA (Finagle's, as linkerd and Helicone use it): a sample above the average replaces
//! it at once, so a deployment that slows down loses traffic on its next answer; samples below
//! pull the average down with a weight that grows with the time since the last one. Read, the
//! average decays toward 0 with the time since its last sample (`decay`), so a deployment
//! passed over for being slow is tried again after a while and its recovery is seen.
//!
//! Time is passed in (`now`), so the arithmetic is tested without waiting.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A failed call (a deployment fault) counts as a sample of at least this much: a
/// deployment answering 500s at once must not look fast.
pub const FAILURE_SAMPLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default)]
struct Ewma {
    /// Milliseconds, and when the last sample came; `None`: never measured.
    last: Option<(f64, Instant)>,
}

impl Ewma {
    fn observe(&mut self, sample_ms: f64, now: Instant, decay: Duration) {
        self.last = Some(match self.last {
            Some((value, at)) if sample_ms < value => {
                let w = weight(now.saturating_duration_since(at), decay);
                (value * w + sample_ms * (1.0 - w), now)
            }
            _ => (sample_ms, now),
        });
    }

    fn read(&self, now: Instant, decay: Duration) -> Option<f64> {
        self.last
            .map(|(value, at)| value * weight(now.saturating_duration_since(at), decay))
    }
}

/// exp(-elapsed / decay): 1 at once, 0.37 after one `decay`.
fn weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp()
}

/// One deployment's latency averages and calls in flight.
#[derive(Debug)]
pub struct Stats {
    /// For `sluice_deployment_latency_seconds{deployment,kind}`; empty: not exported.
    deployment: String,
    decay: Duration,
    latency: Mutex<(Ewma, Ewma)>,
    in_flight: AtomicU32,
}

/// Which average a sample or a read is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole sync answer.
    Answer,
    /// The time to a stream's first event.
    FirstToken,
}

impl Stats {
    pub fn new(decay: Duration) -> Stats {
        Stats {
            deployment: String::new(),
            decay,
            latency: Mutex::new((Ewma::default(), Ewma::default())),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Names the deployment in the latency gauge.
    pub fn for_deployment(mut self, deployment: &str) -> Stats {
        self.deployment = deployment.to_string();
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut (Ewma, Ewma)) -> T) -> T {
        match self.latency.lock() {
            Ok(mut l) => f(&mut l),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn observe(&self, kind: Kind, sample: Duration, now: Instant) {
        let ms = sample.as_secs_f64() * 1000.0;
        let decay = self.decay;
        let average = self.with(|(answer, first)| {
            let ewma = match kind {
                Kind::Answer => answer,
                Kind::FirstToken => first,
            };
            ewma.observe(ms, now, decay);
            ewma.read(now, decay)
        });
        if let (false, Some(ms)) = (self.deployment.is_empty(), average) {
            let kind = match kind {
                Kind::Answer => "answer",
                Kind::FirstToken => "first_token",
            };
            metrics::gauge!("sluice_deployment_latency_seconds", "deployment" => self.deployment.clone(), "kind" => kind)
                .set(ms / 1000.0);
        }
    }

    /// The decayed average in milliseconds; `None` if never measured. A stream with no
    /// first-token sample yet reads the answer average (an upper bound of it), and the
    /// other way round.
    pub fn latency_ms(&self, kind: Kind, now: Instant) -> Option<f64> {
        let decay = self.decay;
        self.with(|(answer, first)| match kind {
            Kind::Answer => answer.read(now, decay).or_else(|| first.read(now, decay)),
            Kind::FirstToken => first.read(now, decay).or_else(|| answer.read(now, decay)),
        })
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call in flight until the guard is dropped.
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

/// A call in flight ([`Stats::begin`]).
pub struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slower_sample_takes_over_at_once_and_faster_ones_pull_down_with_time() {
        let stats = Stats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(stats.latency_ms(Kind::Answer, t0), None);
        stats.observe(Kind::Answer, 20 * MS, t0);
        assert_eq!(stats.latency_ms(Kind::Answer, t0), Some(20.0));
        // Peak: one slow answer is the average at once.
        stats.observe(Kind::Answer, 500 * MS, t0);
        assert_eq!(stats.latency_ms(Kind::Answer, t0), Some(500.0));
        // A fast answer right after barely moves it; one a decay later moves it most of the way.
        stats.observe(Kind::Answer, 20 * MS, t0 + MS);
        let soon = stats.latency_ms(Kind::Answer, t0 + MS).unwrap();
        assert!(soon > 499.0 && soon < 500.0, "{soon}");
        let later = t0 + Duration::from_secs(20);
        stats.observe(Kind::Answer, 20 * MS, later);
        let settled = stats.latency_ms(Kind::Answer, later).unwrap();
        assert!(settled > 20.0 && settled < 90.0, "{settled}");
    }

    #[test]
    fn an_idle_average_decays_so_a_passed_over_deployment_is_tried_again() {
        let stats = Stats::new(Duration::from_secs(1));
        let t0 = Instant::now();
        stats.observe(Kind::FirstToken, 400 * MS, t0);
        let read = |s: u64| {
            stats
                .latency_ms(Kind::FirstToken, t0 + Duration::from_secs(s))
                .unwrap()
        };
        assert!((read(1) - 400.0 / std::f64::consts::E).abs() < 0.01);
        assert!(read(4) < 10.0, "{}", read(4));
        // Streams and answers have their own averages, each standing in for the other.
        assert_eq!(stats.latency_ms(Kind::Answer, t0), Some(400.0));
        stats.observe(Kind::Answer, 30 * MS, t0);
        assert_eq!(stats.latency_ms(Kind::Answer, t0), Some(30.0));
        assert_eq!(stats.latency_ms(Kind::FirstToken, t0), Some(400.0));
    }

    #[test]
    fn calls_in_flight_are_counted_while_their_guard_lives() {
        let stats = Stats::new(Duration::from_secs(1));
        let a = stats.begin();
        let b = stats.begin();
        assert_eq!(stats.in_flight(), 2);
        drop(a);
        assert_eq!(stats.in_flight(), 1);
        drop(b);
        assert_eq!(stats.in_flight(), 0);
    }
}
