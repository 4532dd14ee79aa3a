//! The stall watch. A sink consumer that receives nothing while its group has records to
//! read, and whose group commits nothing meanwhile, is replaced by a new one
//! (`[sink] stall_timeout_ms`). Seen once after a broker restart under load: the results
//! were on their topic, the sink consumed none of them and logged nothing, until the test
//! gave up. The group's view comes from a client of its own, not from the consumer that
//! may be stuck.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

/// Time limit of each broker call that reads the group's view.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Each replacement in a row doubles the wait before the next, up to this many times: a
/// group whose first join takes longer than the timeout is not restarted for ever.
const MAX_DOUBLINGS: u32 = 4;

/// Where the sink's group stands on every partition of its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupView {
    /// Records past the group's committed offsets (past the start where none is committed).
    pub behind: i64,
    /// The committed offsets, summed: it moves when any member of the group commits.
    pub committed: i64,
}

/// Decides, from what the sink received and its group's view, whether its consumer stalled.
#[derive(Debug)]
pub(super) struct Watch {
    timeout: Duration,
    /// Since when there has been no progress.
    since: Instant,
    received: u64,
    last: Option<GroupView>,
    /// Replacements since the last progress.
    strikes: u32,
}

impl Watch {
    pub fn new(timeout: Duration, now: Instant) -> Watch {
        Watch {
            timeout,
            since: now,
            received: 0,
            last: None,
            strikes: 0,
        }
    }

    /// How often the view is worth reading: a few times per timeout.
    pub fn every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// The sink was busy (a flush, which can retry for long while ClickHouse is down) or
    /// its consumer was just replaced: the wait starts again.
    pub fn busy(&mut self, now: Instant) {
        self.since = now;
    }

    /// Whether the consumer has stalled: `received` (the sink's count of messages so far)
    /// has not moved, the group was behind and committed nothing, for the timeout (doubled
    /// per replacement in a row). A view that could not be read (`None`: the broker is
    /// down, which a new consumer would not mend) counts as progress. True means replace
    /// the consumer; the wait then starts again, doubled.
    pub fn stalled(&mut self, now: Instant, received: u64, view: Option<GroupView>) -> bool {
        let progressed = received != self.received
            || match (view, self.last) {
                (None, _) => true,
                (Some(v), _) if v.behind == 0 => true,
                (Some(v), Some(last)) => v.committed != last.committed,
                (Some(_), None) => false,
            };
        self.received = received;
        self.last = view;
        if progressed {
            self.since = now;
            self.strikes = 0;
            return false;
        }
        let wait = self.timeout * 2u32.pow(self.strikes.min(MAX_DOUBLINGS));
        if now.duration_since(self.since) < wait {
            return false;
        }
        self.strikes += 1;
        self.since = now;
        true
    }
}

/// A client of the sink's group that never joins it: it reads the group's committed
/// offsets and the partitions' ends.
pub(super) struct Viewer {
    client: Arc<BaseConsumer>,
    topics: Arc<Vec<String>>,
}

impl Viewer {
    pub fn new(
        config: rdkafka::ClientConfig,
        group: &str,
        topics: Vec<String>,
    ) -> Result<Viewer, KafkaError> {
        let client = config.clone().set("group.id", group).create()?;
        Ok(Viewer {
            client: Arc::new(client),
            topics: Arc::new(topics),
        })
    }

    /// Reads the group's view every `every` in a task of its own (the sink loop never
    /// waits on the broker for it) and sends each, until the receiver is dropped. None: the
    /// broker did not answer in time.
    pub fn spawn(self, every: Duration) -> tokio::sync::watch::Receiver<Option<GroupView>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (client, topics) = (Arc::clone(&self.client), Arc::clone(&self.topics));
                let read = tokio::task::spawn_blocking(move || group_view(&client, &topics));
                let view = match tokio::time::timeout(CALL_TIMEOUT * 2, read).await {
                    Ok(Ok(view)) => view,
                    _ => None,
                };
                if tx.send(view).is_err() {
                    return;
                }
            }
        });
        rx
    }
}

fn group_view(client: &BaseConsumer, topics: &[String]) -> Option<GroupView> {
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), CALL_TIMEOUT).ok()?;
        for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                partitions.add_partition(topic, p.id());
            }
        }
    }
    if partitions.count() == 0 {
        return None;
    }
    let committed = client.committed_offsets(partitions, CALL_TIMEOUT).ok()?;
    let mut view = GroupView {
        behind: 0,
        committed: 0,
    };
    for e in committed.elements() {
        let (low, high) = client
            .fetch_watermarks(e.topic(), e.partition(), CALL_TIMEOUT)
            .ok()?;
        let at = match e.offset() {
            Offset::Offset(at) => at,
            _ => low,
        };
        view.behind += (high - at).max(0);
        view.committed += at;
    }
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    fn view(behind: i64, committed: i64) -> Option<GroupView> {
        Some(GroupView { behind, committed })
    }

    #[test]
    fn stalls_once_behind_with_nothing_received_or_committed_for_the_timeout() {
        let start = Instant::now();
        let mut watch = Watch::new(T, start);
        assert!(!watch.stalled(start + T / 2, 0, view(5, 10)));
        assert!(!watch.stalled(start + T - Duration::from_secs(1), 0, view(5, 10)));
        assert!(watch.stalled(start + T, 0, view(5, 10)), "a full timeout");
    }

    #[test]
    fn any_progress_restarts_the_wait() {
        let start = Instant::now();
        let mut watch = Watch::new(T, start);
        assert!(!watch.stalled(start + T / 2, 0, view(5, 10)));
        // A message arrived.
        assert!(!watch.stalled(start + T, 1, view(5, 10)));
        assert!(!watch.stalled(start + T + T / 2, 1, view(5, 10)));
        // Another member committed: the group moves, this member may just hold nothing.
        assert!(!watch.stalled(start + 2 * T, 1, view(5, 12)));
        // Nothing to read.
        assert!(!watch.stalled(start + 3 * T, 1, view(0, 12)));
        // The broker did not answer.
        assert!(!watch.stalled(start + 4 * T, 1, None));
        assert!(!watch.stalled(start + 5 * T - Duration::from_secs(1), 1, view(3, 12)));
        assert!(watch.stalled(start + 5 * T, 1, view(3, 12)));
    }

    #[test]
    fn a_long_flush_is_not_a_stall() {
        let start = Instant::now();
        let mut watch = Watch::new(T, start);
        assert!(!watch.stalled(start + T / 2, 3, view(3, 0)));
        // The loop was in a flush (ClickHouse down) for three timeouts.
        watch.busy(start + 3 * T);
        assert!(!watch.stalled(start + 3 * T + T / 2, 3, view(3, 0)));
    }

    #[test]
    fn replacements_in_a_row_wait_longer_each_time_and_progress_resets_that() {
        let start = Instant::now();
        let mut watch = Watch::new(T, start);
        let mut at = start;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let from = at;
            loop {
                at += Duration::from_secs(1);
                if watch.stalled(at, 0, view(5, 10)) {
                    break;
                }
            }
            waits.push((at - from).as_secs());
        }
        assert_eq!(waits, [60, 120, 240, 480, 960, 960]);
        assert!(
            !watch.stalled(at + T / 2, 1, view(5, 10)),
            "a message arrived"
        );
        assert!(
            watch.stalled(at + T / 2 + T, 1, view(5, 10)),
            "back to one timeout"
        );
    }
}
