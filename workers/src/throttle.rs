//! Token-aware throttling with governor: per deployment, requests and tokens per minute as
//! the provider's quotas say, so a worker waits for capacity instead of collecting 429s; per
//! team, a token quota per worker. Requests are charged their estimate up front and settled
//! with the real usage afterwards. A 429 that still happens makes the limiter back off.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// Limits of one deployment (the provider's quota for the key behind it).
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_minute: Option<NonZeroU32>,
    pub tokens_per_minute: Option<NonZeroU32>,
}

/// Penalty factors are kept in thousandths.
const UNIT: u64 = 1000;
const MAX_PENALTY: u64 = 4 * UNIT;

/// The tokens-per-minute limiter: each take reports the burst left (a state snapshot).
type TokenLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

pub struct DeploymentThrottle {
    /// For `sluice_throttle_tokens_available{deployment}`; empty: not exported.
    deployment: String,
    rpm: Option<TokenLimiter>,
    tpm: Option<Arc<TokenLimiter>>,
    /// What each limiter had left after its last take: the routing strategies' headroom.
    rpm_level: Option<Level>,
    tpm_level: Option<Level>,
    tpm_burst: u32,
    /// Tokens charged too much by earlier estimates, deducted from the next charges.
    credit: AtomicU64,
    /// Charge multiplier after 429s, decaying back to 1 on successes.
    penalty: AtomicU64,
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for DeploymentThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentThrottle")
            .field("rpm", &self.rpm.is_some())
            .field("tpm_burst", &self.tpm_burst)
            .field("penalty", &self.penalty())
            .finish()
    }
}

impl DeploymentThrottle {
    pub fn new(limits: Limits) -> DeploymentThrottle {
        DeploymentThrottle {
            deployment: String::new(),
            rpm: limits.requests_per_minute.map(|n| {
                RateLimiter::direct(Quota::per_minute(n))
                    .with_middleware::<StateInformationMiddleware>()
            }),
            rpm_level: limits.requests_per_minute.map(Level::per_minute),
            tpm_level: limits.tokens_per_minute.map(Level::per_minute),
            tpm: limits.tokens_per_minute.map(|n| {
                Arc::new(
                    RateLimiter::direct(Quota::per_minute(n))
                        .with_middleware::<StateInformationMiddleware>(),
                )
            }),
            tpm_burst: limits.tokens_per_minute.map_or(u32::MAX, NonZeroU32::get),
            credit: AtomicU64::new(0),
            penalty: AtomicU64::new(UNIT),
            paused_until: Mutex::new(None),
        }
    }

    /// Names the deployment in the throttle's metrics.
    pub fn for_deployment(mut self, deployment: &str) -> DeploymentThrottle {
        self.deployment = deployment.to_string();
        self
    }

    /// The tokens left in the minute's burst after a take.
    fn report(&self, snapshot: &governor::middleware::StateSnapshot) {
        if let Some(level) = &self.tpm_level {
            level.took(snapshot.remaining_burst_capacity());
        }
        if !self.deployment.is_empty() {
            metrics::gauge!("sluice_throttle_tokens_available", "deployment" => self.deployment.clone())
                .set(f64::from(snapshot.remaining_burst_capacity()));
        }
    }

