//! The spend ledger: settled spend and in-flight reservations per budget and period. Pure
//! bookkeeping, no I/O: [`super::feed`] feeds it from Kafka, admission asks it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use sluice_schemas::{BudgetAlert, Usage};

use super::{BudgetConfig, Period, Scope};

/// One configured budget in nano-USD.
#[derive(Debug, Clone)]
pub struct Budget {
    pub scope: Scope,
    pub subject: String,
    pub period: Period,
    pub limit_nanos: i64,
    /// (percent, nano-USD) of each alert threshold, ascending.
    pub thresholds: Vec<(i32, i64)>,
}

impl Budget {
    fn new(c: &BudgetConfig) -> Budget {
        let limit_nanos = (c.limit_usd * 1e9).round() as i64;
        let mut thresholds: Vec<(i32, i64)> = c
            .alert_at
            .iter()
            .map(|f| {
                let pct = (f * 100.0).round() as i32;
                // Integer arithmetic: 100% is exactly the limit.
                let nanos = (i128::from(limit_nanos) * i128::from(pct)).div_euclid(100) as i64;
                (pct, nanos)
            })
            .collect();
        thresholds.sort_unstable();
        thresholds.dedup();
        Budget {
            scope: c.scope,
            subject: c.subject.clone(),
            period: c.period,
            limit_nanos,
            thresholds,
        }
    }

    fn applies(&self, team: &str, key_id: &str) -> bool {
        match self.scope {
            Scope::Team => self.subject == team,
            Scope::Key => self.subject == key_id,
        }
    }
}

/// Why a request was refused: the first budget it would exceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub scope: Scope,
    pub subject: String,
    pub period: Period,
    pub limit_nanos: i64,
    pub spent_nanos: i64,
    pub reserved_nanos: i64,
    /// This request's reservation.
    pub cost_nanos: i64,
    pub resets_at_ms: i64,
}

/// A budget's state in the current period, for `GET /v1/budgets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub scope: Scope,
    pub subject: String,
    pub period: Period,
    pub period_start_ms: i64,
    pub resets_at_ms: i64,
    pub limit_nanos: i64,
    pub spent_nanos: i64,
    pub reserved_nanos: i64,
    pub thresholds_pct: Vec<i32>,
}

#[derive(Debug)]
struct Reservation {
    nanos: i64,
    /// (budget index, period start) it counts against.
    held: Vec<(usize, i64)>,
    expires_at_ms: i64,
}

