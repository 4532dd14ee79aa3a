//! The local scheduler between the Kafka consumers and the provider calls.
//!
//! - Priority classes: interactive before standard before batch, yet a lower class with
//!   backlog always gets at least its configured share of dispatches, so it never starves.
//! - Fairness within a class: deficit round robin over teams, weighted, charged in estimated
//!   tokens, so a team flooding the queue stretches another team's wait by a bounded factor.
//! - Quotas: a team over its quota is skipped (not blocking the others) until it is eligible.
//!
//! Pure data structure: no I/O, no clock; the caller supplies eligibility.

use std::collections::{HashMap, VecDeque};

use sluice_schemas::Priority;

/// Tokens a team may dispatch per round, times its weight.
const QUANTUM: u64 = 1024;
/// Decay of the recent-dispatch counters behind the minimum shares (~ last 100 dispatches).
const DECAY: f64 = 0.99;

fn class_index(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Standard => 1,
        Priority::Batch => 2,
    }
}

#[derive(Debug)]
struct TeamQueue<T> {
    items: VecDeque<(u64, T)>,
    deficit: u64,
    /// The team is at the front and has had its quantum for this turn.
    in_turn: bool,
}

#[derive(Debug)]
struct ClassQueue<T> {
    teams: HashMap<String, TeamQueue<T>>,
    /// Teams with queued items, in round-robin order.
    active: VecDeque<String>,
    len: usize,
}

impl<T> Default for ClassQueue<T> {
    fn default() -> Self {
        ClassQueue {
            teams: HashMap::new(),
            active: VecDeque::new(),
            len: 0,
        }
    }
}

/// Scheduling parameters.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Minimum share of dispatches for each class while it has backlog, by class index
    /// (interactive's is unused: it is always preferred).
    pub min_share: [f64; 3],
    /// Team weights (default 1).
    pub team_weights: HashMap<String, u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_share: [0.0, 0.2, 0.05],
            team_weights: HashMap::new(),
        }
    }
}

#[derive(Debug)]
pub struct Scheduler<T> {
    classes: [ClassQueue<T>; 3],
    policy: Policy,
    /// Recent dispatches per class, decayed.
    served: [f64; 3],
}

impl<T> Scheduler<T> {
    pub fn new(policy: Policy) -> Scheduler<T> {
        Scheduler {
            classes: Default::default(),
            policy,
            served: [0.0; 3],
        }
    }