    /// The tokens a request of `estimate` tokens is charged now.
    fn charge(&self, estimate: u64) -> u32 {
        let penalty = self.penalty.load(Ordering::Relaxed);
        let mut charge = estimate.saturating_mul(penalty) / UNIT;
        // Use up credit from over-estimates, leaving at least one token charged.
        let take = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c - c.min(charge.saturating_sub(1)))
            })
            .map_or(0, |before| before.min(charge.saturating_sub(1)));
        charge -= take;
        charge.clamp(1, u64::from(self.tpm_burst)) as u32
    }

    /// Waits until the deployment has capacity for a request of `estimate` tokens.
    pub async fn acquire(&self, estimate: u64) {
        let paused = self.paused_until.lock().ok().and_then(|p| *p);
        if let Some(until) = paused {
            tokio::time::sleep_until(until).await;
        }
        if let Some(rpm) = &self.rpm {
            let snapshot = rpm.until_ready().await;
            if let Some(level) = &self.rpm_level {
                level.took(snapshot.remaining_burst_capacity());
            }
        }
        if let Some(tpm) = &self.tpm {
            if let Some(n) = NonZeroU32::new(self.charge(estimate)) {
                // n never exceeds the burst, so this cannot fail.
                if let Ok(snapshot) = tpm.until_n_ready(n).await {
                    self.report(&snapshot);
                }
            }
        }
    }

    /// Settles a finished call: the real usage replaces the estimate.
    pub fn settle(&self, estimate: u64, actual: u64) {
        let factor = self.penalty.load(Ordering::Relaxed);
        if factor > UNIT {
            let decayed = (factor * 98 / 100).max(UNIT);
            self.penalty.store(decayed, Ordering::Relaxed);
        }
        if actual < estimate {
            self.credit.fetch_add(estimate - actual, Ordering::Relaxed);
        } else if actual > estimate {
            // Under-estimated: the difference is owed, paid from future capacity.
            if let (Some(tpm), Some(n)) = (
                &self.tpm,
                NonZeroU32::new((actual - estimate).min(u64::from(self.tpm_burst)) as u32),
            ) {
                let tpm = Arc::clone(tpm);
                tokio::spawn(async move {
                    let _ = tpm.until_n_ready(n).await;
                });
            }
        }
    }

    /// The provider still said 429: pause for what it asked (or a second) and charge more.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let until = Instant::now() + retry_after.unwrap_or(Duration::from_secs(1));
        if let Ok(mut paused) = self.paused_until.lock() {
            if paused.is_none_or(|p| p < until) {
                *paused = Some(until);
            }
        }
        let _ = self
            .penalty
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some((p * 5 / 4).min(MAX_PENALTY))
            });
    }

    pub fn penalty(&self) -> f64 {
        self.penalty.load(Ordering::Relaxed) as f64 / UNIT as f64
    }

    /// The share of its limits left now (0 to 1; 1 without limits), and whether a request
    /// of `estimate` tokens fits in them without waiting. An estimate from the limiters'
    /// last takes and their refill since: for choosing, not for admitting.
    pub fn headroom(&self, estimate: u64) -> (f64, bool) {
        let now = Instant::now();
        let paused = self.paused_until.lock().ok().and_then(|p| *p);
        if paused.is_some_and(|until| until > now) {
            return (0.0, false);
        }
        let mut share: f64 = 1.0;
        let mut fits = true;
        if let Some(level) = &self.rpm_level {
            let left = level.left(now);
            share = share.min(left / level.burst);
            fits &= left >= 1.0;
        }
        if let Some(level) = &self.tpm_level {
            let left = level.left(now);
            share = share.min(left / level.burst);
            let penalty = self.penalty.load(Ordering::Relaxed);
            let need =
                (estimate.saturating_mul(penalty) / UNIT).clamp(1, u64::from(self.tpm_burst));
            fits &= left >= need as f64;
        }
        (share.clamp(0.0, 1.0), fits)
    }
}

/// A limiter's level: what it had left after its last take, refilling at its rate since.
struct Level {
    burst: f64,
    per_second: f64,
    last: Mutex<Option<(f64, Instant)>>,
}

impl Level {
    fn per_minute(n: NonZeroU32) -> Level {
        let burst = f64::from(n.get());
        Level {
            burst,
            per_second: burst / 60.0,
            last: Mutex::new(None),
        }
    }

    fn took(&self, left: u32) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some((f64::from(left), Instant::now()));
        }
    }

    fn left(&self, now: Instant) -> f64 {
        match self.last.lock().ok().and_then(|l| *l) {
            None => self.burst,
            Some((left, at)) => {
                let refilled = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
                (left + refilled).min(self.burst)
            }
        }
    }
}

/// Per-team token quotas, per worker replica.
#[derive(Default)]
pub struct TeamQuotas {
    by_team: HashMap<String, (DefaultDirectRateLimiter, u32)>,
}

impl TeamQuotas {
    pub fn new(tokens_per_minute: &HashMap<String, NonZeroU32>) -> TeamQuotas {
        TeamQuotas {
            by_team: tokens_per_minute
                .iter()
                .map(|(team, n)| {
                    (
                        team.clone(),
                        (RateLimiter::direct(Quota::per_minute(*n)), n.get()),
                    )
                })
                .collect(),
        }
    }

