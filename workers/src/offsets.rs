//! Per-partition completion tracking: with many requests in flight per partition, the
//! offset we let Kafka commit never passes a message that is not finished.

use std::collections::{BTreeSet, HashMap};

/// Identifies a partition assignment; a partition revoked and assigned again gets a new
/// generation, so late completions from the old assignment are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// Highest finished offset seen in this generation.
    max_finished: Option<i64>,
    /// Messages handed to a processing task and not back yet (the rest of `in_flight`
    /// waits in the local queue).
    running: usize,
    /// Being revoked: nothing more of it is started.
    revoking: bool,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<PartitionKey, PartitionState>,
    next_generation: u64,
}

impl OffsetTracker {
    /// Starts a new generation for newly assigned partitions.
    pub fn assign(&mut self, key: PartitionKey) {
        self.next_generation += 1;
        self.partitions.insert(
            key,
            PartitionState {
                generation: self.next_generation,
                ..PartitionState::default()
            },
        );
    }

    pub fn revoke(&mut self, key: &PartitionKey) {
        self.partitions.remove(key);
    }

    /// Records a message as in flight; returns the generation to hand back on completion.
    pub fn start(&mut self, key: &PartitionKey, offset: i64) -> u64 {
        let state = self.partitions.entry(key.clone()).or_insert_with(|| {
            // A message can arrive before the assignment callback ran; give it a generation.
            self.next_generation += 1;
            PartitionState {
                generation: self.next_generation,
                ..PartitionState::default()
            }
        });
        state.in_flight.insert(offset);
        state.generation
    }

    /// Marks a message finished; returns the offset now safe to commit (the next offset to
    /// read), if the committable position moved.
    pub fn finish(&mut self, key: &PartitionKey, offset: i64, generation: u64) -> Option<i64> {
        let state = self.partitions.get_mut(key)?;
        if state.generation != generation || !state.in_flight.remove(&offset) {
            return None;
        }
        state.max_finished = Some(state.max_finished.map_or(offset, |m| m.max(offset)));
        Some(match state.in_flight.first() {
            // Everything before the oldest unfinished message is done.
            Some(&oldest) => oldest,
            None => state.max_finished.map_or(offset, |m| m) + 1,
        })
    }

    /// A queued message is about to be processed: false if its partition was revoked or is
    /// being revoked (the new owner runs it). Else it counts as running until [`Self::stopped`].
    pub fn dispatch(&mut self, key: &PartitionKey, generation: u64) -> bool {
        match self.partitions.get_mut(key) {
            Some(s) if s.generation == generation && !s.revoking => {
                s.running += 1;
                true
            }
            _ => false,
        }
    }

    /// A dispatched message's processing ended (finished or not).
    pub fn stopped(&mut self, key: &PartitionKey, generation: u64) {
        if let Some(s) = self.partitions.get_mut(key) {
            if s.generation == generation {
                s.running = s.running.saturating_sub(1);
            }
        }
    }

    /// The partition is about to be revoked: start nothing more of it.
    pub fn begin_revoke(&mut self, key: &PartitionKey) {
        if let Some(s) = self.partitions.get_mut(key) {
            s.revoking = true;
        }
    }

    /// Messages of these partitions being processed now.
    pub fn running(&self, keys: &[PartitionKey]) -> usize {
        keys.iter()
            .filter_map(|k| self.partitions.get(k))
            .map(|s| s.running)
            .sum()
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        PartitionKey {
            topic: "t".into(),
            partition: p,
        }
    }

    #[test]
    fn commit_never_passes_an_unfinished_message() {
        let mut t = OffsetTracker::default();
        t.assign(key(0));
        let g = t.start(&key(0), 10);
        t.start(&key(0), 11);
        t.start(&key(0), 12);
        // 12 finishes first: 10 is still in flight, so only offsets before 10 are safe.
        assert_eq!(t.finish(&key(0), 12, g), Some(10));
        assert_eq!(t.finish(&key(0), 11, g), Some(10));
        // 10 finishes: everything up to 12 is done.
        assert_eq!(t.finish(&key(0), 10, g), Some(13));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.assign(key(0));
        t.assign(key(1));
        let g0 = t.start(&key(0), 5);
        let g1 = t.start(&key(1), 7);
        assert_eq!(t.finish(&key(1), 7, g1), Some(8));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.finish(&key(0), 5, g0), Some(6));
    }

    #[test]
    fn completions_from_a_revoked_assignment_are_ignored() {
        let mut t = OffsetTracker::default();
        t.assign(key(0));
        let old = t.start(&key(0), 3);
        t.revoke(&key(0));
        t.assign(key(0));
        let new = t.start(&key(0), 3);
        assert_ne!(old, new);
        assert_eq!(t.finish(&key(0), 3, old), None);
        assert_eq!(t.finish(&key(0), 3, new), Some(4));
        // Finishing twice does nothing.
        assert_eq!(t.finish(&key(0), 3, new), None);
    }

    #[test]
    fn a_partition_being_revoked_starts_nothing_more_and_counts_what_runs() {
        let mut t = OffsetTracker::default();
        t.assign(key(0));
        let g = t.start(&key(0), 1);
        t.start(&key(0), 2);
        assert!(t.dispatch(&key(0), g));
        assert_eq!(t.running(&[key(0)]), 1);
        t.begin_revoke(&key(0));
        assert!(
            !t.dispatch(&key(0), g),
            "queued ones stay for the new owner"
        );
        assert_eq!(
            t.finish(&key(0), 1, g),
            Some(2),
            "the running one still commits"
        );
        t.stopped(&key(0), g);
        assert_eq!(t.running(&[key(0), key(1)]), 0);
    }
}