/// The most recent request ids seen, bounded: an at-least-once redelivery arrives soon after
/// the first delivery. 64-bit hashes keep it small (a collision needs ~4e9 ids).
#[derive(Debug)]
struct Recent {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Recent {
    fn new(cap: usize) -> Recent {
        Recent {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn hash(id: &str) -> u64 {
        // Fixed keys: stable for the life of the process, which is all this needs.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(&Recent::hash(id))
    }

    /// False if already present.
    fn insert(&mut self, id: &str) -> bool {
        let h = Recent::hash(id);
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[derive(Debug)]
pub struct Ledger {
    budgets: Vec<Budget>,
    spent: HashMap<(usize, i64), i64>,
    reserved: HashMap<(usize, i64), i64>,
    reservations: HashMap<String, Reservation>,
    expiries: BinaryHeap<Reverse<(i64, String)>>,
    settled: Recent,
    alerted: HashSet<(usize, i64, i32)>,
}

impl Ledger {
    pub fn new(budgets: &[BudgetConfig], dedup_window: usize) -> Ledger {
        Ledger {
            budgets: budgets.iter().map(Budget::new).collect(),
            spent: HashMap::new(),
            reserved: HashMap::new(),
            reservations: HashMap::new(),
            expiries: BinaryHeap::new(),
            settled: Recent::new(dedup_window),
            alerted: HashSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// Whether any budget limits this team or key.
    pub fn applies(&self, team: &str, key_id: &str) -> bool {
        self.budgets.iter().any(|b| b.applies(team, key_id))
    }

    fn matching<'a>(
        &'a self,
        team: &'a str,
        key_id: &'a str,
    ) -> impl Iterator<Item = (usize, &'a Budget)> + 'a {
        self.budgets
            .iter()
            .enumerate()
            .filter(move |(_, b)| b.applies(team, key_id))
    }

    /// Settled spend of budget `i` in the period starting at `start`.
    fn spent_in(&self, i: usize, start: i64) -> i64 {
        self.spent.get(&(i, start)).copied().unwrap_or(0)
    }

    fn reserved_in(&self, i: usize, start: i64) -> i64 {
        self.reserved.get(&(i, start)).copied().unwrap_or(0)
    }

    /// Admits a request costing at most `cost` if every budget of its team and key has room
    /// (spent + reserved + cost <= limit), and holds the reservation until its usage
    /// arrives or `expires_at_ms`.
    pub fn admit(
        &mut self,
        request_id: &str,
        team: &str,
        key_id: &str,
        cost: i64,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), Exceeded> {
        self.expire(now_ms);
        for (i, b) in self.matching(team, key_id) {
            let start = b.period.start_ms(now_ms);
            let spent = self.spent_in(i, start);
            let reserved = self.reserved_in(i, start);
            if spent.saturating_add(reserved).saturating_add(cost) > b.limit_nanos {
                return Err(Exceeded {
                    scope: b.scope,
                    subject: b.subject.clone(),
                    period: b.period,
                    limit_nanos: b.limit_nanos,
                    spent_nanos: spent,
                    reserved_nanos: reserved,
                    cost_nanos: cost,
                    resets_at_ms: b.period.end_ms(now_ms),
                });
            }
        }
        self.hold(
            request_id,
            team,
            key_id,
            cost,
            now_ms,
            expires_at_ms,
            now_ms,
        );
        Ok(())
    }

    /// Holds a reservation made at `at_ms` (here, or by another replica and read back from
    /// the audit topic). Ignored when already held, when the request's usage already
    /// arrived, or when it has lapsed. Returns whether it was added.
    #[expect(
        clippy::too_many_arguments,
        reason = "a hold is one record: its fields arrive together from the audit topic"
    )]
    pub fn hold(
        &mut self,
        request_id: &str,
        team: &str,
        key_id: &str,
        nanos: i64,
        at_ms: i64,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> bool {
        if nanos <= 0
            || expires_at_ms <= now_ms
            || self.reservations.contains_key(request_id)
            || self.settled.contains(request_id)
        {
            return false;
        }
        let held: Vec<(usize, i64)> = self
            .matching(team, key_id)
            .map(|(i, b)| (i, b.period.start_ms(at_ms)))
            .collect();
        if held.is_empty() {
            return false;
        }
        for k in &held {
            *self.reserved.entry(*k).or_insert(0) += nanos;
        }
        self.reservations.insert(
            request_id.to_string(),
            Reservation {
                nanos,
                held,
                expires_at_ms,
            },
        );
        self.expiries
            .push(Reverse((expires_at_ms, request_id.to_string())));
        true
    }

    /// Drops a reservation (its usage arrived, or its request was never published).
    pub fn release(&mut self, request_id: &str) {
        if let Some(r) = self.reservations.remove(request_id) {
            for k in r.held {
                if let Some(v) = self.reserved.get_mut(&k) {
                    *v -= r.nanos;
                    if *v <= 0 {
                        self.reserved.remove(&k);
                    }
                }
            }
        }
        // Released reservations leave their expiry behind (a heap cannot remove from the
        // middle); rebuild it when those dominate, so a day of batch deadlines cannot pile up.
        if self.expiries.len() > 2 * self.reservations.len() + 1024 {
            self.expiries = self
                .reservations
                .iter()
                .map(|(id, r)| Reverse((r.expires_at_ms, id.clone())))
                .collect();
        }
    }

    /// Releases reservations past their deadline + grace whose usage never came.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((at, id))) = self.expiries.pop() else {
                break;
            };
            if self
                .reservations
                .get(&id)
                .is_some_and(|r| r.expires_at_ms == at)
            {
                tracing::debug!(request_id = %id, "budget reservation lapsed without usage");
                self.release(&id);
            }
        }
    }

    /// Counts one usage event (once per request id) and releases its reservation. Returns
    /// the alerts for thresholds its period's settled spend reached for the first time here.
    pub fn settle(&mut self, usage: &Usage, now_ms: i64, instance: &str) -> Vec<BudgetAlert> {
        if !self.settled.insert(&usage.request_id) {
            return Vec::new();
        }
        self.release(&usage.request_id);
        let mut alerts = Vec::new();
        let hits: Vec<usize> = self
            .matching(&usage.team, &usage.key_id)
            .map(|(i, _)| i)
            .collect();
        for i in hits {
            let b = &self.budgets[i];
            let start = b.period.start_ms(usage.created_at_ms);
            let spent = self.spent.entry((i, start)).or_insert(0);
            *spent = spent.saturating_add(usage.cost_nanos.max(0));
            let spent = *spent;
            for &(pct, nanos) in &b.thresholds {
                if spent >= nanos && self.alerted.insert((i, start, pct)) {
                    alerts.push(BudgetAlert {
                        alert_id: format!("{}:{}:{start}:{pct}", b.scope.as_str(), b.subject),
                        scope: b.scope.as_str().into(),
                        subject: b.subject.clone(),
                        period: b.period.as_str().into(),
                        period_start_ms: start,
                        threshold_pct: pct,
                        limit_nanos: b.limit_nanos,
                        spent_nanos: spent,
                        occurred_at_ms: now_ms,
                        instance: instance.to_string(),
                    });
                }
            }
        }
        alerts
    }

    /// The budgets of a team and key in their current periods.
    pub fn status(&self, team: &str, key_id: &str, now_ms: i64) -> Vec<Status> {
        self.matching(team, key_id)
            .map(|(i, _)| self.status_of(i, now_ms))
            .collect()
    }

    fn status_of(&self, i: usize, now_ms: i64) -> Status {
        let b = &self.budgets[i];
        let start = b.period.start_ms(now_ms);
        Status {
            scope: b.scope,
            subject: b.subject.clone(),
            period: b.period,
            period_start_ms: start,
            resets_at_ms: b.period.end_ms(now_ms),
            limit_nanos: b.limit_nanos,
            spent_nanos: self.spent_in(i, start),
            reserved_nanos: self.reserved_in(i, start),
            thresholds_pct: b.thresholds.iter().map(|t| t.0).collect(),
        }
    }

    /// Every configured budget in its current period (the operators' console).
    pub fn status_all(&self, now_ms: i64) -> Vec<Status> {
        (0..self.budgets.len())
            .map(|i| self.status_of(i, now_ms))
            .collect()
    }

    /// Sets `sluice_budget_{limit,spend,reserved}_usd{budget="<scope>:<subject>:<period>"}`
    /// for every configured budget in its current period (operator-configured: bounded).
    pub fn export_gauges(&self, now_ms: i64) {
        for (i, b) in self.budgets.iter().enumerate() {
            let start = b.period.start_ms(now_ms);
            let label = format!("{}:{}:{}", b.scope.as_str(), b.subject, b.period.as_str());
            let usd = |nanos: i64| nanos as f64 / 1e9;
            metrics::gauge!("sluice_budget_limit_usd", "budget" => label.clone())
                .set(usd(b.limit_nanos));
            metrics::gauge!("sluice_budget_spend_usd", "budget" => label.clone())
                .set(usd(self.spent_in(i, start)));
            metrics::gauge!("sluice_budget_reserved_usd", "budget" => label)
                .set(usd(self.reserved_in(i, start)));
        }
    }

    /// Forgets spend and alerts of periods that ended before the previous one.
    pub fn prune(&mut self, now_ms: i64) {
        let budgets = &self.budgets;
        let keep = |i: usize, start: i64| {
            budgets.get(i).is_some_and(|b| {
                let current = b.period.start_ms(now_ms);
                start >= b.period.start_ms(current - 1)
            })
        };
        self.spent.retain(|(i, s), _| keep(*i, *s));
        self.alerted.retain(|(i, s, _)| keep(*i, *s));
    }

    /// Reservations currently held.
    #[cfg(test)]
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    #[cfg(test)]
    fn expiries(&self) -> usize {
        self.expiries.len()
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use sluice_schemas::{Priority, Status as UsageStatus};

    const DAY: i64 = 86_400_000;
    /// 2026-11-24T12:00:00Z
    const NOON: i64 = 1_795_521_600_000;

    fn budget(scope: Scope, subject: &str, period: Period, usd: f64) -> BudgetConfig {
        BudgetConfig {
            scope,
            subject: subject.into(),
            period,
            limit_usd: usd,
            alert_at: vec![0.5, 0.8, 1.0],
        }
    }

    fn usage(id: &str, team: &str, key: &str, cost: i64, at: i64) -> Usage {
        Usage {
            request_id: id.into(),
            team: team.into(),
            key_id: key.into(),
            priority: Priority::Standard,
            model: "m".into(),
            provider: "p".into(),
            deployment: "d".into(),
            status: UsageStatus::Completed,
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            cost_nanos: cost,
            created_at_ms: at,
            latency_ms: 1,
            occurred_at_ms: at,
            estimated: false,
            cache_hit: false,
            saved_nanos: 0,
            replay: None,
        }
    }

    /// $1 a day for team t.
    fn ledger() -> Ledger {
        Ledger::new(&[budget(Scope::Team, "t", Period::Day, 1.0)], 1000)
    }

    const USD: i64 = 1_000_000_000;

    #[test]
    fn redelivered_usage_counts_once() {
        let mut l = ledger();
        l.settle(&usage("r1", "t", "k", USD / 4, NOON), NOON, "i");
        l.settle(&usage("r1", "t", "k", USD / 4, NOON), NOON, "i");
        assert_eq!(l.status("t", "k", NOON)[0].spent_nanos, USD / 4);
        // Other teams' usage does not count.
        l.settle(&usage("r2", "u", "k", USD, NOON), NOON, "i");
        assert_eq!(l.status("t", "k", NOON)[0].spent_nanos, USD / 4);
        // A bounded window: the oldest ids are forgotten first.
        let mut small = Ledger::new(&[budget(Scope::Team, "t", Period::Day, 1.0)], 2);
        for id in ["a", "b", "c"] {
            small.settle(&usage(id, "t", "k", 1, NOON), NOON, "i");
        }
        small.settle(&usage("c", "t", "k", 1, NOON), NOON, "i");
        small.settle(&usage("a", "t", "k", 1, NOON), NOON, "i");
        assert_eq!(
            small.status("t", "k", NOON)[0].spent_nanos,
            4,
            "a forgotten"
        );
    }

    #[test]
    fn admission_counts_spent_and_reserved_and_usage_releases_the_reservation() {
        let mut l = ledger();
        l.settle(&usage("old", "t", "k", USD / 2, NOON), NOON, "i");
        l.admit("r1", "t", "k", USD / 4, NOON, NOON + 1000).unwrap();
        // 0.5 spent + 0.25 reserved + 0.3 > 1
        let e = l
            .admit("r2", "t", "k", USD * 3 / 10, NOON, NOON + 1000)
            .unwrap_err();
        assert_eq!(
            (e.spent_nanos, e.reserved_nanos, e.cost_nanos),
            (USD / 2, USD / 4, USD * 3 / 10)
        );
        assert_eq!(e.resets_at_ms, NOON + DAY / 2);
        // Exactly at the limit is allowed.
        l.admit("r3", "t", "k", USD / 4, NOON, NOON + 1000).unwrap();
        assert!(l.admit("r4", "t", "k", 1, NOON, NOON + 1000).is_err());
        // r1 settles cheaper than reserved: the difference is free again.
        l.settle(&usage("r1", "t", "k", USD / 10, NOON), NOON, "i");
        let s = &l.status("t", "k", NOON)[0];
        assert_eq!((s.spent_nanos, s.reserved_nanos), (USD * 6 / 10, USD / 4));
        l.admit("r5", "t", "k", USD * 15 / 100, NOON, NOON + 1000)
            .unwrap();
        // A team without a budget is never limited.
        assert!(!l.applies("u", "k"));
    }

    #[test]
    fn echoed_reservations_are_deduplicated_and_ignored_after_usage() {
        let mut l = ledger();
        l.admit("r1", "t", "k", USD / 4, NOON, NOON + 1000).unwrap();
        // The replica reads its own accepted event back: held once.
        assert!(!l.hold("r1", "t", "k", USD / 4, NOON, NOON + 1000, NOON));
        // Another replica's reservation counts here.
        assert!(l.hold("r2", "t", "k", USD / 4, NOON, NOON + 1000, NOON));
        assert_eq!(l.status("t", "k", NOON)[0].reserved_nanos, USD / 2);
        // Usage that arrived before the accepted event: the reservation is not held.
        l.settle(&usage("r3", "t", "k", USD / 10, NOON), NOON, "i");
        assert!(!l.hold("r3", "t", "k", USD / 4, NOON, NOON + 1000, NOON));
        // A lapsed reservation read at start-up is not held either.
        assert!(!l.hold("r4", "t", "k", USD / 4, NOON - 5000, NOON - 1, NOON));
        assert_eq!(l.reservations(), 2);
    }

    #[test]
    fn reservations_lapse_after_deadline_and_grace() {
        let mut l = ledger();
        l.admit("r1", "t", "k", USD, NOON, NOON + 1000).unwrap();
        assert!(l.admit("r2", "t", "k", 1, NOON + 999, NOON + 2000).is_err());
        l.admit("r2", "t", "k", USD / 2, NOON + 1000, NOON + 2000)
            .unwrap();
        assert_eq!(l.reservations(), 1, "r1 lapsed");
        // Released reservations do not pile up in the expiry queue.
        for i in 0..5000 {
            let id = format!("x{i}");
            l.admit(&id, "t", "k", 1, NOON + 1000, NOON + DAY).unwrap();
            l.release(&id);
        }
        assert!(
            l.expiries() <= 1024 + 2 * l.reservations() + 1,
            "{}",
            l.expiries()
        );
        // Usage arriving after the lapse still counts once.
        l.settle(&usage("r1", "t", "k", USD / 10, NOON), NOON + 1500, "i");
        let s = &l.status("t", "k", NOON + 1500)[0];
        assert_eq!((s.spent_nanos, s.reserved_nanos), (USD / 10, USD / 2));
    }

    #[test]
    fn a_new_period_starts_from_zero() {
        let mut l = Ledger::new(
            &[
                budget(Scope::Team, "t", Period::Day, 1.0),
                budget(Scope::Key, "k", Period::Month, 2.0),
            ],
            1000,
        );
        l.settle(&usage("r1", "t", "k", USD, NOON), NOON, "i");
        assert!(l.admit("r2", "t", "k", 1, NOON, NOON + 1000).is_err());
        let tomorrow = NOON + DAY;
        l.admit("r3", "t", "k", USD / 2, tomorrow, tomorrow + 1000)
            .unwrap();
        let s = l.status("t", "k", tomorrow);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].spent_nanos, s[0].reserved_nanos), (0, USD / 2));
        // The key's month still holds yesterday's spend.
        assert_eq!((s[1].spent_nanos, s[1].reserved_nanos), (USD, USD / 2));
        // The key's month budget applies to another team's use of the key too.
        let e = l
            .admit("r4", "x", "k", USD, tomorrow, tomorrow + 1)
            .unwrap_err();
        assert_eq!((e.scope, e.subject.as_str()), (Scope::Key, "k"));
        // Usage of a request accepted yesterday counts in yesterday's period.
        l.settle(&usage("r5", "t", "k", USD / 4, NOON), tomorrow, "i");
        assert_eq!(l.status("t", "k", tomorrow)[0].spent_nanos, 0);
        l.prune(tomorrow + DAY * 2);
        assert_eq!(l.status("t", "k", NOON)[0].spent_nanos, 0, "pruned");
    }