    /// Takes `tokens` of the team's quota if it has them now. Teams without a quota always
    /// may; a request bigger than the whole quota is charged the whole quota.
    pub fn try_take(&self, team: &str, tokens: u64) -> bool {
        let Some((limiter, burst)) = self.by_team.get(team) else {
            return true;
        };
        let n = tokens.clamp(1, u64::from(*burst)) as u32;
        NonZeroU32::new(n).is_some_and(|n| matches!(limiter.check_n(n), Ok(Ok(()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn over_estimates_become_credit_for_the_next_charges() {
        let t = DeploymentThrottle::new(Limits {
            requests_per_minute: None,
            tokens_per_minute: Some(nz(100_000)),
        });
        assert_eq!(t.charge(1000), 1000);
        // Charged 1000, used 400: the next 1000-token request is charged 400.
        t.credit.fetch_add(600, Ordering::Relaxed);
        assert_eq!(t.charge(1000), 400);
        assert_eq!(t.credit.load(Ordering::Relaxed), 0);
        // Credit never brings a charge to zero.
        t.credit.fetch_add(5000, Ordering::Relaxed);
        assert_eq!(t.charge(10), 1);
        assert_eq!(t.credit.load(Ordering::Relaxed), 4991);
        // Nothing is charged beyond the bucket's size.
        t.credit.store(0, Ordering::Relaxed);
        assert_eq!(t.charge(1_000_000), 100_000);
    }

    #[tokio::test]
    async fn a_429_pauses_and_raises_the_charge_until_successes_bring_it_back() {
        let t = DeploymentThrottle::new(Limits::default());
        assert_eq!(t.penalty(), 1.0);
        t.throttled(Some(Duration::from_millis(1)));
        t.throttled(None);
        assert_eq!(t.penalty(), 1.562, "x1.25 twice, in thousandths");
        assert_eq!(t.charge(1000), 1562);
        assert!(t.paused_until.lock().unwrap().is_some());
        for _ in 0..100 {
            t.settle(10, 10);
        }
        assert_eq!(t.penalty(), 1.0);
        for _ in 0..20 {
            t.throttled(None);
        }
        assert_eq!(t.penalty(), 4.0, "bounded");
    }

    #[tokio::test]
    async fn waits_for_capacity_instead_of_overrunning_the_quota() {
        let t = DeploymentThrottle::new(Limits {
            requests_per_minute: Some(nz(2)),
            tokens_per_minute: None,
        });
        t.acquire(1).await;
        t.acquire(1).await;
        // The third request of this minute is not let through now.
        let third = tokio::time::timeout(Duration::from_millis(50), t.acquire(1)).await;
        assert!(third.is_err());
    }

    #[tokio::test]
    async fn headroom_is_what_the_limits_have_left_and_none_while_paused() {
        assert_eq!(
            DeploymentThrottle::new(Limits::default()).headroom(u64::MAX),
            (1.0, true),
            "no limits: all the room there is"
        );
        let t = DeploymentThrottle::new(Limits {
            requests_per_minute: Some(nz(10)),
            tokens_per_minute: Some(nz(1000)),
        });
        assert_eq!(t.headroom(100), (1.0, true));
        t.acquire(600).await;
        // 400 of 1,000 tokens left (plus what refilled since: 17 a second).
        let (share, fits) = t.headroom(300);
        assert!(share > 0.39 && share < 0.45, "{share}");
        assert!(fits);
        assert!(!t.headroom(500).1, "500 tokens do not fit in 400");
        t.throttled(Some(Duration::from_secs(5)));
        assert_eq!(t.headroom(1), (0.0, false), "paused after a 429");
    }

    #[test]
    fn team_quotas() {
        let q = TeamQuotas::new(&HashMap::from([("small".to_string(), nz(1000))]));
        assert!(q.try_take("small", 600));
        assert!(!q.try_take("small", 600), "only 400 left this minute");
        assert!(q.try_take("small", 400));
        assert!(q.try_take("unlimited", 1_000_000));
    }
}
