//! A circuit breaker per deployment: consecutive failures open it, and requests skip the
//! deployment (on to their fallbacks) for a cool-down; then one request probes it (half
//! open), and the probe's outcome closes it or opens it again.
//!
//! Time is passed in (`now`), so the state machine is tested without waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a request may do with the deployment now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call it.
    Allowed,
    /// The cool-down is over and this request is the one probe: call it, and report.
    Probe,
    /// Open (or another request is probing): skip it.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since `since`.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    /// The deployment, for `sluice_breaker_state{deployment}` (0 closed, 1 half-open, 2 open).
    deployment: String,
    /// 0 = never opens.
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(deployment: &str, threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            deployment: deployment.to_string(),
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        match self.state.lock() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = f(&mut state);
        let level = match *state {
            State::Closed { .. } => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        };
        metrics::gauge!("sluice_breaker_state", "deployment" => self.deployment.clone()).set(level);
        out
    }

    /// Whether a request may call the deployment at `now`. `Probe` makes this request the
    /// probe: it must report its outcome.
    pub fn admit(&self, now: Instant) -> Admission {
        let cooldown = self.cooldown;
        self.with(|state| match *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now < until => Admission::Rejected,
            State::Open { .. } => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
            // A probe that never reported (its request was cancelled or its worker stopped)
            // does not hold the deployment out forever: after a cool-down, probe again.
            State::HalfOpen { since } if now.duration_since(since) >= cooldown => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
            State::HalfOpen { .. } => Admission::Rejected,
        })
    }

    /// Whether [`Breaker::admit`] would let a request through at `now` (closed, or open
    /// with its cool-down over), without taking the probe: what the routing strategies
    /// call healthy.
    pub fn is_closed_or_due(&self, now: Instant) -> bool {
        let state = match self.state.lock() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        };
        match state {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { since } => now.duration_since(since) >= self.cooldown,
        }
    }

    /// The deployment answered (any answer that is not its own fault): close.
    pub fn success(&self) {
        self.with(|state| *state = State::Closed { failures: 0 });
    }

    /// The deployment failed at `now` (throttled, erred, timed out, refused its key).
    /// Returns true if this opened the circuit.
    pub fn failure(&self, now: Instant) -> bool {
        let (threshold, cooldown) = (self.threshold, self.cooldown);
        if threshold == 0 {
            return false;
        }
        self.with(|state| match *state {
            State::Closed { failures } if failures + 1 >= threshold => {
                *state = State::Open {
                    until: now + cooldown,
                };
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            // The probe failed: another cool-down.
            State::HalfOpen { .. } => {
                *state = State::Open {
                    until: now + cooldown,
                };
                true
            }
            // A request admitted before it opened failed too: the cool-down starts anew.
            State::Open { .. } => {
                *state = State::Open {
                    until: now + cooldown,
                };
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_consecutive_failures_and_skips_until_the_cooldown_ends() {
        let t0 = Instant::now();
        let b = Breaker::new("d", 3, COOLDOWN);
        assert_eq!(b.admit(t0), Admission::Allowed);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        // A success in between resets the count: failures must be consecutive.
        b.success();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "the third consecutive failure opens it");
        assert_eq!(
            b.state(),
            State::Open {
                until: t0 + COOLDOWN
            }
        );
        assert_eq!(b.admit(t0 + Duration::from_secs(29)), Admission::Rejected);
        assert!(!b.is_closed_or_due(t0 + Duration::from_secs(29)));
        assert!(b.is_closed_or_due(t0 + COOLDOWN), "due for its probe");
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_it_on_success() {
        let t0 = Instant::now();
        let b = Breaker::new("d", 1, COOLDOWN);
        assert!(b.failure(t0));
        let after = t0 + COOLDOWN;
        assert_eq!(b.admit(after), Admission::Probe);
        assert_eq!(
            b.admit(after),
            Admission::Rejected,
            "only one probe at a time"
        );
        assert!(!b.is_closed_or_due(after), "its probe is out");
        b.success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert_eq!(b.admit(after), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_cooldown() {
        let t0 = Instant::now();
        let b = Breaker::new("d", 2, COOLDOWN);
        b.failure(t0);
        b.failure(t0);
        let probe_at = t0 + COOLDOWN + Duration::from_secs(1);
        assert_eq!(b.admit(probe_at), Admission::Probe);
        b.failure(probe_at);
        assert_eq!(
            b.state(),
            State::Open {
                until: probe_at + COOLDOWN
            }
        );
        assert_eq!(b.admit(probe_at + COOLDOWN / 2), Admission::Rejected);
        assert_eq!(b.admit(probe_at + COOLDOWN), Admission::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        let t0 = Instant::now();
        let b = Breaker::new("d", 1, COOLDOWN);
        b.failure(t0);
        assert_eq!(b.admit(t0 + COOLDOWN), Admission::Probe);
        assert_eq!(
            b.admit(t0 + COOLDOWN * 2 - Duration::from_millis(1)),
            Admission::Rejected
        );
        assert_eq!(b.admit(t0 + COOLDOWN * 2), Admission::Probe);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let t0 = Instant::now();
        let b = Breaker::new("d", 0, COOLDOWN);
        for _ in 0..100 {
            assert!(!b.failure(t0));
        }
        assert_eq!(b.admit(t0), Admission::Allowed);
    }
}