    #[test]
    fn each_threshold_alerts_once_per_period() {
        let mut l = ledger();
        let a = l.settle(&usage("r1", "t", "k", USD * 4 / 10, NOON), NOON, "i");
        assert!(a.is_empty());
        // One usage can cross two thresholds.
        let a = l.settle(
            &usage("r2", "t", "k", USD * 45 / 100, NOON),
            NOON + 5,
            "ingress-1",
        );
        let ids: Vec<&str> = a.iter().map(|a| a.alert_id.as_str()).collect();
        let start = Period::Day.start_ms(NOON);
        assert_eq!(
            ids,
            vec![format!("team:t:{start}:50"), format!("team:t:{start}:80")]
        );
        assert_eq!(a[1].spent_nanos, USD * 85 / 100);
        assert_eq!((a[1].threshold_pct, a[1].limit_nanos), (80, USD));
        assert_eq!(a[1].instance, "ingress-1");
        assert!(l
            .settle(&usage("r3", "t", "k", 1, NOON), NOON, "i")
            .is_empty());
        // A redelivery never alerts again; exactly reaching the limit crosses 100%.
        assert!(l
            .settle(&usage("r2", "t", "k", USD, NOON), NOON, "i")
            .is_empty());
        let a = l.settle(&usage("r4", "t", "k", USD * 15 / 100 - 1, NOON), NOON, "i");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].threshold_pct, 100);
        assert!(l
            .settle(&usage("r5", "t", "k", USD, NOON), NOON, "i")
            .is_empty());
        // The next day alerts afresh.
        let a = l.settle(&usage("r6", "t", "k", USD, NOON + DAY), NOON + DAY, "i");
        assert_eq!(a.len(), 3);
    }
}