    pub fn push(&mut self, priority: Priority, team: &str, cost: u64, item: T) {
        let class = &mut self.classes[class_index(priority)];
        let queue = class
            .teams
            .entry(team.to_string())
            .or_insert_with(|| TeamQueue {
                items: VecDeque::new(),
                deficit: 0,
                in_turn: false,
            });
        if queue.items.is_empty() {
            class.active.push_back(team.to_string());
        }
        queue.items.push_back((cost.max(1), item));
        class.len += 1;
    }

    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.classes.iter().map(|c| c.len).sum()
    }

    /// The next item to run. `eligible(team, cost)` is asked only for the item about to be
    /// dispatched, so it may consume quota; an ineligible team is passed over, not blocking.
    pub fn pop(&mut self, mut eligible: impl FnMut(&str, u64) -> bool) -> Option<(Priority, T)> {
        let order = self.class_order();
        for class in order {
            if let Some(item) = self.pop_class(class, &mut eligible) {
                for (i, s) in self.served.iter_mut().enumerate() {
                    *s = *s * DECAY + if i == class { 1.0 } else { 0.0 };
                }
                return Some((Priority::ALL[class], item));
            }
        }
        None
    }

    /// Classes in the order to try: a lower class below its minimum share goes first.
    fn class_order(&self) -> Vec<usize> {
        let total: f64 = self.served.iter().sum();
        let starved = (1..3).rev().find(|&c| {
            self.classes[c].len > 0
                && self.classes[..c].iter().any(|h| h.len > 0)
                && total > 0.0
                && self.served[c] / total < self.policy.min_share[c]
        });
        let mut order: Vec<usize> = (0..3).collect();
        if let Some(c) = starved {
            order.retain(|&x| x != c);
            order.insert(0, c);
        }
        order
    }

    /// Deficit round robin over the class's teams.
    fn pop_class(
        &mut self,
        class: usize,
        eligible: &mut impl FnMut(&str, u64) -> bool,
    ) -> Option<T> {
        let weights = &self.policy.team_weights;
        let queue = &mut self.classes[class];
        // Bounded: every active team is visited enough times for its head item to become
        // affordable (a quantum per visit), and ineligible teams at most that often too.
        let mut visits = 0;
        let max_visits = queue.active.len() * 64;
        while visits < max_visits {
            visits += 1;
            let team = queue.active.pop_front()?;
            let Some(tq) = queue.teams.get_mut(&team) else {
                continue;
            };
            let Some(&(cost, _)) = tq.items.front() else {
                tq.deficit = 0;
                tq.in_turn = false;
                continue;
            };
            if !tq.in_turn {
                let weight = u64::from(*weights.get(&team).unwrap_or(&1)).max(1);
                tq.deficit += QUANTUM * weight;
                tq.in_turn = true;
            }
            if tq.deficit >= cost && !eligible(&team, cost) {
                // Over quota: passed over, keeping its credit for when it is eligible.
                tq.in_turn = false;
                queue.active.push_back(team);
                continue;
            }
            if tq.deficit >= cost {
                tq.deficit -= cost;
                let (_, item) = tq.items.pop_front()?;
                queue.len -= 1;
                if tq.items.is_empty() {
                    // An idle team does not bank credit.
                    tq.deficit = 0;
                    tq.in_turn = false;
                } else {
                    // Its turn goes on while its credit lasts.
                    queue.active.push_front(team);
                }
                return Some(item);
            }
            // Turn over: to the back, keeping the credit towards a big request.
            tq.in_turn = false;
            queue.active.push_back(team);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T>(s: &mut Scheduler<T>) -> Vec<(Priority, T)> {
        std::iter::from_fn(|| s.pop(|_, _| true)).collect()
    }

    #[test]
    fn higher_classes_go_first_but_lower_ones_keep_a_share() {
        let mut s = Scheduler::new(Policy::default());
        for i in 0..100 {
            s.push(Priority::Batch, "t", 10, ("b", i));
            s.push(Priority::Interactive, "t", 10, ("i", i));
            s.push(Priority::Standard, "t", 10, ("s", i));
        }
        let order = drain(&mut s);
        assert_eq!(order.len(), 300);
        assert_eq!(order[0].0, Priority::Interactive);
        // While interactive work is queued, standard and batch still get their minimum
        // shares (20% and 5%) of the first 100 dispatches.
        let first: Vec<Priority> = order[..100].iter().map(|o| o.0).collect();
        let count = |p| first.iter().filter(|&&x| x == p).count();
        assert!(count(Priority::Interactive) >= 70, "{first:?}");
        assert!(count(Priority::Standard) >= 18, "{first:?}");
        assert!(count(Priority::Batch) >= 4, "{first:?}");
        // Order within a class is kept.
        let batch: Vec<i32> = order
            .iter()
            .filter(|o| o.1 .0 == "b")
            .map(|o| o.1 .1)
            .collect();
        assert_eq!(batch, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn strict_priority_when_lower_classes_have_no_share() {
        let mut s = Scheduler::new(Policy {
            min_share: [0.0, 0.0, 0.0],
            ..Policy::default()
        });
        s.push(Priority::Batch, "t", 1, 1);
        s.push(Priority::Interactive, "t", 1, 2);
        s.push(Priority::Standard, "t", 1, 3);
        let order: Vec<i32> = drain(&mut s).into_iter().map(|o| o.1).collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn a_flooding_team_does_not_delay_another_beyond_its_share() {
        let mut s = Scheduler::new(Policy::default());
        for i in 0..1000 {
            s.push(Priority::Standard, "flood", 500, ("a", i));
        }
        for i in 0..10 {
            s.push(Priority::Standard, "steady", 500, ("b", i));
        }
        let order = drain(&mut s);
        // Equal weights, equal costs: b's 10 requests are done within the first ~20
        // dispatches, not after a's 1000.
        let last_b = order.iter().rposition(|o| o.1 .0 == "b").unwrap();
        assert!(last_b < 22, "steady team finished at {last_b}");
    }

    #[test]
    fn fairness_is_in_tokens_and_weighted() {
        let mut s = Scheduler::new(Policy {
            team_weights: HashMap::from([("gold".to_string(), 3)]),
            ..Policy::default()
        });
        for i in 0..300 {
            s.push(Priority::Standard, "gold", 256, ("gold", i));
            s.push(Priority::Standard, "plain", 256, ("plain", i));
        }
        let first: Vec<&str> = drain(&mut s)[..200].iter().map(|o| o.1 .0).collect();
        let gold = first.iter().filter(|&&t| t == "gold").count();
        // Weight 3 vs 1: three quarters of the tokens while both have backlog.
        assert!((145..=155).contains(&gold), "gold got {gold} of 200");

        // A team sending big requests gets fewer of them, not more tokens.
        let mut s = Scheduler::new(Policy::default());
        for i in 0..200 {
            s.push(Priority::Standard, "big", 4096, ("big", i));
            s.push(Priority::Standard, "small", 256, ("small", i));
        }
        let first: Vec<&str> = drain(&mut s)[..85].iter().map(|o| o.1 .0).collect();
        let big = first.iter().filter(|&&t| t == "big").count();
        assert!((3..=7).contains(&big), "big got {big} of 85 dispatches");
    }

    #[test]
    fn teams_over_quota_are_skipped_not_blocking() {
        let mut s = Scheduler::new(Policy::default());
        s.push(Priority::Standard, "capped", 10, 1);
        s.push(Priority::Standard, "capped", 10, 2);
        s.push(Priority::Standard, "free", 10, 3);
        assert_eq!(
            s.pop(|team, _| team != "capped"),
            Some((Priority::Standard, 3))
        );
        assert_eq!(s.pop(|team, _| team != "capped"), None);
        assert_eq!(s.total(), 2);
        assert_eq!(s.pop(|_, _| true), Some((Priority::Standard, 1)));
    }
}

/// `[scheduling]` in the worker config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// Requests from one partition waiting locally before that partition is paused. The
    /// worker reads ahead this far past a flooding team's backlog to reach other teams'
    /// requests in the same partition.
    pub max_queued_per_partition: usize,
    /// Minimum share of dispatches for standard and batch while they have backlog.
    pub standard_min_share: f64,
    pub batch_min_share: f64,
    /// Relative weights of teams within a class (default 1).
    pub team_weights: HashMap<String, u32>,
    /// Token quotas per team and minute, per worker replica.
    pub team_tokens_per_minute: HashMap<String, std::num::NonZeroU32>,
    /// Completion tokens assumed for a request without max_tokens (fairness and throttling).
    pub default_completion_tokens: u32,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            max_queued_per_partition: 1000,
            standard_min_share: 0.2,
            batch_min_share: 0.05,
            team_weights: HashMap::new(),
            team_tokens_per_minute: HashMap::new(),
            default_completion_tokens: 256,
        }
    }
}

impl SchedulingConfig {
    pub fn policy(&self) -> Policy {
        Policy {
            min_share: [0.0, self.standard_min_share, self.batch_min_share],
            team_weights: self.team_weights.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), &'static str> {
        let share = |s: f64| (0.0..=0.5).contains(&s);
        if !share(self.standard_min_share) || !share(self.batch_min_share) {
            return Err("min shares must be between 0 and 0.5");
        }
        if self.max_queued_per_partition == 0 {
            return Err("max_queued_per_partition must be at least 1");
        }
        if self.team_weights.values().any(|&w| w == 0) {
            return Err("team weights must be at least 1");
        }
        Ok(())
    }
}
