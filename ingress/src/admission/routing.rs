//! Where a request goes: its team's own topic or the shared one of its class, and which
//! partition of it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

use sluice_schemas::{Priority, Topic, Topics};

use crate::config::RoutingConfig;

pub(crate) struct Routing {
    team_topics: HashSet<String>,
    partitions_per_team: u32,
    spread: AtomicU32,
}

impl Routing {
    pub(crate) fn new(config: &RoutingConfig) -> Routing {
        Routing {
            team_topics: config.team_topics.iter().cloned().collect(),
            partitions_per_team: config.partitions_per_team,
            spread: AtomicU32::new(0),
        }
    }

    /// The request topic of `team`'s requests of class `priority`.
    pub(crate) fn topic(&self, team: &str, priority: Priority) -> Topic {
        if self.team_topics.contains(team) {
            Topic::TeamRequests(priority, team.to_string())
        } else {
            Topic::Requests(priority)
        }
    }

    /// Where a replay or shadow copy of `team`'s request goes: the team's batch topic, by
    /// name, and the partition.
    pub(crate) fn copy_destination(&self, topics: &Topics, team: &str) -> (String, i32) {
        let topic = self.topic(team, Priority::Batch);
        let partition = self.partition(&topic, team);
        (topics.name(&topic), partition)
    }

    /// The partition for a team's next request: round robin over the team's
    /// `partitions_per_team` consecutive partitions, starting at a stable hash of the team.
    pub(crate) fn partition(&self, topic: &Topic, team: &str) -> i32 {
        let partitions = topic.partitions().max(1) as u32;
        let span = self.partitions_per_team.clamp(1, partitions);
        let turn = self.spread.fetch_add(1, Ordering::Relaxed) % span;
        ((team_hash(team) % partitions + turn) % partitions) as i32
    }
}

/// FNV-1a: stable across builds and replicas, unlike std's randomized hasher.
fn team_hash(team: &str) -> u32 {
    team.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
