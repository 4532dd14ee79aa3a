//! Every Kafka topic Sluice uses. Names are derived here and nowhere else.

use crate::records::Priority;

/// Largest Kafka message Sluice produces (topic `max.message.bytes` at creation, producers'
/// `message.max.bytes`). Kafka's own default is ~1 MiB (broker `message.max.bytes` 1048588);
/// Sluice's topics are created with this instead so a request of `[server] max_body_bytes`
/// (4 MiB) fits with its Avro envelope and a copy of its prompt in the audit event. Topics
/// that already exist keep their setting: a message they refuse (`MessageSizeTooLarge`) is
/// final, never retried (a 413, a batch line's `request_too_large`, a `failed` result).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// What Kafka adds to a record's key and value in a record batch (batch header 61 bytes,
/// record framing, varints), rounded up generously.
pub const RECORD_OVERHEAD_BYTES: usize = 1024;

/// Whether a record with this key and value fits a `limit` of `message.max.bytes`.
pub fn fits(limit: usize, key: usize, value: usize) -> bool {
    key.saturating_add(value)
        .saturating_add(RECORD_OVERHEAD_BYTES)
        <= limit
}

/// A logical topic. Its name gets the deployment's prefix (so tests can run side by side).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Requests of one priority class, keyed by team.
    Requests(Priority),
    /// Requests of one priority class for a team that has dedicated topics.
    TeamRequests(Priority, String),
    /// Final results of every request.
    Results,
    /// Billable usage events.
    Usage,
    /// Every provider call (retries, fallbacks, redeliveries): what providers may bill.
    Attempts,
    /// Audit events.
    Audit,
    /// Results (and stream chunks) for waiting sync callers; short retention.
    Replies,
    /// Messages that could not be decoded, with the reason in headers.
    DeadLetter,
    /// Cancellations of requests whose caller went away; every worker reads all of it.
    Cancels,
    /// Budget threshold crossings; every ingress replica may emit the same alert (same
    /// `alert_id`), the analytics sink deduplicates.
    BudgetAlerts,
    /// Results of replayed and shadow requests (`sluice-replay`, `[[shadows]]`): never a
    /// caller's, never in the live tables.
    ReplayResults,
    /// Usage of replayed and shadow requests: no budget ledger reads it, teams are never
    /// billed for it.
    ReplayUsage,
    /// API keys made through the admin API: compacted, one partition (a total order, so
    /// the last record per key id wins on every replica), Kafka key = key id. Every ingress
    /// replica reads all of it.
    Keys,
}

impl Topic {
    pub fn partitions(&self) -> i32 {
        match self {
            Topic::Requests(_) | Topic::Results | Topic::Usage | Topic::Audit | Topic::Attempts => {
                6
            }
            Topic::TeamRequests(..) => 3,
            Topic::Replies => 6,
            Topic::DeadLetter | Topic::Keys => 1,
            Topic::Cancels | Topic::BudgetAlerts | Topic::ReplayResults | Topic::ReplayUsage => 3,
        }
    }

    /// Topic-level configs applied at creation.
    pub fn config(&self) -> &'static [(&'static str, &'static str)] {
        const WEEK: &str = "604800000";
        match self {
            Topic::Replies | Topic::Cancels => &[("retention.ms", "3600000")],
            Topic::DeadLetter => &[("retention.ms", "2592000000")],
            // Kept forever: compaction keeps the latest state of every key.
            Topic::Keys => &[("cleanup.policy", "compact")],
            // The ingress rebuilds the month's budget spend from usage at start-up: keep a
            // whole month plus slack (35 days).
            Topic::Usage => &[("retention.ms", "3024000000")],
            _ => &[("retention.ms", WEEK)],
        }
    }
}

/// Topic names under one prefix (default `sluice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics::new("sluice")
    }
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Topics {
        Topics {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self, topic: &Topic) -> String {
        let p = &self.prefix;
        match topic {
            Topic::Requests(priority) => format!("{p}.requests.{}", priority.as_str()),
            Topic::TeamRequests(priority, team) => {
                format!("{p}.requests.{}.team.{team}", priority.as_str())
            }
            Topic::Results => format!("{p}.results"),
            Topic::Usage => format!("{p}.usage"),
            Topic::Attempts => format!("{p}.attempts"),
            Topic::Audit => format!("{p}.audit"),
            Topic::Replies => format!("{p}.replies"),
            Topic::DeadLetter => format!("{p}.dead-letter"),
            Topic::Cancels => format!("{p}.cancels"),
            Topic::BudgetAlerts => format!("{p}.budget-alerts"),
            Topic::Keys => format!("{p}.keys"),
            Topic::ReplayResults => format!("{p}.replay.results"),
            Topic::ReplayUsage => format!("{p}.replay.usage"),
        }
    }

    /// The shared topics every deployment has (team topics come from configuration).
    pub fn shared() -> Vec<Topic> {
        let mut all: Vec<Topic> = Priority::ALL.into_iter().map(Topic::Requests).collect();
        all.extend([
            Topic::Results,
            Topic::Usage,
            Topic::Attempts,
            Topic::Audit,
            Topic::Replies,
            Topic::DeadLetter,
            Topic::Cancels,
            Topic::BudgetAlerts,
            Topic::Keys,
            Topic::ReplayResults,
            Topic::ReplayUsage,
        ]);
        all
    }

    /// librdkafka subscription pattern matching every request topic of one priority,
    /// shared and per-team.
    pub fn requests_pattern(&self, priority: Priority) -> String {
        format!(
            "^{}\\.requests\\.{}(\\.team\\..+)?$",
            escape_regex(&self.prefix),
            priority.as_str()
        )
    }

    /// The priority class of a request topic name, if it is one of ours.
    pub fn priority_of(&self, topic: &str) -> Option<Priority> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix(".requests.")?;
        let class = rest.split('.').next()?;
        Priority::parse(class)
    }
}

fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Team names become part of topic names and ClickHouse values: keep them to Kafka's
/// legal topic characters.
pub fn is_valid_team_name(team: &str) -> bool {
    !team.is_empty()
        && team.len() <= 64
        && team
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_priorities_round_trip() {
        let topics = Topics::new("t1");
        for p in Priority::ALL {
            let shared = topics.name(&Topic::Requests(p));
            let team = topics.name(&Topic::TeamRequests(p, "acme".into()));
            assert_eq!(topics.priority_of(&shared), Some(p));
            assert_eq!(topics.priority_of(&team), Some(p));
        }
        assert_eq!(topics.priority_of("t1.results"), None);
        assert_eq!(topics.priority_of("other.requests.batch"), None);
        assert_eq!(topics.name(&Topic::Usage), "t1.usage");
    }

    #[test]
    fn pattern_escapes_prefix() {
        assert_eq!(
            Topics::new("a.b-c").requests_pattern(Priority::Batch),
            "^a\\.b\\-c\\.requests\\.batch(\\.team\\..+)?$"
        );
    }

    #[test]
    fn record_fits_only_with_its_overhead() {
        assert!(fits(MAX_MESSAGE_BYTES, 10, 4 * 1024 * 1024));
        assert!(!fits(1000, 0, 1000));
        assert!(!fits(MAX_MESSAGE_BYTES, usize::MAX, 1));
    }

    #[test]
    fn team_names() {
        assert!(is_valid_team_name("team-a_1"));
        assert!(!is_valid_team_name(""));
        assert!(!is_valid_team_name("a/b"));
        assert!(!is_valid_team_name("a.b"));
    }
}
